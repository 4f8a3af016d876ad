"""search_core: the audio similarity search engine, usable without the UI.

Data flows one way::

    audio.py (decode, validate, resample)
      -> models/ (embedding models: name, task, rate, dim, batch embed)
      -> vectors.py (Milvus, one collection per model) + schema.py / leases.py / metadata.py (SQL rows,
         joined by id), opened together by stores.py
      -> embedding.py, records.py, duplicates.py, speakers.py
      -> ingest.py + writer.py (ingest), search.py (search), maintenance.py (delete, recover, check)
      -> service.py (LibraryService, the one face)
      -> __main__.py (CLI) / app.py (Gradio UI, outside this package)
"""
import os as _os
import sys as _sys

# Paddle pins OMP to one thread when the variable is unset; use the machine's cores instead.
# This must happen before anything imports paddle.
_os.environ.setdefault("OMP_NUM_THREADS", str(_os.cpu_count() or 1))

# numpy/scipy's OpenBLAS threads only ever get small products here (mel filterbanks, cosine of a
# few thousand vectors), and when they spin between calls they take the cores from the model's own
# threads (ONNX Runtime, Paddle): a 5 s aiSFX query took 140 ms with them, 65 ms without.
if "OPENBLAS_NUM_THREADS" not in _os.environ:
    _os.environ["OPENBLAS_NUM_THREADS"] = "1"
    if "numpy" in _sys.modules or "scipy" in _sys.modules:   # loaded already: limit it in place
        from threadpoolctl import threadpool_limits as _limits
        _limits(1, user_api="blas")

# setuptools' distutils shim (a sys.meta_path finder that `import paddle` reaches through setuptools)
# imports importlib.abc and importlib.util inside its find_spec, which Python 3.11 calls holding the
# global import lock. If another thread is importing importlib.abc at that moment (scipy.fft -> numpy.testing
# -> importlib.metadata does, when a model module loads), each waits for the other forever: the Paddle
# thread importing paddle hung every model load of the process (tests/test_paddle_threads.py). Both are
# imported here, in the importing thread, before any of ours start; then the shim's imports take no lock.
import importlib.abc as _abc  # noqa: E402,F401
import importlib.util as _util  # noqa: E402,F401

# pymilvus reads MILVUS_URI when it is imported, as the address of its own default connection, and
# refuses to import unless it is http(s)://host: ours may be a Milvus Lite file or ``local``
# (config.milvus_uri). pymilvus is imported here, with the variable hidden from it, before anyone else.
if "pymilvus" not in _sys.modules and "MILVUS_URI" in _os.environ:
    _uri = _os.environ.pop("MILVUS_URI")
    try:
        import pymilvus as _pymilvus  # noqa: F401
    finally:
        _os.environ["MILVUS_URI"] = _uri

__version__ = "0.1.0"
