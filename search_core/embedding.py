"""Audio as a model takes it: per-model segment windows, queries and clips decoded at the
model's rate within their bounds, and a warm-up run.

Used by ingest (segments of each file), search (the query) and speakers (enrol and identify).
"""
from __future__ import annotations

import os

import numpy as np

from . import audio as audio_mod
from .config import Settings
from .models import EmbeddingModel, get_model


def segment_params(info, env: dict | None = None) -> tuple[float, float]:
    """``(window_s, hop_s)`` for cutting long recordings for the model described by ``info``.

    Defaults come from the model (``ModelInfo.window_s``/``hop_s``). The environment overrides
    them for every model (``SEGMENT_WINDOW_S``, ``SEGMENT_HOP_S``) or for one
    (``SEGMENT_WINDOW_S_<MODEL>``, e.g. ``SEGMENT_WINDOW_S_MFCC_STATS``); the per-model value wins.
    """
    env = os.environ if env is None else env
    out = []
    for var, default in (("SEGMENT_WINDOW_S", info.window_s), ("SEGMENT_HOP_S", info.hop_s)):
        value = default
        for key in (var, f"{var}_{info.name.upper()}"):
            raw = str(env.get(key, "")).strip()
            if raw:
                try:
                    value = float(raw)
                except ValueError:
                    raise ValueError(f"environment variable {key}={raw!r} is not a number") from None
                if not 0 < value <= 3600:
                    raise ValueError(f"environment variable {key}={raw!r} must be between 0 and 3600 seconds")
        out.append(value)
    window, hop = out
    if hop > window:
        raise ValueError(f"segment hop ({hop} s) is longer than the window ({window} s) for {info.name}: "
                         "parts of long recordings would not be indexed")
    return window, hop


def at_model_rate(clip: audio_mod.Audio | str | os.PathLike, m: EmbeddingModel, settings: Settings,
                  max_part_s: float | None, name: str) -> audio_mod.Audio:
    """``clip`` (decoded audio, or a file decoded within ``settings``' bounds) as mono audio at
    ``m``'s rate: only its first ``max_part_s`` seconds when given (``Audio.is_part`` says so).

    ``name`` names decoded audio in errors (a file is named by its own name). A clip shorter than
    the model's ``min_duration_s`` raises :class:`~search_core.audio.AudioError`.
    """
    s, rate = settings, m.info.sample_rate
    if isinstance(clip, audio_mod.Audio):
        c = clip.first(max_part_s) if max_part_s else clip
        a = c if c.sample_rate == rate else audio_mod.Audio(
            audio_mod.resample(c.samples, c.sample_rate, rate), rate, c.source_rate, c.source_channels,
            c.source_duration_s)
    else:
        name = audio_mod.display_name(clip)
        a = audio_mod.load(clip, rate, max_bytes=s.max_upload_bytes, max_duration_s=s.max_duration_s,
                           max_part_s=max_part_s, max_samples=s.max_decode_samples)
    audio_mod.check_min_duration(a, m.info.min_duration_s, m.info.name, name)
    return a


def warm_up(model: str) -> bool:
    """Load ``model`` and run one tiny embedding, so the first real search is not the slow one.

    Returns False (and changes nothing) when the model's weights are not available.
    """
    try:
        m = get_model(model)
        if not m.status().ready and not m.loaded:
            return False
        noise = np.random.default_rng(0).standard_normal(m.info.sample_rate).astype(np.float32) * 0.1
        m.embed([noise])
        return True
    except Exception:  # warming is best effort; a real request reports the error
        return False
