"""A Milvus standalone server run by the app for its data folder (``MILVUS_URI=local``).

Milvus Lite searches in Python in the calling process and walks every stored row on every
query (BENCHMARKS.md, "Search at scale"); a Milvus server searches in its own C++ threads. This
module runs one for a data folder so that a single machine gets the server's speed without
installing anything by hand: the server is PyPI's ``milvus`` wheel (``make run`` installs it into
``.venv-milvus``; ``MILVUS_SERVER_BIN`` names another ``milvus-server`` launcher). Its data, config
and logs live in ``<folder>`` (``DATA_DIR/milvus-server``); it listens on 127.0.0.1 only, on ports
chosen when it is first started and recorded in ``<folder>/server.json``. The app then talks to
it as to any Milvus server (``http://127.0.0.1:<port>``), the code path of docker-compose's
server or a cluster.

Lifecycle. Every process that uses the server holds a shared ``flock`` on ``<folder>/users.lock``
until it exits. :func:`ensure_server` (under the exclusive ``<folder>/start.lock``) attaches to
the recorded server when it answers, else starts one, in a session of its own so that it outlives
a crash of the process that started it. At exit, a process drops its shared lock and, if it can
then take ``users.lock`` exclusively at once, no other process uses the server and it stops it
(SIGTERM, SIGKILL after ``GRACEFUL_STOP_S`` + 5 s).
With ``MILVUS_KEEP_SERVER=1`` in its environment a process leaves the server running when it exits
(a restarted app then attaches at once instead of waiting for the server's own restart, which grows
with the library); ``python -m search_core.milvus_local stop <folder>`` stops it when unused.
A process killed without its exit handler leaves the server running; the next one attaches to it.
The launcher's pid is recorded as soon as it is spawned, so a server whose starter was killed while
it started is found by the next process, which uses it if it answers and else stops it and starts
its own: never a second server on the folder (one whose starter was killed in the instant before
it was recorded is stopped by the next start or stop, :func:`~search_core.servergroups.stop_strays`).
A process leaving while its own start is under way (Ctrl-C right after ``make run``) stops that
server within seconds, also while a restarted server replays its log (unless ``MILVUS_KEEP_SERVER=1``).
A server started on existing data is used once every collection answers a Strong read (it
replays its log first; a read that does not wait would find an emptier library).
The kernel releases ``flock`` locks of dead processes, so a crash never leaves the folder locked.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import env_flag
from .servergroups import alive, stop_group, stop_strays

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
# its query node's graceful stop waits this long to hand its segments to another query node, which a
# standalone server does not have: 10 s made every stop take 12 s, 3 s takes ~5 s (BENCHMARKS.md, "Start-up")
GRACEFUL_STOP_S = 3
# a restarted server waits for the sessions its predecessor left in etcd to expire before its nodes
# take the data over (milvus-io/milvus#28183); Milvus' default of 30 s made every restart ~35 s
SESSION_TTL_S = 10

_users: dict[Path, int] = {}  # folder -> fd holding this process' shared lock on users.lock
# folders this process is releasing: a start under way in another thread gives up (a set's add, discard
# and ``in`` are each atomic, which is all that is asked of it)
_leaving: set[Path] = set()


class StartAbandoned(RuntimeError):
    """The process released the folder (it is exiting) while a thread of it was starting the server."""


class StartTimeout(RuntimeError):
    """The server started but did not answer in time."""


def _check_leaving(folder: Path) -> None:
    if folder in _leaving:
        raise StartAbandoned(f"the local Milvus server in {folder} was being started as this process left")


def launcher(explicit: str | os.PathLike | None = None) -> Path:
    """The ``milvus-server`` launcher: ``explicit``, ``MILVUS_SERVER_BIN`` or ``.venv-milvus``'s.

    Raises a :class:`RuntimeError` saying how to install it when there is none.
    """
    path = Path(explicit or os.environ.get("MILVUS_SERVER_BIN") or REPO / ".venv-milvus" / "bin" / "milvus-server")
    if not path.is_file():
        raise RuntimeError(f"MILVUS_URI=local needs the Milvus server launcher, not found at {path}: "
                           "run `make run` (it installs PyPI's milvus wheel into .venv-milvus) "
                           "or set MILVUS_SERVER_BIN")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int, timeout: float = 5.0) -> bool:
    """Whether a Milvus server on 127.0.0.1:``port`` lists its collections within ``timeout``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    except OSError:
        return False
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(f"http://127.0.0.1:{port}", timeout=timeout)
        try:
            client.list_collections(timeout=timeout)
        finally:
            client.close()
        return True
    except Exception:  # noqa: BLE001 - not (yet) a working server
        return False


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def configured_port(folder: Path) -> int | None:
    """The proxy port the launcher wrote into its config (it moves on when the one asked for is busy)."""
    cfg = folder / "configs" / "milvus.yaml"
    section = None
    for line in cfg.read_text().splitlines() if cfg.is_file() else []:
        if re.match(r"^\w", line):
            section = line.split(":")[0]
        m = re.match(r"^  port:\s*(\d+)", line)
        if section == "proxy" and m:
            return int(m.group(1))
    return None


