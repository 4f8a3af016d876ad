"""The SQL schema of the metadata store: tables, row types, engine, migration, retries.

Tables:

``clips``
    one row per distinct audio content (sha256 unique): stored file, original name, duration,
    rate, channels, label/speaker/source/tags, created time.
``vectors``
    one row per embedding (a clip has one per model, or one per segment of a long recording).
    Its ``id`` is the Milvus primary key. ``status`` makes writes recoverable: a row is
    ``pending`` before its vector is inserted, ``ready`` after, ``deleting`` while it is removed.
    Search only ever shows ``ready`` rows. ``owner`` names the writer (a row of ``writers``)
    whose unfinished work the row is.
``writers``
    one row per live process that may write: its owner id and a lease (``expires_at``) that it
    renews while it runs. Recovery only finishes or rolls back unfinished rows whose owner's
    lease has expired (or that have no owner): another live process' work is left alone.
``near_duplicates``
    clip -> the earlier clip it is a near-duplicate of, per model (marked at ingest; rows go
    with either clip by ON DELETE CASCADE).
``speakers``
    enrolled speakers: name, model, mean embedding (JSON), number of clips.
``centers``
    each model collection's means (one row per version; the newest is the one in use): stored
    and query vectors are ``normalise(x - mean)`` (:mod:`search_core.centering`). A vector row
    says under which version its vector was written (``center_version``) and the norm of
    ``x - mean`` (``norm``), so the raw embedding comes back exactly for a re-index.
``recenter_journal``
    the raw embeddings of the vectors a re-index is rewriting right now (at most one chunk),
    so that a crash between the Milvus upsert and the row update loses nothing.

Only bound parameters reach SQL. The queries live in :mod:`search_core.metadata` (clips,
vectors, near-duplicate marks, voiceprints) and :mod:`search_core.leases` (writers).
"""
from __future__ import annotations

import functools
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy import event

from . import limits

PENDING, READY, DELETING = "pending", "ready", "deleting"
#: :meth:`MetadataStore.begin_ingest`: this content is being written or deleted by another writer.
BUSY = "busy"

_meta = sa.MetaData()
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only

