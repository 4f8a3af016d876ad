"""A stored file's time range as WAV bytes: a hit's matching segment, for the page's player and
the HTTP API (``/api/clips/{id}/audio?start=&end=``, the range checked by :func:`.limits.excerpt_range`).

Decoded block by block (:func:`search_core.audio.blocks`), so memory is one block and the WAV
whatever the file's length; the WAV is 16-bit at the file's own rate and channel count.
"""
from __future__ import annotations

import io
import os

import soundfile as sf

from . import audio


def wav_excerpt(path: str | os.PathLike, start_s: float, end_s: float) -> bytes:
    """``path`` from ``start_s`` to ``end_s`` seconds as 16-bit WAV bytes (a range past the end of
    the file stops at its end)."""
    if not 0 <= start_s < end_s:
        raise ValueError(f"an excerpt needs 0 <= start < end; got {start_s} to {end_s} s")
    info = audio.probe(path)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", info.sample_rate, info.channels, format="WAV", subtype="PCM_16") as out:
        for block in audio.blocks(path, start_frame=int(start_s * info.sample_rate),
                                  max_frames=int(round((end_s - start_s) * info.sample_rate))):
            out.write(block)
    return buf.getvalue()
