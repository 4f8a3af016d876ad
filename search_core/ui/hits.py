"""A search result as the page shows it: a player, a waveform picture and a line of HTML per hit.

Pictures and segment audio are files written once under their content hash in a render folder
(see :func:`search_outputs`); library files are played straight from the library folder.
"""
from __future__ import annotations

import html
import itertools
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np

from search_core import audio as audio_mod
from search_core import plots
from search_core.audio import AudioError
from search_core.excerpts import wav_excerpt

MAX_K = 20


#: The narrowest score range the bars of one search spread over: hits closer than this look about
#: equally long, as they are about equally close; wider spreads fill the bar's length.
MIN_SPAN = 0.02


def bar_scale(scores) -> tuple[float, float]:
    """The scores at an empty and at a full bar for one search's hits: ``(low, high)``.

    Cosine similarities of one model often sit in a narrow band (aisfx: a top five of 0.88-0.91),
    where bars from 0 to 1 look identical. The bars span the observed range instead: the best hit
    fills its bar and the worst keeps a fifth of it (the scale reaches a quarter of the spread below
    it), over at least ``MIN_SPAN``.

    >>> [round(x, 4) for x in bar_scale([0.91, 0.9, 0.88])]
    [0.8725, 0.91]
    >>> [round(x, 4) for x in bar_scale([0.5])]
    [0.475, 0.5]
    """
    hi, lo = max(scores), min(scores)
    return hi - max(hi - lo, MIN_SPAN) * 1.25, hi


def score_bar(score: float, scale: tuple[float, float] | None = None) -> str:
    """A bar as long as ``score`` on ``scale`` (``bar_scale``), or on 0..1 without one."""
    lo, hi = scale if scale is not None else (0.0, 1.0)
    pct = max(0.0, min(1.0, (score - lo) / max(hi - lo, 1e-9))) * 100
    where = f"; the bar spans {lo:.3f} to {hi:.3f}, this search's range" if scale is not None else ""
    return (f'<div class="scorebar" title="cosine similarity {score:.3f}{where}">'
            f'<div class="scorefill" style="width:{pct:.0f}%"></div></div>')


def hit_html(h, scale: tuple[float, float] | None = None, best: float | None = None) -> str:
    """A hit's title, score bar (on ``scale``), exact scores (and how far below ``best``) and metadata."""
    c = h.clip
    meta = [("label", c.label), ("speaker", c.speaker), ("source", c.source),
            ("tags", ", ".join(c.tags) if c.tags else None)]
    meta_html = " · ".join(f"<span class='k'>{k}</span> {html.escape(str(v))}" for k, v in meta if v)
    where = f" · <b>{h.start_s:.1f}–{h.end_s:.1f} s</b> of {c.duration_s:.1f} s" if h.is_segment \
        else f" · {c.duration_s:.1f} s"
    more = f" · {len(h.segments)} matching segments" if len(h.segments) > 1 else ""
    gap = f" · <span class='gap'>{best - h.score:.3f} below the best</span>" \
        if best is not None and best - h.score >= 0.0005 else ""
    return (f"<div class='hit'><div class='hit-title'>#{h.rank} {html.escape(c.original_name)}</div>"
            f"{score_bar(h.score, scale)}"
            f"<div class='hit-meta'>cosine similarity <b>{h.score:.3f}</b> · cosine distance {h.distance:.3f}"
            f"{gap}{where}{more} · id {c.id} · {c.sample_rate} Hz, {c.channels} ch</div>"
            f"<div class='hit-meta'>{meta_html}</div></div>")


def hit_audio(h):
    """The stored file for a whole clip; just the matching range for a segment of a long file.

    Only the range is decoded (libsndfile seeks; other formats are decoded up to its end, in blocks).
    """
    if not h.is_segment:
        return str(h.path)
    data, rate = audio_mod.read_part(h.path, h.start_s, h.end_s - h.start_s)
    return rate, data


def segment_wav(h) -> bytes:
    """The hit's matching range as 16-bit WAV bytes (:func:`search_core.excerpts.wav_excerpt`)."""
    return wav_excerpt(h.path, h.start_s, h.end_s)


THUMB_W, THUMB_H = 400, 56


@lru_cache(maxsize=2048)
def _envelope(path: str, columns: int = THUMB_W) -> tuple[np.ndarray, float]:
    """Min/max of the mono mix per pixel column of a stored file, and its duration in seconds.

    Cached per path: library files are named by their content hash, so they never change. The file
    is streamed in blocks of ``audio.BLOCK_SAMPLES`` samples: memory stays a few MB for any length.
    """
    info = audio_mod.probe(path)
    return plots.envelope(audio_mod.blocks(path), info.frames, columns), info.duration_s


def hit_waveform(h, render_dir: Path):
    """A small waveform picture of the hit's file (a PNG path); the matching range is highlighted for a segment."""
    return _thumbnail(str(h.path), round(h.start_s, 3) if h.is_segment else None, round(h.end_s, 3), render_dir)


