"""The compiled path (Paddle -> ONNX -> ONNX Runtime) the Paddle ports run on, and its fallbacks."""
from __future__ import annotations

import numpy as np
import pytest

import search_core  # noqa: F401  (sets OMP_NUM_THREADS before paddle is imported)
from search_core.models import compiled


@pytest.fixture(scope="module")
def net():
    import paddle

    paddle.seed(3)

    class Small(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(1, 8, 3, padding=1)
            self.bn = paddle.nn.BatchNorm2D(8)
            self.fc = paddle.nn.Linear(8, 5)

        def forward(self, x):                              # (n, 20, 12)
            h = paddle.nn.functional.relu(self.bn(self.conv(x.unsqueeze(1))))
            return self.fc(h.mean(axis=[2, 3]))

    n = Small()
    n.bn._mean.set_value(np.linspace(-0.5, 0.5, 8).astype(np.float32))      # not the identity
    n.bn._variance.set_value(np.linspace(0.5, 2.0, 8).astype(np.float32))
    n.eval()
    return n


def _inputs(n):
    return np.random.default_rng(n).random((n, 20, 12), dtype=np.float32)


def test_compiled_network_equals_eager_for_any_batch_and_is_cached(net, tmp_path, monkeypatch):
    run = compiled.compile_network(net, (None, 20, 12), _inputs(2), tmp_path, "small-abc")
    assert run.compiled
    eager = compiled.eager_runner(net)
    for n in (1, 3, 7):
        np.testing.assert_allclose(run(_inputs(n)), eager(_inputs(n)), rtol=1e-4, atol=1e-5)
    folders = [p.name for p in tmp_path.iterdir()]
    assert len(folders) == 1 and folders[0].startswith("small-abc-paddle")

    import paddle

    def no_export(*a, **k):
        raise AssertionError("the exported program should have been reused")

    monkeypatch.setattr(paddle.jit, "save", no_export)
    again = compiled.compile_network(net, (None, 20, 12), _inputs(2), tmp_path, "small-abc")
    assert again.compiled
    np.testing.assert_allclose(again(_inputs(4)), eager(_inputs(4)), rtol=1e-4, atol=1e-5)


def test_a_compiled_program_that_disagrees_is_dropped_for_the_eager_network(net, tmp_path, monkeypatch, capsys):
    def wrong(path, threads=None):
        def run(x):
            return np.zeros((len(x), 5), np.float32) + 1.0
        run.compiled = True
        return run

    monkeypatch.setattr(compiled, "onnx_runner", wrong)
    run = compiled.compile_network(net, (None, 20, 12), _inputs(2), tmp_path, "small-bad")
    assert not run.compiled
    np.testing.assert_allclose(run(_inputs(2)), compiled.eager_runner(net)(_inputs(2)))
    assert "differs from the eager network" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []          # the bad export is not kept for next time


def test_an_export_failure_falls_back_to_eager(net, tmp_path, monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(compiled, "export", broken)
    run = compiled.compile_network(net, (None, 20, 12), _inputs(2), tmp_path, "small-x")
    assert not run.compiled and run(_inputs(1)).shape == (1, 5)
    assert "operator not supported" in capsys.readouterr().err


def test_compiledence_0_keeps_the_eager_network(net, tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_COMPILE", "0")
    run = compiled.compile_network(net, (None, 20, 12), _inputs(2), tmp_path, "small-off")
    assert not run.compiled and list(tmp_path.iterdir()) == []
