"""Ingest's writer: one embedded batch into the stores, in an order no fault can break, then its
near-duplicate marks.

Write order (so that no fault leaves a vector without its row, or a row without its vector, and
search never shows a half-written clip)::

    per clip of a batch: copy file into the library (temp name, then atomic rename)
                         -> one transaction: clip row (if new) + vector rows, status 'pending'
    -> one Milvus upsert with the batch's ids (in index space: minus the model's mean, see
       :mod:`search_core.centering`; the rows say under which mean, and the norm)
    -> one transaction: the batch's rows 'ready'   (search shows only 'ready')

Unfinished rows and temp files carry this process' writer id (:mod:`search_core.leases`); what a
fault leaves is finished or rolled back by :meth:`Maintenance.recover <search_core.maintenance.Maintenance.recover>`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import audio as audio_mod
from . import duplicates
from .audio import AudioError
from .centering import to_index_space
from .config import env_flag
from .metadata import BUSY, READY, NewClip
from .records import IngestItem, RecoveryReport, clean_text
from .stores import TMP_PREFIX, Stores


class MarkingFailed(Exception):
    """A batch was written (its clips are searchable) but marking its near-duplicates failed:
    ``items`` are the batch's outcomes, to be counted as stored; ``error`` is what failed."""

    def __init__(self, items: list[IngestItem], error: Exception):
        super().__init__(str(error))
        self.items, self.error = items, error