clips = sa.Table(
    "clips", _meta,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("stored_name", sa.String(128), nullable=False),
    sa.Column("original_name", sa.String(512), nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("sample_rate", sa.Integer, nullable=False),
    sa.Column("channels", sa.Integer, nullable=False),
    sa.Column("label", sa.String(255)),
    sa.Column("speaker", sa.String(255)),
    sa.Column("source", sa.String(255)),
    sa.Column("tags", sa.Text),  # JSON list of strings
    sa.Column("created_at", sa.DateTime, nullable=False),
    mysql_charset="utf8mb4",
)

vectors = sa.Table(
    "vectors", _meta,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("clip_id", _BigId, sa.ForeignKey("clips.id"), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("seg", sa.Integer, nullable=False, default=0),
    sa.Column("start_s", sa.Float, nullable=False),
    sa.Column("end_s", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("owner", sa.String(64)),  # the writer whose unfinished work this row is (added by _migrate)
    # centering (added by _migrate): the mean version the vector is under (NULL/0: none) and
    # |x - mean| (NULL: the stored vector is the raw embedding itself)
    sa.Column("center_version", sa.Integer),
    sa.Column("norm", sa.Double),
    sa.UniqueConstraint("clip_id", "model", "seg", name="uq_vectors_clip_model_seg"),
    sa.Index("ix_vectors_model_status", "model", "status"),
    mysql_charset="utf8mb4",
)

# Writers' leases: a process renews its row while it lives; recovery acts only on expired owners.
writers = sa.Table(
    "writers", _meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
    mysql_charset="utf8mb4",
)

# Columns added since the first release, created on databases that predate them.
_ADDED_COLUMNS = {"vectors": [("owner", "VARCHAR(64)"), ("center_version", "INTEGER"),
                              ("norm", "DOUBLE PRECISION")]}

# One row per clip that ingest found to be a near-duplicate of an earlier clip, per model
# (the models disagree on what is "near"). Rows go with either clip (ON DELETE CASCADE).
near_duplicates = sa.Table(
    "near_duplicates", _meta,
    sa.Column("clip_id", _BigId, sa.ForeignKey("clips.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("of_clip_id", _BigId, sa.ForeignKey("clips.id", ondelete="CASCADE"), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_near_duplicates_of", "of_clip_id"),
    mysql_charset="utf8mb4",
)

# Enrolled speakers: the L2-normalised mean embedding of their enrolment clips, per model.
speakers = sa.Table(
    "speakers", _meta,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("embedding", sa.Text, nullable=False),  # JSON list of floats
    sa.Column("n_clips", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("name", "model", name="uq_speakers_name_model"),
    mysql_charset="utf8mb4",
)

# A model collection's means, one row per version (the newest is in use; older ones are kept while
# vector rows or the journal still refer to them). ``mean`` is float64 bytes; NULL: centering off.
centers = sa.Table(
    "centers", _meta,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("mean", sa.LargeBinary(2 ** 24)),  # MEDIUMBLOB on MySQL
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    mysql_charset="utf8mb4",
)

# The raw embeddings (float64 bytes) of the vectors a re-index is moving to a new mean, one chunk at a time.
recenter_journal = sa.Table(
    "recenter_journal", _meta,
    sa.Column("vector_id", _BigId, primary_key=True, autoincrement=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("raw", sa.LargeBinary(2 ** 24), nullable=False),
    sa.Column("owner", sa.String(64)),
    mysql_charset="utf8mb4",
)

#: Metadata fields search can be restricted by (``tag`` matches one of a clip's tags).
FILTER_FIELDS = ("label", "speaker", "source", "tag")


def filter_conditions(filters: dict | None) -> list:
    """SQL conditions on ``clips`` for ``{"label": .., "speaker": .., "source": .., "tag": ..}``.

    Matching is exact but case-insensitive; empty values are ignored; unknown keys are an error.
    """
    conds = []
    for key, value in (filters or {}).items():
        if key not in FILTER_FIELDS:
            raise ValueError(f"unknown filter {key!r}; use one of: {', '.join(FILTER_FIELDS)}")
        value = limits.text(value, f"{key} filter")
        if not value:
            continue
        value = value.lower()
        if key == "tag":
            # tags are a JSON list: match the quoted, JSON-escaped tag as a whole element
            needle = json.dumps(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(sa.func.lower(clips.c.tags).like(f"%{needle}%", escape="\\"))
        else:
            conds.append(sa.func.lower(clips.c[key]) == value)
    return conds


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class ClipRow:
    id: int
    sha256: str
    stored_name: str
    original_name: str
    duration_s: float
    sample_rate: int
    channels: int
    label: str | None
    speaker: str | None
    source: str | None
    tags: list[str]
    created_at: datetime

    @classmethod
    def from_row(cls, r) -> "ClipRow":
        m = r._mapping
        return cls(id=int(m["id"]), sha256=m["sha256"], stored_name=m["stored_name"],
                   original_name=m["original_name"], duration_s=float(m["duration_s"]),
                   sample_rate=int(m["sample_rate"]), channels=int(m["channels"]), label=m["label"],
                   speaker=m["speaker"], source=m["source"], tags=json.loads(m["tags"] or "[]"),
                   created_at=m["created_at"])


@dataclass
class NewClip:
    """What ingest knows about a clip before it has a row."""

    sha256: str
    stored_name: str
    original_name: str
    duration_s: float
    sample_rate: int
    channels: int
    label: str | None = None
    speaker: str | None = None
    source: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class VectorRef:
    """A vector row joined with its clip, as search returns it."""

    vector_id: int
    model: str
    seg: int
    start_s: float
    end_s: float
    clip: ClipRow
    center_version: int = 0        # the mean its vector is under (0: none)
    norm: float | None = None      # |x - mean| (None: the stored vector is the raw embedding)
    raw: object = None             # the raw embedding while a re-index rewrites it (its journal entry)


#: Seconds a MySQL connection attempt or a read/write on it may take before the server counts
#: as unreachable (a stopped server is refused at once; an unreachable host would hang for minutes).
MYSQL_TIMEOUT_S = 10


def make_engine(url: str) -> sa.engine.Engine:
    """An engine that survives a restarted server (pre-ping), gives up on an unreachable one in
    seconds, and is safe for threads on SQLite."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    args = {}
    if url.startswith("mysql+pymysql"):
        args = {"connect_timeout": MYSQL_TIMEOUT_S, "read_timeout": 60, "write_timeout": 60}
    return sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600, connect_args=args)


def _migrate(engine: sa.engine.Engine) -> None:
    """Add the columns of :data:`_ADDED_COLUMNS` that a database made by an older release lacks.

    Several processes may start at once: a column another one just added is fine.
    """
    for table, cols in _ADDED_COLUMNS.items():
        have = {c["name"] for c in sa.inspect(engine).get_columns(table)}
        for name, ddl in cols:
            if name in have:
                continue
            try:
                with engine.begin() as c:
                    c.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
            except sa.exc.DBAPIError:
                if name not in {c["name"] for c in sa.inspect(engine).get_columns(table)}:
                    raise


#: MySQL rolled the transaction back for a deadlock (1213) or a lock wait timeout (1205) with another
#: process: it had no effect and may simply run again.
_CONFLICT_CODES = {1205, 1213}


def retry_conflicts(fn):
    """Run a one-transaction method again, after a short random back-off, when MySQL rolled it back
    for a conflict with another process' transaction (several writers and recoveries share one
    database); up to 5 attempts, then the error stands."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(5):
            try:
                return fn(*args, **kwargs)
            except sa.exc.OperationalError as err:
                code = (getattr(err.orig, "args", None) or [None])[0]
                if code not in _CONFLICT_CODES or attempt == 4:
                    raise
                time.sleep(0.05 * 2 ** attempt * (1 + random.random()))
    return wrapper



def create_tables(engine: sa.engine.Engine) -> None:
    """Create the tables that are missing, then add the columns an older release lacks."""
    for attempt in range(3):  # processes starting together on an empty database race to create it
        try:
            _meta.create_all(engine)
            break
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as err:
            if attempt == 2 or "already exists" not in str(err):
                raise
    _migrate(engine)


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]

