"""Re-index a model's collection under a new mean (see :mod:`search_core.centering`).

:func:`recenter` estimates the mean of every ready vector of a model (their raw embeddings, which
come back exactly from the stored unit vector, the row's norm and its mean: no re-embedding),
stores it as the model's newest mean (from then on new clips and queries use it), then moves the
vectors still under an older mean, one chunk at a time, in an order no crash can break::

    one transaction: the chunk's raw embeddings into ``recenter_journal``
      -> Milvus upsert of the chunk's new unit vectors
      -> one transaction: the rows' mean version and norm, journal entries removed

A crash leaves at most one chunk in the journal: the next :func:`recenter`, or any process'
recovery (:func:`finish_journal`, for journal entries of writers that are gone), rewrites it from
the journal. Rows under an older mean stay searchable meanwhile: search re-scores them exactly
under the mean in use (:meth:`search_core.search.Search.search_vector`), so results never mix
means; a re-run of :func:`recenter` moves the rest.

Other processes: a re-index runs under this process' write lock and refuses while another
process holds a live writer lease (it could be writing under the old mean at that moment); stop
it, or re-index from that process (the page has a button).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .centering import Center, from_index_space, to_index_space
from .models import get_model
from .stores import Stores

#: Vectors rewritten per journal transaction and Milvus upsert.
CHUNK = 256
#: A model that is centered by default gets its first mean once its collection holds this many
#: vectors, and a new one each time the collection has doubled since (re-index work stays
#: below twice the number of vectors ever added).
MIN_VECTORS = 50


class RecenterRefused(RuntimeError):
    """Another process may be writing: a re-index now could leave its vectors under an old mean."""


@dataclass
class RecenterReport:
    model: str
    version: int          # the mean in use now
    on: bool              # False: the collection is searched uncentered (``recenter --off``)
    n: int                # vectors the mean was estimated from
    moved: int            # vectors rewritten
    from_journal: int     # of which finished from an interrupted re-index
    seconds: float

    def summary(self) -> str:
        what = (f"mean of {self.n} vectors (version {self.version})" if self.on
                else f"no mean (centering off, version {self.version})")
        extra = f", {self.from_journal} from an interrupted re-index" if self.from_journal else ""
        return f"{self.model}: {what}; {self.moved} vectors re-indexed{extra} in {self.seconds:.1f} s"


def centered_by_default(model: str) -> bool:
    try:
        return bool(get_model(model).info.centered)
    except (KeyError, ValueError):
        return False


def raw_vectors(st: Stores, model: str, ids) -> dict[int, np.ndarray]:
    """The raw embeddings (float64) of stored vectors ``ids`` that exist in both stores."""
    ids = [int(i) for i in ids]
    units = st.vectors.get(model, ids)
    rows = st.meta.centering_of(list(units))
    have = [i for i in ids if i in units and i in rows]
    means = st.meta.center_means(model, {rows[i][0] for i in have})
    out: dict[int, np.ndarray] = {}
    for version in {rows[i][0] for i in have}:
        mine = [i for i in have if rows[i][0] == version]
        raw = from_index_space(np.stack([units[i] for i in mine]), [rows[i][1] for i in mine], means.get(version))
        out.update(zip(mine, raw))
    return out


def _write(st: Stores, model: str, raws: dict[int, np.ndarray], center: Center) -> int:
    """Rewrite vectors ``raws`` under ``center``: journal, Milvus, rows (module docstring)."""
    if not raws:
        return 0
    ids = list(raws)
    units, norms = to_index_space(np.stack([raws[i] for i in ids]), center.mean)
    st.meta.journal_put(model, raws, st.owner)
    st.fault("recenter_after_journal")
    st.vectors.upsert(model, ids, units)
    st.fault("recenter_after_vectors")
    done = st.meta.set_centering(model, dict(zip(ids, norms.tolist())), center.version)
    gone = [i for i in ids if i not in done]
    if gone:  # deleted meanwhile: the upsert must not leave their vectors behind
        st.vectors.delete(model, gone)
    return len(done)


def finish_journal(st: Stores, model: str | None = None) -> int:
    """Rewrite the vectors an interrupted re-index left in the journal (of this process or of
    writers that are gone) under their model's mean in use; returns how many."""
    done = 0
    with st.write_lock:
        others = st.meta.live_owners() - {st.owner}
        for m, raws in st.meta.journal(model, skip_owners=others).items():
            center = st.meta.center(m)
            done += _write(st, m, raws, center)
    return done


def recenter(st: Stores, model: str, off: bool = False) -> RecenterReport:
    """Estimate ``model``'s mean from its ready vectors (``off``: store "no mean" instead), make it
    the one in use and re-index the collection under it. Raises :class:`RecenterRefused` when
    another process holds a live writer lease, ValueError for a model without vectors."""
    t0 = time.perf_counter()
    with st.write_lock:
        others = st.meta.live_owners() - {st.owner}
        if others:
            raise RecenterRefused(
                f"{len(others)} other process(es) share this library and may be writing to it; stop them "
                f"(or use the Library tab's button in the app that is running) and run recenter again")
        from_journal = finish_journal(st, model)
        ids = st.meta.vector_ids(model, "ready")
        if not ids:
            raise ValueError(f"model {model} has no vectors in the library: nothing to center")
        total, n = None, 0
        for start in range(0, len(ids), CHUNK * 4):
            raws = raw_vectors(st, model, ids[start:start + CHUNK * 4])
            if raws:
                s = np.sum(np.stack(list(raws.values())), axis=0)
                total = s if total is None else total + s
                n += len(raws)
        mean = None if off or total is None else total / max(n, 1)
        version = st.meta.add_center(model, mean, n)
        moved = move_behind(st, model)
        st.meta.drop_unused_centers(model)
    return RecenterReport(model, version, mean is not None, n, moved + from_journal, from_journal,
                          time.perf_counter() - t0)


def move_behind(st: Stores, model: str) -> int:
    """Rewrite the ready vectors of ``model`` that are not under its mean in use; returns how many."""
    moved = 0
    with st.write_lock:
        center = st.meta.center(model)
        while True:
            ids = st.meta.rows_behind(model, center.version, limit=CHUNK)
            if not ids:
                return moved
            raws = raw_vectors(st, model, ids)
            lost = [i for i in ids if i not in raws]
            if lost:  # a ready row whose vector is missing: recovery's business; do not loop on it
                raise RuntimeError(f"{len(lost)} vectors of {model} are missing from the vector store; "
                                   "run `python -m search_core recover`, then recenter again")
            moved += _write(st, model, raws, center)


def due(st: Stores, model: str) -> bool:
    """Whether ``model`` should get a new mean now: it is centered by default (or was centered
    on purpose) and has no mean yet but :data:`MIN_VECTORS` vectors, or twice as many as its mean
    was estimated from. Never after ``recenter --off``."""
    center = st.meta.center(model)
    if center.version and not center.on:
        return False
    if not center.on and not centered_by_default(model):
        return False
    count = st.meta.count_vectors(model)
    return count >= max(MIN_VECTORS, 2 * center.n)
