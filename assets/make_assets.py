"""Generate the example clips the app offers (assets/*.wav): synthetic sounds made here, ours to ship.

    .venv/bin/python assets/make_assets.py          # rewrites assets/*.wav deterministically

Every clip is 16 kHz mono 16-bit PCM, a few seconds long and well under 200 kB. The sounds are
synthesised from numbers (fixed random seeds) and one phrase is spoken by espeak-ng, so nothing
here is a recording of anyone or anything: see assets/README.md (CC0).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
HERE = Path(__file__).resolve().parent
PHRASE = "Find me sounds like this one."


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * RATE)) / RATE


def _normalise(y: np.ndarray, peak: float = 0.7) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return (y / (np.max(np.abs(y)) + 1e-12) * peak).astype(np.float32)


def _env(n: int, attack: float, release: float) -> np.ndarray:
    """A linear attack, exponential release envelope of ``n`` samples."""
    e = np.exp(-np.arange(n) / (release * RATE))
    a = min(n, max(1, int(attack * RATE)))
    e[:a] *= np.linspace(0, 1, a)
    return e


def bird_chirps(seconds: float = 3.0, seed: int = 1) -> np.ndarray:
    """Short rising-then-falling whistles (2.5-6 kHz) with small pauses, like a songbird."""
    rng = np.random.default_rng(seed)
    y = np.zeros(int(seconds * RATE))
    pos = int(0.1 * RATE)
    while pos < len(y) - int(0.2 * RATE):
        dur = rng.uniform(0.06, 0.16)
        t = _t(dur)
        f0, f1 = rng.uniform(2500, 3500), rng.uniform(4500, 6000)
        f = f0 + (f1 - f0) * np.sin(np.pi * t / dur)  # up and back down
        phase = 2 * np.pi * np.cumsum(f) / RATE
        note = np.sin(phase) * np.hanning(len(t)) * rng.uniform(0.5, 1.0)
        y[pos:pos + len(note)] += note
        pos += len(note) + int(rng.uniform(0.04, 0.35) * RATE)
    return _normalise(y + 0.003 * rng.standard_normal(len(y)))


def doorbell(seconds: float = 3.0) -> np.ndarray:
    """A two-tone 'ding-dong' (E5 then C5) with bell-like partials and a slow decay."""
    y = np.zeros(int(seconds * RATE))
    for start, f in ((0.05, 659.25), (0.75, 523.25)):
        n = int((seconds - start) * RATE)
        t = _t(n / RATE)
        partials = sum(a * np.sin(2 * np.pi * f * m * t) for m, a in ((1, 1.0), (2.0, 0.45), (3.0, 0.2), (4.2, 0.1)))
        s = int(start * RATE)
        y[s:s + n] += partials * _env(n, 0.005, 0.6)
    return _normalise(y)


def rain(seconds: float = 4.0, seed: int = 2) -> np.ndarray:
    """Rain-like noise: a pink-ish hiss plus many small random drops."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spec /= np.sqrt(np.maximum(freqs, 50.0))          # 1/f power: pink
    spec *= 1 / (1 + (freqs / 6000.0) ** 4)             # gentle top roll-off
    hiss = np.fft.irfft(spec, n)
    hiss /= np.max(np.abs(hiss))
    drops = np.zeros(n)
    idx = rng.integers(0, n - 400, size=int(60 * seconds))
    drops[idx] = rng.uniform(0.2, 1.0, size=len(idx)) * rng.choice([-1, 1], size=len(idx))
    kernel = np.exp(-np.arange(200) / 25.0) * np.sin(2 * np.pi * 3000 * np.arange(200) / RATE)
    drops = np.convolve(drops, kernel)[:n]
    return _normalise(0.6 * hiss + 0.4 * drops / (np.max(np.abs(drops)) + 1e-12))


def tone(seconds: float = 2.0, freq: float = 440.0) -> np.ndarray:
    """A steady 440 Hz sine with short fades: a test tone."""
    t = _t(seconds)
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    return _normalise(np.sin(2 * np.pi * freq * t) * fade, 0.5)


def speech(text: str = PHRASE) -> np.ndarray:
    """``text`` spoken by espeak-ng (its English voice), resampled to 16 kHz.

    Raises RuntimeError if espeak-ng is not installed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(out), text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        y, sr = sf.read(str(out), dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    if sr != RATE:
        import soxr

        y = soxr.resample(y, sr, RATE)
    pad = np.zeros(int(0.15 * RATE), np.float32)
    return _normalise(np.concatenate([pad, y, pad]))


CLIPS = {
    "bird_chirps.wav": bird_chirps,
    "doorbell.wav": doorbell,
    "rain.wav": rain,
    "tone_440hz.wav": tone,
    "spoken_phrase.wav": speech,
}


def make_all(folder: Path = HERE) -> list[Path]:
    """Write every clip of :data:`CLIPS` into ``folder``; returns the paths."""
    paths = []
    for name, make in CLIPS.items():
        path = folder / name
        sf.write(str(path), make(), RATE, subtype="PCM_16")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in make_all():
        info = sf.info(str(p))
        print(f"{p.name}: {info.duration:.2f} s, {p.stat().st_size // 1024} kB")
