"""What a model's slow one-time steps are doing: fetching its weights, preparing its compiled network.

A model's first use can take a minute (a 25 MB download, a one-time compile); these steps call
:func:`report` with a sentence and, where it is measurable, the fraction done. Whoever shows
progress listens for the duration of a call::

    with progress.listening(lambda step: print(step.text)):
        service.ingest_files(paths, "aisfx")

The listener is a context variable: concurrent requests each see their own model's steps, and code
that does not listen pays nothing. Work handed to the Paddle thread runs in the caller's context
(:func:`.paddle_thread.call`), so its steps reach the caller's listener.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

MB = 1e6


@dataclass(frozen=True)
class Step:
    """One report: ``text`` for a person, ``fraction`` in [0, 1] when the step's size is known."""

    text: str
    fraction: float | None = None


Listener = Callable[[Step], None]
_listener: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("model_progress", default=None)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the steps reported in this context (this thread, and the work it hands to the Paddle
    thread) to ``listener`` until the block ends."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report(text: str, fraction: float | None = None) -> None:
    """Tell the current listener, if any, what is happening."""
    listener = _listener.get()
    if listener is not None:
        listener(Step(text, None if fraction is None else min(max(float(fraction), 0.0), 1.0)))


def downloading(what: str, done: int, total: int | None) -> None:
    """``downloading <what> 12/25 MB`` (or ``downloading <what>: 12 MB so far`` without a size)."""
    if total:
        report(f"downloading {what} {done / MB:.0f}/{total / MB:.0f} MB", done / total)
    else:
        report(f"downloading {what}: {done / MB:.0f} MB so far")


@contextlib.contextmanager
def step(text: str, every_s: float = 1.0) -> Iterator[None]:
    """Report ``text`` now and, while the block runs, every ``every_s`` seconds with the time so far
    ("preparing the aisfx model once: 12 s"), from a helper thread: the block's work is one call."""
    listener = _listener.get()
    if listener is None:
        yield
        return
    listener(Step(text))
    stop, t0 = threading.Event(), time.monotonic()

    def tick() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):   # a listener's failure must not outlive the block
                listener(Step(f"{text}: {time.monotonic() - t0:.0f} s"))

    ticker = threading.Thread(target=tick, name="progress-tick", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


class Printer:
    """Prints a model's slow one-time steps (``downloading aisfx weights 12/25 MB``, ``preparing
    the aisfx model once: 12 s``) to ``stream``: a line per new step and at most one progress line
    per ``every_s`` seconds (the CLI gives it stderr: stdout is for results and JSON)."""

    def __init__(self, stream, every_s: float = 5.0):
        self.stream, self.every_s = stream, every_s
        self._last, self._last_t = "", 0.0

    def __call__(self, step: Step) -> None:
        head = step.text.split(":")[0].rsplit(" ", 1)[0] if step.fraction is not None or ":" in step.text else step.text
        now = time.monotonic()
        if head != self._last or now - self._last_t >= self.every_s or step.fraction == 1.0:
            self._last, self._last_t = head, now
            print(step.text, file=self.stream, flush=True)
