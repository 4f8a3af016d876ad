"""A real Milvus standalone server for the tests: start, wait until it answers, kill, restart.

The server comes from PyPI's ``milvus==2.3.5`` wheel, installed by ``make test`` in a virtualenv
of its own (it is a server, not a dependency of the product); ``MILVUS_SERVER_BIN`` names its
``milvus-server`` launcher. The launcher starts a ``milvus`` child process in the same process
group; both are stopped together by signalling the group (the child needs >15 s to exit on
SIGTERM, so tests kill it). The launcher silently moves to the next free port when the one asked
for is taken (a killed server's connections keep its port in TIME_WAIT for a minute), so
:meth:`MilvusServer.start` checks the port it got against the written config, and a restart runs
the ``milvus`` child again directly, with the command, folder and environment the launcher gave it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from search_core import milvus_local

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / ".venv-milvus" / "bin" / "milvus-server"


def server_binary() -> Path | None:
    """The ``milvus-server`` launcher: ``MILVUS_SERVER_BIN`` or the one ``make test`` installs."""
    path = Path(os.environ.get("MILVUS_SERVER_BIN") or DEFAULT_BIN)
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusServer:
    """One Milvus standalone process tree on 127.0.0.1 with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, binary: Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = binary or server_binary()
        if self.binary is None:
            raise RuntimeError("the Milvus server is not installed: run `make test` (it installs milvus==2.3.5 "
                               "into .venv-milvus) or set MILVUS_SERVER_BIN to a milvus-server launcher")
        self.proc: subprocess.Popen | None = None
        self._child: tuple[list[str], str, dict] | None = None  # (argv, cwd, environ) of `milvus`

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "MilvusServer":
        """Start the server and return once it answers a request (raises with its log tail if not)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "launcher.log", "ab") as log:
            if self._child is None:
                argv = [str(self.binary), "--data", str(self.data_dir), "--proxy-port", str(self.port),
                        "--etcd-port", str(self._embedded_etcd())]
                cwd, env = None, {**os.environ, "ETCD_CONFIG_PATH": str(self.data_dir / "embedEtcd.yaml")}
            else:
                argv, cwd, env = self._child
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.answers():
                got = self.configured_port()
                if got != self.port:
                    self.kill()
                    raise RuntimeError(f"milvus-server took port {got} instead of {self.port} (port busy?)")
                if self._child is None:
                    self._child = self._milvus_child()
                else:  # a restart: back means serving the data it had, not only answering
                    self.wait_until_serving(max(30.0, deadline - time.monotonic()))
                return self
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"milvus-server did not answer on {self.uri} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _embedded_etcd(self) -> int:
        """Write the embedded etcd's config with free ports, as the product's own server does
        (:func:`search_core.milvus_local.etcd_config`); returns its client port."""
        return milvus_local.etcd_port(milvus_local.etcd_config(self.data_dir))

    def _milvus_child(self) -> tuple[list[str], str, dict]:
        """argv, working folder and environment of the launcher's ``milvus`` child (from /proc)."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid != self.proc.pid:
                    continue
                argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
                env = dict(e.decode().split("=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
                return argv, os.readlink(proc / "cwd"), env
            except (OSError, ValueError, IndexError):
                continue
        raise RuntimeError(f"milvus-server (pid {self.proc.pid}) has no milvus child process")

    def wait_until_serving(self, timeout_s: float) -> None:
        """Return once every collection of every database answers a Strong query: a restarted
        server reloads them first, and its Strong reads can wait tens of seconds until then
        (:func:`search_core.milvus_local.wait_serving`, database by database)."""
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout_s
        admin = MilvusClient(self.uri, timeout=30)
        try:
            databases = admin.list_databases()
        finally:
            admin.close()
        for db in databases:
            milvus_local.wait_serving(f"{self.uri}/{db}", max(1.0, deadline - time.monotonic()))

    def answers(self) -> bool:
        """Whether the server lists its collections within a few seconds."""
        return milvus_local.answers(self.port, timeout=5)

    def configured_port(self) -> int | None:
        """The proxy port in the config the launcher wrote (it moves on silently when a port is busy)."""
        return milvus_local.configured_port(self.data_dir)

    def kill(self) -> None:
        """SIGKILL the launcher and its ``milvus`` child (a crash, as far as the clients can tell)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, timeout_s: float = 180.0) -> "MilvusServer":
        """Kill, then start the ``milvus`` process again on the same data, config and ports."""
        self.kill()
        return self.start(timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for p in (self.data_dir / "launcher.log", self.data_dir / "logs" / "milvus-stderr.log"):
            if p.is_file():
                out += p.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


def create_database(uri: str, name: str) -> str:
    """Create Milvus database ``name`` on the server at ``uri``; returns the URI that selects it."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri, timeout=30)
    try:
        client.create_database(name)
    finally:
        client.close()
    return f"{uri}/{name}"


def drop_database(uri: str, name: str) -> None:
    """Drop database ``name`` and every collection in it (Milvus refuses to drop a non-empty one)."""
    from pymilvus import MilvusClient

    client = MilvusClient(f"{uri}/{name}", timeout=30)
    try:
        for c in client.list_collections():
            client.drop_collection(c)
    finally:
        client.close()
    client = MilvusClient(uri, timeout=30)
    try:
        client.drop_database(name)
    finally:
        client.close()
