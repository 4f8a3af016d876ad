"""Centering: one mean per model collection, subtracted from stored and query vectors.

A model's embeddings share a common direction (the mean of the collection); cosine similarity
then says more about that direction than about the clips. Subtracting the collection mean μ
before the cosine helped every speaker model and most sound models in the evaluation
(README, "Centering"). The index space of a model is therefore::

    to_index_space(x) = (x - μ) / |x - μ|       (μ = 0 when the collection has no mean)

applied at the two boundaries where an embedding enters the engine: before a vector is stored
(:mod:`search_core.writer`) and after a query is embedded (:mod:`search_core.search`).
Everything past them (``search_vector``, the stored vectors, relevance feedback on them) is in
index space. Each vector row keeps the mean version it was written under and ``|x - μ|``, so
:func:`from_index_space` gives the raw embedding back (exact up to float32 rounding of the
stored unit vector) and a re-index (:mod:`search_core.recenter`) needs no re-embedding.

The means live in SQL (table ``centers``, one row per version, the newest in use), so every
process sharing the database uses the same one. :class:`CenterRows` holds the queries; it is part
of :class:`~search_core.metadata.MetadataStore`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

import numpy as np
import sqlalchemy as sa

from .schema import READY, _chunks, centers, recenter_journal, retry_conflicts, utcnow, vectors


@dataclass(frozen=True)
class Center:
    """A model's mean in use: ``version`` 0 and ``mean`` None when it has none (or centering is off)."""

    model: str
    version: int = 0
    mean: np.ndarray | None = None   # float64; None: μ = 0
    n: int = 0                       # vectors it was estimated from
    created_at: datetime | None = None

    @property
    def on(self) -> bool:
        return self.mean is not None


