"""Audio decoding, validation and resampling: the one place where bytes become samples.

Every function raises :class:`AudioError` with a one-line message that names the file and the
reason, so callers can show it to a person as it is. Limits (size, duration, decoding work) are
checked from the header before the samples are decoded, and decoding streams: files are read,
mixed to mono and resampled in blocks of at most :data:`BLOCK_SAMPLES` samples, so memory is
bounded by the block and the mono output, never by the decoded file (a small FLAC can hold hours
of six-channel audio).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

#: Extensions the library accepts (lower case, with the dot).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac",
                              ".aif", ".aiff", ".webm"})

#: A clip whose peak is below this is treated as silence (about -90 dBFS).
SILENCE_PEAK = 3e-5

#: Decoding reads at most this many samples (frames x channels) at a time: 1 MB of float32.
BLOCK_SAMPLES = 1 << 18


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
    source_duration_s: float | None = None  # the whole file's length when only a part was decoded

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def is_part(self) -> bool:
        """True when only the beginning of a longer recording was decoded (a bounded query)."""
        return self.source_duration_s is not None and self.source_duration_s > self.duration_s + 1e-3

    def first(self, seconds: float) -> "Audio":
        """The first ``seconds`` of this audio (itself when it is no longer)."""
        n = int(round(seconds * self.sample_rate))
        if len(self.samples) <= n:
            return self
        return Audio(self.samples[:n], self.sample_rate, self.source_rate, self.source_channels,
                     self.source_duration_s or self.duration_s)


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


def fmt_seconds(s: float) -> str:
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


def blocks(path: str | os.PathLike, name: str | None = None, *, start_frame: int = 0,
           max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode a file as float32 blocks of shape (frames, channels), at most :data:`BLOCK_SAMPLES`
    samples each, from ``start_frame`` for at most ``max_frames`` frames (default: to the end).

    Tries libsndfile first (wav, flac, ogg, mp3, aiff) and falls back to ffmpeg via PyAV (m4a,
    aac, opus, webm, ...), which decodes frame by frame. Nothing beyond ``max_frames`` is read.
    """
    name = name or display_name(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        yield from _blocks_av(path, name, start_frame, max_frames)
        return
    yielded = False
    with f:
        try:
            if start_frame:
                f.seek(min(int(start_frame), f.frames))
            size = max(1, BLOCK_SAMPLES // max(1, f.channels))
            for block in f.blocks(blocksize=size, frames=-1 if max_frames is None else int(max_frames),
                                  dtype="float32", always_2d=True):
                yielded = True
                yield block
            return
        except (sf.LibsndfileError, RuntimeError) as err:
            if yielded:
                raise AudioError(name, f"not a readable audio file ({_short(err)})") from None
    yield from _blocks_av(path, name, start_frame, max_frames)  # libsndfile opened it but cannot decode it


def _blocks_av(path, name: str, start_frame: int, max_frames: int | None) -> Iterator[np.ndarray]:
    import av  # PyAV: ffmpeg's decoders, shipped inside its wheel

    skip, left = int(start_frame), (None if max_frames is None else int(max_frames))
    rate = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(name, "contains no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float, rate and layout unchanged
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    if rate is None:
                        rate = out.sample_rate
                    elif out.sample_rate != rate:
                        raise AudioError(name, "changes its sample rate mid-stream; not supported")
                    data = out.to_ndarray().T  # (frames, channels)
                    if skip:
                        data, skip = data[skip:], max(0, skip - len(data))
                    if left is not None:
                        data = data[:left]
                        left -= len(data)
                    step = max(1, BLOCK_SAMPLES // max(1, data.shape[1]))
                    for i in range(0, len(data), step):
                        yield np.ascontiguousarray(data[i:i + step], dtype=np.float32)
                    if left == 0:
                        return
    except AudioError:
        raise
    except Exception as err:  # av raises many error types for junk input
        raise AudioError(name, f"not a readable audio file ({_short(err)})") from None


def read_part(path: str | os.PathLike, start_s: float, seconds: float,
              name: str | None = None) -> tuple[np.ndarray, int]:
    """``seconds`` of a file from ``start_s``, as float32 (frames, channels) and its sample rate.

    Only that range is decoded (libsndfile seeks; PyAV decodes up to its end).
    """
    name = name or display_name(path)
    info = probe(path, name)
    start = int(start_s * info.sample_rate)
    parts = list(blocks(path, name, start_frame=start, max_frames=max(0, int(seconds * info.sample_rate))))
    data = np.concatenate(parts) if parts else np.zeros((0, info.channels), np.float32)
    return data, info.sample_rate


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
    finite = bool(np.all(np.isfinite(samples)))
    peak = float(np.max(np.abs(samples))) if finite else 0.0
    _check_signal(finite, peak, name)
    if peak > 1.0:
        # float files may exceed full scale; keep the shape, bring it into range
        samples = samples / peak
    return samples


def _work_limit_message(frames: int, info: AudioInfo, max_samples: int) -> str:
    return (f"decoding it means {frames * info.channels / 1e6:.1f} M samples ({fmt_seconds(frames / info.sample_rate)}"
            f" x {info.channels} channels at {info.sample_rate / 1000:g} kHz), over the "
            f"{max_samples / 1e6:.1f} M-sample limit")


def load(path: str | os.PathLike, sample_rate: int | None = None, *, max_bytes: int = 200 * 1024 * 1024,
         max_duration_s: float = 7200.0, name: str | None = None, max_part_s: float | None = None,
         max_samples: int | None = None) -> Audio:
    """Check, decode, mix to mono, validate and (if ``sample_rate``) resample one file.

    Size, duration and decoding work (frames x channels, at most ``max_samples``) are checked from
    the header before decoding; decoding streams in blocks, so memory holds one block plus the
    mono output. With ``max_part_s`` only the first ``max_part_s`` seconds are decoded (a query
    needs no more); ``Audio.source_duration_s`` then says how long the whole file is. Raises
    :class:`AudioError`.
    """
    name = name or display_name(path)
    check_file(path, max_bytes, name)
    info = probe(path, name)
    if info.duration_s > max_duration_s:
        raise AudioError(name, f"is {fmt_seconds(info.duration_s)} long, over the "
                               f"{fmt_seconds(max_duration_s)} limit")
    rate = info.sample_rate
    part = None if max_part_s is None else max(1, int(max_part_s * rate))
    frames = info.frames if part is None else min(info.frames, part)
    if max_samples is not None and frames * info.channels > max_samples:
        raise AudioError(name, _work_limit_message(frames, info, max_samples))
    # containers can lie about their length: the stream is counted and cut at the limit (one
    # frame more is read to know whether there is more)
    limit = part if part is not None else int(max_duration_s * rate)
    out_rate = sample_rate or rate
    resampler = soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality="HQ") if out_rate != rate else None
    out = _Growing(int(min(info.frames, limit) * out_rate / rate) + 64)
    decoded = channels = 0
    peak, finite, cut = 0.0, True, False
    for block in blocks(path, name, max_frames=limit + 1):
        channels = block.shape[1]
        if decoded + len(block) > limit:
            if part is None:
                raise AudioError(name, f"is over the {fmt_seconds(max_duration_s)} limit "
                                       "(longer than its header says)")
            block, cut = block[:limit - decoded], True
        decoded += len(block)
        if max_samples is not None and decoded * channels > max_samples:
            raise AudioError(name, _work_limit_message(decoded, AudioInfo(rate, channels, decoded), max_samples))
        mono = to_mono(block)
        finite = finite and bool(np.all(np.isfinite(mono)))
        if finite and mono.size:
            peak = max(peak, float(np.max(np.abs(mono))))
        out.append(resampler.resample_chunk(mono) if resampler else mono)
    if resampler is not None and decoded:
        out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if decoded == 0:
        raise AudioError(name, "contains no audio samples (0 frames)")
    _check_signal(finite, peak, name)
    samples = out.array()
    if peak > 1.0:  # float files may exceed full scale; keep the shape, bring it into range
        samples /= peak
    whole = max(info.duration_s, (decoded + 1) / rate) if cut else None
    return Audio(samples, out_rate, rate, channels, whole)


class _Growing:
    """A float32 buffer filled block by block (preallocated to the expected length, grown if a
    header under-reported it), so the output is never held twice as a list and its concatenation."""

    def __init__(self, capacity: int):
        self._buf = np.empty(max(64, capacity), np.float32)
        self._n = 0

    def append(self, x: np.ndarray) -> None:
        need = self._n + len(x)
        if need > len(self._buf):
            grown = np.empty(max(need, int(len(self._buf) * 1.5)), np.float32)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n:need] = x
        self._n = need

    def array(self) -> np.ndarray:
        return self._buf[:self._n]


def _check_signal(finite: bool, peak: float, name: str) -> None:
    if not finite:
        raise AudioError(name, "contains NaN or infinite sample values")
    if peak < SILENCE_PEAK:
        raise AudioError(name, "is silent (no signal above -90 dBFS); nothing to match")


def check_min_duration(a: Audio, min_s: float, model: str, name: str) -> Audio:
    """Refuse audio shorter than ``min_s`` seconds: too short for ``model`` to say anything about."""
    if a.duration_s < min_s:
        have = f"{a.duration_s * 1000:.1f} ms" if a.duration_s < 1 else fmt_seconds(a.duration_s)
        raise AudioError(name, f"is {have} long; {model} needs at least {fmt_seconds(min_s)} of audio")
    return a


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
