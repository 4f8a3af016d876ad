"""PaddleSpeech PANNs (CNN6/10/14) and ECAPA-TDNN: weight discovery, checks, loading and embedding.

No network: checkpoints are made here, in the exact layout of PaddleSpeech's releases, with
random values in the real networks' state dicts. Full embedding is tested for CNN6 and ECAPA;
CNN10/CNN14 are covered for discovery (their networks are the same code path).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import search_core  # noqa: F401  (sets OMP_NUM_THREADS before paddle is imported)
from search_core.models import WeightsNotInstalled
from search_core.models import ecapa, panns
from search_core.models import paddlespeech_weights as pw

PANNS_CLASSES = {"panns_cnn6": panns.PannsCNN6, "panns_cnn10": panns.PannsCNN10,
                 "panns_cnn14": panns.PannsCNN14}
ALL_CLASSES = {**PANNS_CLASSES, "ecapa_tdnn": ecapa.EcapaTdnn}
ECAPA_STEM = "sv0_ecapa_tdnn_voxceleb12_ckpt_0_2_0"
PANNS_YAML = ("feature:\n  sample_rate: 32000\n  n_fft: 1024\n  hop_length: 320\n  window: hann\n"
              "  window_length: 1024\n  f_min: 50.0\n  f_max: 14000.0\n  n_mels: 64\n")


# -- helpers ------------------------------------------------------------------------------
def randomized(net, seed: int) -> dict:
    """Random values for every entry of ``net``'s state dict, scaled so activations stay alive:
    He-scaled weights, BN gains near 1, positive BN variances, small biases and means."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in net.state_dict().items():
        shape = list(v.shape)
        if k.endswith("_variance"):
            val = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1 and k.endswith("weight"):
            val = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            val = rng.standard_normal(shape) * 0.01
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
            val = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        out[k] = val.astype(np.float32)
    return out


def save_pdparams(state: dict, path: Path) -> Path:
    import paddle

    path.parent.mkdir(parents=True, exist_ok=True)
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))
    return path


