"""The library service: joins audio, models, the vector store and the metadata store.

Write order (so that no fault leaves a vector without its row, or a row without its vector,
and search never shows a half-written clip)::

    ingest:  per clip of a batch: copy file into the library (temp name, then atomic rename)
               -> one transaction: clip row (if new) + vector rows, status 'pending'
             -> one Milvus upsert with the batch's ids
             -> one transaction: the batch's rows 'ready'   (search shows only 'ready')
    delete:  one transaction: status 'deleting'          (hidden from search at once)
             -> Milvus delete -> one transaction: delete rows -> remove the file

:meth:`LibraryService.recover` (run on start-up, after a failed write, and on demand) finishes
or rolls back whatever a fault interrupted, one clip-and-model at a time: pending rows whose
vectors all exist become ready, otherwise all of that clip's rows and vectors for the model go;
'deleting' rows are deleted; ready rows whose vector the store lost are rolled back (a rerun
re-adds them); ready clips whose file is gone are removed (and named); Milvus vectors without
rows, clip rows without vectors, library files without rows and temp files are removed. A
healthy clip is never touched.

Several processes may share one Milvus server, one MySQL and one library folder. Each holds a
lease (:class:`~search_core.metadata.WriterLease`) and stamps its unfinished rows and temp files
with its owner id; recovery only acts on the work of writers whose lease expired or whose process
is gone, and removes an unknown library file only when no other writer is live or the file is
older than the lease. A store that stops answering surfaces as :class:`ServiceUnavailable`.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import audio as audio_mod
from . import duplicates, limits
from .audio import AudioError
from .config import Settings, env_flag, get_settings
from .faults import _faults_reported, service_fault
from .metadata import (BUSY, DELETING, PENDING, READY, ClipRow, MetadataStore, NewClip, WriterLease, filter_conditions,
                       pid_alive)
from .models import EmbeddingModel, get_model, model_names
from .speakers import SpeakerRegistry
from .vectors import VectorHit, VectorStore, collection_name

ProgressFn = Callable[[int, int, str], None]  # (done, total, current name)

#: A metadata filter matching at most this many vectors is searched exactly: SQL gives the ids,
#: Milvus their vectors, numpy the cosine. A broader one is applied in the SQL join to hits
#: over-fetched in proportion to its selectivity. Pushing ``id in [...]`` (or a scalar-field
#: filter) into Milvus' HNSW search loses matches on sealed segments when the filter is
#: selective (4 of 10 found at ef 64 in Milvus Lite 2.6); see benchmarks/filter_bench.py.
FILTER_EXACT_MAX = 4096
#: Milvus' largest top-k.
MAX_FETCH = 16_384
#: An import batch holds at most this much audio (by the headers) besides its first file, so that
#: long recordings are not decoded sixteen at a time: with the batch being embedded, the next one
#: decoding and the last one writing, an import holds at most three batches of mono audio at the
#: model's rate (3 x max(this, MAX_DURATION_S) x rate x 4 bytes).
BATCH_AUDIO_S = 600.0

_TMP_PREFIX = ".tmp-"


@dataclass
class IngestItem:
    """The outcome for one file: ``added``, ``exists`` or ``error`` (with a one-line reason)."""

    name: str
    status: str
    clip_id: int | None = None
    message: str = ""
    duplicate_of: int | None = None   # an added clip that is a near-duplicate of this clip id
    duplicate_score: float | None = None


@dataclass
class IngestReport:
    model: str
    items: list[IngestItem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def added(self) -> list[IngestItem]:
        return [i for i in self.items if i.status == "added"]

    @property
    def existing(self) -> list[IngestItem]:
        return [i for i in self.items if i.status == "exists"]

    @property
    def errors(self) -> list[IngestItem]:
        return [i for i in self.items if i.status == "error"]

    @property
    def near_duplicates(self) -> list[IngestItem]:
        return [i for i in self.items if i.duplicate_of is not None]

    def summary(self) -> str:
        text = (f"{len(self.added)} added, {len(self.existing)} already in the library, "
                f"{len(self.errors)} rejected ({self.model}, {self.seconds:.1f} s)")
        if self.near_duplicates:
            text += f"; {len(self.near_duplicates)} marked as near-duplicates of earlier clips"
        return text


@dataclass
class Hit:
    """One search result: a clip, its best-matching segment and its score."""

    rank: int
    clip: ClipRow
    vector_id: int
    score: float          # cosine similarity of unit vectors, in [-1, 1]
    start_s: float
    end_s: float
    path: Path            # the stored copy in the library (always playable)
    segments: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, score)

    @property
    def distance(self) -> float:
        """Cosine distance, ``1 - score``."""
        return 1.0 - self.score

    @property
    def is_segment(self) -> bool:
        return self.start_s > 0.0 or self.end_s < self.clip.duration_s - 1e-3


@dataclass
class SearchResult:
    model: str
    query: audio_mod.Audio
    hits: list[Hit]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RecoveryReport:
    completed: int = 0
    rolled_back: int = 0
    deleted_rows: int = 0
    orphan_clips: int = 0
    orphan_files: int = 0
    orphan_vectors: int = 0
    missing_files: int = 0   # ready clips whose library file was gone: removed (names in ``removed``)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(vars(self).values())


def clean_text(value: str | None, limit: int = limits.MAX_TEXT) -> str | None:
    """Metadata text as stored: control characters removed, NFC, trimmed, length-limited.

    Values typed by people are checked against their bound first (:mod:`search_core.limits`);
    this cut only guards values that never passed a check.
    """
    if value is None:
        return None
    return limits.clean(value)[:limit] or None


def clean_name(name: str) -> str:
    """A display name from an uploaded or imported name: its last path part, never a path
    (its length is checked per file by :func:`search_core.limits.name`)."""
    base = re.split(r"[\\/]", str(name))[-1]
    return limits.clean(base) or "unnamed"


def _checked(name: str, meta: dict | None) -> tuple[str, dict] | IngestItem:
    """A file's display name and metadata within their bounds, or an error item saying which is not."""
    try:
        return limits.name(name), limits.clip_metadata(meta)
    except ValueError as err:
        shown = name if len(name) <= 80 else name[:77] + "..."
        return IngestItem(shown, "error", message=f"{shown}: {err}")


