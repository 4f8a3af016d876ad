"""Your own ONNX model (issue 14, item 5): a graph and a card in $WEIGHTS_DIR/custom become a model.

The graphs are tiny and built here with onnx.helper, one per front end; their embeddings are
checked against the same arithmetic in numpy (and librosa's own melspectrogram for the log-mel
front end), so the card's front end and the graph's feeding are both exercised.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, sound, write_wav
from search_core.models import custom_model_problems, describe, get_model, model_names
from search_core.models.onnx_card import CardError
from search_core.models.own_model import OnnxCardModel
from search_core.service import LibraryService

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RATE = 16000
FRAME = 160           # the waveform graph: frames of 10 ms ...
WAVE_SAMPLES = 16000  # ... over a fixed 1 s input
RNG = np.random.default_rng(14)
W_WAVE = RNG.standard_normal((FRAME, 16)).astype(np.float32)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def waveform_graph(path: Path, samples: int | str = WAVE_SAMPLES, output: str = "embedding",
                   batch: int | str = "N") -> Path:
    """audio [N, samples] -> 10 ms frames @ W -> |.| -> mean over frames -> output [N, 16]."""
    nodes = [
        helper.make_node("Reshape", ["audio", "frame_shape"], ["frames"]),
        helper.make_node("MatMul", ["frames", "w"], ["proj"]),
        helper.make_node("Abs", ["proj"], ["mag"]),
        helper.make_node("ReduceMean", ["mag"], [output], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "wave",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, samples])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, 16])],
        initializer=[numpy_helper.from_array(np.array([0, -1, FRAME], dtype=np.int64), "frame_shape"),
                     numpy_helper.from_array(W_WAVE, "w")])
    return _save(graph, path)


def energy_graph(path: Path) -> Path:
    """audio [N, T] -> energy of each 10 ms frame [N, T / 160]: an output whose size depends on the input."""
    nodes = [helper.make_node("Reshape", ["audio", "frame_shape"], ["frames"]),
             helper.make_node("Mul", ["frames", "frames"], ["power"]),
             helper.make_node("ReduceMean", ["power"], ["embedding"], axes=[2], keepdims=0)]
    graph = helper.make_graph(
        nodes, "energy", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", "F"])],
        initializer=[numpy_helper.from_array(np.array([0, -1, FRAME], dtype=np.int64), "frame_shape")])
    return _save(graph, path)


def waveform_reference(y: np.ndarray) -> np.ndarray:
    y = np.pad(y, (0, max(0, WAVE_SAMPLES - len(y))))[:WAVE_SAMPLES]
    return np.abs(y.reshape(-1, FRAME) @ W_WAVE).mean(axis=0)


def mel_weights(n_mels: int, dim: int) -> np.ndarray:
    return np.random.default_rng(n_mels + dim).standard_normal((n_mels, dim)).astype(np.float32)


def log_mel_graph(path: Path, n_mels: int = 64, dim: int = 12, output: str = "emb", channel: bool = True,
                  mels_first: bool = False) -> Path:
    """mel [N, 1, T, n_mels] (or [N, T, n_mels]; T and n_mels swapped if ``mels_first``) -> mean over
    frames -> @ W -> output [N, dim]."""
    w = mel_weights(n_mels, dim)
    shape = ["N", n_mels, "T"] if mels_first else ["N", "T", n_mels]
    shape = [shape[0], 1, *shape[1:]] if channel else shape
    nodes = [helper.make_node("ReduceMean", ["mel"], ["pooled"], axes=[-1 if mels_first else -2], keepdims=0),
             helper.make_node("Reshape", ["pooled", "flat"], ["flat_pooled"]),
             helper.make_node("MatMul", ["flat_pooled", "w"], [output])]
    graph = helper.make_graph(
        nodes, "logmel",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", dim])],
        initializer=[numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat"),
                     numpy_helper.from_array(w, "w")])
    return _save(graph, path)


WAVE_CARD = f"""
task = "sound"
sample_rate = {RATE}
front_end = "waveform"
output = "embedding"
dim = 16
licence = "CC0"
window_s = 1.0
hop_s = 0.5
"""

MEL_CARD = f"""
task = "sound"
sample_rate = {RATE}
front_end = "log_mel"
output = "emb"
dim = 12
licence = "MIT"