def make_tar(path: Path, members: dict[str, bytes | Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            if isinstance(data, Path):
                tar.add(str(data), arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tone(seconds: float, sr: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return x / np.linalg.norm(x)


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """Fresh weights folder and PaddleSpeech home per test; downloads disabled."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("PPSPEECH_HOME", str(tmp_path / "ppspeech"))
    monkeypatch.setenv(pw.OFFLINE_ENV, "1")
    monkeypatch.setattr(pw, "_failures", {})
    return tmp_path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Checkpoints in PaddleSpeech's release formats, built once for the module."""
    from paddlespeech.vector.modules.sid_model import SpeakerIdetification

    root = tmp_path_factory.mktemp("ckpt")
    cnn6_state = randomized(panns.build_network("cnn6"), seed=1)
    cnn6 = save_pdparams(cnn6_state, root / "cnn6" / "panns_cnn6.pdparams")
    cnn6_tar = make_tar(root / "panns_cnn6.tar.gz", {
        "panns_cnn6/panns.yaml": PANNS_YAML.encode(),
        "panns_cnn6/cnn6.pdparams": cnn6,
        "panns_cnn6/audioset_labels.txt": b"Speech\nMusic\n"})
    cnn10 = save_pdparams(randomized(panns.build_network("cnn10"), seed=2),
                          root / "cnn10" / "panns_cnn10.pdparams")

    sid = SpeakerIdetification(ecapa.build_network(ecapa.VOX12_CONFIG["model"]), num_class=7205)
    ecapa_state = randomized(sid, seed=3)
    assert "weight" in ecapa_state and any(k.startswith("backbone.") for k in ecapa_state)
    ecapa_params = save_pdparams(ecapa_state, root / "ecapa" / "model.pdparams")
    import yaml

    model_yaml = yaml.safe_dump({**ecapa.VOX12_CONFIG, "num_speakers": 7205}).encode()
    ecapa_tar = make_tar(root / f"{ECAPA_STEM}.tar.gz", {
        f"{ECAPA_STEM}/conf/model.yaml": model_yaml,
        f"{ECAPA_STEM}/model/model.pdparams": ecapa_params})
    return dict(cnn6_state=cnn6_state, cnn6=cnn6, cnn6_tar=cnn6_tar, cnn10=cnn10,
                ecapa_state=ecapa_state, ecapa_params=ecapa_params, ecapa_yaml=model_yaml,
                ecapa_tar=ecapa_tar)


def weights_dir(env) -> Path:
    return env / "weights"


def pp_models(env) -> Path:
    return env / "ppspeech" / "models"


def place(env, name: str, where: str, ckpt=None) -> Path:
    """Put the release of model ``name`` at ``where``; return the path locate() must report.

    With ``ckpt`` the real test checkpoints are used, otherwise placeholder bytes (discovery
    never reads files).
    """
    rel = pw.RELEASES[name]
    w, pp = weights_dir(env), pp_models(env)

    def params_bytes():
        if ckpt is None:
            return b"placeholder"
        return (ckpt["cnn6"] if name == "panns_cnn6" else ckpt["ecapa_params"]).read_bytes()

    def config_bytes():
        if ckpt is None:
            return b"placeholder"
        return PANNS_YAML.encode() if name.startswith("panns") else ckpt["ecapa_yaml"]

    def write(path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def archive(folder: Path) -> Path:
        if ckpt is not None:
            src = ckpt["cnn6_tar"] if name == "panns_cnn6" else ckpt["ecapa_tar"]
            return write(folder / rel.archive_name, src.read_bytes())
        return make_tar(folder / rel.archive_name, {f"{rel.archive_stem}/{rel.params}": b"x"})

    if where == "weights_single":
        return write(w / rel.single_file_name, params_bytes())
    if where == "panns_home":
        return write(pp / "panns" / rel.single_file_name, params_bytes())
    if where == "weights_unpacked":
        write(w / rel.archive_stem / rel.config, config_bytes())
        return write(w / rel.archive_stem / rel.params, params_bytes())
    if where == "tag_unpacked":  # as PaddleSpeech's download_and_decompress leaves it
        d = pp / rel.tag / rel.version
        archive(d)
        write(d / rel.archive_stem / rel.config, config_bytes())
        return write(d / rel.archive_stem / rel.params, params_bytes())
    if where == "weights_archive":
        return archive(w)
    if where == "tag_archive":
        return archive(pp / rel.tag / rel.version)
    raise ValueError(where)


PANNS_PLACES = ["weights_single", "panns_home", "weights_unpacked", "tag_unpacked",
                "weights_archive", "tag_archive"]
ECAPA_PLACES = ["weights_unpacked", "tag_unpacked", "weights_archive", "tag_archive"]
DISCOVERY = ([(n, p) for n in PANNS_CLASSES for p in PANNS_PLACES]
             + [("ecapa_tdnn", p) for p in ECAPA_PLACES])


# -- missing weights ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL_CLASSES))
def test_missing_weights_say_what_and_where_quickly(env, name):
    model = ALL_CLASSES[name]()
    rel = pw.RELEASES[name]
    t0 = time.monotonic()
    st = model.status()
    with pytest.raises(WeightsNotInstalled) as err:
        model.load()
    elapsed = time.monotonic() - t0
    assert elapsed < 20, f"missing weights took {elapsed:.1f} s to report"
    assert not st.ready and not model.loaded
    for msg in (st.message, str(err.value)):
        assert rel.archive_name in msg and rel.md5 in msg
        assert str(weights_dir(env)) in msg
        assert str(pp_models(env) / rel.tag / rel.version) in msg
        if rel.single_file_name:
            assert rel.single_file_name in msg and str(pp_models(env) / "panns") in msg
    assert pw.OFFLINE_ENV in str(err.value)
    with pytest.raises(WeightsNotInstalled):  # never falls back to random weights
        model.embed([np.zeros(model.info.sample_rate, dtype=np.float32)])


def test_status_never_downloads(env, monkeypatch):
    monkeypatch.delenv(pw.OFFLINE_ENV)
    monkeypatch.setattr(pw, "download", lambda *a, **k: pytest.fail("status() downloaded"))
    for cls in ALL_CLASSES.values():
        assert not cls().status().ready


def test_failed_download_is_quick_explained_and_not_retried(env, monkeypatch):
    monkeypatch.delenv(pw.OFFLINE_ENV)
    dead = pw.with_url(pw.RELEASES["panns_cnn6"], "http://127.0.0.1:9/cls/panns_cnn6.tar.gz")
    monkeypatch.setitem(pw.RELEASES, "panns_cnn6", dead)
    model = panns.PannsCNN6()
    t0 = time.monotonic()
    with pytest.raises(WeightsNotInstalled) as err:
        model.load()
    assert time.monotonic() - t0 < 20
    assert "download of http://127.0.0.1:9/cls/panns_cnn6.tar.gz failed" in str(err.value)
    assert "panns_cnn6.pdparams" in str(err.value)
    calls = []
    monkeypatch.setattr(pw, "download", lambda *a, **k: calls.append(a))
    with pytest.raises(WeightsNotInstalled, match="failed"):
        model.load()
    assert calls == [], "a failed URL was tried again within the back-off"
    assert not any(weights_dir(env).glob("*.part"))


@pytest.fixture
def http_server(tmp_path):
    """Serve ``tmp_path/served`` on a loopback port."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_md5_then_unpacks_into_weights_dir(env, monkeypatch, ckpt, http_server):
    root, base = http_server
    (root / "panns_cnn6.tar.gz").write_bytes(ckpt["cnn6_tar"].read_bytes())
    monkeypatch.delenv(pw.OFFLINE_ENV)
    good_md5 = hashlib.md5(ckpt["cnn6_tar"].read_bytes()).hexdigest()
    rel = pw.with_url(pw.RELEASES["panns_cnn6"], f"{base}/panns_cnn6.tar.gz")

    monkeypatch.setitem(pw.RELEASES, "panns_cnn6", pw.Release(**{**rel.__dict__, "md5": "0" * 32}))
    with pytest.raises(WeightsNotInstalled, match="md5"):
        panns.PannsCNN6().load()
    assert not any(weights_dir(env).rglob("*.pdparams"))

    monkeypatch.setattr(pw, "_failures", {})
    monkeypatch.setitem(pw.RELEASES, "panns_cnn6", pw.Release(**{**rel.__dict__, "md5": good_md5}))
    model = panns.PannsCNN6().load()
    assert model.source == weights_dir(env) / "panns_cnn6" / "cnn6.pdparams"
    assert (weights_dir(env) / "panns_cnn6" / "panns.yaml").is_file()
    assert not (weights_dir(env) / "panns_cnn6.tar.gz").exists()  # downloaded archive removed
    assert panns.PannsCNN6().status().ready


# -- discovery ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,where", DISCOVERY)
def test_release_is_found_in_each_place(env, name, where):
    expected = place(env, name, where)
    rel = pw.RELEASES[name]
    st = ALL_CLASSES[name]().status()
    assert st.ready, st.message
    hit = pw.locate(rel, weights_dir(env))
    assert hit.where == expected
    if where.endswith("unpacked"):
        assert hit.config == expected.parents[len(Path(rel.params).parts) - 1] / rel.config


def test_project_weights_folder_wins(env):
    place(env, "panns_cnn6", "tag_unpacked")
    place(env, "panns_cnn6", "panns_home")
    mine = place(env, "panns_cnn6", "weights_single")
    assert pw.locate(pw.RELEASES["panns_cnn6"], weights_dir(env)).params == mine


# -- loading real checkpoints -----------------------------------------------------------------
def direct_cnn6(state: dict, wave: np.ndarray) -> np.ndarray:
    """CNN6 embedding computed straight from PaddleSpeech + paddle, as its cls CLI does."""
    import paddle
    from paddle.audio.features import LogMelSpectrogram
    from paddlespeech.cls.models.panns import CNN6

    net = CNN6(extract_embedding=True)
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    net.eval()
    fe = LogMelSpectrogram(sr=32000, n_fft=1024, hop_length=320, window="hann", win_length=1024,
                           f_min=50.0, f_max=14000.0, n_mels=64)
    with paddle.no_grad():
        feats = fe(paddle.to_tensor(wave).unsqueeze(0))
        return net(paddle.transpose(feats, [0, 2, 1]).unsqueeze(1)).numpy()[0]


def direct_ecapa(state: dict, wave: np.ndarray) -> np.ndarray:
    """ECAPA embedding computed as `paddlespeech vector` does (its own feature functions)."""
    import paddle
    from paddlespeech.audio.compliance.librosa import melspectrogram
    from paddlespeech.vector.io.batch import feature_normalize
    from paddlespeech.vector.models.ecapa_tdnn import EcapaTdnn
    from paddlespeech.vector.modules.sid_model import SpeakerIdetification

    model = SpeakerIdetification(EcapaTdnn(**ecapa.VOX12_CONFIG["model"]), num_class=7205)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    model.eval()
    feat = melspectrogram(x=wave, sr=16000, n_mels=80, window_size=400, hop_length=160)
    feat = feature_normalize(paddle.to_tensor(feat).unsqueeze(0), mean_norm=True, std_norm=False)
    with paddle.no_grad():
        return model.backbone(feat, paddle.ones([1])).squeeze().numpy()


@pytest.mark.parametrize("where", PANNS_PLACES)
def test_cnn6_loads_release_from_each_place(env, ckpt, where):
    expected = place(env, "panns_cnn6", where, ckpt)
    model = panns.PannsCNN6().load()
    if where.endswith("archive"):  # unpacked into the project folder, archive left alone
        assert model.source == weights_dir(env) / "panns_cnn6" / "cnn6.pdparams"
        assert expected.is_file()
    else:
        assert model.source == expected
    loaded = {k: v.numpy() for k, v in model._net.state_dict().items()}
    assert set(loaded) == set(ckpt["cnn6_state"])
    assert all(np.array_equal(loaded[k], ckpt["cnn6_state"][k]) for k in loaded)


def test_cnn6_embedding_matches_paddlespeech_and_is_deterministic(env, ckpt):
    place(env, "panns_cnn6", "weights_single", ckpt)
    model = panns.PannsCNN6()
    a, b = tone(2.0, 32000, 440), tone(3.0, 32000, 1500, seed=1)
    e1 = model.embed([a, b])
    e2 = model.embed([a, b])
    assert e1.shape == (2, 512) and e1.dtype == np.float32
    assert np.array_equal(e1, e2)
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e1[0], unit(direct_cnn6(ckpt["cnn6_state"], a)), atol=1e-5)
    assert np.allclose(e1[1], unit(direct_cnn6(ckpt["cnn6_state"], b)), atol=1e-5)
    assert np.allclose(model.embed([b])[0], e1[1], atol=1e-6)  # batching changes nothing
    assert float(e1[0] @ e1[1]) < 0.9999
    assert model._run.compiled  # the figures above came from the compiled graph, not a fallback


@pytest.mark.parametrize("where", ECAPA_PLACES)
def test_ecapa_loads_release_from_each_place(env, ckpt, where):
    place(env, "ecapa_tdnn", where, ckpt)
    model = ecapa.EcapaTdnn().load()
    assert model.source.parts[-2:] == ("model", "model.pdparams")
    loaded = model._net.state_dict()
    key = "fc.conv.weight"
    assert np.array_equal(loaded[key].numpy(), ckpt["ecapa_state"]["backbone." + key])


def test_ecapa_embedding_matches_paddlespeech_and_is_deterministic(env, ckpt):
    place(env, "ecapa_tdnn", "weights_archive", ckpt)
    model = ecapa.EcapaTdnn()
    a, b = tone(2.0, 16000, 220), tone(1.5, 16000, 180, seed=2)
    e1 = model.embed([a, b])
    assert model.source == weights_dir(env) / ECAPA_STEM / "model" / "model.pdparams"
    assert (weights_dir(env) / ECAPA_STEM / "conf" / "model.yaml").is_file()
    e2 = model.embed([a, b])
    assert e1.shape == (2, 192) and np.array_equal(e1, e2)
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    assert np.allclose(e1[0], unit(direct_ecapa(ckpt["ecapa_state"], a)), atol=1e-4)
    assert np.allclose(e1[1], unit(direct_ecapa(ckpt["ecapa_state"], b)), atol=1e-4)
    assert float(e1[0] @ e1[1]) < 0.9999
    assert model._run.compiled


# -- bad files ----------------------------------------------------------------------------
def test_truncated_pdparams_is_rejected_clearly(env, ckpt):
    f = place(env, "panns_cnn6", "weights_single", ckpt)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(pw.WeightsInvalid, match="panns_cnn6.pdparams") as err:
        panns.PannsCNN6().load()
    assert "readable" in str(err.value) or "state dict" in str(err.value)


def test_state_dict_of_another_network_is_rejected(env, ckpt):
    w = weights_dir(env)
    w.mkdir(parents=True)
    (w / "panns_cnn6.pdparams").write_bytes(ckpt["cnn10"].read_bytes())
    with pytest.raises(pw.WeightsInvalid, match="does not fit the network") as err:
        panns.PannsCNN6().load()
    assert "wrong shape" in str(err.value) or "missing" in str(err.value)
    assert not panns.PannsCNN6().loaded


def test_corrupt_archive_is_rejected_clearly(env):
    w = weights_dir(env)
    w.mkdir(parents=True)
    (w / f"{ECAPA_STEM}.tar.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 100)
    with pytest.raises(pw.WeightsInvalid, match="not a readable") as err:
        ecapa.EcapaTdnn().load()
    assert pw.RELEASES["ecapa_tdnn"].md5 in str(err.value)
    assert not (w / ECAPA_STEM).exists()


def test_archive_without_params_is_rejected(env):
    make_tar(weights_dir(env) / "panns_cnn6.tar.gz", {"panns_cnn6/panns.yaml": PANNS_YAML.encode()})
    with pytest.raises(pw.WeightsInvalid, match="does not contain cnn6.pdparams"):
        panns.PannsCNN6().load()


def test_ecapa_config_for_another_model_is_rejected(env, ckpt):
    place(env, "ecapa_tdnn", "weights_unpacked", ckpt)
    cfg = weights_dir(env) / ECAPA_STEM / "conf" / "model.yaml"
    cfg.write_text(cfg.read_text().replace("lin_neurons: 192", "lin_neurons: 256"))
    with pytest.raises(pw.WeightsInvalid, match="256-d"):
        ecapa.EcapaTdnn().load()


def test_archive_members_cannot_escape(env, ckpt):
    """Traversal, absolute and link members are skipped; only safe regular files are copied."""
    w = weights_dir(env)
    evil = make_tar(w / "panns_cnn6.tar.gz", {
        "../../escaped/cnn6.pdparams": b"evil",
        "/tmp/absolute/cnn6.pdparams": b"evil"})
    with tarfile.open(evil, "r:gz") as tar:  # the hostile names really are in the archive
        assert {m.name for m in tar} == {"../../escaped/cnn6.pdparams", "/tmp/absolute/cnn6.pdparams"}
    with pytest.raises(pw.WeightsInvalid, match="does not contain"):
        panns.PannsCNN6().load()
    assert not (env / "escaped").exists() and not (w.parent / "escaped").exists()

    # a symlink pointing outside, then the real file: the link is ignored
    data = ckpt["cnn6"].read_bytes()
    buf = w / "panns_cnn6.tar.gz"
    with tarfile.open(buf, "w:gz", compresslevel=1) as tar:
        link = tarfile.TarInfo("panns_cnn6/cnn6.pdparams")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        info = tarfile.TarInfo("panns_cnn6/sub/../cnn6.pdparams")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
        info = tarfile.TarInfo("panns_cnn6/cnn6.pdparams")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    model = panns.PannsCNN6().load()
    assert model.source == w / "panns_cnn6" / "cnn6.pdparams"
    assert not model.source.is_symlink() and model.source.read_bytes() == data
    assert sorted(p.name for p in (w / "panns_cnn6").iterdir()) == ["cnn6.pdparams"]


# -- front ends ---------------------------------------------------------------------------
def test_panns_front_end_is_paddlespeech_cls(tmp_path):
    assert panns.feature_config(None) == {
        "sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "window": "hann",
        "window_length": 1024, "f_min": 50.0, "f_max": 14000.0, "n_mels": 64}
    cfg = tmp_path / "panns.yaml"
    cfg.write_text(PANNS_YAML.replace("f_max: 14000.0", "f_max: 12000.0"))
    assert panns.feature_config(cfg)["f_max"] == 12000.0  # the release's own config wins
    cfg.write_text(PANNS_YAML.replace("sample_rate: 32000", "sample_rate: 16000"))
    with pytest.raises(pw.WeightsInvalid, match="16000 Hz"):
        panns.feature_config(cfg)


def test_model_infos():
    expect = {"panns_cnn6": ("sound", 512, 32000), "panns_cnn10": ("sound", 512, 32000),
              "panns_cnn14": ("sound", 2048, 32000), "ecapa_tdnn": ("speaker", 192, 16000)}
    for name, cls in ALL_CLASSES.items():
        i = cls.info
        assert (i.name, i.task, i.dim, i.sample_rate) == (name, *expect[name])
