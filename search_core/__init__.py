"""search_core: the audio similarity search engine, usable without the UI.

Data flows one way::

    audio.py (decode, validate, resample)
      -> models/ (embedding models: name, task, rate, dim, batch embed)
      -> vectors.py (Milvus, one collection per model) + metadata.py (SQL rows, joined by id)
      -> service.py (ingest, search, delete, count, recover)
      -> __main__.py (CLI) / app.py (Gradio UI, outside this package)
"""
import os as _os

# Paddle pins OMP to one thread when the variable is unset; use the machine's cores instead.
# This must happen before anything imports paddle.
_os.environ.setdefault("OMP_NUM_THREADS", str(_os.cpu_count() or 1))

__version__ = "0.1.0"
