"""Maintenance: delete a clip, drop a model, recover from interrupted writes, check consistency.

Write order of a delete (so that no fault leaves a vector without its row, or the reverse)::

    one transaction: status 'deleting'          (hidden from search at once)
      -> Milvus delete -> one transaction: delete rows -> remove the file

:meth:`Maintenance.recover` (after a failed write, and on demand; start-up runs its cheap part,
:meth:`Maintenance.recover_at_start`, and :meth:`Maintenance.check_files` later) finishes or
rolls back whatever a fault interrupted, one clip-and-model at a time: pending rows whose vectors
all exist become ready, otherwise all of that clip's rows and vectors for the model go;
'deleting' rows are deleted; ready rows whose vector the store lost are rolled back (a rerun
re-adds them); ready clips whose file is gone are removed (and named); Milvus vectors without
rows, clip rows without vectors, library files without rows and temp files are removed. A
healthy clip is never touched.

Several processes may share the stores: recovery only acts on the work of writers whose lease
expired or whose process is gone (:mod:`search_core.leases`), and removes an unknown library
file only when no other writer is live or the file is older than the lease.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import limits
from .leases import pid_alive
from .metadata import DELETING, PENDING, READY
from .recenter import finish_journal
from .records import RecoveryReport
from .stores import TMP_PREFIX, Stores
from .vectors import collection_name


class Maintenance:
    """Delete, drop, recover and check, under the stores' write lock.

    ``on_error`` is called when a delete or drop fails half-way (the service's best-effort
    recovery; start-up recovery finishes the job otherwise).
    """

    def __init__(self, stores: Stores, on_error: Callable[[], None]):
        self.stores = stores
        self.on_error = on_error

    def delete_clip(self, clip_id: int) -> bool:
        """Delete a clip from every model's collection and the library. False if unknown."""
        clip_id = limits.clip_id(clip_id)
        st = self.stores
        with st.write_lock:
            clip = st.meta.clip(clip_id)
            if clip is None:
                return False
            by_model = st.meta.mark_clip_deleting(clip.id, owner=st.owner)
            try:  # once marked, the delete is rolled forward, here or by start-up recovery
                st.fault("delete_after_mark")
                for model, ids in by_model.items():
                    st.vectors.delete(model, ids)
                st.fault("delete_after_vectors")
                st.meta.delete_clip(clip.id)
                st.fault("delete_after_rows")
                st.remove_file(clip.stored_name)
            except BaseException:
                self.on_error()
                raise
        return True

    def drop_model(self, model: str) -> int:
        """Drop a model's collection and its rows; clips left with no vectors go too."""
        collection_name(model)
        st = self.stores
        with st.write_lock:
            ids = st.meta.mark_model_deleting(model, owner=st.owner)
            try:
                st.meta.delete_near_duplicates(model)
                st.vectors.drop(model)
                st.meta.delete_vector_rows(ids)
                st.meta.delete_centers(model)  # after its rows: until then, their raw embeddings can be read
                for clip in st.meta.delete_clips_without_vectors():
                    st.remove_file(clip.stored_name)
            except BaseException:
                self.on_error()
                raise
        return len(ids)

    def recover(self, sweep_vectors: bool = True) -> RecoveryReport:
        """Finish or roll back interrupted writes; remove orphans of every kind.

        Several processes may share the stores: only unfinished rows that are this process' own,
        have no owner, or whose owner's lease expired are touched; unknown library files are
        removed only once older than the lease (a live writer copies its file before its rows);
        a vector is an orphan only if it has no row after the vectors were listed (a live writer
        writes its rows before its vectors). A ready clip whose file is gone is removed whole
        and named in the report (its content cannot be restored from here; ingest it again).
        ``sweep_vectors=False`` skips listing every vector (after a failed write: its own rows
        say what it left).
        """
        st = self.stores
        rep = RecoveryReport()
        with st.write_lock:
            self._finish_unfinished(rep)
            if sweep_vectors:
                self._sweep_vectors(st.vectors.collections(), rep)
            self._check_files(rep)
            st.meta.drop_expired_leases()
            st.unrecovered = False
        return rep

    def recover_at_start(self) -> RecoveryReport:
        """The part of :meth:`recover` a process must do before it serves: O(unfinished writes).

        Interrupted writes are finished or rolled back as by :meth:`recover`; then each
        collection's vector count (a Strong read) is compared with its number of rows, and only
        a collection whose counts differ has every id listed and swept. Library files are not
        looked at: :meth:`check_files` does that (the app runs it in the background once its
        page is up; a missing file only hides a hit until then). Listing every id of a 1M
        collection takes minutes on a server; two counts take milliseconds.
        """
        st = self.stores
        rep = RecoveryReport()
        with st.write_lock:
            self._finish_unfinished(rep)
            self._sweep_vectors([m for m in st.vectors.collections()
                                 if st.vectors.count(m, strong=True) != st.meta.count_vectors(m, status=None)], rep)
            for clip in st.meta.delete_clips_without_vectors():
                st.remove_file(clip.stored_name)
                rep.orphan_clips += 1
            st.meta.drop_expired_leases()
            st.unrecovered = False
        return rep

    def check_files(self) -> RecoveryReport:
        """The library-file part of :meth:`recover`: clips whose file is gone are removed (and
        named), files without a row are deleted. O(library): a stat per clip, a listing of the
        library folder."""
        rep = RecoveryReport()
        with self.stores.write_lock:
            self._check_files(rep)
        return rep

    def _finish_unfinished(self, rep: RecoveryReport) -> None:
        """Pending rows whose vectors all exist become ready, otherwise the clip's rows and vectors
        for the model go; 'deleting' rows are deleted (only rows recovery may touch, see recover)."""
        st, meta, vectors = self.stores, self.stores.meta, self.stores.vectors
        self._forget_dead_writers()
        by_model: dict[str, dict[str, list[int]]] = {}
        for vid, model, status in meta.unfinished(owner=st.owner):
            by_model.setdefault(model, {}).setdefault(status, []).append(vid)
        for model, groups in by_model.items():
            pending = groups.get(PENDING, [])
            if pending:
                present = vectors.existing_ids(model, pending)
                # a clip is complete only if every one of its segments made it; otherwise
                # the whole clip is rolled back (no half-indexed clip ever becomes ready)
                done, undo = [], []
                for ids in meta.vector_groups(pending).values():
                    (done if all(i in present for i in ids) else undo).extend(ids)
                rep.completed += len(meta.set_status(done, READY))
                vectors.delete(model, [i for i in undo if i in present])
                meta.delete_vector_rows(undo)
                rep.rolled_back += len(undo)
            deleting = groups.get(DELETING, [])
            if deleting:
                vectors.delete(model, deleting)
                meta.delete_vector_rows(deleting)
                rep.deleted_rows += len(deleting)
        rep.reindexed += finish_journal(st)  # a re-index a crash interrupted (search_core.recenter)

    def _sweep_vectors(self, models, rep: RecoveryReport) -> None:
        """Vectors without a row are deleted; ready rows whose vector the store lost are rolled
        back with the rest of their clip's rows for the model (a rerun re-adds them)."""
        meta, vectors = self.stores.meta, self.stores.vectors
        for model in models:
            ready_rows = set(meta.vector_ids(model, READY))  # before the vectors: each has one
            have = vectors.all_ids(model)
            extra = sorted(have - meta.existing_rows(have))  # rows read after the vectors
            if extra:
                vectors.delete(model, extra)
                rep.orphan_vectors += len(extra)
            lost = sorted(ready_rows - have)  # ready rows whose vector the store lost
            if lost:
                undo = [i for ids in meta.vector_groups(lost).values() for i in ids]
                vectors.delete(model, [i for i in undo if i in have])
                meta.delete_vector_rows(undo)
                rep.rolled_back += len(undo)

    def _check_files(self, rep: RecoveryReport) -> None:
        self._remove_clips_without_files(rep)
        for clip in self.stores.meta.delete_clips_without_vectors():
            self.stores.remove_file(clip.stored_name)
            rep.orphan_clips += 1
        self._sweep_files(rep)

    def _remove_clips_without_files(self, rep: RecoveryReport) -> None:
        """Delete (vectors first, then rows) every clip whose library file is gone, unless a live
        writer is still working on it."""
        st, meta, lib = self.stores, self.stores.meta, self.stores.library_dir
        missing = {cid: name for cid, name in meta.clip_files().items() if not (lib / name).exists()}
        if not missing:
            return
        busy = meta.live_clip_ids(st.owner)
        for cid in sorted(set(missing) - busy):
            if (lib / missing[cid]).exists():  # re-check: it may have just been written
                continue
            clip = meta.clip(cid)
            if clip is None:
                continue
            for model, ids in meta.mark_clip_deleting(cid, owner=st.owner).items():
                st.vectors.delete(model, ids)
            meta.delete_clip(cid)
            rep.missing_files += 1
            rep.removed.append(clip.original_name)

    def _forget_dead_writers(self) -> None:
        """Drop the leases of writers on this machine whose process is gone (a kill -9): their
        work need not wait for the lease to run out."""
        st = self.stores
        for owner, host, pid in st.meta.leases():
            if owner != st.owner and host == st.lease.host and not pid_alive(pid):
                st.meta.drop_lease(owner)

    def _sweep_files(self, rep: RecoveryReport) -> None:
        """Remove library files that are not a clip's: temp files of writers that are not live
        (their name carries the owner), and files without a row. A live writer's copy has no
        row for a moment, so while other writers are live only files older than the lease go;
        the rows are read again just before removing."""
        st, meta = self.stores, self.stores.meta
        others = meta.live_owners() - {st.owner}
        cutoff = time.time() - st.settings.writer_lease_s if others else float("inf")

        def stray(p: Path, known: set[str]) -> bool:
            if p.name.startswith(TMP_PREFIX):
                return p.name[len(TMP_PREFIX):].split("-", 1)[0] not in others
            return p.name not in known and _mtime(p) < cutoff

        known = meta.stored_names()
        found = [p for p in st.library_dir.iterdir() if p.is_file() and stray(p, known)]
        if not found:
            return
        known = meta.stored_names()
        for p in found:
            if stray(p, known):
                p.unlink(missing_ok=True)
                rep.orphan_files += 1

    def check(self) -> dict[str, int]:
        """Consistency figures: rows without vectors, vectors without rows, files without rows."""
        meta, vectors = self.stores.meta, self.stores.vectors
        out = {"rows_without_vectors": 0, "vectors_without_rows": 0, "unfinished_rows": 0,
               "files_without_rows": 0, "rows_without_files": 0}
        models = set(meta.models_in_use()) | set(vectors.collections())
        for model in models:
            rows = set(meta.vector_ids(model))
            vecs = vectors.all_ids(model)
            out["rows_without_vectors"] += len(rows - vecs)
            out["vectors_without_rows"] += len(vecs - rows)
        out["unfinished_rows"] = len(meta.unfinished())
        known = meta.stored_names()
        files = {p.name for p in self.stores.library_dir.iterdir() if p.is_file()}
        out["files_without_rows"] = len(files - known)
        out["rows_without_files"] = len(known - files)
        return out


def _mtime(path: Path) -> float:
    """Modification time, or +inf for a file that is gone (never "old enough" to remove)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
