"""MILVUS_URI=local: a Milvus server the app runs for its data folder (search_core/milvus_local.py).

Shared by the processes that use the folder, stopped by the last one to leave, and its data is
there again after a restart. Needs the launcher ``make test`` installs (MILVUS_SERVER_BIN).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search_core import milvus_local, servergroups
from search_core.config import get_settings
from search_core.vectors import VectorStore

REPO = Path(__file__).resolve().parent.parent

ATTACH = """
import sys
from search_core.vectors import VectorStore
print(VectorStore(sys.argv[1]).count("clips"))
"""


def _unit(n: int, dim: int = 8) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _server_pid(folder: Path) -> int:
    return milvus_local._state(folder.resolve())["pid"]


def test_milvus_uri_local_means_a_server_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("MILVUS_URI", "local")
    assert get_settings().milvus_uri == f"local://{(tmp_path / 'd').resolve()}/milvus-server"
    monkeypatch.setenv("MILVUS_URI", "http://milvus:19530")
    assert get_settings().milvus_uri == "http://milvus:19530"


def test_unset_the_data_folder_says_which_store_holds_the_library(tmp_path, monkeypatch):
    data = (tmp_path / "d").resolve()
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.delenv("MILVUS_URI", raising=False)
    assert get_settings().milvus_uri == str(data / "milvus.db")  # a fresh folder: Milvus Lite
    (data / "milvus-server").mkdir(parents=True)  # the app's server has run on it (make run)
    assert get_settings().milvus_uri == f"local://{data}/milvus-server"  # the CLI opens the same library


def test_without_the_launcher_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MILVUS_SERVER_BIN", str(tmp_path / "no-such-launcher"))
    with pytest.raises(RuntimeError, match=r"make run.*\.venv-milvus"):
        VectorStore(f"local://{tmp_path / 'srv'}")
    assert not (tmp_path / "srv" / "server.json").exists()
    milvus_local.release(tmp_path / "srv")


def test_the_server_is_shared_stopped_by_its_last_user_and_keeps_the_data(tmp_path):
    if not os.environ.get("MILVUS_SERVER_BIN") and not (REPO / ".venv-milvus" / "bin" / "milvus-server").is_file():
        pytest.fail("the Milvus server launcher is not installed: run `make test` or set MILVUS_SERVER_BIN")
    folder = tmp_path / "milvus-server"
    uri = f"local://{folder}"
    vs = VectorStore(uri)
    try:
        X = _unit(3)
        vs.upsert("clips", [1, 2, 3], X)
        assert [h.id for h in vs.search("clips", X[1:2], 1)[0]] == [2]
        pid = _server_pid(folder)

        # a second process attaches to the same server (no second one) and sees the vectors;
        # leaving, it does not stop the server this process still uses
        out = subprocess.run([sys.executable, "-c", ATTACH, uri], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-1] == "3"
        assert _server_pid(folder) == pid
        assert servergroups.alive(pid, folder.resolve())
        assert vs.count("clips") == 3
    finally:
        vs.close()
    assert milvus_local.release(folder)  # the last user leaves: the server is asked to stop
    assert milvus_local.stopped(folder, timeout_s=120)

    again = VectorStore(uri)  # a new server on the same folder, after its log replay
    try:
        assert _server_pid(folder) != pid
        assert again.count("clips") == 3
        assert [h.id for h in again.search("clips", _unit(3)[0:1], 1)[0]] == [1]
    finally:
        again.close()
        milvus_local.release(folder)
        milvus_local.stopped(folder, timeout_s=120)


def test_stop_on_a_folder_without_a_server_says_so_and_changes_nothing(tmp_path):
    """``milvus_local stop`` pointed at the wrong folder, or at a server that is not running: a sentence
    and nothing touched; called without its arguments, its usage."""
    assert milvus_local.stop(tmp_path / "nowhere") == f"{(tmp_path / 'nowhere').resolve()} holds no Milvus server run by the app"
    assert not (tmp_path / "nowhere").exists()
    folder = tmp_path / "milvus-server"
    folder.mkdir()
    (folder / "users.lock").touch()
    (folder / "server.json").write_text('{"pid": 999999999, "port": 1}')
    assert milvus_local.stop(folder) == f"the Milvus server in {folder.resolve()} was not running"
    assert (folder / "server.json").read_text() == '{"pid": 999999999, "port": 1}'
    out = subprocess.run([sys.executable, "-m", "search_core.milvus_local"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1 and "usage: python -m search_core.milvus_local stop" in out.stderr


WRITE = """
import sys
import numpy as np
from search_core.vectors import VectorStore
vs = VectorStore(sys.argv[1])
vs.upsert("clips", [1, 2, 3], np.eye(3, 8, dtype=np.float32))
print(vs.count("clips"))
"""


def test_with_keep_server_a_restart_attaches_and_stop_ends_it_when_unused(tmp_path, monkeypatch):
    """``MILVUS_KEEP_SERVER=1``: the app's exit leaves its server running, so the next start attaches
    instead of waiting for a restart; ``python -m search_core.milvus_local stop`` ends it, not under a user."""
    if not os.environ.get("MILVUS_SERVER_BIN") and not (REPO / ".venv-milvus" / "bin" / "milvus-server").is_file():
        pytest.fail("the Milvus server launcher is not installed: run `make test` or set MILVUS_SERVER_BIN")
    folder = tmp_path / "milvus-server"
    uri = f"local://{folder}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MILVUS_KEEP_SERVER": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", WRITE, uri], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-1] == "3"
        pid = _server_pid(folder)
        assert servergroups.alive(pid, folder.resolve()), "its last user left and stopped it"

        monkeypatch.setenv("MILVUS_KEEP_SERVER", "1")
        vs = VectorStore(uri)  # the next start: the same server, the data there at once
        assert _server_pid(folder) == pid
        assert vs.count("clips") == 3
        assert "in use" in milvus_local.stop(folder)  # never pulled from under a running app
        assert servergroups.alive(pid, folder.resolve())
        vs.close()
        assert not milvus_local.release(folder)
        assert servergroups.alive(pid, folder.resolve())

        out = subprocess.run([sys.executable, "-m", "search_core.milvus_local", "stop", str(folder)], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.startswith("stopped the Milvus server")
        assert milvus_local.stopped(folder, timeout_s=60)
    finally:
        pid = milvus_local._state(folder.resolve()).get("pid")
        if pid and servergroups.alive(pid, folder.resolve()):
            servergroups.stop_group(pid, grace_s=0)


@pytest.mark.parametrize("uri", ["lite-file", "local"])
def test_the_cli_runs_with_milvus_uri_in_its_environment(tmp_path, uri):
    """``make run`` sets MILVUS_URI=local in the environment, and the README shows MILVUS_URI set to
    a Milvus Lite file: pymilvus reads that variable when it is imported and refused both forms."""
    if uri == "local" and not os.environ.get("MILVUS_SERVER_BIN") \
            and not (REPO / ".venv-milvus" / "bin" / "milvus-server").is_file():
        pytest.fail("the Milvus server launcher is not installed: run `make test` or set MILVUS_SERVER_BIN")
    value = str(tmp_path / "d" / "milvus.db") if uri == "lite-file" else "local"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LIBRARY_DIR", "WEIGHTS_DIR")}
    env.update(DATA_DIR=str(tmp_path / "d"), MILVUS_URI=value, PYTHONPATH=str(REPO))
    try:
        out = subprocess.run([sys.executable, "-m", "search_core", "count", "--model", "mfcc_stats"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-1] == "0"
    finally:
        if uri == "local":
            milvus_local.stopped(tmp_path / "d" / "milvus-server", timeout_s=120)


def test_a_server_that_starts_but_never_answers_is_started_once_more(tmp_path, monkeypatch):
    """Seen once under load: a restarted server whose proxy never came up. The first try gets half
    the start time, then one more start gets all of it; any other failure is not retried."""
    calls = []

    def fake_start(folder, binary, timeout_s):
        calls.append(timeout_s)
        if len(calls) == 1:
            raise milvus_local.StartTimeout(f"the local Milvus server in {folder} did not answer within {timeout_s:.0f} s")
        return {"pid": 1, "port": 2}

    monkeypatch.setattr(milvus_local, "_start", fake_start)
    assert milvus_local._start_twice(tmp_path, tmp_path / "bin", 100.0) == {"pid": 1, "port": 2}
    assert calls == [50.0, 100.0]

    def crashes(folder, binary, timeout_s):
        calls.append(timeout_s)
        raise RuntimeError(f"the local Milvus server in {folder} exited with 1:\n")

    calls.clear()
    monkeypatch.setattr(milvus_local, "_start", crashes)
    with pytest.raises(RuntimeError, match="exited with 1"):
        milvus_local._start_twice(tmp_path, tmp_path / "bin", 100.0)
    assert calls == [50.0]


def _launcher_that_never_answers(tmp_path: Path) -> Path:
    script = tmp_path / "milvus-server"
    script.write_text("#!/bin/sh\nsleep 300\n")  # its command line names the folder (--data), as the real one
    script.chmod(0o755)
    return script


def test_a_start_under_way_gives_up_and_stops_its_server_when_the_process_leaves(tmp_path):
    """The exit handler (release) of a process whose other thread is starting the server: that start
    stops the launcher it spawned and gives up within a second or so, instead of the exit waiting for
    the server to answer; the launcher's pid was on record from the moment it was spawned."""
    import threading
    import time

    folder = (tmp_path / "srv").resolve()
    folder.mkdir()
    outcome = {}

    def start():
        try:
            milvus_local._start(folder, _launcher_that_never_answers(tmp_path), timeout_s=120)
        except Exception as err:  # noqa: BLE001 - the test looks at it
            outcome["error"] = err

    th = threading.Thread(target=start)
    th.start()
    deadline = time.monotonic() + 30
    while not milvus_local._state(folder).get("pid"):
        assert time.monotonic() < deadline, "the spawned launcher was not recorded"
        time.sleep(0.05)
    pid = milvus_local._state(folder)["pid"]
    assert servergroups.alive(pid, folder)
    milvus_local._leaving.add(folder)   # what release() does first
    try:
        th.join(timeout=15)
        assert not th.is_alive(), "the start did not notice that the process is leaving"
    finally:
        milvus_local._leaving.discard(folder)
    assert isinstance(outcome.get("error"), milvus_local.StartAbandoned)
    assert milvus_local.stopped(folder, timeout_s=10), "the abandoned start left its launcher running"


