"""Run an eval-mode Paddle network through Paddle Inference (static graph + oneDNN) on CPU.

Eager (dygraph) execution dispatches every operator from Python and uses Paddle's plain CPU
kernels; the same network exported with ``paddle.jit.to_static`` and run by a Paddle Inference
predictor with oneDNN fuses conv + batch-norm + ReLU and uses the CPU's vector units. For aiSFX
that is ~5x faster on a 5 s clip with embeddings equal to 3e-6 (BENCHMARKS.md).

:func:`compile_network` exports the network once into a cache folder next to the weights
(keyed by the weights' checksum and the Paddle version), checks the predictor against the eager
network on a probe input, and returns a callable ``numpy -> numpy``. If anything in that path fails
(a Paddle build without oneDNN, an operator the exporter cannot convert, a mismatch) it says so on
stderr and returns the eager network instead: slower, never wrong. ``PADDLE_INFERENCE=0`` turns the
compiled path off.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]
PROBE_TOLERANCE = 1e-3      # max |compiled - eager| relative to max |eager| on the probe input
MKLDNN_CACHE_SHAPES = 16    # oneDNN keeps primitives for this many input shapes (bounds memory)


def enabled() -> bool:
    """Whether the compiled path is wanted (``PADDLE_INFERENCE`` is not 0/false/no/off)."""
    return os.environ.get("PADDLE_INFERENCE", "1").strip().lower() not in {"0", "false", "no", "off"}


def eager_runner(net) -> Runner:
    """Run ``net`` eagerly without gradients: numpy in, numpy out."""
    import paddle

    def run(x: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return net(paddle.to_tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    run.compiled = False
    return run


def _model_files(folder: Path) -> tuple[Path, Path] | None:
    params = folder / "model.pdiparams"
    for name in ("model.json", "model.pdmodel"):   # PIR programs are .json, legacy ones .pdmodel
        if (folder / name).is_file() and params.is_file():
            return folder / name, params
    return None


def export(net, input_shape: tuple, folder: Path) -> tuple[Path, Path]:
    """Export ``net`` as a static inference program into ``folder`` (written atomically)."""
    import paddle

    files = _model_files(folder)
    if files is not None:
        return files
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        spec = [paddle.static.InputSpec(list(input_shape), "float32", name="x")]
        static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(tmp / "model"))
        try:
            os.replace(tmp, folder)
        except OSError:            # another process exported it first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    files = _model_files(folder)
    if files is None:
        raise RuntimeError(f"paddle.jit.save wrote no model files into {folder}")
    return files


def predictor_runner(program: Path, params: Path, threads: int | None = None) -> Runner:
    """A Paddle Inference predictor (CPU, oneDNN) for an exported program, as a callable."""
    from paddle import inference

    config = inference.Config(str(program), str(params))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
    config.enable_mkldnn()
    config.set_mkldnn_cache_capacity(MKLDNN_CACHE_SHAPES)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    x_in = predictor.get_input_handle(predictor.get_input_names()[0])
    y_out = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        x_in.reshape(list(x.shape))
        x_in.copy_from_cpu(x)
        predictor.run()
        return y_out.copy_to_cpu()

    run.compiled = True
    return run


def compile_network(net, input_shape: tuple, probe: np.ndarray, cache_dir: Path,
                    key: str) -> Runner:
    """The fastest correct runner for eval-mode ``net``: compiled if possible, else eager.

    ``input_shape`` is the network input's shape with ``None`` for free dimensions, ``probe`` an
    input of that shape used to check the compiled program against the eager network, ``key``
    names the cache folder under ``cache_dir`` (include the weights' checksum in it).
    """
    eager = eager_runner(net)
    if not enabled():
        return eager
    import paddle

    folder = Path(cache_dir) / f"{key}-paddle{paddle.__version__}"
    try:
        program, params = export(net, input_shape, folder)
        compiled = predictor_runner(program, params)
        want, got = eager(probe), compiled(probe)
        err = float(np.max(np.abs(want - got)) / max(float(np.max(np.abs(want))), 1e-12))
        if want.shape != got.shape or not err <= PROBE_TOLERANCE:
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"compiled output differs from the eager network (relative error {err:.2g})")
        return compiled
    except Exception as e:  # noqa: BLE001 - any failure here only costs speed
        print(f"[search_core] {key}: Paddle Inference unavailable ({type(e).__name__}: {e}); "
              f"running the network eagerly (slower)", file=sys.stderr, flush=True)
        return eager
