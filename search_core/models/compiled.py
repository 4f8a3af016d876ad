"""Run an eval-mode Paddle network as a compiled graph: Paddle -> static program -> ONNX -> ONNX Runtime.

Eager (dygraph) execution dispatches every operator from Python and uses Paddle's plain CPU
kernels. The same network exported with ``paddle.jit.to_static``, converted by ``paddle2onnx``
and run by ONNX Runtime fuses conv + batch-norm + ReLU and uses the CPU's vector units: for aiSFX
a 5 s clip takes ~60 ms instead of ~450 ms, for Resemblyzer's partials ~7x less, with embeddings
equal to ~1e-5 (BENCHMARKS.md). Paddle Inference with oneDNN is as fast, but its ``run`` holds
the GIL for the whole forward pass, which froze the app's other threads (the web server, other
searches) for as long as a batch took; ONNX Runtime releases it.

:func:`compile_network` converts the network once into a cache folder next to the weights (keyed
by the weights' checksum and the Paddle version), checks the compiled graph against the eager
network on a probe input, and returns a callable ``numpy -> numpy``. If anything in that path fails
(an operator the exporter cannot convert, a mismatch) it says so on stderr and returns the eager
network instead: slower, never wrong. ``PADDLE_COMPILE=0`` turns the compiled path off.

The Paddle side (export, the probe, eager runs) happens on the one Paddle thread of
:mod:`.paddle_thread`, whichever thread calls; the ONNX Runtime session runs in the caller's thread.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import paddle_thread, progress
from .quiet import quiet_native_output

Runner = Callable[[np.ndarray], np.ndarray]
PROBE_TOLERANCE = 1e-3      # max |compiled - eager| relative to max |eager| on the probe input
ONNX_OPSET = 17


def enabled() -> bool:
    """Whether the compiled path is wanted (``PADDLE_COMPILE`` is not 0/false/no/off)."""
    from ..config import env_flag

    return env_flag("PADDLE_COMPILE")


def eager_runner(net) -> Runner:
    """Run ``net`` eagerly without gradients, on the Paddle thread: numpy in, numpy out."""

    def forward(x: np.ndarray) -> np.ndarray:
        import paddle

        with paddle.no_grad():
            return net(paddle.to_tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def run(x: np.ndarray) -> np.ndarray:
        return paddle_thread.call(forward, x)

    run.compiled = False
    return run


def export(net, input_shape: tuple, folder: Path) -> Path:
    """Convert ``net`` to ``folder/model.onnx`` (static program first, then paddle2onnx); atomic.
    Run it inside :func:`.quiet.quiet_native_output`: Paddle and paddle2onnx log to stdout and stderr."""
    import paddle
    import paddle2onnx

    onnx_path = folder / "model.onnx"
    if onnx_path.is_file():
        return onnx_path
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        spec = [paddle.static.InputSpec(list(input_shape), "float32", name="x")]
        static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(tmp / "model"))
        program = next((tmp / n for n in ("model.json", "model.pdmodel") if (tmp / n).is_file()), None)
        if program is None:
            raise RuntimeError("paddle.jit.save wrote no program file")
        paddle2onnx.export(str(program), str(tmp / "model.pdiparams"), save_file=str(tmp / "model.onnx"),
                           opset_version=ONNX_OPSET, enable_onnx_checker=True, verbose=False)
        for p in tmp.iterdir():
            if p.name != "model.onnx":
                p.unlink()
        try:
            os.replace(tmp, folder)
        except OSError:            # another process converted it first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not onnx_path.is_file():
        raise RuntimeError(f"no ONNX model was written into {folder}")
    return onnx_path


def onnx_runner(path: Path, threads: int | None = None) -> Runner:
    """An ONNX Runtime session (CPU) for a converted network, as a callable; releases the GIL."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    run.compiled = True
    return run


@paddle_thread.runs_on_paddle_thread
def compile_network(net, input_shape: tuple, probe: np.ndarray, cache_dir: Path,
                    key: str, label: str | None = None) -> Runner:
    """The fastest correct runner for eval-mode ``net``: compiled if possible, else eager.

    ``input_shape`` is the network input's shape with ``None`` for free dimensions, ``probe`` an
    input of that shape used to check the compiled program against the eager network, ``key``
    names the cache folder under ``cache_dir`` (include the weights' checksum in it). When the
    conversion is not cached yet, "preparing the ``label`` model once: 12 s" is reported (:mod:`.progress`).
    """
    eager = eager_runner(net)
    if not enabled():
        return eager
    import paddle

    folder = Path(cache_dir) / f"{key}-paddle{paddle.__version__}"
    first = not (folder / "model.onnx").is_file()
    try:
        with quiet_native_output(), (progress.step(f"preparing the {label or key} model once") if first
                                     else contextlib.nullcontext()):
            compiled = onnx_runner(export(net, input_shape, folder))
            want, got = eager(probe), compiled(probe)
        if want.shape != got.shape:
            problem = f"shape {got.shape} instead of {want.shape}"
        else:
            err = float(np.max(np.abs(want - got)) / max(float(np.max(np.abs(want))), 1e-12))
            problem = None if err <= PROBE_TOLERANCE else f"relative error {err:.2g}"
        if problem:
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"compiled output differs from the eager network ({problem})")
        return compiled
    except Exception as e:  # noqa: BLE001 - any failure here only costs speed
        print(f"[search_core] {key}: compiled network unavailable ({type(e).__name__}: {e}); "
              f"running the network eagerly (slower)", file=sys.stderr, flush=True)
        return eager