def test_a_start_asked_for_while_the_process_leaves_starts_nothing(tmp_path):
    folder = (tmp_path / "srv").resolve()
    milvus_local._leaving.add(folder)
    try:
        with pytest.raises(milvus_local.StartAbandoned):
            milvus_local.ensure_server(folder, binary=_launcher_that_never_answers(tmp_path))
    finally:
        milvus_local._leaving.discard(folder)
        milvus_local.release(folder)
    assert not (folder / "server.json").exists() and not (folder / "launcher.log").exists()


def test_a_launcher_its_starter_did_not_record_is_stopped_by_the_next_start(tmp_path):
    """CI saw a server outlive every app on its folder: the first app was killed in the instant
    between spawning its launcher and recording its pid, so the next app started a second server
    beside the unrecorded one and stopped only its own. The next start stops such a stray first;
    a process that merely names the folder (``milvus_local stop <folder>``, a server on a folder
    inside it) is not a server."""
    import time

    if not os.environ.get("MILVUS_SERVER_BIN") and not (REPO / ".venv-milvus" / "bin" / "milvus-server").is_file():
        pytest.fail("the Milvus server launcher is not installed: run `make test` or set MILVUS_SERVER_BIN")
    folder = (tmp_path / "srv").resolve()
    folder.mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    # a launcher as _start spawns it (a session of its own), no server.json written
    stray = subprocess.Popen([*sleeper, "--data", str(folder)], start_new_session=True)
    bystander = subprocess.Popen([*sleeper, "stop", str(folder)])
    inner = subprocess.Popen([*sleeper, "--data", str(folder / "inner")], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while servergroups.running(folder) != {stray.pid}:
            assert time.monotonic() < deadline, servergroups.running(folder)
            time.sleep(0.05)
        milvus_local.ensure_server(folder)
        assert stray.poll() is not None, "the unrecorded launcher was left beside the new server"
        assert servergroups.running(folder) == {_server_pid(folder)}
        assert milvus_local.release(folder)
        assert milvus_local.stopped(folder, timeout_s=60) and not servergroups.running(folder)
        assert bystander.poll() is None and inner.poll() is None, "a process that only names the folder was stopped"
    finally:
        milvus_local.release(folder)
        for proc in (stray, bystander, inner):
            proc.kill()
            proc.wait()
        for pgid in servergroups.running(folder):
            servergroups.stop_group(pgid, grace_s=0)
