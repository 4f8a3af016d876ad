"""The app with MILVUS_URI=local (``make run``) as a user starts and stops it: SIGTERM, Ctrl-C while
its server is still starting, ``kill -9`` then a restart, and ``MILVUS_KEEP_SERVER=1``.

Each test runs app.py in a process of its own on a temporary data folder and checks which server
processes are left (search_core/milvus_local.py). Needs the launcher ``make test`` installs.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search_core import milvus_local, servergroups

REPO = Path(__file__).resolve().parent.parent


def _server_pid(folder: Path) -> int:
    return milvus_local._state(folder.resolve())["pid"]


def _start_app(tmp_path: Path, data: Path, name: str, **extra: str):
    """``make run``'s app (MILVUS_URI=local) on a free port; (process, base URL, log file)."""
    from tests.apphelpers import free_port

    if not os.environ.get("MILVUS_SERVER_BIN") and not (REPO / ".venv-milvus" / "bin" / "milvus-server").is_file():
        pytest.fail("the Milvus server launcher is not installed: run `make test` or set MILVUS_SERVER_BIN")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LIBRARY_DIR", "WEIGHTS_DIR")}
    env.update(DATA_DIR=str(data), MILVUS_URI="local", GRADIO_ANALYTICS_ENABLED="False", SEARCH_CORE_OFFLINE="1",
               **extra)
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", log


def _library_ready(proc, url: str, log: Path, timeout_s: float = 240) -> dict:
    """Wait for the page, then for the library (the page comes before the library has opened, its
    server starting: 503 "still opening" meanwhile, tried again as a user does); /api/count's answer."""
    import json
    import time
    import urllib.request

    deadline = time.time() + timeout_s
    for path in ("/", "/api/count"):
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(url + path, timeout=90) as r:
                    body = r.read()
                break
            except OSError:
                assert time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
    return json.loads(body)


def _stop_app(proc, log: Path) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, log.read_text()[-2000:]