class Writer:
    """Writes embedded batches (one at a time: the ingest pipeline gives it one thread).

    ``on_error`` is called when a write fails half-way (best-effort recovery right away);
    ``recover`` first, when an earlier failure could not be cleaned up (``Stores.unrecovered``).
    """

    def __init__(self, stores: Stores, fingerprints: duplicates.FingerprintCache, on_error: Callable[[], None],
                 recover: Callable[..., RecoveryReport]):
        self.stores, self.fingerprints = stores, fingerprints
        self.on_error, self.recover = on_error, recover

    def store_batch(self, staged: list, metadata: list[dict], model: str) -> list[IngestItem]:
        """Write an embedded batch (see :meth:`write_batch`), then mark its near-duplicates.

        Raises :class:`MarkingFailed` (with the batch's outcomes) when the write went through but
        the marking did not (Milvus gone between the two): its clips are in the library."""
        items = list(staged)
        entries = [(pos, *x) for pos, x in enumerate(staged) if not isinstance(x, IngestItem)]
        if entries:
            written = self.write_batch(entries, metadata, model)
            for pos, item, _vecs, _a in written:
                items[pos] = item
            try:
                self.mark_near_duplicates([(item, vecs, a, staged[pos][0]["sha"]) for pos, item, vecs, a in written
                                           if item.status == "added"], model)
            except Exception as err:
                raise MarkingFailed(items, err) from err
        return items

    def write_batch(self, entries: list, metadata: list[dict], model: str) -> list:
        """Write a batch of embedded clips in the documented order, under the write lock.

        Per clip: copy the file, then one transaction for its clip row and ``pending`` vector
        rows. Then, for the whole batch, one Milvus upsert and one transaction marking the rows
        ``ready`` (a per-clip upsert and status commit cost more than the embedding of a small
        model; benchmarks/bench_ingest.py). A failure rolls the unfinished clips back (here, or
        by start-up recovery); clips of earlier batches stay. Returns ``(position, item,
        vectors, audio)`` per entry.
        """
        st, meta = self.stores, self.stores.meta
        out, begun = [], []  # begun: (position, name, clip_id, vector ids, vectors, audio, stored units)
        ready: set[int] = set()
        with st.write_lock:
            try:
                st.lease.renew()  # a starved heartbeat thread must not let this write's lease lapse
                if st.unrecovered:  # a store was down when an earlier write failed: finish that first
                    self.recover(sweep_vectors=False)
                # read under the lock: a re-index in this process waits; one in another process may
                # add a newer mean meanwhile, and these rows then say they are under this one
                center = meta.center(model)
                for pos, p, bounds, vecs in entries:
                    a: audio_mod.Audio = p["audio"]
                    meta_in = metadata[pos]
                    try:
                        # the same content may already be stored (for another model, under another
                        # extension): reuse that file so no second, orphaned copy is made
                        known = meta.clip_by_sha(p["sha"])
                        stored = self.store_file(p["path"], p["sha"], p["name"],
                                                 known.stored_name if known else None)
                    except AudioError as err:
                        out.append((pos, IngestItem(p["name"], "error", message=str(err)), vecs, a))
                        continue
                    st.fault("before_rows")
                    new = NewClip(sha256=p["sha"], stored_name=stored, original_name=p["name"],
                                  duration_s=round(a.duration_s, 3), sample_rate=a.source_rate,
                                  channels=a.source_channels, label=clean_text(meta_in.get("label")),
                                  speaker=clean_text(meta_in.get("speaker")), source=clean_text(meta_in.get("source")),
                                  tags=[t for t in (clean_text(x, 64) for x in meta_in.get("tags") or []) if t])
                    segments = [(s / a.sample_rate, e / a.sample_rate) for s, e in bounds]
                    units, norms = to_index_space(vecs, center.mean)
                    began = meta.begin_ingest(new, model, segments, owner=st.owner,
                                              centering=(center.version, list(norms)))
                    if began is None:  # e.g. a copy of a clip the previous batch wrote
                        out.append((pos, IngestItem(p["name"], "exists", known.id if known else None,
                                                    f"{p['name']}: already in the library"), vecs, a))
                        continue
                    if began == BUSY:
                        out.append((pos, IngestItem(p["name"], "error", message=f"{p['name']}: another process "
                                                    "is adding or deleting it right now; run the same command "
                                                    "again to check"), vecs, a))
                        continue
                    begun.append((pos, p["name"], began[0], began[1], vecs, a, units))
                if begun:
                    st.fault("after_rows")
                    ids = [i for b in begun for i in b[3]]
                    st.vectors.upsert(model, ids, np.concatenate([b[6] for b in begun]))
                    st.fault("after_vectors")
                    ready = meta.set_status(ids, READY)
                    st.fault("after_ready")
                    lost = [i for i in ids if i not in ready]
                    if lost:  # rolled back under us (our lease lapsed): their vectors are orphans now
                        st.vectors.delete(model, sorted(set(lost) - meta.existing_rows(lost)))
            except BaseException:
                self.on_error()
                raise
        for pos, name, cid, vids, vecs, a, _units in begun:
            if all(i in ready for i in vids):
                out.append((pos, IngestItem(name, "added", cid), vecs, a))
            else:  # never report "added" for a clip that is not searchable
                out.append((pos, IngestItem(name, "error", message=f"{name}: not stored (another process "
                                            "rolled the write back); run the same command again"), vecs, a))
        return sorted(out, key=lambda t: t[0])

    def store_file(self, src: Path, sha: str, name: str, stored: str | None = None) -> str:
        """Copy ``src`` into the library as ``stored`` or ``<sha><ext>`` (atomic; a no-op when present)."""
        st = self.stores
        if stored is None:
            ext = Path(name).suffix.lower()
            ext = ext if ext in audio_mod.AUDIO_EXTENSIONS else ".bin"
            stored = f"{sha}{ext}"
        dest = st.library_dir / stored
        if dest.exists():
            try:  # a file without a row yet: renew its grace period so no recovery sweeps it now
                os.utime(dest)
                return stored
            except FileNotFoundError:  # swept just now: copy it again
                pass
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{st.owner}-", dir=st.library_dir)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
                st.fault("during_copy")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return stored

    def mark_near_duplicates(self, added: list, model: str) -> None:
        """Mark each just-added clip ``(item, vecs, audio, sha256)`` as a near-duplicate of its best
        match if that reaches the threshold (see :mod:`search_core.duplicates`); the candidates of
        the whole batch come from one vector search. ``NEAR_DUPLICATE_CHECK=0`` turns it off."""
        if not env_flag("NEAR_DUPLICATE_CHECK"):
            return
        st = self.stores
        added = [x for x in added if x[2].duration_s <= duplicates.MAX_FINGERPRINT_S]
        found = duplicates.candidates_many(st, model, [(vecs, a.duration_s, None, item.clip_id)
                                                       for item, vecs, a, _sha in added])
        for (item, vecs, a, sha256), cands in zip(added, found):
            fp = duplicates.fingerprint(a.samples, a.sample_rate)  # from memory: no decode
            self.fingerprints.put(item.clip_id, sha256, fp)
            match = duplicates.best_match(st, model, vecs, a.samples, a.sample_rate, before_clip=item.clip_id,
                                          fp=fp, cache=self.fingerprints, found=cands)
            if match is not None and match.score >= duplicates.threshold_for(model):
                # a copy of a copy is marked against the group's original, so that deleting one
                # copy leaves the others marked
                of = st.meta.near_duplicate_of(match.clip.id, model) or match.clip.id
                st.meta.mark_near_duplicate(item.clip_id, model, of, match.score)
                item.duplicate_of, item.duplicate_score = of, match.score
