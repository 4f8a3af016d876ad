"""The metadata store's queries on SQLAlchemy Core: SQLite by default, MySQL/MariaDB through
pymysql by URL. Tables, row types and migration are in :mod:`search_core.schema`; the writers'
leases in :mod:`search_core.leases`.

``clips`` and ``vectors`` make writes recoverable: a vector row is ``pending`` before its vector
is inserted, ``ready`` after, ``deleting`` while it is removed; search only ever shows ``ready``
rows. ``near_duplicates`` holds the marks ingest writes, ``speakers`` the enrolled voiceprints.
Every method is one short transaction; only bound parameters reach SQL.
"""
from __future__ import annotations

import json
from typing import Iterable, Sequence

import sqlalchemy as sa

from .centering import CenterRows, raw_of
from .leases import LeaseRows, WriterLease, machine_id, pid_alive  # noqa: F401  (re-exported)
from .schema import (BUSY, DELETING, FILTER_FIELDS, MYSQL_TIMEOUT_S, PENDING, READY, ClipRow,  # noqa: F401
                     NewClip, VectorRef, _chunks, _meta, clips, create_tables, filter_conditions, make_engine,
                     near_duplicates, recenter_journal, retry_conflicts, speakers, utcnow, vectors, writers)


class MetadataStore(LeaseRows, CenterRows):
    """Rows for clips and vectors (and writers' leases, near-duplicate marks, voiceprints).
    Every method is one short transaction."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        create_tables(self.engine)

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
                     owner: str | None = None, centering: tuple[int, Sequence[float]] | None = None
                     ) -> tuple[int, list[int]] | str | None:
        """Insert the clip (if new) and one ``pending`` vector row per segment owned by ``owner``,
        in one transaction.

        Returns ``(clip_id, vector_ids)``, None if this content already has ready vectors for
        ``model`` (ingest is idempotent), or :data:`BUSY` if its rows for ``model`` are unfinished
        (another writer's, or an interrupted write recovery has not handled yet). Another process inserting the same content at the same
        moment makes the first attempt fail on the unique sha256; the second finds its row.
        ``centering``: ``(mean version, per-segment norms)`` the vectors will be written under.
        """
        try:
            return self._begin_ingest(new, model, segments, owner, centering)
        except sa.exc.IntegrityError:
            return self._begin_ingest(new, model, segments, owner, centering)

    def _begin_ingest(self, new: NewClip, model: str, segments: Sequence[tuple[float, float]],
                      owner: str | None, centering) -> tuple[int, list[int]] | str | None:
        version, norms = centering or (None, [None] * len(segments))
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
                    status=PENDING, created_at=now, owner=owner, center_version=version,
                    norm=None if norms[seg] is None else float(norms[seg]))).inserted_primary_key[0])
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
                               vectors.c.end_s, vectors.c.center_version, vectors.c.norm,
                               recenter_journal.c.raw.label("journal_raw"), clips)
                     .join(clips, clips.c.id == vectors.c.clip_id)
                     .outerjoin(recenter_journal, recenter_journal.c.vector_id == vectors.c.id)
                     .where(vectors.c.id.in_(chunk), vectors.c.status == READY, *conds))
                for r in c.execute(q):
                    m = r._mapping
                    out[int(m["vid"])] = VectorRef(int(m["vid"]), m["model"], int(m["seg"]),
                                                   float(m["start_s"]), float(m["end_s"]), ClipRow.from_row(r),
                                                   int(m["center_version"] or 0), m["norm"],
                                                   raw_of(m["journal_raw"]))
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

    def clip_vector_ids(self, model: str, clip_ids: Sequence[int] | None = None) -> dict[int, list[int]]:
        """``{clip id: its ready vector ids for model, in segment order}`` for ``clip_ids`` (every clip
        if None); clips without any are left out."""
        q = (sa.select(vectors.c.clip_id, vectors.c.id).order_by(vectors.c.clip_id, vectors.c.seg)
             .where(vectors.c.model == model, vectors.c.status == READY))
        out: dict[int, list[int]] = {}
        with self.engine.connect() as c:
            for chunk in [None] if clip_ids is None else _chunks([int(i) for i in clip_ids]):
                for cid, vid in c.execute(q if chunk is None else q.where(vectors.c.clip_id.in_(chunk))):
                    out.setdefault(int(cid), []).append(int(vid))
        return out

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

    def live_clip_ids(self, owner: str) -> set[int]:
        """Clips with unfinished rows of another writer whose lease is live (recovery leaves them alone)."""
        q = sa.select(vectors.c.clip_id).distinct().where(
            vectors.c.status != READY, vectors.c.owner.is_not(None), vectors.c.owner != owner,
            self._live_lease(vectors.c.owner))
        with self.engine.connect() as c:
            return {int(r[0]) for r in c.execute(q)}

    # -- recovery reads --------------------------------------------------------------
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

