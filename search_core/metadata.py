"""Metadata store on SQLAlchemy Core: SQLite by default, MySQL/MariaDB through pymysql by URL.

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

Only bound parameters reach SQL.
"""
from __future__ import annotations

import functools
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

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
_ADDED_COLUMNS = {"vectors": [("owner", "VARCHAR(64)")]}

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


class MetadataStore:
    """Rows for clips and vectors. Every method is one short transaction."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        for attempt in range(3):  # processes starting together on an empty database race to create it
            try:
                _meta.create_all(self.engine)
                break
            except (sa.exc.OperationalError, sa.exc.ProgrammingError) as err:
                if attempt == 2 or "already exists" not in str(err):
                    raise
        _migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- clips ---------------------------------------------------------------------------
    def clip_by_sha(self, sha256: str) -> ClipRow | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(clips).where(clips.c.sha256 == sha256)).first()
        return ClipRow.from_row(r) if r else None

    def clip(self, clip_id: int) -> ClipRow | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(clips).where(clips.c.id == int(clip_id))).first()
        return ClipRow.from_row(r) if r else None

    def has_ready(self, clip_id: int, model: str) -> bool:
        with self.engine.connect() as c:
            q = sa.select(sa.func.count()).select_from(vectors).where(
                vectors.c.clip_id == clip_id, vectors.c.model == model, vectors.c.status == READY)
            return c.execute(q).scalar_one() > 0

    @retry_conflicts
    def begin_ingest(self, new: NewClip, model: str, segments: Sequence[tuple[float, float]],
                     owner: str | None = None) -> tuple[int, list[int]] | str | None:
        """Insert the clip (if new) and one ``pending`` vector row per segment owned by ``owner``,
        in one transaction.

        Returns ``(clip_id, vector_ids)``, None if this content already has ready vectors for
        ``model`` (ingest is idempotent), or :data:`BUSY` if its rows for ``model`` are unfinished
        (another writer's, or an interrupted write recovery has not handled yet). Another process inserting the same content at the same
        moment makes the first attempt fail on the unique sha256; the second finds its row.
        """
        try:
            return self._begin_ingest(new, model, segments, owner)
        except sa.exc.IntegrityError:
            return self._begin_ingest(new, model, segments, owner)

    def _begin_ingest(self, new: NewClip, model: str, segments: Sequence[tuple[float, float]],
                      owner: str | None) -> tuple[int, list[int]] | str | None:
        now = utcnow()
        with self.engine.begin() as c:
            r = c.execute(sa.select(clips.c.id).where(clips.c.sha256 == new.sha256)).first()
            if r is None:
                clip_id = c.execute(clips.insert().values(
                    sha256=new.sha256, stored_name=new.stored_name, original_name=new.original_name,
                    duration_s=new.duration_s, sample_rate=new.sample_rate, channels=new.channels,
                    label=new.label, speaker=new.speaker, source=new.source,
                    tags=json.dumps(list(new.tags)), created_at=now)).inserted_primary_key[0]
            else:
                clip_id = r[0]
                statuses = {r[0] for r in c.execute(sa.select(vectors.c.status).distinct().where(
                    vectors.c.clip_id == clip_id, vectors.c.model == model))}
                if statuses:
                    return None if statuses == {READY} else BUSY
            ids = []
            for seg, (start, end) in enumerate(segments):
                ids.append(c.execute(vectors.insert().values(
                    clip_id=clip_id, model=model, seg=seg, start_s=float(start), end_s=float(end),
                    status=PENDING, created_at=now, owner=owner)).inserted_primary_key[0])
        return int(clip_id), [int(i) for i in ids]

    @retry_conflicts
    def set_status(self, vector_ids: Iterable[int], status: str) -> set[int]:
        """Set the status of rows; returns the ids that have ``status`` now.

        Only ``pending`` rows become ``ready`` (a row being deleted never comes back). A pending
        row another process rolled back (deleted) is not among the ids returned: its clip was
        not stored."""
        ids = [int(i) for i in vector_ids]
        out: set[int] = set()
        with self.engine.begin() as c:
            for chunk in _chunks(ids):
                cond = [vectors.c.id.in_(chunk)] + ([vectors.c.status == PENDING] if status == READY else [])
                c.execute(vectors.update().where(*cond).values(status=status))
                out.update(int(r[0]) for r in c.execute(
                    sa.select(vectors.c.id).where(vectors.c.id.in_(chunk), vectors.c.status == status)))
        return out

    def existing_rows(self, vector_ids: Iterable[int]) -> set[int]:
        """Which of ``vector_ids`` have a row (any status)."""
        out: set[int] = set()
        with self.engine.connect() as c:
            for chunk in _chunks([int(i) for i in vector_ids]):
                out.update(int(r[0]) for r in c.execute(sa.select(vectors.c.id).where(vectors.c.id.in_(chunk))))
        return out

    @retry_conflicts
    def mark_clip_deleting(self, clip_id: int, owner: str | None = None) -> dict[str, list[int]]:
        """Hide a clip from search by marking all its vectors ``deleting``; returns ids per model."""
        with self.engine.begin() as c:
            c.execute(vectors.update().where(vectors.c.clip_id == clip_id).values(status=DELETING, owner=owner))
            rows = c.execute(sa.select(vectors.c.id, vectors.c.model).where(vectors.c.clip_id == clip_id)).all()
        out: dict[str, list[int]] = {}
        for vid, model in rows:
            out.setdefault(model, []).append(int(vid))
        return out

    @retry_conflicts
    def mark_model_deleting(self, model: str, owner: str | None = None) -> list[int]:
        with self.engine.begin() as c:
            c.execute(vectors.update().where(vectors.c.model == model).values(status=DELETING, owner=owner))
            return [int(r[0]) for r in c.execute(sa.select(vectors.c.id).where(vectors.c.model == model))]

    @retry_conflicts
    def delete_vector_rows(self, vector_ids: Iterable[int]) -> None:
        ids = [int(i) for i in vector_ids]
        with self.engine.begin() as c:
            for chunk in _chunks(ids):
                c.execute(vectors.delete().where(vectors.c.id.in_(chunk)))

    @retry_conflicts
    def delete_clips_without_vectors(self) -> list[ClipRow]:
        """Delete clip rows that no vector row refers to; returns them (their files can go)."""
        with self.engine.begin() as c:
            orphan_q = sa.select(clips).where(~sa.exists().where(vectors.c.clip_id == clips.c.id))
            rows = [ClipRow.from_row(r) for r in c.execute(orphan_q)]
            for chunk in _chunks([r.id for r in rows]):
                c.execute(clips.delete().where(clips.c.id.in_(chunk)))
        return rows

    @retry_conflicts
    def delete_clip(self, clip_id: int) -> ClipRow | None:
        """Delete a clip and all its vector rows in one transaction."""
        with self.engine.begin() as c:
            r = c.execute(sa.select(clips).where(clips.c.id == clip_id)).first()
            if r is None:
                return None
            c.execute(vectors.delete().where(vectors.c.clip_id == clip_id))
            c.execute(clips.delete().where(clips.c.id == clip_id))
        return ClipRow.from_row(r)

    # -- reads ---------------------------------------------------------------------------
    def ready_refs(self, vector_ids: Sequence[int], filters: dict | None = None) -> dict[int, VectorRef]:
        """Join ready vector rows with their clips; ids that are not ready (or whose clip does
        not match ``filters``, see :func:`filter_conditions`) are left out."""
        ids = [int(i) for i in vector_ids]
        out: dict[int, VectorRef] = {}
        if not ids:
            return out
        conds = filter_conditions(filters)
        with self.engine.connect() as c:
            for chunk in _chunks(ids):
                q = (sa.select(vectors.c.id.label("vid"), vectors.c.model, vectors.c.seg, vectors.c.start_s,
                               vectors.c.end_s, clips)
                     .join(clips, clips.c.id == vectors.c.clip_id)
                     .where(vectors.c.id.in_(chunk), vectors.c.status == READY, *conds))
                for r in c.execute(q):
                    m = r._mapping
                    out[int(m["vid"])] = VectorRef(int(m["vid"]), m["model"], int(m["seg"]),
                                                   float(m["start_s"]), float(m["end_s"]), ClipRow.from_row(r))
        return out

    def count_clips(self, model: str | None = None) -> int:
        """Clips with at least one ready vector (for ``model``, or for any model)."""
        cond = [vectors.c.status == READY] + ([vectors.c.model == model] if model else [])
        q = sa.select(sa.func.count(sa.distinct(vectors.c.clip_id))).where(*cond)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def count_vectors(self, model: str, status: str | None = READY) -> int:
        cond = [vectors.c.model == model] + ([vectors.c.status == status] if status else [])
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(vectors).where(*cond)).scalar_one())

    def counts_by_model(self) -> dict[str, int]:
        q = (sa.select(vectors.c.model, sa.func.count(sa.distinct(vectors.c.clip_id)))
             .where(vectors.c.status == READY).group_by(vectors.c.model))
        with self.engine.connect() as c:
            return {m: int(n) for m, n in c.execute(q)}

    def list_clips(self, model: str | None = None, query: str = "", offset: int = 0,
                   limit: int = 50) -> list[tuple[ClipRow, list[str]]]:
        """Newest first: clips with ready vectors (for ``model`` if given) and their models.

        ``query`` filters by a case-insensitive substring of the name, label, speaker or source.
        """
        cond = [vectors.c.status == READY] + ([vectors.c.model == model] if model else [])
        has = sa.exists().where(vectors.c.clip_id == clips.c.id, *cond)
        q = sa.select(clips).where(has)
        if query:  # a literal substring: '%' and '_' in the text match only themselves
            q = q.where(sa.or_(*[sa.func.lower(col).contains(query.lower(), autoescape=True) for col in
                                 (clips.c.original_name, clips.c.label, clips.c.speaker, clips.c.source)]))
        q = q.order_by(clips.c.id.desc()).offset(max(0, int(offset))).limit(max(1, int(limit)))
        with self.engine.connect() as c:
            rows = [ClipRow.from_row(r) for r in c.execute(q)]
            if not rows:
                return []
            mq = (sa.select(vectors.c.clip_id, vectors.c.model).distinct()
                  .where(vectors.c.clip_id.in_([r.id for r in rows]), vectors.c.status == READY))
            models: dict[int, list[str]] = {}
            for cid, m in c.execute(mq):
                models.setdefault(int(cid), []).append(m)
        return [(r, sorted(models.get(r.id, []))) for r in rows]

    def vector_ids(self, model: str, status: str | None = None) -> list[int]:
        cond = [vectors.c.model == model] + ([vectors.c.status == status] if status else [])
        with self.engine.connect() as c:
            return [int(r[0]) for r in c.execute(sa.select(vectors.c.id).where(*cond))]

    def unfinished(self, owner: str | None = None) -> list[tuple[int, str, str]]:
        """``(vector_id, model, status)`` of every row that is not ready.

        With ``owner`` (for recovery): only the rows that are ``owner``'s own, have no owner, or
        whose owner's lease has expired; another live writer's rows are left out.
        """
        q = sa.select(vectors.c.id, vectors.c.model, vectors.c.status).where(vectors.c.status != READY)
        if owner is not None:
            q = q.where(sa.or_(vectors.c.owner.is_(None), vectors.c.owner == owner,
                               ~self._live_lease(vectors.c.owner)))
        with self.engine.connect() as c:
            return [(int(i), m, s) for i, m, s in c.execute(q)]

    @staticmethod
    def _live_lease(owner_col):
        return sa.exists().where(writers.c.owner == owner_col, writers.c.expires_at > utcnow())

    def live_clip_ids(self, owner: str) -> set[int]:
        """Clips with unfinished rows of another writer whose lease is live (recovery leaves them alone)."""
        q = sa.select(vectors.c.clip_id).distinct().where(
            vectors.c.status != READY, vectors.c.owner.is_not(None), vectors.c.owner != owner,
            self._live_lease(vectors.c.owner))
        with self.engine.connect() as c:
            return {int(r[0]) for r in c.execute(q)}

    # -- writers' leases -----------------------------------------------------------------
    @retry_conflicts
    def renew_lease(self, owner: str, host: str, pid: int, seconds: float) -> None:
        """Create or extend ``owner``'s lease to ``seconds`` from now."""
        expires = utcnow() + timedelta(seconds=float(seconds))
        with self.engine.begin() as c:
            n = c.execute(writers.update().where(writers.c.owner == owner).values(expires_at=expires)).rowcount
            if not n:
                c.execute(writers.insert().values(owner=owner, host=host[:255], pid=int(pid), expires_at=expires))

    @retry_conflicts
    def drop_lease(self, owner: str) -> None:
        with self.engine.begin() as c:
            c.execute(writers.delete().where(writers.c.owner == owner))

    def leases(self) -> list[tuple[str, str, int]]:
        """``(owner, host, pid)`` of every writer with a lease row (live or expired)."""
        with self.engine.connect() as c:
            return [(o, h, int(p)) for o, h, p in c.execute(sa.select(writers.c.owner, writers.c.host, writers.c.pid))]

    def live_owners(self) -> set[str]:
        """Owners whose lease has not expired."""
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(sa.select(writers.c.owner).where(writers.c.expires_at > utcnow()))}

    @retry_conflicts
    def drop_expired_leases(self) -> int:
        """Forget writers whose lease expired (after recovery has handled their rows)."""
        with self.engine.begin() as c:
            return int(c.execute(writers.delete().where(writers.c.expires_at <= utcnow())).rowcount or 0)

    def clip_files(self) -> dict[int, str]:
        """``{clip id: stored file name}`` of every clip."""
        with self.engine.connect() as c:
            return {int(i): n for i, n in c.execute(sa.select(clips.c.id, clips.c.stored_name))}

    def vector_groups(self, vector_ids: Sequence[int]) -> dict[tuple[int, str], list[int]]:
        """Every vector row id of each (clip, model) that one of ``vector_ids`` belongs to.

        Recovery treats such a group (all segments of one clip for one model) as one unit.
        """
        ids = [int(i) for i in vector_ids]
        keys: set[tuple[int, str]] = set()
        with self.engine.connect() as c:
            for chunk in _chunks(ids):
                q = sa.select(vectors.c.clip_id, vectors.c.model).distinct().where(vectors.c.id.in_(chunk))
                keys.update((int(cid), m) for cid, m in c.execute(q))
            out: dict[tuple[int, str], list[int]] = {}
            for chunk in _chunks(sorted({cid for cid, _ in keys})):
                q = sa.select(vectors.c.id, vectors.c.clip_id, vectors.c.model).where(vectors.c.clip_id.in_(chunk))
                for vid, cid, m in c.execute(q):
                    if (int(cid), m) in keys:
                        out.setdefault((int(cid), m), []).append(int(vid))
        return out

    def models_in_use(self) -> list[str]:
        with self.engine.connect() as c:
            return sorted(r[0] for r in c.execute(sa.select(vectors.c.model).distinct()))

    def stored_names(self) -> set[str]:
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(sa.select(clips.c.stored_name))}

    # -- metadata filters ----------------------------------------------------------------
    def filtered_vector_ids(self, model: str, filters: dict | None, limit: int | None = None) -> list[int]:
        """Ids of ``model``'s ready vectors whose clip matches ``filters`` (see :func:`filter_conditions`).

        With ``limit``, at most ``limit + 1`` ids are returned (enough to tell "more than limit").
        """
        q = (sa.select(vectors.c.id).join(clips, clips.c.id == vectors.c.clip_id)
             .where(vectors.c.model == model, vectors.c.status == READY, *filter_conditions(filters)))
        if limit is not None:
            q = q.limit(int(limit) + 1)
        with self.engine.connect() as c:
            return [int(r[0]) for r in c.execute(q)]

    def count_filtered(self, model: str, filters: dict | None) -> int:
        """How many of ``model``'s ready vectors belong to clips matching ``filters``."""
        q = (sa.select(sa.func.count()).select_from(vectors).join(clips, clips.c.id == vectors.c.clip_id)
             .where(vectors.c.model == model, vectors.c.status == READY, *filter_conditions(filters)))
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    # -- near-duplicates -----------------------------------------------------------------
    @retry_conflicts
    def mark_near_duplicate(self, clip_id: int, model: str, of_clip_id: int, score: float) -> None:
        """Record that ``clip_id`` is a near-duplicate of ``of_clip_id`` under ``model`` (replaces)."""
        with self.engine.begin() as c:
            c.execute(near_duplicates.delete().where(near_duplicates.c.clip_id == int(clip_id),
                                                     near_duplicates.c.model == model))
            c.execute(near_duplicates.insert().values(clip_id=int(clip_id), model=model, of_clip_id=int(of_clip_id),
                                                      score=float(score), created_at=utcnow()))

    def near_duplicate_pairs(self, model: str | None = None) -> list[tuple[int, int, str, float]]:
        """``(clip_id, of_clip_id, model, score)`` of every mark (for ``model`` if given)."""
        q = sa.select(near_duplicates.c.clip_id, near_duplicates.c.of_clip_id, near_duplicates.c.model,
                      near_duplicates.c.score)
        if model:
            q = q.where(near_duplicates.c.model == model)
        with self.engine.connect() as c:
            return [(int(a), int(b), m, float(sc)) for a, b, m, sc in c.execute(q.order_by(near_duplicates.c.clip_id))]

    def near_duplicate_of(self, clip_id: int, model: str) -> int | None:
        """The clip ``clip_id`` is marked as a near-duplicate of under ``model``, if any."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(near_duplicates.c.of_clip_id).where(
                near_duplicates.c.clip_id == int(clip_id), near_duplicates.c.model == model)).first()
        return int(r[0]) if r else None

    @retry_conflicts
    def delete_near_duplicates(self, model: str) -> None:
        with self.engine.begin() as c:
            c.execute(near_duplicates.delete().where(near_duplicates.c.model == model))

    def clips_by_id(self, ids: Sequence[int]) -> dict[int, ClipRow]:
        out: dict[int, ClipRow] = {}
        with self.engine.connect() as c:
            for chunk in _chunks([int(i) for i in ids]):
                for r in c.execute(sa.select(clips).where(clips.c.id.in_(chunk))):
                    out[int(r._mapping["id"])] = ClipRow.from_row(r)
        return out

    # -- speakers ------------------------------------------------------------------------
    @retry_conflicts
    def save_speaker(self, name: str, model: str, embedding: Sequence[float], n_clips: int) -> None:
        """Insert or replace the enrolled speaker ``name`` for ``model``."""
        now = utcnow()
        data = json.dumps([round(float(x), 7) for x in embedding])
        with self.engine.begin() as c:
            r = c.execute(sa.select(speakers.c.id, speakers.c.created_at).where(
                speakers.c.name == name, speakers.c.model == model)).first()
            if r is None:
                c.execute(speakers.insert().values(name=name, model=model, embedding=data, n_clips=int(n_clips),
                                                   created_at=now, updated_at=now))
            else:
                c.execute(speakers.update().where(speakers.c.id == r[0]).values(
                    embedding=data, n_clips=int(n_clips), updated_at=now))

    def speaker_rows(self, model: str | None = None, name: str | None = None) -> list[dict]:
        """Enrolled speakers as dicts (name, model, embedding list, n_clips, created_at, updated_at)."""
        q = sa.select(speakers)
        if model:
            q = q.where(speakers.c.model == model)
        if name is not None:
            q = q.where(speakers.c.name == name)
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(q.order_by(speakers.c.name, speakers.c.model))]
        for r in rows:
            r["embedding"] = json.loads(r["embedding"])
        return rows

    @retry_conflicts
    def delete_speaker(self, name: str, model: str | None = None) -> int:
        """Delete an enrolled speaker (for ``model``, or for every model); returns rows deleted."""
        cond = [speakers.c.name == name] + ([speakers.c.model == model] if model else [])
        with self.engine.begin() as c:
            return int(c.execute(speakers.delete().where(*cond)).rowcount or 0)


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def machine_id() -> str:
    """This host and process namespace: processes with the same one can see each other's pids."""
    import os
    import socket

    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}"[:255]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (in this pid namespace)."""
    import os

    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLease:
    """This process' lease in the ``writers`` table, renewed by a daemon thread every third of its
    length, so that other processes' recovery leaves this process' unfinished work alone.

    A renewal that fails (the database is briefly down) is retried at the next beat; if the lease
    runs out meanwhile, other processes may roll back this one's unfinished rows, which the write
    path notices (:meth:`MetadataStore.set_status` returns fewer ids).
    """

    def __init__(self, store: MetadataStore, seconds: float):
        import os
        import threading
        import uuid

        if not seconds > 0:
            raise ValueError(f"the writer lease must be a positive number of seconds, got {seconds}")
        self.store, self.seconds = store, float(seconds)
        self.host, self.pid = machine_id(), os.getpid()
        self.owner = uuid.uuid4().hex[:16]
        self._stop = threading.Event()
        self.renew()
        self._thread = threading.Thread(target=self._beat, name="writer-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        try:
            self.store.renew_lease(self.owner, self.host, self.pid, self.seconds)
        except sa.exc.IntegrityError:  # the heartbeat inserted it at the same moment
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - retried at the next beat; see the class docstring
                pass

    def close(self) -> None:
        """Stop renewing and give the lease up (this process' work is finished or rolled back)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.drop_lease(self.owner)
        except Exception:  # noqa: BLE001 - the lease then simply expires
            pass
