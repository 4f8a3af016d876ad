"""Speaker enrolment and identification (the voiceprint demo).

A speaker is enrolled from one or more clips: each clip is embedded (a long clip as the mean of
its segments' embeddings), and the speaker's voiceprint is the L2-normalised mean of those
embeddings, stored per model in the ``speakers`` table. To identify a clip, its embedding is
compared (cosine similarity) with every enrolled voiceprint of the same model: the best is the
answer if it reaches the model's threshold, otherwise the answer is ``"unknown"``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

import numpy as np

from . import audio as audio_mod
from . import limits
from .config import Settings, env_unit_float
from .embedding import at_model_rate, segment_params
from .metadata import MetadataStore
from .models import get_model

UNKNOWN = "unknown"

#: Cosine-similarity thresholds per model: the equal-error-rate point of target vs non-target
#: trials measured by ``benchmarks/speaker_threshold.py`` (enrol 5 clips, test on the others;
#: FSDD + EmoDB from ../shared/data pooled). Figures in BENCHMARKS.md, "Speaker threshold".
THRESHOLDS: dict[str, float] = {
    # pooled EER 33 % (FSDD 17 %, EmoDB 41 %; closed-set ID 85 % / 22 %): a baseline, not a voiceprint
    "mfcc_stats": 0.990,
    # pooled EER 17.7 % (FSDD 14.1 %, EmoDB 16.5 %; closed-set ID 92.5 % / 72.4 %)
    "resemblyzer": 0.759,
}
#: For models not calibrated yet.
DEFAULT_THRESHOLD = 0.75


def threshold_for(model: str) -> float:
    """The identification threshold of ``model``; ``SPEAKER_THRESHOLD`` overrides it."""
    value = env_unit_float("SPEAKER_THRESHOLD", "cosine similarity")
    return THRESHOLDS.get(model, DEFAULT_THRESHOLD) if value is None else value


@dataclass
class Speaker:
    name: str
    model: str
    embedding: np.ndarray
    n_clips: int
    created_at: datetime
    updated_at: datetime


@dataclass
class Identification:
    """The answer for one clip: ``name`` is an enrolled speaker or ``"unknown"``."""

    name: str
    score: float                     # similarity to the best enrolled speaker (nan if none)
    threshold: float
    model: str
    ranking: list[tuple[str, float]] = field(default_factory=list)  # every speaker, best first

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN


def clean_speaker_name(name: str) -> str:
    """A speaker name as stored: trimmed, no control characters, 1-255 characters, not "unknown"."""
    text = limits.text(name, "speaker name")
    if not text:
        raise ValueError("a speaker needs a name")
    if text.lower() == UNKNOWN:
        raise ValueError(f"{UNKNOWN!r} is the answer for unenrolled voices; choose another name")
    return text


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The L2-normalised mean of unit embeddings (rows)."""
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
    if len(embeddings) == 0:
        raise ValueError("no embeddings to average")
    v = embeddings.mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32)


class SpeakerRegistry:
    """Enrol, identify, list and delete speakers; voiceprints are kept in the metadata store,
    clips decoded within ``settings``' bounds."""

    def __init__(self, meta: MetadataStore, settings: Settings):
        self.meta, self.settings = meta, settings

    def embed_clip(self, clip: audio_mod.Audio | str | os.PathLike, model: str,
                   max_part_s: float | None = None) -> np.ndarray:
        """One unit embedding for a clip: the mean of its segments' embeddings (one if short).

        ``max_part_s``: embed only the clip's first seconds (identify: bounded work per request).
        """
        m = get_model(model)
        m.load()
        a = at_model_rate(clip, m, self.settings, max_part_s, "clip")
        bounds = audio_mod.segment_bounds(len(a.samples), a.sample_rate, *segment_params(m.info))
        return mean_embedding(m.embed([a.samples[b:e] for b, e in bounds]))

    def enrol(self, name: str, clips: Sequence[audio_mod.Audio | str | os.PathLike], model: str,
              add: bool = False) -> Speaker:
        """Enrol ``name`` from ``clips`` (replacing an earlier enrolment, or adding to it with ``add``).

        Every clip must decode; a bad one raises :class:`AudioError` and nothing is stored.
        """
        name = clean_speaker_name(name)
        if not clips:
            raise ValueError(f"enrolling {name!r} needs at least one clip")
        embs = np.stack([self.embed_clip(c, model) for c in clips])
        total = embs.sum(axis=0)
        n = len(embs)
        if add:
            old = self.get(name, model)
            if old is not None:
                total = total + old.embedding * old.n_clips
                n += old.n_clips
        self.meta.save_speaker(name, model, mean_embedding(total[None, :]), n)
        return self.get(name, model)

    def get(self, name: str, model: str) -> Speaker | None:
        rows = self.meta.speaker_rows(model, name)
        return _speaker(rows[0]) if rows else None

    def list(self, model: str | None = None) -> list[Speaker]:
        return [_speaker(r) for r in self.meta.speaker_rows(model)]

    def delete(self, name: str, model: str | None = None) -> int:
        """Forget ``name`` (for ``model``, or every model); returns how many voiceprints went."""
        return self.meta.delete_speaker(limits.text(name, "speaker name") or "", model)

    def identify(self, clip: audio_mod.Audio | str | os.PathLike, model: str,
                 threshold: float | None = None) -> Identification:
        """Who is speaking in ``clip``: the best enrolled speaker above the threshold, or unknown."""
        thr = threshold_for(model) if threshold is None else float(threshold)
        enrolled = self.list(model)
        if not enrolled:
            raise ValueError(f"no speakers are enrolled for model {model}; enrol one first")
        v = self.embed_clip(clip, model, max_part_s=self.settings.max_query_s)
        return decide(v, [(s.name, s.embedding) for s in enrolled], thr, model)


def decide(v: np.ndarray, voiceprints: Sequence[tuple[str, np.ndarray]], threshold: float,
           model: str = "") -> Identification:
    """The identification rule: cosine similarity with each voiceprint, best above ``threshold``."""
    if not voiceprints:
        return Identification(UNKNOWN, float("nan"), threshold, model)
    mat = np.stack([np.asarray(e, dtype=np.float32) for _, e in voiceprints])
    scores = mat @ np.asarray(v, dtype=np.float32)
    order = np.argsort(-scores)
    ranking = [(voiceprints[i][0], float(scores[i])) for i in order]
    best_name, best = ranking[0]
    return Identification(best_name if best >= threshold else UNKNOWN, best, threshold, model, ranking)


def _speaker(row: dict) -> Speaker:
    return Speaker(row["name"], row["model"], np.asarray(row["embedding"], dtype=np.float32), int(row["n_clips"]),
                   row["created_at"], row["updated_at"])