def _naming(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder`` (a launcher or its ``milvus``)."""
    mark, pids = str(folder.resolve()).encode(), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _kill_leftovers(folder: Path, *procs) -> None:
    """Whatever a failed test left: its apps, the recorded server's group, and any process that names
    ``folder`` (a server nobody recorded)."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
    if folder.is_dir() and not milvus_local.stopped(folder, timeout_s=1):
        pid = milvus_local._state(folder.resolve()).get("pid")
        if pid:
            servergroups.stop_group(pid, grace_s=0)
    for pid in _naming(folder):
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile (its group was stopped above)
            os.kill(pid, 9)


def test_the_app_stopped_with_sigterm_stops_its_milvus_server(tmp_path):
    """``make run`` then SIGTERM (``kill``, systemd, a container stop): the app's own server must not
    be left running once the app is gone (Python skips atexit on SIGTERM unless told otherwise)."""
    data = tmp_path / "d"
    folder = data / "milvus-server"
    proc, url, log = _start_app(tmp_path, data, "app")
    try:
        _library_ready(proc, url, log)
        pid = _server_pid(folder)
        assert servergroups.alive(pid, folder.resolve())
        _stop_app(proc, log)
        assert milvus_local.stopped(folder, timeout_s=60), "the app's Milvus server outlived the app"
    finally:
        _kill_leftovers(folder, proc)


def test_the_app_with_keep_server_leaves_it_running_for_its_next_start(tmp_path):
    """``MILVUS_KEEP_SERVER=1 make run``, a clip added, the app stopped and started again: the second
    app attaches to the same server (no server restart to wait for) and finds the clip; the server is
    refused a stop while an app uses it, and stops once it is unused."""
    import time

    import httpx

    from tests.conftest import sound, write_wav

    data = tmp_path / "d"
    folder = data / "milvus-server"
    first = second = None
    try:
        first, url, log = _start_app(tmp_path, data, "first", MILVUS_KEEP_SERVER="1")
        _library_ready(first, url, log)
        wav = write_wav(tmp_path / "dog.wav", sound(0))
        with open(wav, "rb") as f:
            r = httpx.post(url + "/api/clips", files={"files": ("dog.wav", f, "audio/wav")},
                           data={"model": "mfcc_stats"}, timeout=120)
        assert r.status_code == 200 and [a["name"] for a in r.json()["added"]] == ["dog.wav"], r.text
        pid = _server_pid(folder)
        _stop_app(first, log)
        assert servergroups.alive(pid, folder.resolve()), "the app stopped its server though told to keep it"

        t0 = time.monotonic()
        second, url, log = _start_app(tmp_path, data, "second", MILVUS_KEEP_SERVER="1")
        counted = _library_ready(second, url, log)
        print(f"second start: library ready in {time.monotonic() - t0:.1f} s")
        assert _server_pid(folder) == pid
        assert counted["by_model"] == {"mfcc_stats": 1}
        with open(wav, "rb") as f:
            hits = httpx.post(url + "/api/search", files={"file": ("q.wav", f, "audio/wav")},
                              data={"model": "mfcc_stats"}, timeout=120).json()["hits"]
        assert [h["name"] for h in hits] == ["dog.wav"]
        assert "in use" in milvus_local.stop(folder)
        assert servergroups.alive(pid, folder.resolve())
        _stop_app(second, log)

        out = subprocess.run([sys.executable, "-m", "search_core.milvus_local", "stop", str(folder)], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0 and out.stdout.startswith("stopped the Milvus server"), out.stderr[-2000:]
        assert milvus_local.stopped(folder, timeout_s=60)
    finally:
        _kill_leftovers(folder, first, second)


def _until_its_server_is_spawned(proc, folder: Path, log: Path) -> None:
    import time

    deadline = time.time() + 120
    while not _naming(folder):
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    assert not (folder / "server.json").is_file() or not milvus_local.answers(
        milvus_local._state(folder).get("port") or 1, timeout=1), "the server answered already: not a start"


def _none_left(folder: Path, timeout_s: float = 60) -> list[int]:
    import time

    deadline = time.time() + timeout_s
    while _naming(folder) and time.time() < deadline:
        time.sleep(0.5)
    return _naming(folder)


def test_an_app_stopped_while_its_server_starts_stops_it_at_once(tmp_path):
    """Ctrl-C (or SIGTERM) right after ``make run``: the app used to wait for the server it was starting
    to answer and open before stopping it (~20 s); a container stop sends SIGKILL after 10 s, which
    left the server running. The start is abandoned and the server stopped at once instead."""
    import signal
    import time

    data = tmp_path / "d"
    folder = data / "milvus-server"
    proc, _, log = _start_app(tmp_path, data, "app")
    try:
        _until_its_server_is_spawned(proc, folder, log)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-2000:]
        took = time.monotonic() - t0
        assert not _none_left(folder, timeout_s=10), "the server it was starting outlived the app"
        print(f"stopped in {took:.1f} s")
        # it used to wait ~20 s for the server to answer and open; a container stop kills after 10 s (margin: a loaded CI machine)
        assert took < 15, f"the app took {took:.1f} s to stop: it waited for the server it was starting"
    finally:
        _kill_leftovers(folder, proc)


def test_an_app_killed_while_its_server_starts_leaves_no_second_server(tmp_path):
    """``kill -9`` (an OOM kill, a power-cycled container) while the app's server starts, then the app
    again: the server the dead app spawned is found by its pid and used (or replaced), never joined
    by a second one on the same folder, and the next app's stop leaves nothing running."""
    data = tmp_path / "d"
    folder = data / "milvus-server"
    first, _, log = _start_app(tmp_path, data, "first")
    second = None
    try:
        _until_its_server_is_spawned(first, folder, log)
        first.kill()
        first.wait(timeout=30)
        second, url, log = _start_app(tmp_path, data, "second")
        assert _library_ready(second, url, log)["clips"] == 0
        _stop_app(second, log)
        assert not _none_left(folder), "a Milvus server outlived the app that last used its folder"
    finally:
        _kill_leftovers(folder, first, second)