def etcd_config(folder: Path) -> Path:
    """The embedded etcd's config, written once with free ports (else it takes 2379/2380, and a
    second server on the machine, e.g. docker-compose's or the tests', could not start)."""
    path = folder / "embedEtcd.yaml"
    if not path.is_file():
        client, peer = _free_port(), _free_port()
        path.write_text(f"name: default\n"
                        f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
                        f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                        f"initial-cluster: default=http://127.0.0.1:{peer}\n")
    return path


def etcd_port(etcd_yaml: Path) -> int:
    return int(re.search(r"listen-client-urls: http://127.0.0.1:(\d+)", etcd_yaml.read_text()).group(1))


def _log_tail(folder: Path, lines: int = 20) -> str:
    """The end of the launcher's log and the first lines of a Go crash (``panic:``/``fatal error:``),
    which a goroutine dump pushes far from the end of ``milvus-stderr.log``."""
    out = []
    for p in (folder / "launcher.log", folder / "logs" / "milvus-stderr.log"):
        if p.is_file():
            text = p.read_text(errors="replace").splitlines()
            crash = next((i for i, ln in enumerate(text) if ln.startswith(("panic:", "fatal error:"))), None)
            out += text[crash:crash + 5] if crash is not None else text[-lines:]
    return "\n".join(out)


