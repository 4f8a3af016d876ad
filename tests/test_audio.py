"""Decoding every accepted format at any rate and channel count, resampling, segmenting."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from search_core import audio


def write_m4a(path, y, rate):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        frame = av.AudioFrame.from_ndarray(y[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize("ext,fmt", [("wav", None), ("flac", None), ("ogg", "OGG"), ("mp3", "MP3"), ("m4a", "m4a")])
def test_formats_decode_to_mono_at_the_model_rate(tmp_path, ext, fmt):
    rate = 44100
    y = tone(440, 1.5, rate)
    path = tmp_path / f"a.{ext}"
    if fmt == "m4a":
        write_m4a(path, y, rate)
    else:
        sf.write(str(path), y, rate, format=fmt)
    a = audio.load(path, 16000)
    assert a.sample_rate == 16000 and a.source_rate == rate and a.samples.dtype == np.float32
    assert a.duration_s == pytest.approx(1.5, abs=0.08)  # codecs pad a little
    spectrum = np.abs(np.fft.rfft(a.samples))
    assert np.argmax(spectrum) * 16000 / len(a.samples) == pytest.approx(440, abs=5)


def test_multichannel_is_mixed_to_mono(tmp_path):
    rate = 48000
    y = np.stack([tone(300, 1, rate), tone(300, 1, rate), np.zeros(rate, np.float32)], axis=1)
    sf.write(str(tmp_path / "three.wav"), y, rate)
    a = audio.load(tmp_path / "three.wav", 16000)
    assert a.source_channels == 3 and a.samples.ndim == 1
    assert np.max(np.abs(a.samples)) == pytest.approx(0.5 * 2 / 3, rel=0.05)


def test_limits_are_checked_before_decoding(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(str(path), tone(100, 3.0, 8000), 8000)
    with pytest.raises(audio.AudioError, match=r"long\.wav: is 3\.0 s long, over the 2\.0 s limit"):
        audio.load(path, 16000, max_duration_s=2.0)
    with pytest.raises(audio.AudioError, match=r"file is 48\.0 kB, over the 1\.0 kB limit"):
        audio.load(path, 16000, max_bytes=1000)


def test_from_array_scales_integers():
    y = (tone(200, 0.5, 8000) * 32767).astype(np.int16)
    a = audio.from_array(y, 8000, 16000)
    assert a.sample_rate == 16000 and np.max(np.abs(a.samples)) == pytest.approx(0.5, abs=0.01)


def test_segment_bounds_cover_the_signal():
    assert audio.segment_bounds(100, 10, 20.0, 10.0) == [(0, 100)]
    b = audio.segment_bounds(250, 10, 10.0, 5.0)
    assert b[0] == (0, 100) and b[-1][1] == 250
    assert all(e - s == 100 for s, e in b)
    assert all(b2[0] - b1[0] <= 50 for b1, b2 in zip(b, b[1:]))
    with pytest.raises(ValueError):
        audio.segment_bounds(10, 10, 0, 1)
