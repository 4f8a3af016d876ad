"""Small PNG pictures of audio (waveform, spectrogram), drawn with numpy + Pillow.

They are made for result lists, so they are fast (a few ms) and small (a few kB); matplotlib
would be ten times slower per image.
"""
from __future__ import annotations

import io

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
