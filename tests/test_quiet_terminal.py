"""What a normal run prints in the terminal: no known-harmless noise, real errors still (issue 16, item 10).

The app is launched as `make run` does (no GRPC_VERBOSITY, so gRPC logs as it would for a user), a library
is built and searched, and the app is left idle for as long as Milvus Lite took to answer pymilvus'
keepalive pings with GOAWAY "too_many_pings" (about 80 s).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
from gradio_client import Client, handle_file

from apphelpers import REPO, running_app
from conftest import sound, write_wav

MODEL = "mfcc_stats"
IDLE_S = 110          # Lite's GOAWAY came 80-95 s after the channel's last call
NOISE = ("too_many_pings", "GOAWAY", "Method not implemented", "AllocTimestamp", "Traceback")


def test_a_normal_run_prints_no_grpc_noise_and_still_shows_a_users_error(tmp_path):
    data = tmp_path / "data"
    files = [write_wav(tmp_path / f"clip_{i}.wav", sound(i)) for i in range(3)]
    started = time.monotonic()
    with running_app(data, env={"GRPC_VERBOSITY": None}) as url:
        client = Client(url, verbose=False)
        report, _, _ = client.predict([handle_file(str(f)) for f in files], MODEL, "", "", "", api_name="/ingest")
        assert "3 added" in report
        for f in files:
            hits = client.predict(handle_file(str(f)), MODEL, 3, api_name="/search")[-1]
            assert hits[0]["name"] == f.name
        time.sleep(max(0.0, IDLE_S - (time.monotonic() - started)))
        hits = client.predict(handle_file(str(files[0])), MODEL, 3, api_name="/search")[-1]
        assert hits[0]["name"] == files[0].name
        with pytest.raises(Exception, match="Record or upload a clip first"):
            client.predict(None, MODEL, 3, api_name="/search")
        port = url.rstrip("/").rsplit(":", 1)[1]
        log = (tmp_path / f"app-{port}.log").read_text()
    assert "[app] Search: Record or upload a clip first." in log   # a user's error: one line, still shown
    shown = [line for line in log.splitlines() if any(n in line for n in NOISE)]
    assert shown == []


def test_only_the_unimplemented_calls_of_milvus_lite_are_dropped_from_grpc_errors():
    import search_core.vectors  # noqa: F401 - installs the filter

    server_log = logging.getLogger("grpc._server")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    server_log.addHandler(handler)
    try:
        for err in (NotImplementedError("Method not implemented!"), RuntimeError("disk full")):
            try:
                raise err
            except Exception:
                server_log.exception("Exception calling application: %s", err)
    finally:
        server_log.removeHandler(handler)
    assert seen == ["Exception calling application: disk full"]


def test_paddles_known_noise_is_held_back_and_anything_else_still_shown(capfd):
    from search_core.models.quiet import quiet_native_output

    with quiet_native_output():
        os.write(2, b"WARNING: OMP_NUM_THREADS set to 2, not 1. The computation speed will not be optimized\n")
        os.write(2, b"PLEASE USE OMP_NUM_THREADS WISELY.\n")
        os.write(1, b"[Paddle2ONNX] Start parsing the Paddle model file...\n")
        os.write(2, b"E1130 12:00:00 something.cc:1] a real problem\n")
        os.write(1, b"result on stdout\n")
    out, err = capfd.readouterr()
    assert out == ""                                  # stdout stays the command's own (eval --json)
    assert "OMP_NUM_THREADS" not in err and "Paddle2ONNX" not in err
    assert "a real problem" in err and "result on stdout" in err

    with pytest.raises(RuntimeError):
        with quiet_native_output():
            os.write(1, b"[Paddle2ONNX] Start parsing the Paddle model file...\n")
            raise RuntimeError("export failed")
    assert "[Paddle2ONNX] Start parsing" in capfd.readouterr().err   # a failed step shows everything


def test_loading_paddle_leaves_the_process_logging_as_it_was():
    """`import paddle` set the root logger to INFO with its own handler, and every library's INFO lines and
    grpc's server tracebacks reached the terminal (Milvus Lite's "built 1 segment indexes", ...)."""
    code = ("import logging\n"
            "from search_core.models import paddle_thread\n"
            "paddle_thread.call(lambda: __import__('paddle'))\n"
            "root = logging.getLogger()\n"
            "logging.getLogger('milvus_lite.engine').info('built 1 segment indexes')\n"
            "print(logging.getLevelName(root.level), len(root.handlers))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["WARNING", "0"]
    assert "segment indexes" not in out.stderr and "OMP_NUM_THREADS" not in out.stderr