#: Searches that hit the same long clip at once wait for one reading of it, not one each.
_ENVELOPE_LOCKS = [threading.Lock() for _ in range(16)]


@lru_cache(maxsize=1024)
def _thumbnail_png(path: str, start_s: float | None, end_s: float) -> bytes:
    """The picture for :func:`hit_waveform`, cached: a clip that is a hit again costs nothing."""
    with _ENVELOPE_LOCKS[hash(path) % len(_ENVELOPE_LOCKS)]:
        env, dur = _envelope(path)
    dur = max(dur, 1e-6)
    hl = (start_s / dur, end_s / dur) if start_s is not None else None
    return plots.image_bytes(plots.waveform_image(env, THUMB_W, THUMB_H, highlight=hl))


def _thumbnail(path: str, start_s: float | None, end_s: float, render_dir: Path) -> str:
    return str(plots.save_once(_thumbnail_png(path, start_s, end_s), render_dir, ".png"))


def _player(h, render_dir: Path):
    """The hit's player value: the library file itself, or the segment written once under its content hash."""
    if h.is_segment:
        return str(plots.save_once(segment_wav(h), render_dir, ".wav"))
    return str(h.path)


_RENDER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="render")
_PRUNE_EVERY = 100  # searches between two sweeps of the render folder (files older than an hour go)
_render_count = itertools.count(1)


def query_note(q) -> str:
    """``(query 4.2 s)``, or which part of a long query was searched."""
    if q.is_part:
        return (f"(searched the first {audio_mod.fmt_seconds(q.duration_s)} of the "
                f"{audio_mod.fmt_seconds(q.source_duration_s)} query)")
    return f"(query {q.duration_s:.1f} s)"


def search_outputs(res, model: str, render_dir: Path | None = None, note: str | None = None) -> list:
    """The Search tab's outputs for a ``SearchResult``, in the order of the /search endpoint.

    A result without a query (``res.query`` None: searched again after relevance feedback) leaves
    the query's pictures as they are and says ``note`` where the query's length would be.

    Query waveform, query spectrogram, status text, then ``MAX_K`` slots of (visibility, audio,
    info HTML, waveform image), then the hits as data. Pictures and segment audio are made in a
    small thread pool, concurrently, so 20 hits cost about as much as the slowest few. Each is a
    file written once, atomically, under its content hash in ``render_dir`` (Gradio would rewrite
    identical results in place while another response streams them). A hit whose library file
    went away (the clip was just deleted) drops out.
    """
    render_dir = Path(render_dir) if render_dir is not None else Path(tempfile.gettempdir()) / "audiosearch-render"
    q = res.query
    if q is None:
        q_wave = q_spec = _RENDER_POOL.submit(gr.update)
    else:
        q_wave = _RENDER_POOL.submit(lambda: str(plots.save_once(
            plots.image_bytes(plots.waveform_image(q.samples, 640, 80)), render_dir, ".png")))
        q_spec = _RENDER_POOL.submit(lambda: str(plots.save_once(
            plots.image_bytes(plots.spectrogram_image(q.samples, q.sample_rate, 640, 120), "jpeg"), render_dir,
            ".jpg")))
    audios = [_RENDER_POOL.submit(_player, h, render_dir) for h in res.hits]
    waves = [_RENDER_POOL.submit(hit_waveform, h, render_dir) for h in res.hits]
    shown = []
    for h, a, w in zip(res.hits, audios, waves):
        try:
            player, wave = a.result(), w.result()
        except (FileNotFoundError, AudioError):
            if h.path.is_file():
                raise
            continue  # deleted while this search ran
        if isinstance(player, str) and not Path(player).is_file():
            continue
        shown.append((h, player, wave))
    status = (f"**{len(shown)}** hits with **{model}** in {res.seconds['total'] * 1000:.0f} ms "
              f"{query_note(q) if q is not None else note}. Score = cosine similarity of the embeddings; "
              f"distance = 1 − score.")
    scale = bar_scale([h.score for h, _, _ in shown]) if shown else None
    if scale is not None and len(shown) > 1:
        status += (f" Bars run from {scale[0]:.3f} (empty) to {scale[1]:.3f} (full), this search's range, "
                   "so the clearly closer hits stand out.")
    if not res.hits and q is not None:
        status += " The library has no clips for this model yet: add some in the Library tab."
    outs = [q_wave.result(), q_spec.result(), status]
    for i in range(MAX_K):
        if i < len(shown):
            h, player, wave = shown[i]
            outs += [gr.update(visible=True), player, hit_html(h, scale, shown[0][0].score), wave]
        else:
            outs += [gr.update(visible=False), None, "", None]
    table = [{"rank": h.rank, "clip_id": h.clip.id, "name": h.clip.original_name, "score": round(h.score, 4),
              "distance": round(h.distance, 4), "start_s": h.start_s, "end_s": h.end_s,
              "label": h.clip.label, "speaker": h.clip.speaker} for h, _, _ in shown]
    if next(_render_count) % _PRUNE_EVERY == 1:
        _RENDER_POOL.submit(plots.prune, render_dir)
    return outs + [table]
