"""The model registry as a user meets it: what the dropdown says, which models are defaults."""
from __future__ import annotations

import pytest

from search_core.config import get_settings
from search_core.models import WeightsNotInstalled, describe, get_model, model_names

EXPECTED = {"aisfx": ("sound", 512), "resemblyzer": ("speaker", 256), "panns_cnn14": ("sound", 2048),
            "panns_cnn10": ("sound", 512), "panns_cnn6": ("sound", 512), "ecapa_tdnn": ("speaker", 192),
            "yamnet": ("sound", 1024), "aisfx_yamnet": ("sound", 1536), "mfcc_stats": ("sound", 80)}


def test_every_model_is_listed_with_task_dimension_rate_and_status():
    assert set(model_names()) == set(EXPECTED)
    for name, (task, dim) in EXPECTED.items():
        line = describe(name)
        info = get_model(name).info
        assert (info.task, info.dim) == (task, dim)
        assert line.startswith(f"{name} — {task}, {dim}-d, ") and "kHz" in line
        # the status in a few words (issue 16): ready, or how the weights will come / what is missing
        status = line.split(" kHz, ", 1)[1].split(" · ")[0]
        if get_model(name).status().ready:
            assert status.startswith("ready"), line
        else:
            assert status.startswith("downloads on first use (") or status.startswith("needs "), line


def test_defaults_are_registry_models_of_the_right_task_and_not_opt_in():
    s = get_settings()
    sound, speaker = get_model(s.default_sound_model).info, get_model(s.default_speaker_model).info
    assert (sound.task, speaker.task) == ("sound", "speaker")
    assert not sound.opt_in and not speaker.opt_in
    assert get_model("yamnet").info.opt_in and "opt-in" in describe("yamnet")


def test_a_model_without_weights_says_which_files_go_where(tmp_path, monkeypatch):
    monkeypatch.setenv("PPSPEECH_HOME", str(tmp_path / "ppspeech"))
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("SEARCH_CORE_OFFLINE", "1")
    m = get_model("panns_cnn14")
    st = m.status()
    assert not st.ready and "panns_cnn14" in st.message and str(tmp_path / "weights") in st.message
    with pytest.raises(WeightsNotInstalled, match="panns_cnn14"):
        type(m)().load()  # a fresh instance: the shared one may be cached by other tests


def test_fast_mfcc_equals_librosa():
    import librosa
    import numpy as np

    from search_core.models.mfcc import mfcc

    y = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    ref = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=40, n_mels=64, n_fft=512, hop_length=160)
    assert np.allclose(mfcc(y, 16000), ref, atol=1e-3 * np.abs(ref).max())


def test_mean_per_clip_pools_consecutive_rows_and_refuses_a_bad_split():
    import numpy as np

    from search_core.models.base import mean_per_clip

    rows = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0], [2.0, 2.0], [4.0, 0.0]])
    np.testing.assert_allclose(mean_per_clip(rows, [2, 1, 3]), [[2.0, 1.0], [5.0, 5.0], [2.0, 2.0]])
    for counts in ([2, 1, 2], [2, 0, 4], []):
        with pytest.raises(ValueError, match="do not split 6 rows"):
            mean_per_clip(rows, counts)


def test_the_short_status_says_whether_a_download_will_be_tried(tmp_path, monkeypatch):
    """Issue 16: "downloads on first use" only while a download would really be tried; after a
    failed one (retried after RETRY_AFTER_S) or offline, the file and the folder it is needed in."""
    import time

    from search_core.models import paddlespeech_weights as pw

    monkeypatch.setenv("PPSPEECH_HOME", str(tmp_path / "ppspeech"))
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("SEARCH_CORE_OFFLINE", raising=False)
    release = pw.RELEASES["ecapa_tdnn"]
    monkeypatch.setattr(pw, "_failures", {})
    assert pw.status(release, tmp_path / "weights").short == "downloads on first use (from paddlespeech.cdn.bcebos.com)"
    pw._failures[release.url] = (time.monotonic(), "download failed")
    needs = f"needs {release.archive_name} in {tmp_path / 'weights'}"
    assert pw.status(release, tmp_path / "weights").short == needs
    assert describe("ecapa_tdnn").endswith(", " + needs)
    pw._failures[release.url] = (time.monotonic() - pw.RETRY_AFTER_S - 1, "download failed")
    assert pw.status(release, tmp_path / "weights").short.startswith("downloads on first use")
