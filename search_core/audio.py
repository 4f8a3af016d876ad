"""Audio decoding, validation and resampling: the one place where bytes become samples.

Every function raises :class:`AudioError` with a one-line message that names the file and the
reason, so callers can show it to a person as it is. Limits (size, duration) are checked
before the samples are decoded.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

#: Extensions the library accepts (lower case, with the dot).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac",
                              ".aif", ".aiff", ".webm"})

#: A clip whose peak is below this is treated as silence (about -90 dBFS).
SILENCE_PEAK = 3e-5


class AudioError(ValueError):
    """A file that cannot be used as audio; ``str(err)`` is ``"<name>: <reason>"``."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the container says, read without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono float32 samples at ``sample_rate``, plus what the file was."""

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def display_name(path: str | os.PathLike) -> str:
    """The file's base name, for messages (never a full server path)."""
    return Path(path).name or str(path)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: str | os.PathLike, max_bytes: int, name: str | None = None) -> int:
    """Check that ``path`` is a readable, non-empty regular file of at most ``max_bytes``.

    Returns its size in bytes. ``name`` is what messages call the file (default: its base name).
    """
    name = name or display_name(path)
    p = Path(path)
    if not p.exists():
        raise AudioError(name, "file not found")
    if p.is_dir():
        raise AudioError(name, "is a directory, not an audio file")
    if not p.is_file():
        raise AudioError(name, "is not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise AudioError(name, "file is empty (0 bytes)")
    if size > max_bytes:
        raise AudioError(name, f"file is {_fmt_bytes(size)}, over the {_fmt_bytes(max_bytes)} limit")
    if not os.access(p, os.R_OK):
        raise AudioError(name, "file is not readable (permission denied)")
    return size


def _fmt_bytes(n: float) -> str:
    """``64 kB`` / ``41.0 MB``: precise enough that a file and its limit never read the same."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _fmt_seconds(s: float) -> str:
    """``2.0 s`` below two minutes, ``60.0 min`` above."""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def probe(path: str | os.PathLike, name: str | None = None) -> AudioInfo:
    """Read sample rate, channels and length from the container, without decoding samples."""
    name = name or display_name(path)
    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    except PermissionError:
        raise AudioError(name, "file is not readable (permission denied)") from None
    return _probe_av(path, name)


def _probe_av(path, name: str) -> AudioInfo:
    import av  # PyAV: ffmpeg's decoders, shipped inside its wheel

    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise AudioError(name, "contains no audio stream")
            st = streams[0]
            rate = int(st.rate or st.codec_context.sample_rate or 0)
            channels = int(st.codec_context.channels or 0) if hasattr(st.codec_context, "channels") \
                else len(st.layout.channels)
            if st.duration is not None and st.time_base is not None:
                seconds = float(st.duration * st.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1e6
            else:
                seconds = 0.0
    except AudioError:
        raise
    except Exception as err:  # av raises many error types for junk input
        raise AudioError(name, f"not a readable audio file ({_short(err)})") from None
    if rate <= 0:
        raise AudioError(name, "not a readable audio file (no sample rate)")
    return AudioInfo(rate, max(channels, 1), int(round(seconds * rate)))


def _short(err: Exception) -> str:
    """The reason of a decoder error in one short line, without the server-side file path."""
    reason = getattr(err, "strerror", None)  # av/OS errors: the reason without "[Errno n]" and the path
    text = str(reason if reason else err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    return text[:160]


def decode(path: str | os.PathLike, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode a file to float32 samples of shape (frames, channels) and its sample rate.

    Tries libsndfile first (wav, flac, ogg, mp3, aiff) and falls back to ffmpeg via PyAV
    (m4a, aac, opus, webm, ...).
    """
    name = name or display_name(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return data, int(rate)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    return _decode_av(path, name)


def _decode_av(path, name: str) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(name, "contains no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")
            chunks, rate = [], int(stream.rate or 0)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(name, f"not a readable audio file ({_short(err)})") from None
    if not chunks or rate <= 0:
        raise AudioError(name, "contains no audio samples")
    data = np.concatenate(chunks, axis=1).T.astype(np.float32)  # (frames, channels)
    return data, rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average channels: (frames, channels) or (frames,) -> (frames,) float32."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise ValueError(f"expected (frames, channels) audio, got shape {data.shape}")
    return data.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality resampling of mono float32 samples with soxr."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr or len(samples) == 0:
        return samples
    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32)


def validate_samples(samples: np.ndarray, rate: int, name: str) -> np.ndarray:
    """Reject audio no model can use: no samples, NaN/inf, or pure silence. Returns the samples."""
    if samples.size == 0:
        raise AudioError(name, "contains no audio samples (0 frames)")
    if not np.all(np.isfinite(samples)):
        raise AudioError(name, "contains NaN or infinite sample values")
    peak = float(np.max(np.abs(samples)))
    if peak < SILENCE_PEAK:
        raise AudioError(name, "is silent (no signal above -90 dBFS); nothing to match")
    if peak > 1.0:
        # float files may exceed full scale; keep the shape, bring it into range
        samples = samples / peak
    return samples


def load(path: str | os.PathLike, sample_rate: int | None = None, *, max_bytes: int = 200 * 1024 * 1024,
         max_duration_s: float = 7200.0, name: str | None = None) -> Audio:
    """Check, decode, mix to mono, validate and (if ``sample_rate``) resample one file.

    Size and duration limits are checked before decoding. Raises :class:`AudioError`.
    """
    name = name or display_name(path)
    check_file(path, max_bytes, name)
    info = probe(path, name)
    if info.duration_s > max_duration_s:
        raise AudioError(name, f"is {_fmt_seconds(info.duration_s)} long, over the "
                               f"{_fmt_seconds(max_duration_s)} limit")
    data, rate = decode(path, name)
    mono = validate_samples(to_mono(data), rate, name)
    if len(mono) / rate > max_duration_s:  # containers can lie about their length
        raise AudioError(name, f"is {_fmt_seconds(len(mono) / rate)} long, over the "
                               f"{_fmt_seconds(max_duration_s)} limit")
    out = resample(mono, rate, sample_rate) if sample_rate else mono
    return Audio(out, sample_rate or rate, rate, data.shape[1])


def from_array(samples: np.ndarray, rate: int, sample_rate: int | None = None, name: str = "recording") -> Audio:
    """Build :class:`Audio` from in-memory samples (e.g. a microphone recording).

    Integer samples are scaled to [-1, 1]; (frames, channels) input is mixed to mono.
    """
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float32) - (info.max + info.min + 1) / 2) / (info.max + 1)
    samples = samples.astype(np.float32)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    if int(rate) <= 0:
        raise AudioError(name, f"invalid sample rate {rate}")
    mono = validate_samples(to_mono(samples), int(rate), name)
    out = resample(mono, int(rate), sample_rate) if sample_rate else mono
    return Audio(out, sample_rate or int(rate), int(rate), channels)


def segment_bounds(n_samples: int, rate: int, window_s: float, hop_s: float) -> list[tuple[int, int]]:
    """Sample ranges ``[(start, end), ...]`` covering a signal with overlapping windows.

    A signal no longer than one window is one segment. Otherwise windows of ``window_s`` start
    every ``hop_s``; the last window is aligned to the end so that no tail is left out.
    """
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window and hop must be positive, got {window_s}, {hop_s}")
    win, hop = int(round(window_s * rate)), int(round(hop_s * rate))
    if n_samples <= win:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples:
        starts.append(n_samples - win)
    return [(s, s + win) for s in starts]
