"""Small PNG pictures of audio (waveform, spectrogram), drawn with numpy + Pillow.

They are made for result lists, so they are fast (a few ms) and small (a few kB); matplotlib
would be ten times slower per image. :func:`save_once` writes a picture (or any result file) once,
atomically, under its content hash, so a file a response is streaming is never rewritten.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

WAVE_COLOR = (59, 130, 246)
BG = (255, 255, 255)


def waveform_image(samples: np.ndarray, width: int = 480, height: int = 72,
                   highlight: tuple[float, float] | None = None) -> Image.Image:
    """Min/max envelope of ``samples`` per pixel column. ``highlight`` = (start, end) as fractions."""
    samples = np.asarray(samples, dtype=np.float32)
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    if highlight is not None:
        a, b = (max(0.0, min(1.0, x)) for x in highlight)
        draw.rectangle([int(a * width), 0, max(int(a * width) + 1, int(b * width)), height], fill=(254, 243, 199))
    if samples.size == 0:
        return img
    cols = np.array_split(samples, min(width, samples.size))
    lo = np.array([c.min() for c in cols])
    hi = np.array([c.max() for c in cols])
    peak = max(float(np.max(np.abs(samples))), 1e-6)
    mid = height / 2
    xs = np.linspace(0, width - 1, len(cols))
    for x, l, h in zip(xs, lo / peak, hi / peak):
        draw.line([(x, mid - h * (mid - 2)), (x, mid - l * (mid - 2))], fill=WAVE_COLOR)
    return img


def spectrogram_image(samples: np.ndarray, sample_rate: int, width: int = 480, height: int = 128,
                      n_fft: int = 1024) -> Image.Image:
    """A log-magnitude spectrogram (low frequencies at the bottom), resized to width x height."""
    import librosa

    samples = np.asarray(samples, dtype=np.float32)
    if samples.size < n_fft:
        samples = np.pad(samples, (0, n_fft - samples.size))
    hop = max(n_fft // 4, samples.size // (width * 2))
    mel = librosa.feature.melspectrogram(y=samples, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=96)
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    norm = ((db + 80.0) / 80.0).clip(0, 1)[::-1]
    rgb = _magma_like(norm)
    return Image.fromarray(rgb).resize((width, height), Image.BILINEAR)


def _magma_like(x: np.ndarray) -> np.ndarray:
    """A dark-to-bright colour map (black, purple, orange, pale yellow) as uint8 RGB."""
    stops = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], float)
    pos = x * (len(stops) - 1)
    i = np.clip(pos.astype(int), 0, len(stops) - 2)
    f = (pos - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def envelope(blocks: Iterable[np.ndarray], frames: int, columns: int) -> np.ndarray:
    """Min and max of the mono mix per column (``lo0, hi0, lo1, hi1, ...``) of a signal of about
    ``frames`` frames given as (frames, channels) blocks; memory holds one block, whatever the length."""
    lo = np.full(columns, np.inf, np.float32)
    hi = np.full(columns, -np.inf, np.float32)
    per_col = max(1, -(-int(frames) // columns))
    pos = 0
    for block in blocks:
        mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else np.asarray(block, np.float32)
        if not mono.size:
            continue
        col = np.minimum((pos + np.arange(len(mono))) // per_col, columns - 1)
        starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
        np.minimum.at(lo, col[starts], np.minimum.reduceat(mono, starts))
        np.maximum.at(hi, col[starts], np.maximum.reduceat(mono, starts))
        pos += len(mono)
    used = np.isfinite(lo)
    return np.column_stack([lo[used], hi[used]]).ravel()


def image_bytes(img: Image.Image, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper().replace("JPG", "JPEG"), **({"quality": 90} if fmt.lower() in ("jpeg", "jpg") else {}))
    return buf.getvalue()


def save_once(data: bytes, folder: Path, suffix: str, fresh_s: float = 1800.0) -> Path:
    """``folder/<sha256 of data><suffix>``, written atomically (temp file, then rename) unless a copy
    younger than ``fresh_s`` is there. An existing file is never opened for writing: a response that
    is streaming it keeps reading intact bytes. An older copy is replaced (by rename) so that
    :func:`prune` never removes a file that was just handed out."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    try:
        if time.time() - dest.stat().st_mtime < fresh_s:
            return dest
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def prune(folder: Path, keep_s: float = 3600.0) -> int:
    """Remove files of ``folder`` older than ``keep_s`` (twice :func:`save_once`'s ``fresh_s``, so a
    file handed out in the last half hour stays). Returns how many were removed."""
    n, now = 0, time.time()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for e in entries:
        try:
            if e.is_file() and now - e.stat().st_mtime > keep_s:
                os.unlink(e.path)
                n += 1
        except FileNotFoundError:
            pass
    return n


# -- the library map -------------------------------------------------------------------------------
#: ten distinct colours (Tableau 10) for the commonest labels; further labels get hues around the circle
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#17becf"]
NO_LABEL = "(no label)"


def label_colors(labels: list[str]) -> list[str]:
    """A CSS colour per label (in the order given, commonest first): the palette, then golden-angle hues;
    grey for :data:`NO_LABEL`."""
    out = []
    for i, lab in enumerate(labels):
        if lab == NO_LABEL:
            out.append("#b0b0b0")
        elif i < len(PALETTE):
            out.append(PALETTE[i])
        else:
            out.append(f"hsl({(i * 137.508) % 360:.0f},60%,{42 + (i % 3) * 8}%)")
    return out


def map_image(xy: np.ndarray, labels: list[str], width: int = 1200, height: int = 800,
              legend_max: int = 30) -> Image.Image:
    """The library map as a picture: one dot per row of ``xy`` (any range; each axis fills the
    picture), coloured by ``labels`` (commonest first in the legend on the right)."""
    from collections import Counter

    from PIL import ImageColor

    order = [lab for lab, _ in Counter(labels).most_common()]
    colors = dict(zip(order, (ImageColor.getrgb(c) for c in label_colors(order))))
    legend_w = 220 if order else 0
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    pad, w = 16, width - legend_w
    if len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        unit = np.where(hi > lo, (xy - lo) / np.where(hi > lo, hi - lo, 1), 0.5)
        r = 2 if len(xy) > 3000 else 3 if len(xy) > 500 else 4
        for (u, v), lab in zip(unit, labels):
            x, y = pad + u * (w - 2 * pad), pad + (1 - v) * (height - 2 * pad)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colors[lab])
    counts = Counter(labels)
    for i, lab in enumerate(order[:legend_max]):
        y = pad + i * 18
        draw.ellipse((w + 4, y + 3, w + 14, y + 13), fill=colors[lab])
        draw.text((w + 20, y), f"{lab} ({counts[lab]})"[:32], fill=(40, 40, 40))
    if len(order) > legend_max:
        draw.text((w + 20, pad + legend_max * 18), f"+{len(order) - legend_max} more labels", fill=(40, 40, 40))
    return img
