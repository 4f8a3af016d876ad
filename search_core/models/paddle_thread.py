"""Every piece of Paddle work in the process runs on one long-lived thread.

Paddle keeps its execution mode per Python thread: ``paddle.base.framework.global_var`` is a
``threading.local`` whose ``_dygraph_tracer_`` is a tracer in eager ("dygraph") mode and None in
static-graph mode, and a thread's first use copies the mode some thread set last (a module
global), not eager mode. ``import paddle`` turns eager mode on through a context manager it keeps in
the importing thread's local storage; when that thread ends, the context manager is unwound and
sets the module global back to static mode. From then on every new thread starts in static mode:
``nn.Layer`` parameters are graph values (``'pir.Value' object has no attribute 'set_value'``),
and ``paddle.jit.to_static`` switches modes too while it exports. So whether Paddle code worked
depended on which thread had imported paddle, whether that thread still lived, and what another
thread was exporting (issue 11: the app imported paddle in its warm-up thread).

:func:`call` runs a function on a single worker thread that lives as long as the process, imports
paddle and makes sure it is in eager mode before its first job; building networks, assigning
weights, ``to_static`` export and eager runs all go through it, so no caller's thread or mode
matters. Jobs run one at a time. The compiled networks (ONNX Runtime sessions) are run by the
callers' threads: they need no Paddle state and release the GIL.
"""
from __future__ import annotations

import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread_id: int | None = None


def _start() -> None:
    """The worker's first act: import paddle there and be in eager mode whatever the last thread left."""
    global _thread_id
    _thread_id = threading.get_ident()
    from .quiet import quiet_native_output, root_logging_kept

    try:   # its advice about OMP_NUM_THREADS and data-parallel training; its root logger at INFO
        with quiet_native_output(), root_logging_kept():
            import paddle
    except Exception:  # noqa: BLE001 - a job that needs paddle raises the import error itself
        return
    # Paddle's handlers of fatal signals also catch SIGTERM, so stopping the app (docker stop, systemd, kill)
    # printed a "C++ Traceback ... FatalError: `Termination signal` is detected" block for a normal stop
    paddle.disable_signal_handler()
    if not paddle.in_dynamic_mode():
        paddle.disable_static()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paddle", initializer=_start)
        return _executor


def _forget_after_fork() -> None:
    global _executor, _thread_id
    _executor, _thread_id = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)   # the worker does not exist in a child


def on_paddle_thread() -> bool:
    """Whether the calling code already runs on the Paddle thread."""
    return _thread_id is not None and threading.get_ident() == _thread_id


def call(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` run on the Paddle thread; its result, or its exception re-raised here.

    Called on the Paddle thread itself (a job that needs another Paddle helper), it runs directly.
    It runs in a copy of the caller's context variables (e.g. the listener of :mod:`.progress`).
    """
    if on_paddle_thread():
        return fn(*args, **kwargs)
    return _pool().submit(contextvars.copy_context().run, fn, *args, **kwargs).result()


def runs_on_paddle_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: every call of ``fn`` goes through :func:`call`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return call(fn, *args, **kwargs)

    return wrapper
