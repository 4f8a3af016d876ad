"""The contract every embedding model follows.

A model turns mono float32 waveforms at its own sample rate into L2-normalised float32
vectors of a fixed dimension. Models whose weights are missing stay listed: :meth:`status`
says what is missing and where to put it, and :meth:`load` raises :class:`WeightsNotInstalled`
with the same message. No model ever falls back to random weights.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class WeightsNotInstalled(RuntimeError):
    """The model's pretrained weights are not on this machine (and could not be fetched)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, independent of whether its weights are installed."""

    name: str            # registry key, also the Milvus collection suffix: [a-z0-9_]+
    task: str            # "sound" or "speaker"
    sample_rate: int     # waveforms passed to embed() are at this rate
    dim: int             # length of each embedding
    description: str     # one line for the model dropdown
    runtime: str = "numpy"    # "numpy", "paddle" or "onnxruntime"
    licence: str = ""         # of the weights
    window_s: float = 10.0    # long recordings are cut into windows of this length ...
    hop_s: float = 5.0        # ... every hop_s seconds
    min_samples: int = 400    # shorter input is zero-padded to this many samples
    min_duration_s: float = 0.1  # shorter clips are refused (ingest and query): too little to embed
    opt_in: bool = False      # listed but never a default (e.g. unclear weight licence)
    centered: bool = False    # its collections subtract their mean by default (search_core/recenter.py)


@dataclass(frozen=True)
class ModelStatus:
    ready: bool
    message: str  # "ready", or what is missing and where to put it
    short: str = ""  # the same in a few words for a dropdown ("downloads on first use (25 MB)"); "" = message


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation of a 2-D array, as float32. Zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def mean_per_clip(rows: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Mean of consecutive groups of ``rows``: the first ``counts[0]`` rows, the next ``counts[1]``, ...

    For models that embed several blocks or partials per clip and pool them into one vector.
    """
    counts = np.asarray(counts)
    if len(counts) == 0 or np.any(counts <= 0) or counts.sum() != len(rows):
        raise ValueError(f"counts {counts.tolist()} do not split {len(rows)} rows into non-empty groups")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(rows, starts, axis=0) / counts[:, None]


class EmbeddingModel:
    """Base class: subclasses set ``info`` and implement :meth:`_load` and :meth:`_embed`.

    ``embed`` is thread-safe, loads lazily once, pads too-short input and normalises the output.
    """

    info: ModelInfo

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False

    # -- subclasses -----------------------------------------------------------------------
    def status(self) -> ModelStatus:
        """Whether the weights are available. Must be fast and never download."""
        return ModelStatus(True, "ready")

    def _load(self) -> None:
        """Load weights (may download); raise WeightsNotInstalled with a precise message."""

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """Embed a batch of mono float32 waveforms at ``info.sample_rate`` -> (n, dim)."""
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------
    def load(self) -> "EmbeddingModel":
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    @property
    def loaded(self) -> bool:
        return self._loaded

    def embed(self, waveforms: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Embed waveforms (mono, float32, at ``info.sample_rate``) into (n, dim) unit vectors."""
        self.load()
        if len(waveforms) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        prepared = []
        for i, w in enumerate(waveforms):
            w = np.asarray(w, dtype=np.float32)
            if w.ndim != 1:
                raise ValueError(f"waveform {i} must be mono (1-D), got shape {w.shape}")
            if len(w) < self.info.min_samples:
                w = np.pad(w, (0, self.info.min_samples - len(w)))
            prepared.append(w)
        out = []
        for start in range(0, len(prepared), batch_size):
            # the lock is taken per batch, not per call: a search waits for one batch of a long
            # import's segments, not for all of them; sleep(0) hands the lock to a waiting thread
            with self._lock:
                out.append(np.asarray(self._embed(prepared[start:start + batch_size]), dtype=np.float32))
            time.sleep(0)
        emb = np.concatenate(out, axis=0)
        if emb.shape != (len(prepared), self.info.dim):
            raise RuntimeError(f"model {self.info.name} returned shape {emb.shape}, "
                               f"expected ({len(prepared)}, {self.info.dim})")
        return l2_normalize(emb)
