"""``aisfx_yamnet``: the aiSFX and YAMNet sound embeddings of a clip side by side, weighted.

Each member embeds the clip at its own rate (aisfx at 44.1 kHz, the rate this model declares;
YAMNet at 16 kHz, resampled here with :func:`search_core.audio.resample`) and returns a unit
vector. The combined vector is ``sqrt(w) * a ⊕ sqrt(1 - w) * y``: a unit vector again, whose
cosine with another is ``w * cos_aisfx + (1 - w) * cos_yamnet``. ``w`` = :data:`AISFX_WEIGHT` was
chosen on half of the ESC-50 recordings and checked on the other half
(``benchmarks/combined_weight.py``; figures in README's Evaluation section).

The members are the registry's shared instances, so their weights are loaded once whether they
are used alone or here. YAMNet's weights carry no stated licence, so this model is opt-in too.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..audio import resample
from .aisfx import AisfxModel
from .base import EmbeddingModel, ModelInfo, ModelStatus, WeightsNotInstalled
from .yamnet import YamnetModel

AISFX_WEIGHT = 0.3   # w: share of the aisfx cosine in the combined cosine (see the module docstring)
MEMBERS = ("aisfx", "yamnet")
_A, _Y = AisfxModel.info, YamnetModel.info


def combine(a: np.ndarray, y: np.ndarray, weight: float = AISFX_WEIGHT) -> np.ndarray:
    """``(n, da)`` and ``(n, dy)`` unit rows -> ``(n, da + dy)`` rows ``sqrt(w) a ⊕ sqrt(1 - w) y``.

    For unit inputs the rows are unit vectors and ``cos = w cos_a + (1 - w) cos_y``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the aisfx weight must be between 0 and 1, got {weight}")
    a, y = np.asarray(a, dtype=np.float32), np.asarray(y, dtype=np.float32)
    if a.ndim != 2 or y.ndim != 2 or len(a) != len(y):
        raise ValueError(f"expected two 2-D arrays with as many rows, got shapes {a.shape} and {y.shape}")
    return np.concatenate([a * np.float32(math.sqrt(weight)), y * np.float32(math.sqrt(1.0 - weight))], axis=1)


def combined_status(statuses: dict[str, ModelStatus]) -> ModelStatus:
    """The combined model's status from its members' (member name -> status), naming each member."""
    waiting = {n: st for n, st in statuses.items() if not st.ready}
    if not waiting:
        notes = [f"{n}: {st.message}" for n, st in statuses.items() if st.message != "ready"]
        return ModelStatus(True, f"ready ({'; '.join(notes)})" if notes else "ready")
    message = ("uses " + " and ".join(statuses) + "; not ready: "
               + "; ".join(f"{n}: {st.message}" for n, st in waiting.items()))
    shorts = {n: st.short or st.message for n, st in waiting.items()}
    downloads = "downloads on first use ("
    if all(s.startswith(downloads) for s in shorts.values()):
        short = downloads + " + ".join(f"{n} {s[len(downloads):-1]}" for n, s in shorts.items()) + ")"
    else:
        short = "needs " + "; ".join(f"{n}: {s.removeprefix('needs ')}" for n, s in shorts.items())
    return ModelStatus(False, message, short=short)


class AisfxYamnet(EmbeddingModel):
    """aisfx (512-d) ⊕ yamnet (1024-d), each normalised and weighted; opt-in like yamnet."""

    info = ModelInfo(
        centered=True,  # mean subtracted by default: README, "Centering"
        name="aisfx_yamnet",
        task="sound",
        sample_rate=_A.sample_rate,          # yamnet's 16 kHz is made from it
        dim=_A.dim + _Y.dim,
        description=f"aiSFX ⊕ YAMNet, cosine = {AISFX_WEIGHT:g}·aisfx + {1 - AISFX_WEIGHT:g}·yamnet (opt-in)",
        runtime="paddle",
        licence=f"aisfx: {_A.licence}; yamnet: {_Y.licence}",
        window_s=min(_A.window_s, _Y.window_s),
        hop_s=min(_A.hop_s, _Y.hop_s),
        min_samples=_A.min_samples,          # yamnet pads its own (16 kHz) input
        min_duration_s=max(_A.min_duration_s, _Y.min_duration_s),
        opt_in=True,
    )

    def __init__(self, weight: float = AISFX_WEIGHT) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the aisfx weight must be between 0 and 1, got {weight}")
        self.weight = weight

    @staticmethod
    def members() -> dict[str, EmbeddingModel]:
        """The registry's shared aisfx and yamnet instances (looked up on each call)."""
        from . import get_model   # the registry imports this module lazily, by name

        return {n: get_model(n) for n in MEMBERS}

    def status(self) -> ModelStatus:
        return combined_status({n: m.status() for n, m in self.members().items()})

    def _load(self) -> None:
        for name, m in self.members().items():
            try:
                m.load()
            except WeightsNotInstalled as e:
                raise WeightsNotInstalled(f"{self.info.name} uses {name}, whose weights are missing: {e}") from e

    def member_embeddings(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Unit ``(n, 512)`` aisfx and ``(n, 1024)`` yamnet rows of waveforms at 44.1 kHz."""
        m = self.members()
        a, y = m["aisfx"], m["yamnet"]
        ws = list(waveforms)
        return (a.embed(ws, batch_size=max(len(ws), 1)),
                y.embed([resample(w, self.info.sample_rate, y.info.sample_rate) for w in ws],
                        batch_size=max(len(ws), 1)))

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        return combine(*self.member_embeddings(waveforms), self.weight)
