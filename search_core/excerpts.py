"""A stored file's time range as WAV bytes: a hit's matching segment, for the page's player and
the HTTP API (``/api/clips/{id}/audio?start=&end=``).

Decoded block by block (:func:`search_core.audio.blocks`), so memory is one block and the WAV
whatever the file's length; the WAV is 16-bit at the file's own rate and channel count.
"""
from __future__ import annotations

import io
import os

import soundfile as sf

from . import audio

#: the longest range handed out as one WAV (seconds); a hit's segment is one model window (5-10 s)
MAX_EXCERPT_S = 60.0


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


def excerpt_range(start, end, duration_s: float) -> tuple[float, float]:
    """``(start_s, end_s)`` from a request's ``start``/``end`` (seconds, as text or numbers) for a clip
    of ``duration_s``; raises :class:`ValueError` with one sentence when they are not a range of it
    of at most :data:`MAX_EXCERPT_S`."""
    if start is None or end is None:
        raise ValueError("Give both start and end (in seconds) for an excerpt, or neither for the whole file.")
    out = []
    for value, name in ((start, "start"), (end, "end")):
        try:
            s = float(str(value).strip()) if len(str(value)) <= 40 else float("nan")
        except ValueError:
            s = float("nan")
        if not 0 <= s <= duration_s + 1e-3:  # also refuses nan and inf
            shown = str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."
            raise ValueError(f"The {name} must be a number of seconds from 0 to {duration_s:.3f} "
                             f"(the clip's length); got {shown!r}.")
        out.append(min(s, duration_s))
    if not out[0] < out[1]:
        raise ValueError(f"The start ({out[0]:g} s) must come before the end ({out[1]:g} s).")
    if out[1] - out[0] > MAX_EXCERPT_S:
        raise ValueError(f"An excerpt is at most {MAX_EXCERPT_S:g} s long; {out[0]:g} to {out[1]:g} s "
                         f"is {out[1] - out[0]:g} s. Fetch the whole clip without start and end.")
    return out[0], out[1]