class LibraryService:
    """Ingest, search, browse, delete and recover. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings | None = None, *, recover: bool = True):
        self.settings = settings or get_settings()
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.library_dir.mkdir(parents=True, exist_ok=True)
        self.library_dir = s.library_dir
        self._write_lock = threading.RLock()
        self.fingerprints = duplicates.FingerprintCache()
        self.meta = self.lease = self.vectors = None
        try:
            self.meta = MetadataStore(s.database_url)
            self.lease = WriterLease(self.meta, s.writer_lease_s)  # other processes' recovery leaves our work alone
            self.vectors = VectorStore(s.milvus_uri, s.index_type, timeout=s.milvus_timeout_s)
            self.speakers = SpeakerRegistry(self)  # enrol / identify / list / delete voiceprints
            if recover:
                self.recover()
        except Exception as err:
            fault = service_fault(err, s)
            self.close()
            if fault is None or fault is err:
                raise
            raise fault from err

    def close(self) -> None:
        for part in (self.lease, self.vectors, self.meta):
            if part is not None:
                part.close()

    @property
    def owner(self) -> str:
        """This service's writer id: its unfinished rows carry it (see :class:`WriterLease`)."""
        return self.lease.owner

    # -- models -------------------------------------------------------------------------
    @staticmethod
    def models() -> list[str]:
        return model_names()

    @staticmethod
    def model(name: str) -> EmbeddingModel:
        return get_model(name)

    # -- ingest -------------------------------------------------------------------------
    def ingest_file(self, path: str | os.PathLike, model: str, *, name: str | None = None,
                    label: str | None = None, speaker: str | None = None, source: str | None = None,
                    tags: Sequence[str] = ()) -> IngestItem:
        """Ingest one file; bad input raises :class:`AudioError` and changes nothing."""
        meta = {"label": label, "speaker": speaker, "source": source, "tags": list(tags)}
        report = self.ingest_files([path], model, names=[name] if name else None, metadata=[meta])
        item = report.items[0]
        if item.status == "error":
            raise AudioError(item.name, item.message.split(": ", 1)[-1])
        return item

    def ingest_files(self, paths: Sequence[str | os.PathLike], model: str, *,
                     names: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
                     progress: ProgressFn | None = None, batch_size: int = 16,
                     workers: int = 2) -> IngestReport:
        """Ingest many files in batches: decode the next batch in a thread pool, embed this one, write the last one.

        A bad file is reported (name and reason) and skipped; the others are indexed.
        ``names`` are display names (default: each file's base name); ``metadata`` holds per
        file ``label``/``speaker``/``source``/``tags``.
        """
        t0 = time.perf_counter()
        m = get_model(model)
        m.load()  # a missing model fails here, before any file is touched
        collection_name(model)
        names = [clean_name(n) for n in names] if names else [clean_name(audio_mod.display_name(p)) for p in paths]
        metadata = list(metadata) if metadata else [{} for _ in paths]
        if not (len(names) == len(paths) == len(metadata)):
            raise ValueError("paths, names and metadata must have the same length")
        report = IngestReport(model)
        # a name or metadata value over its bound rejects that file before it is read
        checked = [_checked(n, m) for n, m in zip(names, metadata)]
        report.items.extend(c for c in checked if isinstance(c, IngestItem))
        keep = [i for i, c in enumerate(checked) if not isinstance(c, IngestItem)]
        paths = [paths[i] for i in keep]
        names = [checked[i][0] for i in keep]
        metadata = [checked[i][1] for i in keep]
        try:
            self._ingest_batches(paths, m, names, metadata, progress, batch_size, workers, report)
        except Exception as err:
            fault = service_fault(err, self.settings)
            if fault is None:
                raise
            raise fault.with_stored(len(report.added)) from err
        report.seconds = time.perf_counter() - t0
        return report

    def _ingest_batches(self, paths, m: EmbeddingModel, names, metadata, progress: ProgressFn | None,
                        batch_size: int, workers: int, report: IngestReport) -> None:
        """The pipeline of :meth:`ingest_files`; items land in ``report`` batch by batch."""
        model = m.info.name
        total = len(paths)
        done = 0

        def finish(storing: Future) -> None:
            nonlocal done
            items = storing.result()  # a failed write raises here, after what it rolled back
            report.items.extend(items)
            done += len(items)
            if progress:
                progress(done, total, items[-1].name if items else "")

        # three stages overlap: the next batch is decoded (thread pool) and the current one embedded
        # (here) while the previous one is written (one writer thread, so writes keep their order)
        batches = plan_batches([_header_seconds(p) for p in paths], batch_size, BATCH_AUDIO_S)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as writer:
            def submit(idx: range) -> list:
                return [pool.submit(self._prepare, paths[i], names[i], m) for i in idx]

            ahead = submit(batches[0]) if batches else []
            storing: Future | None = None
            for n, idx in enumerate(batches):
                prepared = [f.result() for f in ahead]
                ahead = submit(batches[n + 1]) if n + 1 < len(batches) else []
                staged = self._embed_batch(prepared, m)
                if storing is not None:
                    finish(storing)
                storing = writer.submit(self._store_batch, staged, [metadata[i] for i in idx], model)
            if storing is not None:
                finish(storing)

    def _prepare(self, path, name: str, m: EmbeddingModel):
        """Validate + decode + hash one file (no writes). Returns a dict or an IngestItem error."""
        s = self.settings
        try:
            a = audio_mod.load(path, m.info.sample_rate, max_bytes=s.max_upload_bytes,
                               max_duration_s=s.max_duration_s, max_samples=s.max_decode_samples, name=name)
            audio_mod.check_min_duration(a, m.info.min_duration_s, m.info.name, name)
            sha = audio_mod.sha256_of(path)
        except AudioError as err:
            return IngestItem(name, "error", message=str(err))
        except OSError as err:
            return IngestItem(name, "error", message=f"{name}: cannot read file ({err.strerror or err})")
        return {"path": Path(path), "name": name, "audio": a, "sha": sha}

    def _embed_batch(self, prepared: list, m: EmbeddingModel) -> list:
        """Embed a decoded batch (no writes). Returns per file an :class:`IngestItem` (error, or
        content already indexed) or ``(prep, segment bounds, vectors)``."""
        model = m.info.name
        staged: list = []
        todo = []  # (position, prep, segment bounds)
        seen: set[str] = set()
        for p in prepared:
            if isinstance(p, IngestItem):
                staged.append(p)
                continue
            existing = self.meta.clip_by_sha(p["sha"])
            if (existing and self.meta.has_ready(existing.id, model)) or p["sha"] in seen:
                cid = existing.id if existing else None
                staged.append(IngestItem(p["name"], "exists", cid, f"{p['name']}: already in the library"))
                continue
            seen.add(p["sha"])
            a = p["audio"]
            bounds = audio_mod.segment_bounds(len(a.samples), a.sample_rate, *segment_params(m.info))
            todo.append((len(staged), p, bounds))
            staged.append(None)
        if todo:
            emb = m.embed([p["audio"].samples[s:e] for _, p, bounds in todo for s, e in bounds])
            offset = 0
            for pos, p, bounds in todo:
                staged[pos] = (p, bounds, emb[offset:offset + len(bounds)])
                offset += len(bounds)
        return staged

    def _store_batch(self, staged: list, metadata: list[dict], model: str) -> list[IngestItem]:
        """Write an embedded batch (see :meth:`_write_batch`), then mark its near-duplicates."""
        items = list(staged)
        entries = [(pos, *x) for pos, x in enumerate(staged) if not isinstance(x, IngestItem)]
        if entries:
            written = self._write_batch(entries, metadata, model)
            for pos, item, _vecs, _a in written:
                items[pos] = item
            self._mark_near_duplicates([(item, vecs, a, staged[pos][0]["sha"]) for pos, item, vecs, a in written
                                        if item.status == "added"], model)
        return items

    def _write_batch(self, entries: list, metadata: list[dict], model: str) -> list:
        """Write a batch of embedded clips in the documented order, under the write lock.

        Per clip: copy the file, then one transaction for its clip row and ``pending`` vector
        rows. Then, for the whole batch, one Milvus upsert and one transaction marking the rows
        ``ready`` (a per-clip upsert and status commit cost more than the embedding of a small
        model; benchmarks/bench_ingest.py). A failure rolls the unfinished clips back (here, or
        by start-up recovery); clips of earlier batches stay. Returns ``(position, item,
        vectors, audio)`` per entry.
        """
        out, begun = [], []  # begun: (position, name, clip_id, vector ids, vectors, audio)
        ready: set[int] = set()
        with self._write_lock:
            try:
                self.lease.renew()  # a starved heartbeat thread must not let this write's lease lapse
                if self._unrecovered:  # a store was down when an earlier write failed: finish that first
                    self.recover(sweep_vectors=False)
                for pos, p, bounds, vecs in entries:
                    a: audio_mod.Audio = p["audio"]
                    meta = metadata[pos]
                    try:
                        # the same content may already be stored (for another model, under another
                        # extension): reuse that file so no second, orphaned copy is made
                        known = self.meta.clip_by_sha(p["sha"])
                        stored = self._store_file(p["path"], p["sha"], p["name"],
                                                  known.stored_name if known else None)
                    except AudioError as err:
                        out.append((pos, IngestItem(p["name"], "error", message=str(err)), vecs, a))
                        continue
                    self._fault("before_rows")
                    new = NewClip(sha256=p["sha"], stored_name=stored, original_name=p["name"],
                                  duration_s=round(a.duration_s, 3), sample_rate=a.source_rate,
                                  channels=a.source_channels, label=clean_text(meta.get("label")),
                                  speaker=clean_text(meta.get("speaker")), source=clean_text(meta.get("source")),
                                  tags=[t for t in (clean_text(x, 64) for x in meta.get("tags") or []) if t])
                    segments = [(s / a.sample_rate, e / a.sample_rate) for s, e in bounds]
                    began = self.meta.begin_ingest(new, model, segments, owner=self.owner)
                    if began is None:  # e.g. a copy of a clip the previous batch wrote
                        out.append((pos, IngestItem(p["name"], "exists", known.id if known else None,
                                                    f"{p['name']}: already in the library"), vecs, a))
                        continue
                    if began == BUSY:
                        out.append((pos, IngestItem(p["name"], "error", message=f"{p['name']}: another process "
                                                    "is adding or deleting it right now; run the same command "
                                                    "again to check"), vecs, a))
                        continue
                    begun.append((pos, p["name"], began[0], began[1], vecs, a))
                if begun:
                    self._fault("after_rows")
                    ids = [i for b in begun for i in b[3]]
                    self.vectors.upsert(model, ids, np.concatenate([b[4] for b in begun]))
                    self._fault("after_vectors")
                    ready = self.meta.set_status(ids, READY)
                    self._fault("after_ready")
                    lost = [i for i in ids if i not in ready]
                    if lost:  # rolled back under us (our lease lapsed): their vectors are orphans now
                        self.vectors.delete(model, sorted(set(lost) - self.meta.existing_rows(lost)))
            except BaseException:
                self._recover_after_error()
                raise
        for pos, name, cid, vids, vecs, a in begun:
            if all(i in ready for i in vids):
                out.append((pos, IngestItem(name, "added", cid), vecs, a))
            else:  # never report "added" for a clip that is not searchable
                out.append((pos, IngestItem(name, "error", message=f"{name}: not stored (another process "
                                            "rolled the write back); run the same command again"), vecs, a))
        return sorted(out, key=lambda t: t[0])

    def _recover_after_error(self) -> None:
        """Best effort, right after a failed write: finish or roll back what it left behind.

        If this fails too (the store is down), start-up recovery does it later.
        """
        try:
            self.recover(sweep_vectors=False)
        except Exception:
            self._unrecovered = True

    def _mark_near_duplicates(self, added: list, model: str) -> None:
        """Mark each just-added clip ``(item, vecs, audio, sha256)`` as a near-duplicate of its best
        match if that reaches the threshold (see :mod:`search_core.duplicates`); the candidates of
        the whole batch come from one vector search. ``NEAR_DUPLICATE_CHECK=0`` turns it off."""
        if not env_flag("NEAR_DUPLICATE_CHECK"):
            return
        added = [x for x in added if x[2].duration_s <= duplicates.MAX_FINGERPRINT_S]
        found = duplicates.candidates_many(self, model, [(vecs, a.duration_s, None, item.clip_id)
                                                         for item, vecs, a, _sha in added])
        for (item, vecs, a, sha256), cands in zip(added, found):
            fp = duplicates.fingerprint(a.samples, a.sample_rate)  # from memory: no decode
            self.fingerprints.put(item.clip_id, sha256, fp)
            match = duplicates.best_match(self, model, vecs, a.samples, a.sample_rate, before_clip=item.clip_id,
                                          fp=fp, cache=self.fingerprints, found=cands)
            if match is not None and match.score >= duplicates.threshold_for(model):
                # a copy of a copy is marked against the group's original, so that deleting one
                # copy leaves the others marked
                of = self.meta.near_duplicate_of(match.clip.id, model) or match.clip.id
                self.meta.mark_near_duplicate(item.clip_id, model, of, match.score)
                item.duplicate_of, item.duplicate_score = of, match.score

    def duplicate_groups(self, model: str | None = None) -> list[duplicates.DuplicateGroup]:
        """Groups of near-duplicate clips (marked at ingest), largest first, per model."""
        pairs = self.meta.near_duplicate_pairs(model)
        clips = self.meta.clips_by_id({i for a, b, _, _ in pairs for i in (a, b)})
        out = []
        for m, groups in duplicates.group_pairs(pairs).items():
            for root, members in groups:
                if root in clips:
                    out.append(duplicates.DuplicateGroup(m, clips[root], [(clips[c], sc) for c, sc in members
                                                                          if c in clips]))
        return sorted(out, key=lambda g: (-g.size, g.model, g.original.id))

    def _store_file(self, src: Path, sha: str, name: str, stored: str | None = None) -> str:
        """Copy ``src`` into the library as ``stored`` or ``<sha><ext>`` (atomic; a no-op when present)."""
        if stored is None:
            ext = Path(name).suffix.lower()
            ext = ext if ext in audio_mod.AUDIO_EXTENSIONS else ".bin"
            stored = f"{sha}{ext}"
        dest = self.library_dir / stored
        if dest.exists():
            try:  # a file without a row yet: renew its grace period so no recovery sweeps it now
                os.utime(dest)
                return stored
            except FileNotFoundError:  # swept just now: copy it again
                pass
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{self.owner}-", dir=self.library_dir)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
                self._fault("during_copy")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return stored

    #: An earlier write failed and could not be cleaned up at once (a store was down).
    _unrecovered = False

    #: Test hook: set to a callable(step) to inject faults at named steps.
    fault_hook: Callable[[str], None] | None = None

    def _fault(self, step: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(step)

    def ingest_folder(self, folder: str | os.PathLike, model: str, *, manifest: str | os.PathLike | None = None,
                      progress: ProgressFn | None = None, recursive: bool = True) -> IngestReport:
        """Ingest every audio file under ``folder`` (symlinks leading outside it are refused).

        ``manifest``: an optional CSV with a ``path`` column (relative to the CSV) and any of
        ``label``, ``speaker``, ``source``, ``tags`` (``;``-separated); only its files are read.
        """
        root = Path(limits.folder(folder)).resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"{folder}: not a folder")
        report = IngestReport(model)
        paths: list[Path] = []
        metas: list[dict] = []
        if manifest:
            entries = read_manifest(manifest)
            for rel, meta in entries:
                paths.append(Path(rel))
                metas.append(meta)
        else:
            walker = root.rglob("*") if recursive else root.glob("*")
            for p in sorted(walker):
                if p.suffix.lower() in audio_mod.AUDIO_EXTENSIONS and not p.name.startswith("."):
                    paths.append(p)
                    metas.append({})
        ok_paths, ok_names, ok_meta = [], [], []
        for p, meta in zip(paths, metas):
            name = clean_name(p.name)
            try:
                real = p.resolve(strict=True)
            except (OSError, RuntimeError):
                report.items.append(IngestItem(name, "error", message=f"{name}: file not found"))
                continue
            if not manifest and not real.is_relative_to(root):
                report.items.append(IngestItem(name, "error",
                                               message=f"{name}: links outside the import folder; refused"))
                continue
            if real.is_dir():
                if manifest:  # a walked folder named like a file is just walked into
                    report.items.append(IngestItem(name, "error", message=f"{name}: is a directory, "
                                                                          "not an audio file"))
                continue
            ok_paths.append(real)
            ok_names.append(name)
            ok_meta.append(meta)
        sub = self.ingest_files(ok_paths, model, names=ok_names, metadata=ok_meta, progress=progress)
        report.items.extend(sub.items)
        report.seconds = sub.seconds
        return report

    # -- search -------------------------------------------------------------------------
    def embed_query(self, query: audio_mod.Audio | str | os.PathLike, model: str) -> tuple[audio_mod.Audio, np.ndarray]:
        """The query as searched and its embedding.

        Only the first ``Settings.max_query_s`` seconds of a longer query are decoded and embedded
        (``Audio.is_part`` and ``Audio.source_duration_s`` say so), which bounds the memory and the
        compute of one search; a query shorter than the model's ``min_duration_s`` is refused.
        """
        m = get_model(model)
        m.load()
        s = self.settings
        if isinstance(query, audio_mod.Audio):
            q = query.first(s.max_query_s)
            a = q if q.sample_rate == m.info.sample_rate else audio_mod.Audio(
                audio_mod.resample(q.samples, q.sample_rate, m.info.sample_rate),
                m.info.sample_rate, q.source_rate, q.source_channels, q.source_duration_s)
            name = "query"
        else:
            name = audio_mod.display_name(query)
            a = audio_mod.load(query, m.info.sample_rate, max_bytes=s.max_upload_bytes, max_duration_s=s.max_duration_s,
                               max_part_s=s.max_query_s, max_samples=s.max_decode_samples)
        audio_mod.check_min_duration(a, m.info.min_duration_s, m.info.name, name)
        return a, m.embed([a.samples])[0]

    @_faults_reported
    def search(self, query: audio_mod.Audio | str | os.PathLike, model: str, k: int = 10,
               filters: dict | None = None) -> SearchResult:
        """The ``k`` clips most similar to ``query`` (a path or decoded audio), best first.

        Long recordings are indexed as segments; hits from one file are grouped into one result
        (its best segment first, the others in ``Hit.segments``). ``filters`` restricts the
        search to clips whose ``label``/``speaker``/``source`` equals, or whose tags contain
        (``tag``), the given value (case-insensitive; empty values are ignored).
        """
        k = limits.top_k(k)
        filter_conditions(filters)  # unknown filter keys fail before the query is embedded
        t0 = time.perf_counter()
        a, vec = self.embed_query(query, model)
        t1 = time.perf_counter()
        hits = self.search_vector(vec, model, k, filters=filters)
        t2 = time.perf_counter()
        return SearchResult(model, a, hits, {"embed": t1 - t0, "search": t2 - t1, "total": t2 - t0})

    @_faults_reported
    def search_vector(self, vec: np.ndarray, model: str, k: int = 10, filters: dict | None = None,
                      exclude_clip: int | None = None) -> list[Hit]:
        """Search with an embedding; joins ready metadata rows and groups segments by clip.

        With ``filters``, SQL resolves which vectors may match. A selective filter (at most
        :data:`FILTER_EXACT_MAX` vectors) is searched exactly over that subset; a broad one is
        applied in the SQL join to hits over-fetched in proportion to its selectivity. See
        ``benchmarks/filter_bench.py`` for why this beats a Milvus filter here.
        """
        filters = {key: v for key, v in (filters or {}).items() if v is not None and str(v).strip()}
        filter_conditions(filters)
        post_filters: dict | None = None
        fetch = int(k) * 3 + 10
        search = lambda n: self.vectors.search(model, vec[None, :], n)[0]  # noqa: E731
        if filters:
            allowed = self.meta.filtered_vector_ids(model, filters, limit=FILTER_EXACT_MAX)
            if not allowed:
                return []
            if len(allowed) <= FILTER_EXACT_MAX:
                search = lambda n: exact_search(self.vectors.get(model, allowed), vec, n)  # noqa: E731
            else:
                post_filters = filters
                share = self.meta.count_filtered(model, filters) / max(1, self.meta.count_vectors(model))
                fetch = min(MAX_FETCH, int(fetch / max(share, 1e-6) * 1.5))
        grouped: dict[int, Hit] = {}
        while True:  # over-fetch until k distinct clips are found (segments of one file share a clip)
            raw = search(fetch)
            refs = self.meta.ready_refs([h.id for h in raw], post_filters)
            grouped = {}
            for h in raw:
                ref = refs.get(h.id)
                if ref is None:
                    continue  # not ready (being written or deleted): never shown
                cid = ref.clip.id
                if cid == exclude_clip:
                    continue
                if cid not in grouped:
                    grouped[cid] = Hit(0, ref.clip, h.id, h.score, ref.start_s, ref.end_s,
                                       self.library_dir / ref.clip.stored_name)
                grouped[cid].segments.append((ref.start_s, ref.end_s, h.score))
            if len(grouped) >= k or len(raw) < fetch or fetch >= MAX_FETCH:
                break
            fetch = min(fetch * 4, MAX_FETCH)
        # a clip deleted since the rows were read has lost its file: it drops out, it is never a broken hit
        hits = [h for h in sorted(grouped.values(), key=lambda h: -h.score) if h.path.is_file()][:k]
        for r, h in enumerate(hits, 1):
            h.rank = r
        return hits

    def warm_up(self, model: str) -> bool:
        """Load ``model`` and run one tiny embedding, so the first real search is not the slow one.

        Returns False (and changes nothing) when the model's weights are not available.
        """
        try:
            m = get_model(model)
            if not m.status().ready and not m.loaded:
                return False
            noise = np.random.default_rng(0).standard_normal(m.info.sample_rate).astype(np.float32) * 0.1
            m.embed([noise])
            return True
        except Exception:  # warming is best effort; a real request reports the error
            return False

    # -- browse / delete ----------------------------------------------------------------
    @_faults_reported
    def count(self, model: str | None = None) -> int:
        return self.meta.count_clips(model)

    @_faults_reported
    def counts(self) -> dict[str, int]:
        return self.meta.counts_by_model()

    @_faults_reported
    def list_clips(self, model: str | None = None, query: str = "", offset: int = 0, limit: int = 50):
        """Newest first, ``limit`` clips from ``offset``; ``query`` matches name, label, speaker or source."""
        query = limits.text(query, "browse text") or ""
        offset = limits.whole_number(offset, "list offset", 0, limits.MAX_PAGE * limits.MAX_LIST)
        limit = limits.whole_number(limit, "list length", 1, limits.MAX_LIST)
        return self.meta.list_clips(model, query, offset, limit)

    def clip_path(self, clip: ClipRow) -> Path:
        return self.library_dir / clip.stored_name

    @_faults_reported
    def delete_clip(self, clip_id: int) -> bool:
        """Delete a clip from every model's collection and the library. False if unknown."""
        clip_id = limits.clip_id(clip_id)
        with self._write_lock:
            clip = self.meta.clip(clip_id)
            if clip is None:
                return False
            by_model = self.meta.mark_clip_deleting(clip.id, owner=self.owner)
            try:  # once marked, the delete is rolled forward, here or by start-up recovery
                self._fault("delete_after_mark")
                for model, ids in by_model.items():
                    self.vectors.delete(model, ids)
                self._fault("delete_after_vectors")
                self.meta.delete_clip(clip.id)
                self._fault("delete_after_rows")
                self._remove_file(clip.stored_name)
            except BaseException:
                self._recover_after_error()
                raise
        return True

    @_faults_reported
    def drop_model(self, model: str) -> int:
        """Drop a model's collection and its rows; clips left with no vectors go too."""
        collection_name(model)
        with self._write_lock:
            ids = self.meta.mark_model_deleting(model, owner=self.owner)
            try:
                self.meta.delete_near_duplicates(model)
                self.vectors.drop(model)
                self.meta.delete_vector_rows(ids)
                for clip in self.meta.delete_clips_without_vectors():
                    self._remove_file(clip.stored_name)
            except BaseException:
                self._recover_after_error()
                raise
        return len(ids)

    def _remove_file(self, stored_name: str) -> None:
        p = (self.library_dir / stored_name)
        if p.parent == self.library_dir:
            p.unlink(missing_ok=True)

    # -- recovery -----------------------------------------------------------------------
    @_faults_reported
    def recover(self, sweep_vectors: bool = True) -> RecoveryReport:
        """Finish or roll back interrupted writes; remove orphans of every kind.

        Several processes may share the stores: only unfinished rows that are this process' own,
        have no owner, or whose owner's lease expired are touched; unknown library files are
        removed only once older than the lease (a live writer copies its file before its rows);
        a vector is an orphan only if it has no row after the vectors were listed (a live writer
        writes its rows before its vectors). A ready clip whose file is gone is removed whole
        and named in the report (its content cannot be restored from here; ingest it again).
        """
        rep = RecoveryReport()
        with self._write_lock:
            self._forget_dead_writers()
            by_model: dict[str, dict[str, list[int]]] = {}
            for vid, model, status in self.meta.unfinished(owner=self.owner):
                by_model.setdefault(model, {}).setdefault(status, []).append(vid)
            for model, groups in by_model.items():
                pending = groups.get(PENDING, [])
                if pending:
                    present = self.vectors.existing_ids(model, pending)
                    # a clip is complete only if every one of its segments made it; otherwise
                    # the whole clip is rolled back (no half-indexed clip ever becomes ready)
                    done, undo = [], []
                    for ids in self.meta.vector_groups(pending).values():
                        (done if all(i in present for i in ids) else undo).extend(ids)
                    rep.completed += len(self.meta.set_status(done, READY))
                    self.vectors.delete(model, [i for i in undo if i in present])
                    self.meta.delete_vector_rows(undo)
                    rep.rolled_back += len(undo)
                deleting = groups.get(DELETING, [])
                if deleting:
                    self.vectors.delete(model, deleting)
                    self.meta.delete_vector_rows(deleting)
                    rep.deleted_rows += len(deleting)
            if sweep_vectors:
                for model in self.vectors.collections():
                    ready_rows = set(self.meta.vector_ids(model, READY))  # before the vectors: each has one
                    have = self.vectors.all_ids(model)
                    extra = sorted(have - self.meta.existing_rows(have))  # rows read after the vectors
                    if extra:
                        self.vectors.delete(model, extra)
                        rep.orphan_vectors += len(extra)
                    lost = sorted(ready_rows - have)  # ready rows whose vector the store lost
                    if lost:
                        undo = [i for ids in self.meta.vector_groups(lost).values() for i in ids]
                        self.vectors.delete(model, [i for i in undo if i in have])
                        self.meta.delete_vector_rows(undo)
                        rep.rolled_back += len(undo)
            self._remove_clips_without_files(rep)
            for clip in self.meta.delete_clips_without_vectors():
                self._remove_file(clip.stored_name)
                rep.orphan_clips += 1
            self._sweep_files(rep)
            self.meta.drop_expired_leases()
            self._unrecovered = False
        return rep

    def _remove_clips_without_files(self, rep: RecoveryReport) -> None:
        """Delete (vectors first, then rows) every clip whose library file is gone, unless a live
        writer is still working on it."""
        missing = {cid: name for cid, name in self.meta.clip_files().items() if not (self.library_dir / name).exists()}
        if not missing:
            return
        busy = self.meta.live_clip_ids(self.owner)
        for cid in sorted(set(missing) - busy):
            if (self.library_dir / missing[cid]).exists():  # re-check: it may have just been written
                continue
            clip = self.meta.clip(cid)
            if clip is None:
                continue
            for model, ids in self.meta.mark_clip_deleting(cid, owner=self.owner).items():
                self.vectors.delete(model, ids)
            self.meta.delete_clip(cid)
            rep.missing_files += 1
            rep.removed.append(clip.original_name)

    def _forget_dead_writers(self) -> None:
        """Drop the leases of writers on this machine whose process is gone (a kill -9): their
        work need not wait for the lease to run out."""
        for owner, host, pid in self.meta.leases():
            if owner != self.owner and host == self.lease.host and not pid_alive(pid):
                self.meta.drop_lease(owner)

    def _sweep_files(self, rep: RecoveryReport) -> None:
        """Remove library files that are not a clip's: temp files of writers that are not live
        (their name carries the owner), and files without a row. A live writer's copy has no
        row for a moment, so while other writers are live only files older than the lease go;
        the rows are read again just before removing."""
        others = self.meta.live_owners() - {self.owner}
        cutoff = time.time() - self.settings.writer_lease_s if others else float("inf")

        def stray(p: Path, known: set[str]) -> bool:
            if p.name.startswith(_TMP_PREFIX):
                return p.name[len(_TMP_PREFIX):].split("-", 1)[0] not in others
            return p.name not in known and _mtime(p) < cutoff

        known = self.meta.stored_names()
        found = [p for p in self.library_dir.iterdir() if p.is_file() and stray(p, known)]
        if not found:
            return
        known = self.meta.stored_names()
        for p in found:
            if stray(p, known):
                p.unlink(missing_ok=True)
                rep.orphan_files += 1

    @_faults_reported
    def check(self) -> dict[str, int]:
        """Consistency figures: rows without vectors, vectors without rows, files without rows."""
        out = {"rows_without_vectors": 0, "vectors_without_rows": 0, "unfinished_rows": 0,
               "files_without_rows": 0, "rows_without_files": 0}
        models = set(self.meta.models_in_use()) | set(self.vectors.collections())
        for model in models:
            rows = set(self.meta.vector_ids(model))
            vecs = self.vectors.all_ids(model)
            out["rows_without_vectors"] += len(rows - vecs)
            out["vectors_without_rows"] += len(vecs - rows)
        out["unfinished_rows"] = len(self.meta.unfinished())
        known = self.meta.stored_names()
        files = {p.name for p in self.library_dir.iterdir() if p.is_file()}
        out["files_without_rows"] = len(files - known)
        out["rows_without_files"] = len(known - files)
        return out


