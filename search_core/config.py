"""Configuration from environment variables, with defaults that work on a fresh machine.

Every setting is read once per :func:`get_settings` call into a frozen dataclass, so tests can
change the environment and build a new :class:`Settings` without touching global state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_number(name: str, default: float, kind: type = float, minimum: float | None = None):
    """A number (``kind`` int or float) from the environment, ``default`` when unset or empty;
    a value that is not a number, or below ``minimum``, is refused with a sentence naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"environment variable {name}={raw!r} is not {what}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"environment variable {name}={raw!r} must be at least {minimum:g}")
    return value


def env_flag(name: str, default: bool = True) -> bool:
    """An on/off switch from the environment: ``0``, ``false``, ``no`` or ``off`` (any case) mean off,
    any other value on, unset or empty ``default``."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw not in {"0", "false", "no", "off"}


def env_unit_float(name: str, what: str) -> float | None:
    """An optional override in [-1, 1] (a similarity threshold) from the environment, or None."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a {what} in [-1, 1], got {value}")
    return value


def milvus_uri(value: str, data_dir: Path) -> str:
    """``MILVUS_URI`` as the vector store takes it: ``local`` (any case) names a Milvus server run by
    the app with its data in ``DATA_DIR/milvus-server`` (``search_core/milvus_local.py``), written
    ``local://<folder>``; anything else (a Milvus Lite file, ``http://host:19530``) is kept.

    Unset (empty ``value``), the data folder says which store holds its library: the app's server
    when ``DATA_DIR/milvus-server`` exists (so the CLI opens the library ``make run`` filled), else
    the Milvus Lite file ``DATA_DIR/milvus.db``."""
    if not value:
        value = "local" if (data_dir / "milvus-server").is_dir() else str(data_dir / "milvus.db")
    if value.lower() == "local":
        return f"local://{data_dir / 'milvus-server'}"
    return value


@dataclass(frozen=True)
class Settings:
    """All knobs of the engine. Build with :func:`get_settings` (reads the environment)."""

    data_dir: Path
    milvus_uri: str
    database_url: str
    library_dir: Path
    weights_dir: Path
    index_type: str = "HNSW"
    max_upload_bytes: int = 200 * 1024 * 1024
    max_duration_s: float = 2 * 3600.0
    max_query_s: float = 30.0                       # a query is searched on its first 30 s
    max_decode_samples: int = 2 * 3600 * 48000 * 2  # frames x channels one file may decode (2 h stereo 48 kHz)
    default_sound_model: str = "aisfx"
    default_speaker_model: str = "resemblyzer"
    writer_lease_s: float = 60.0
    milvus_timeout_s: float = 20.0
    extra: dict = field(default_factory=dict)


def get_settings() -> Settings:
    """Read the settings from the environment.

    ``DATA_DIR`` (default ``./data``) holds the embedded stores; ``MILVUS_URI`` defaults to the
    store the folder holds (:func:`milvus_uri`: the app's own Milvus server in ``DATA_DIR/milvus-server``,
    which ``MILVUS_URI=local`` selects and ``make run`` starts, or a Milvus Lite file), ``DATABASE_URL`` to a SQLite file in it, ``LIBRARY_DIR`` (where
    ingested audio is copied, named by content hash) to ``DATA_DIR/library`` and ``WEIGHTS_DIR``
    (model weights) to ``DATA_DIR/weights``. ``WRITER_LEASE_S`` (default 60) is how long a
    writer's unfinished work is left alone by other processes' recovery after its last heartbeat,
    and how old an unknown library file must be before recovery removes it. ``MILVUS_TIMEOUT_S``
    (default 20) is how long a Milvus call may take before the server counts as unreachable.
    """
    data_dir = Path(_env("DATA_DIR", "data")).resolve()
    return Settings(
        data_dir=data_dir,
        milvus_uri=milvus_uri(_env("MILVUS_URI", ""), data_dir),
        database_url=_env("DATABASE_URL", f"sqlite:///{data_dir / 'metadata.sqlite'}"),
        library_dir=Path(_env("LIBRARY_DIR", str(data_dir / "library"))).resolve(),
        weights_dir=Path(_env("WEIGHTS_DIR", str(data_dir / "weights"))).resolve(),
        index_type=_env("MILVUS_INDEX_TYPE", "HNSW").upper(),
        max_upload_bytes=env_number("MAX_UPLOAD_BYTES", 200 * 1024 * 1024, int),
        max_duration_s=env_number("MAX_DURATION_S", 2 * 3600.0),
        max_query_s=env_number("MAX_QUERY_S", 30.0),
        max_decode_samples=env_number("MAX_DECODE_SAMPLES", 2 * 3600 * 48000 * 2, int),
        default_sound_model=_env("DEFAULT_SOUND_MODEL", "aisfx"),
        default_speaker_model=_env("DEFAULT_SPEAKER_MODEL", "resemblyzer"),
        writer_lease_s=env_number("WRITER_LEASE_S", 60.0),
        milvus_timeout_s=env_number("MILVUS_TIMEOUT_S", 20.0),
    )