def _start(folder: Path, binary: Path, timeout_s: float) -> dict:
    """Start the launcher on ``folder``; returns the state written to ``server.json``."""
    etcd_yaml = etcd_config(folder)
    port = _state(folder).get("port") or _free_port()
    argv = [str(binary), "--data", str(folder), "--proxy-port", str(port), "--etcd-port", str(etcd_port(etcd_yaml)),
            # Milvus' default waits up to 30 min on SIGTERM for a standalone query node to hand its
            # segments to another (there is none); written data is safe in its log either way
            "--extra-config", f"common.gracefulStopTimeout={GRACEFUL_STOP_S}",
            "--extra-config", f"common.session.ttl={SESSION_TTL_S}",
            # fresh (growing) data is searched through an interim IVF index (nlist 128) until its
            # HNSW index is loaded, about a minute after a bulk load; its default nprobe 16 found
            # 7 of the 10 true neighbours, all 128 lists find them (BENCHMARKS.md, "Search at scale")
            "--extra-config", "queryNode.segcore.interimIndex.nprobe=128"]
    with open(folder / "launcher.log", "ab") as log:
        proc = subprocess.Popen(argv, env={**os.environ, "ETCD_CONFIG_PATH": str(etcd_yaml)}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    # recorded before it answers: if this process dies meanwhile, the next one finds the server by its pid
    (folder / "server.json").write_text(json.dumps({"pid": proc.pid, "port": port}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _check_leaving(folder)
        except StartAbandoned:
            stop_group(proc.pid, grace_s=0)
            raise
        if proc.poll() is not None:
            raise RuntimeError(f"the local Milvus server in {folder} exited with {proc.returncode}:\n"
                               f"{_log_tail(folder)}")
        got = configured_port(folder)
        if got and answers(got, timeout=2):
            state = {"pid": proc.pid, "port": got}
            (folder / "server.json").write_text(json.dumps(state))
            return state
        time.sleep(0.5)
    stop_group(proc.pid, grace_s=0)
    raise StartTimeout(f"the local Milvus server in {folder} did not answer within {timeout_s:.0f} s:\n"
                       f"{_log_tail(folder)}")


def _start_twice(folder: Path, binary: Path, timeout_s: float) -> dict:
    """:func:`_start`, and once more if the server started but never answered: a restart on a
    folder whose last server was killed was seen (once, on a loaded machine) to hang with its
    proxy unregistered while the old one's session was still in etcd; the first try gets half the
    time, the second all of it."""
    try:
        return _start(folder, binary, timeout_s / 2)
    except StartTimeout:
        print(f"search_core: the local Milvus server in {folder} did not answer within {timeout_s / 2:.0f} s; "
              "starting it once more", file=sys.stderr, flush=True)
        return _start(folder, binary, timeout_s)


def wait_serving(uri: str, timeout_s: float, folder: Path | None = None) -> None:
    """Return once every collection of the server (or database) at ``uri`` answers a Strong count: a
    server started on existing data replays its log first, and until then a read that does not wait
    (Session without a write of this process, Bounded) would find a library emptier than it is.
    Raises :class:`StartAbandoned` when this process releases ``folder`` meanwhile."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout_s
    client = MilvusClient(uri, timeout=30)
    try:
        for name in client.list_collections():
            while True:
                try:  # short waits, asked again: a replay takes long, and a leaving process must notice
                    client.load_collection(name, timeout=5)
                    client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=5)
                    break
                except Exception:  # noqa: BLE001 - still recovering
                    if time.monotonic() > deadline:
                        raise
                    if folder is not None:
                        _check_leaving(folder)
                    time.sleep(1)
    finally:
        client.close()


def ensure_server(folder: str | os.PathLike, binary: str | os.PathLike | None = None,
                  timeout_s: float = START_TIMEOUT_S) -> str:
    """The URI of the Milvus server for ``folder``, started if none answers; registers this
    process as one of its users (module docstring)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if folder not in _users:
        fd = os.open(folder / "users.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _users[folder] = fd
        atexit.register(release, folder)
    with open(folder / "start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _check_leaving(folder)  # asked for (a request thread) while this process is leaving: start nothing
        state = _state(folder)
        stop_strays(folder, state.get("pid"))  # a server whose starter was killed before recording it
        running = alive(state.get("pid"), folder)
        if running:  # the port it took (a start cut short recorded only the one it asked for)
            state["port"] = configured_port(folder) or state["port"]
        if not (running and answers(state["port"], timeout=15)):
            if running:  # there but not answering: hung
                stop_group(state["pid"], grace_s=0)
            state = _start_twice(folder, launcher(binary), timeout_s)
            try:
                wait_serving(f"http://127.0.0.1:{state['port']}", timeout_s, folder)
            except StartAbandoned:
                stop_group(state["pid"], grace_s=0)  # acknowledged writes are in its log either way
                raise
    return f"http://127.0.0.1:{state['port']}"


def release(folder: str | os.PathLike) -> bool:
    """Stop using the server of ``folder``; when no other process uses it, stop it: SIGTERM, and
    SIGKILL when it is still there ``GRACEFUL_STOP_S`` + 5 s later (it sometimes hangs in its
    graceful stop; acknowledged writes are in its log either way). Returns whether this call
    stopped it."""
    folder = Path(folder).resolve()
    fd = _users.pop(folder, None)
    if fd is None:
        return False
    keep = env_flag("MILVUS_KEEP_SERVER", default=False)
    if not keep:
        _leaving.add(folder)  # a start under way in another thread stops its server and lets go of start.lock
    try:
        if not folder.is_dir():  # removed under us (a temporary library): nothing left to stop
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        if keep:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process still uses it
        return _stop_server(folder)
    finally:
        _leaving.discard(folder)
        os.close(fd)


def _stop_server(folder: Path) -> bool:
    """Stop the server of ``folder`` if it runs (under ``start.lock``); returns whether it ran."""
    with open(folder / "start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _state(folder)
        strays = stop_strays(folder, state.get("pid"))
        if not alive(state.get("pid"), folder):
            return bool(strays)
        stop_group(state["pid"], GRACEFUL_STOP_S + 5)
        (folder / "server.json").write_text(json.dumps({"port": state["port"]}))
        return True


def stop(folder: str | os.PathLike) -> str:
    """Stop the server of ``folder`` unless a process uses it (one left running by
    ``MILVUS_KEEP_SERVER=1``); returns a sentence saying what was done."""
    folder = Path(folder).resolve()
    if not (folder / "users.lock").is_file():
        return f"{folder} holds no Milvus server run by the app"
    fd = os.open(folder / "users.lock", os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"the Milvus server in {folder} is in use by another process (the app or the CLI); stop that first"
        return f"stopped the Milvus server in {folder}" if _stop_server(folder) \
            else f"the Milvus server in {folder} was not running"
    finally:
        os.close(fd)


def stopped(folder: str | os.PathLike, timeout_s: float = 60.0) -> bool:
    """Wait up to ``timeout_s`` until the server of ``folder`` has exited; returns whether it has."""
    folder = Path(folder).resolve()
    pid = _state(folder).get("pid")
    deadline = time.monotonic() + timeout_s
    while alive(pid, folder):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


if __name__ == "__main__":  # python -m search_core.milvus_local stop DATA_DIR/milvus-server
    if len(sys.argv) != 3 or sys.argv[1] != "stop":
        sys.exit("usage: python -m search_core.milvus_local stop DATA_DIR/milvus-server")
    print(stop(sys.argv[2]))
