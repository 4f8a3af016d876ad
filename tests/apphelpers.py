"""Start app.py in a subprocess on 127.0.0.1 for tests, and stop it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(data_dir: Path, env: dict | None = None, args: list[str] | None = None, timeout: float = 120):
    """Yield the base URL of a freshly started app with its own data folder (``env`` values of None unset
    a variable)."""
    port = free_port()
    full_env = {**os.environ, "DATA_DIR": str(data_dir), "GRADIO_ANALYTICS_ENABLED": "False",
                "SEARCH_CORE_OFFLINE": "1", **(env or {})}
    for var in ("MILVUS_URI", "DATABASE_URL", "LIBRARY_DIR"):
        if var not in (env or {}):
            full_env.pop(var, None)
    full_env = {k: v for k, v in full_env.items() if v is not None}
    log = open(data_dir.parent / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), *(args or [])],
                            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}: "
                                   + Path(log.name).read_text()[-2000:])
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("app did not start: " + Path(log.name).read_text()[-2000:])
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