[log_mel]
n_fft = 512
hop_length = 160
n_mels = 64
fmax = 7000.0
"""


def readme_card() -> str:
    """The example card of the README's "Your own model" section."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- own-model-card[^>]*-->\n```toml\n(.*?)```", text, re.S)
    assert m, "README lost its own-model card example"
    return m.group(1)


@pytest.fixture
def weights(tmp_path, monkeypatch) -> Path:
    """This test's $WEIGHTS_DIR (the one LibraryService(settings) and the registry both use)."""
    w = tmp_path / "data" / "weights"
    monkeypatch.setenv("WEIGHTS_DIR", str(w))
    return w


def install(weights: Path, name: str, card: str, graph=None, **kw) -> Path:
    custom = weights / "custom"
    custom.mkdir(parents=True, exist_ok=True)
    (custom / f"{name}.toml").write_text(card)
    if graph is not None:
        graph(custom / f"{name}.onnx", **kw)
    return custom


# -- listing and embedding ----------------------------------------------------------------------
def test_cli_lists_own_models_and_says_why_a_file_is_skipped(tmp_path):
    data = tmp_path / "data"
    custom = install(data / "weights", "my_wave", WAVE_CARD, waveform_graph)
    (custom / "Bad Name.onnx").write_bytes(b"x")
    (custom / "yamnet.toml").write_text(WAVE_CARD)
    install(data / "weights", "broken", _edit(MEL_CARD, "dim", None), log_mel_graph)
    env = {**os.environ, "DATA_DIR": str(data), "SEARCH_CORE_OFFLINE": "1"}
    env.pop("WEIGHTS_DIR", None)
    out = subprocess.run([sys.executable, "-m", "search_core", "models"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "my_wave — sound, 16-d, 16 kHz, ready · your own model (CC0)" in lines
    assert lines[-2:] == ["broken — not usable: card custom/broken.toml: field 'dim' is missing",
                          "my_wave — sound, 16-d, 16 kHz, ready · your own model (CC0)"]  # after the built-ins
    assert "custom/Bad Name.onnx: skipped, the file name 'Bad Name' is not a model name" in out.stderr
    assert "custom/yamnet.toml: skipped, 'yamnet' is a built-in model" in out.stderr

    # using the broken one: the same sentence, exit code 2, nothing stored
    clip = write_wav(tmp_path / "a.wav", sound(1, 1.0))
    out = subprocess.run([sys.executable, "-m", "search_core", "ingest", str(clip), "--model", "broken"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "error: card custom/broken.toml: field 'dim' is missing" in out.stderr, out.stderr
    assert not any((data / "library").glob("*"))


@pytest.mark.parametrize("batch", ["N", 1])
def test_waveform_model_embeds_like_its_graph_in_numpy(weights, batch):
    install(weights, "my_wave", WAVE_CARD, waveform_graph, batch=batch)
    assert "my_wave" in model_names()
    m = get_model("my_wave")
    assert isinstance(m, OnnxCardModel) and m.status().ready
    assert (m.info.task, m.info.dim, m.info.sample_rate, m.info.window_s) == ("sound", 16, RATE, 1.0)
    # exactly one input length, shorter (zero-padded to the graph's 1 s) and longer (cut) in one call
    clips = [sound(1, 1.0), sound(2, 0.4), sound(3, 1.7)]
    got = m.embed(clips)
    want = np.stack([waveform_reference(y) for y in clips])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("channel, mels_first", [(True, False), (False, False), (False, True)])
def test_log_mel_model_embeds_like_librosa_and_its_graph(weights, channel, mels_first):
    import librosa

    card = MEL_CARD + ('layout = "mels_frames"\n' if mels_first else "")
    install(weights, "my_mel", card, log_mel_graph, channel=channel, mels_first=mels_first)
    w = mel_weights(64, 12)
    m = get_model("my_mel")
    assert m.status().ready and describe("my_mel").startswith("my_mel — sound, 12-d, 16 kHz, ready")
    clips = [sound(0, 1.5), sound(5, 0.8), sound(6, 1.5)]  # two lengths: two onnxruntime batches
    got = m.embed(clips)
    rows = []
    for y in clips:
        mel = librosa.feature.melspectrogram(y=y, sr=RATE, n_fft=512, hop_length=160, n_mels=64, fmax=7000.0)
        rows.append(np.log(mel + 1e-6).mean(axis=1) @ w)
    want = np.stack(rows)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_readme_card_loads(weights):
    text = readme_card()
    card = tomllib.loads(text)
    install(weights, "wespeaker_r34", text, log_mel_graph, n_mels=card["log_mel"]["n_mels"], dim=card["dim"],
            output=card["output"], channel=False)
    m = get_model("wespeaker_r34")
    assert m.status().ready, m.status().message
    assert (m.info.task, m.info.dim, m.info.licence) == ("speaker", card["dim"], card["licence"])
    assert m.embed([sound(1, 1.0)]).shape == (1, card["dim"])
    # every option of the example (htk, unnormalised triangles, win_length, fmin/fmax, CMN) as librosa does it
    import librosa

    p, y = card["log_mel"], sound(1, 1.0)
    mel = librosa.feature.melspectrogram(y=y, sr=card["sample_rate"], n_fft=p["n_fft"], hop_length=p["hop_length"],
                                         win_length=p["win_length"], n_mels=p["n_mels"], fmin=p["fmin"],
                                         fmax=p["fmax"], htk=True, norm=None, power=p["power"])
    want = np.log(mel + p["log_offset"])
    want -= want.mean(axis=1, keepdims=True)
    # float32 FFT leakage far below a chirp's peak differs by ~1e-4 relative between the two FFTs, which
    # the log and CMN turn into ~1e-3 here; a wrong option (scale, norm, window, CMN) is off by > 0.1
    np.testing.assert_allclose(m.features(y), want.T, atol=2e-3)


@pytest.mark.parametrize("log", ["log10", "db"])
def test_log10_and_decibel_front_ends_match_librosa(log):
    import librosa

    from search_core.models.onnx_card import LogMel
    from search_core.models.own_model import log_mel

    y = sound(2, 0.7)
    p = LogMel(n_fft=1024, hop_length=256, n_mels=40, power=1.0, log=log, log_offset=1e-5, center=False)
    mel = librosa.feature.melspectrogram(y=y, sr=RATE, n_fft=1024, hop_length=256, n_mels=40, power=1.0, center=False)
    want = np.log10(mel + 1e-5) if log == "log10" else librosa.power_to_db(mel, ref=1.0, amin=1e-5, top_db=None)
    np.testing.assert_allclose(log_mel(y, RATE, p), want.T, atol=2e-4)


def test_round_trip_through_the_library_with_its_own_collection(weights, settings, tmp_path):
    install(weights, "my_mel", MEL_CARD, log_mel_graph)
    clips = [write_wav(tmp_path / "in" / f"s{i}.wav", sound(i, 1.5)) for i in range(6)]
    query = write_wav(tmp_path / "q.wav", sound(3, 1.5) + 0.01 * RNG.standard_normal(int(1.5 * RATE)).astype(np.float32))
    svc = LibraryService(settings)
    try:
        rep = svc.ingest_files(clips, "my_mel")
        assert len(rep.added) == 6 and not rep.errors
        assert svc.count("my_mel") == 6 and svc.count("mfcc_stats") == 0
        assert svc.vectors.exists("my_mel")
        hits = svc.search(query, "my_mel", k=3).hits
        assert hits[0].clip.original_name == "s3.wav" and hits[0].score > 0.99
    finally:
        svc.close()


# -- bad cards and graphs: one sentence naming the field or tensor, library unchanged ------------------
def _edit(card: str, key: str, value: str | None) -> str:
    """``card`` without ``key``, or with ``key = value`` (in the [log_mel] table for its fields)."""
    lines = [ln for ln in card.strip().splitlines() if not ln.startswith(f"{key} =")]
    if value is not None:
        in_mel = key in ("n_fft", "hop_length", "n_mels", "fmax")
        lines.insert(len(lines) if in_mel else lines.index("[log_mel]"), f"{key} = {value}")
    return "\n".join(lines) + "\n"


BAD = {
    "missing field": (_edit(MEL_CARD, "dim", None), "card custom/m.toml: field 'dim' is missing"),
    "unknown field": (_edit(MEL_CARD, "smaple_rate", "16000"), "card custom/m.toml: unknown field 'smaple_rate'"),
    "wrong type": (_edit(MEL_CARD, "dim", '"12"'), "card custom/m.toml: field 'dim' must be a whole number, got '12'"),
    "rate out of range": (_edit(MEL_CARD, "sample_rate", "100"),
                          "card custom/m.toml: field 'sample_rate' is 100, must be between 4000 and 192000"),
    "unknown front end": (_edit(MEL_CARD, "front_end", '"mfcc"'), "card custom/m.toml: field 'front_end' is 'mfcc'"),
    "fmax above nyquist": (_edit(MEL_CARD, "fmax", "9000.0"), "card custom/m.toml [log_mel]: field 'fmax' is 9000 Hz"),
    "not toml": ("task = sound\n", "card custom/m.toml is not valid TOML"),
    "output not in graph": (_edit(MEL_CARD, "output", '"embedding"'),
                            "card custom/m.toml: field 'output' is 'embedding', but graph custom/m.onnx has no "
                            "such output (it has: emb)"),
    "dim mismatch": (_edit(MEL_CARD, "dim", "13"),
                     "card custom/m.toml: field 'dim' is 13, but output 'emb' of graph custom/m.onnx has 12 values"),
    "front end vs graph rank": (WAVE_CARD.replace('"embedding"', '"emb"').replace("dim = 16", "dim = 12"),
                                "graph custom/m.onnx: input 'mel' has shape ['N', 1, 'T', 64]; front_end 'waveform' "
                                "needs [batch, samples]"),
    "mel bands vs graph": (_edit(MEL_CARD, "n_mels", "40"),
                           "graph custom/m.onnx: input 'mel' has 64 mel bands (shape ['N', 1, 'T', 64]), "
                           "the card's [log_mel] n_mels is 40"),
    "graph missing": (MEL_CARD, "graph custom/m.onnx is missing"),
    "card missing": (None, "card custom/m.toml is missing: put a card"),
    "graph not onnx": (MEL_CARD, "graph custom/m.onnx is not a loadable ONNX model"),
    # found only when the graph runs (first use): its output size is not declared, or it fails on the input
    "dim mismatch, undeclared": (WAVE_CARD.replace("window_s = 1.0", "window_s = 1.0\nmin_duration_s = 0.5"),
                                 "card custom/m.toml: field 'dim' is 16, but output 'embedding' of graph "
                                 "custom/m.onnx has 50 values"),
    "graph fails on input": (WAVE_CARD.replace("window_s = 1.0", "window_s = 1.0\nmin_duration_s = 0.995"),
                             "graph custom/m.onnx fails on the front end's input 'audio'"),
}
AT_FIRST_USE = {"dim mismatch, undeclared", "graph fails on input"}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_card_or_graph_is_one_sentence_and_changes_nothing(case, weights, settings, tmp_path):
    card, sentence = BAD[case]
    custom = install(weights, "m", card or "")
    if card is None:
        (custom / "m.toml").unlink()
    if case == "graph not onnx":
        (custom / "m.onnx").write_bytes(b"not a graph")
    elif case == "graph fails on input":  # a free time axis cut into 160-sample frames: 15920 samples do not fit
        waveform_graph(custom / "m.onnx", samples="T")
    elif case == "dim mismatch, undeclared":
        energy_graph(custom / "m.onnx")
    elif case != "graph missing":
        log_mel_graph(custom / "m.onnx")  # 64 bands in, "emb" [N, 12] out
    assert "m" in model_names() and not custom_model_problems()
    assert get_model("m").status().ready is (case in AT_FIRST_USE)

    clip = write_wav(tmp_path / "in" / "a.wav", sound(1, 1.0))
    svc = LibraryService(settings)
    try:
        with pytest.raises(CardError, match=re.escape(sentence)):
            svc.ingest_files([clip], "m")
        st = get_model("m").status()
        assert not st.ready and st.message.startswith(sentence), st.message
        assert sentence[:60] in describe("m")
        with pytest.raises(CardError, match=re.escape(sentence)):
            svc.search(clip, "m", k=1)
        assert svc.count() == 0 and not svc.vectors.exists("m") and not any(settings.library_dir.iterdir())
    finally:
        svc.close()


def test_fixing_the_card_is_picked_up_without_a_restart(weights):
    custom = install(weights, "m", _edit(MEL_CARD, "dim", "13"), log_mel_graph)
    assert not get_model("m").status().ready
    (custom / "m.toml").write_text(MEL_CARD + "\n# fixed\n")
    assert get_model("m").status().ready and get_model("m").info.dim == 12
