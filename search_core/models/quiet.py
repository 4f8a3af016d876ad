"""Keep Paddle's known-harmless terminal output out of the user's terminal.

Importing paddle, exporting a network (``paddle.jit.to_static``, paddle2onnx) and checking it print
advice and progress from C++ (glog) and Python that says nothing to a user of this product: a
warning about data-parallel training because ``OMP_NUM_THREADS`` is above 1 (we set it on purpose,
see ``search_core/__init__.py``), a missing compiler cache, the exporter's steps, an executor
starting. :func:`quiet_native_output` holds back everything the process writes to file descriptors
1 and 2 while such a step runs and then writes it to standard error without the lines of
:data:`HARMLESS`: anything else (a real warning or error, another thread's output meanwhile) is still
shown, a moment later. When the step fails, all of it is shown.

``import paddle`` also gives the root logger a stderr handler at INFO, after which every library's
INFO records reach the terminal (Milvus Lite's index builds and shutdowns, grpc's server errors
with tracebacks); :func:`root_logging_kept` undoes that.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

#: Lines that are known to be harmless here (see the module docstring); matched anywhere in a line.
HARMLESS = re.compile("|".join([
    r"OMP_NUM_THREADS set to \d+, not 1",            # paddle.base: advice for data-parallel training
    r"PLEASE USE OMP_NUM_THREADS WISELY",
    r"No ccache found",                               # paddle.utils.cpp_extension: we compile no C++
    r"^\s*warnings\.warn\(warning_message\)",         # ... the source line Python prints after it
    r"\[Paddle2ONNX\] ",                              # the exporter's steps
    r"perform constant folding on the ONNX model",
    r"Fail to fold onnx model with error: No module named 'polygraphy'",  # optional; ORT folds anyway
    r"ONNX model saved in ",
    r"static graph\(PIR\) not support input out tensor",  # glog W from to_static, harmless for eval nets
    r"New Executor is Running",                       # glog I lines of the static executor
    r"pir interpreter is running",
]))


@contextlib.contextmanager
def quiet_native_output():
    """Hold back what the process writes to descriptors 1 and 2 meanwhile; afterwards write it to
    stderr without the :data:`HARMLESS` lines (all of it if the block raised).

    Standard output is not written to: a command's stdout stays its own (``eval --json``).
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(1), os.dup(2)
    failed = True
    held = tempfile.TemporaryFile()
    try:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        yield
        failed = False
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        held.seek(0)
        text = held.read().decode("utf-8", errors="replace")
        held.close()
        shown = [line for line in text.splitlines() if line.strip() and (failed or not HARMLESS.search(line))]
        if shown:
            sys.stderr.write("\n".join(shown) + "\n")
            sys.stderr.flush()


@contextlib.contextmanager
def root_logging_kept():
    """Put the root logger's level and handlers back as they were when the block ends (for imports
    that configure logging as if they were the application)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