def _header_seconds(path) -> float:
    """A file's length by its header, 0 when unknown (a bad file is reported later, by ingest)."""
    try:
        p = Path(path)
        return audio_mod.probe(p).duration_s if p.is_file() and os.access(p, os.R_OK) else 0.0
    except Exception:
        return 0.0


def plan_batches(seconds: Sequence[float], batch_size: int, max_audio_s: float) -> list[range]:
    """Consecutive ranges of at most ``batch_size`` files whose lengths add up to at most
    ``max_audio_s`` (a longer file is a batch of its own)."""
    out, start, total = [], 0, 0.0
    for i, sec in enumerate(seconds):
        if i > start and (i - start >= batch_size or total + sec > max_audio_s):
            out.append(range(start, i))
            start, total = i, 0.0
        total += sec
    if start < len(seconds):
        out.append(range(start, len(seconds)))
    return out


def _mtime(path: Path) -> float:
    """Modification time, or +inf for a file that is gone (never "old enough" to remove)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def exact_search(stored: dict[int, np.ndarray], vec: np.ndarray, k: int) -> list[VectorHit]:
    """Top-``k`` of ``{id: unit vector}`` by cosine similarity with ``vec``, best first."""
    if not stored:
        return []
    ids = np.fromiter(stored.keys(), dtype=np.int64, count=len(stored))
    scores = np.stack(list(stored.values())) @ np.asarray(vec, dtype=np.float32)
    top = np.argsort(-scores, kind="stable")[:int(k)]
    return [VectorHit(int(ids[i]), float(scores[i])) for i in top]


def segment_params(info, env: dict | None = None) -> tuple[float, float]:
    """``(window_s, hop_s)`` for cutting long recordings for the model described by ``info``.

    Defaults come from the model (``ModelInfo.window_s``/``hop_s``). The environment overrides
    them for every model (``SEGMENT_WINDOW_S``, ``SEGMENT_HOP_S``) or for one
    (``SEGMENT_WINDOW_S_<MODEL>``, e.g. ``SEGMENT_WINDOW_S_MFCC_STATS``); the per-model value wins.
    """
    env = os.environ if env is None else env
    out = []
    for var, default in (("SEGMENT_WINDOW_S", info.window_s), ("SEGMENT_HOP_S", info.hop_s)):
        value = default
        for key in (var, f"{var}_{info.name.upper()}"):
            raw = str(env.get(key, "")).strip()
            if raw:
                try:
                    value = float(raw)
                except ValueError:
                    raise ValueError(f"environment variable {key}={raw!r} is not a number") from None
                if not 0 < value <= 3600:
                    raise ValueError(f"environment variable {key}={raw!r} must be between 0 and 3600 seconds")
        out.append(value)
    window, hop = out
    if hop > window:
        raise ValueError(f"segment hop ({hop} s) is longer than the window ({window} s) for {info.name}: "
                         "parts of long recordings would not be indexed")
    return window, hop


def read_manifest(manifest: str | os.PathLike) -> list[tuple[Path, dict]]:
    """Read a CSV manifest: ``path`` (relative to the CSV) plus optional metadata columns."""
    manifest = Path(manifest)
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{manifest.name}: a manifest needs a 'path' column")
        out = []
        for row in reader:
            meta = {k: row.get(k) for k in ("label", "speaker", "source") if row.get(k)}
            if row.get("tags"):
                meta["tags"] = [t for t in row["tags"].split(";") if t.strip()]
            out.append((manifest.parent / row["path"], meta))
    return out