def to_index_space(vecs: np.ndarray, mean: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(unit rows of x - mean as float32, |x - mean| as float64)`` for embedding rows ``vecs``.

    A row equal to the mean maps to zero (norm 0); ``mean`` None means μ = 0.
    """
    x = np.atleast_2d(np.asarray(vecs, dtype=np.float64))
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    units = x / np.maximum(norms, 1e-12)[:, None]
    return units.astype(np.float32), norms


def from_index_space(units: np.ndarray, norms: Sequence[float | None], mean: np.ndarray | None) -> np.ndarray:
    """The raw embeddings (float64 rows) of stored ``units``: ``unit * norm + mean``.

    A norm of None is a row written before centering existed: its stored vector is the raw one.
    """
    u = np.atleast_2d(np.asarray(units, dtype=np.float64))
    n = np.array([1.0 if v is None else float(v) for v in norms], dtype=np.float64)
    raw = u * n[:, None]
    return raw if mean is None else raw + np.asarray(mean, dtype=np.float64)


def _mean_bytes(mean: np.ndarray | None) -> bytes | None:
    return None if mean is None else np.asarray(mean, dtype="<f8").tobytes()


def raw_of(blob: bytes | None) -> np.ndarray | None:
    """A journal entry's raw embedding."""
    return None if blob is None else np.frombuffer(blob, dtype="<f8").copy()


def _mean_of(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype="<f8").copy()


class CenterRows:
    """The ``centers`` and ``recenter_journal`` queries, and the centering columns of ``vectors``;
    part of :class:`~search_core.metadata.MetadataStore` (which provides ``self.engine``)."""

    engine: sa.engine.Engine

    def center(self, model: str) -> Center:
        """The mean in use for ``model`` (version 0, no mean, if it never had one)."""
        q = (sa.select(centers).where(centers.c.model == model).order_by(centers.c.version.desc()).limit(1))
        with self.engine.connect() as c:
            r = c.execute(q).first()
        if r is None:
            return Center(model)
        m = r._mapping
        return Center(model, int(m["version"]), _mean_of(m["mean"]), int(m["n"]), m["created_at"])

    def center_means(self, model: str, versions: Iterable[int]) -> dict[int, np.ndarray | None]:
        """``{version: mean}`` for the given versions of ``model`` (0 and unknown ones: None)."""
        wanted = sorted({int(v) for v in versions if v})
        out: dict[int, np.ndarray | None] = {0: None}
        if wanted:
            with self.engine.connect() as c:
                for v, blob in c.execute(sa.select(centers.c.version, centers.c.mean).where(
                        centers.c.model == model, centers.c.version.in_(wanted))):
                    out[int(v)] = _mean_of(blob)
        return out

    def add_center(self, model: str, mean: np.ndarray | None, n: int) -> int:
        """Store a new mean for ``model`` (None: centering off) as its newest version; returns it."""
        for _attempt in range(5):  # two processes adding at once: the loser takes the next number
            try:
                with self.engine.begin() as c:
                    top = c.execute(sa.select(sa.func.max(centers.c.version)).where(
                        centers.c.model == model)).scalar()
                    version = int(top or 0) + 1
                    c.execute(centers.insert().values(model=model, version=version, mean=_mean_bytes(mean),
                                                      n=int(n), created_at=utcnow()))
                return version
            except sa.exc.IntegrityError:
                continue
        raise RuntimeError(f"could not store a new mean for {model}: other processes kept adding one")

    @retry_conflicts
    def drop_unused_centers(self, model: str) -> None:
        """Forget the means of ``model`` older than the one in use that no vector row refers to."""
        with self.engine.begin() as c:
            top = c.execute(sa.select(sa.func.max(centers.c.version)).where(centers.c.model == model)).scalar()
            if top is None:
                return
            used = sa.select(vectors.c.center_version).where(vectors.c.model == model,
                                                             vectors.c.center_version.is_not(None))
            c.execute(centers.delete().where(centers.c.model == model, centers.c.version < top,
                                             centers.c.version.not_in(used)))

    def delete_centers(self, model: str) -> None:
        with self.engine.begin() as c:
            c.execute(centers.delete().where(centers.c.model == model))
            c.execute(recenter_journal.delete().where(recenter_journal.c.model == model))

    def centering_of(self, vector_ids: Sequence[int]) -> dict[int, tuple[int, float | None]]:
        """``{vector id: (center version, norm)}`` of existing rows."""
        out: dict[int, tuple[int, float | None]] = {}
        with self.engine.connect() as c:
            for chunk in _chunks([int(i) for i in vector_ids]):
                for vid, v, n in c.execute(sa.select(vectors.c.id, vectors.c.center_version, vectors.c.norm)
                                           .where(vectors.c.id.in_(chunk))):
                    out[int(vid)] = (int(v or 0), None if n is None else float(n))
        return out

    def rows_behind(self, model: str, version: int, limit: int | None = None) -> list[int]:
        """Ready vector rows of ``model`` not under mean ``version`` (a re-index still has to move them)."""
        q = (sa.select(vectors.c.id).where(vectors.c.model == model, vectors.c.status == READY,
                                           sa.func.coalesce(vectors.c.center_version, 0) != int(version))
             .order_by(vectors.c.id))
        if limit:
            q = q.limit(int(limit))
        with self.engine.connect() as c:
            return [int(r[0]) for r in c.execute(q)]

    def count_behind(self, model: str, version: int) -> int:
        """How many ready vector rows of ``model`` are not under mean ``version``."""
        q = (sa.select(sa.func.count()).select_from(vectors).where(
            vectors.c.model == model, vectors.c.status == READY,
            sa.func.coalesce(vectors.c.center_version, 0) != int(version)))
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    @retry_conflicts
    def journal_put(self, model: str, raws: dict[int, np.ndarray], owner: str) -> None:
        """Record the raw embeddings of vectors about to be rewritten (replacing older entries)."""
        with self.engine.begin() as c:
            for chunk in _chunks(list(raws)):
                c.execute(recenter_journal.delete().where(recenter_journal.c.vector_id.in_(chunk)))
            if raws:
                c.execute(recenter_journal.insert(), [
                    {"vector_id": int(i), "model": model, "raw": np.asarray(r, dtype="<f8").tobytes(),
                     "owner": owner} for i, r in raws.items()])

    def journal(self, model: str | None = None, skip_owners: Iterable[str] = ()) -> dict[str, dict[int, np.ndarray]]:
        """``{model: {vector id: raw}}`` of journal entries, leaving out those of ``skip_owners``."""
        skip = list(skip_owners)
        q = sa.select(recenter_journal)
        if model:
            q = q.where(recenter_journal.c.model == model)
        if skip:
            q = q.where(sa.or_(recenter_journal.c.owner.is_(None), recenter_journal.c.owner.not_in(skip)))
        out: dict[str, dict[int, np.ndarray]] = {}
        with self.engine.connect() as c:
            for r in c.execute(q):
                m = r._mapping
                out.setdefault(m["model"], {})[int(m["vector_id"])] = raw_of(m["raw"])
        return out

    @retry_conflicts
    def set_centering(self, model: str, norms: dict[int, float], version: int) -> set[int]:
        """In one transaction: rows ``norms`` are now under mean ``version`` with those norms, and
        their journal entries go. Returns the ids whose row exists."""
        done: set[int] = set()
        with self.engine.begin() as c:
            for vid, norm in norms.items():
                if c.execute(vectors.update().where(vectors.c.id == int(vid)).values(
                        center_version=int(version), norm=float(norm))).rowcount:
                    done.add(int(vid))
            for chunk in _chunks(list(norms)):
                c.execute(recenter_journal.delete().where(recenter_journal.c.vector_id.in_(chunk)))
        return done
