"""Ingest: files in, decoded, checked and embedded in batches, handed to the writer.

Three stages overlap: the next batch is decoded (a thread pool), this one embedded (here), the
last one written (:class:`~search_core.writer.Writer`, on one thread so writes keep their order).
A bad file is reported (name and reason) and skipped; the others are indexed. Also here: which
files a folder import or a CSV manifest means.
"""
from __future__ import annotations

import csv
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from . import audio as audio_mod
from . import limits
from .audio import AudioError
from .embedding import segment_params
from .faults import service_fault
from .models import EmbeddingModel
from .records import IngestItem, IngestReport, ProgressFn, clean_name
from .stores import Stores
from .vectors import collection_name
from .writer import MarkingFailed, Writer

#: An import batch holds at most this much audio (by the headers) besides its first file, so that
#: long recordings are not decoded sixteen at a time: with the batch being embedded, the next one
#: decoding and the last one writing, an import holds at most three batches of mono audio at the
#: model's rate (3 x max(this, MAX_DURATION_S) x rate x 4 bytes).
BATCH_AUDIO_S = 600.0


class Ingest:
    """Files in, reports out: decodes and embeds here, hands each batch to ``writer``."""

    def __init__(self, stores: Stores, writer: Writer):
        self.stores, self.writer = stores, writer

    def ingest_files(self, paths: Sequence[str | os.PathLike], m: EmbeddingModel, *,
                     names: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
                     progress: ProgressFn | None = None, batch_size: int = 16,
                     workers: int = 2) -> IngestReport:
        """Ingest many files with model ``m`` in batches (see the module docstring).

        ``names`` are display names (default: each file's base name); ``metadata`` holds per
        file ``label``/``speaker``/``source``/``tags``.
        """
        t0 = time.perf_counter()
        model = m.info.name
        m.load()  # a missing model fails here, before any file is touched
        collection_name(model)
        names = [clean_name(n) for n in names] if names else [clean_name(audio_mod.display_name(p)) for p in paths]
        metadata = list(metadata) if metadata else [{} for _ in paths]
        if not (len(names) == len(paths) == len(metadata)):
            raise ValueError("paths, names and metadata must have the same length")
        report = IngestReport(model)
        # a name or metadata value over its bound rejects that file before it is read
        checked = [_checked(n, meta) for n, meta in zip(names, metadata)]
        report.items.extend(c for c in checked if isinstance(c, IngestItem))
        keep = [i for i, c in enumerate(checked) if not isinstance(c, IngestItem)]
        paths = [paths[i] for i in keep]
        names = [checked[i][0] for i in keep]
        metadata = [checked[i][1] for i in keep]
        try:
            self._batches(paths, m, names, metadata, progress, batch_size, workers, report)
        except Exception as err:
            fault = service_fault(err, self.stores.settings)
            if fault is None:
                raise
            raise fault.with_stored(len(report.added)) from err
        report.seconds = time.perf_counter() - t0
        return report

    def _batches(self, paths, m: EmbeddingModel, names, metadata, progress: ProgressFn | None,
                 batch_size: int, workers: int, report: IngestReport) -> None:
        """The pipeline of :meth:`ingest_files`; items land in ``report`` batch by batch."""
        model = m.info.name
        total = len(paths)
        done = 0

        def written(storing: Future) -> tuple[list[IngestItem], Exception | None]:
            """A batch's outcomes, and what failed: its write (rolled back: no outcomes), or the
            near-duplicate marks after it (Milvus gone; the clips are stored and count)."""
            try:
                return storing.result(), None
            except MarkingFailed as err:
                return err.items, err.error
            except Exception as err:  # noqa: BLE001 - raised by the caller
                return [], err

        def finish(storing: Future) -> None:
            nonlocal done
            items, error = written(storing)
            report.items.extend(items)
            if error is not None:
                raise error
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
            try:
                for n, idx in enumerate(batches):
                    prepared = [f.result() for f in ahead]
                    ahead = submit(batches[n + 1]) if n + 1 < len(batches) else []
                    staged = self._embed_batch(prepared, m)
                    if storing is not None:  # taken out first: a batch finish() raised on is not drained below
                        pending, storing = storing, None
                        finish(pending)
                    storing = writer.submit(self.writer.store_batch, staged, [metadata[i] for i in idx], model)
            except BaseException:
                if storing is not None:  # the batch being written while this one failed: what it stored counts
                    report.items.extend(written(storing)[0])
                raise
            if storing is not None:
                finish(storing)

    def _prepare(self, path, name: str, m: EmbeddingModel):
        """Validate + decode + hash one file (no writes). Returns a dict or an IngestItem error."""
        s = self.stores.settings
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
        meta, model = self.stores.meta, m.info.name
        staged: list = []
        todo = []  # (position, prep, segment bounds)
        seen: set[str] = set()
        for p in prepared:
            if isinstance(p, IngestItem):
                staged.append(p)
                continue
            existing = meta.clip_by_sha(p["sha"])
            if (existing and meta.has_ready(existing.id, model)) or p["sha"] in seen:
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


def collect_folder(folder: str | os.PathLike, manifest: str | os.PathLike | None = None,
                   recursive: bool = True) -> tuple[list[IngestItem], list[Path], list[str], list[dict]]:
    """The files a folder import means: ``(rejected items, paths, names, metadata)``.

    Every audio file under ``folder`` (symlinks leading outside it are refused), or with
    ``manifest`` only the files it lists (see :func:`read_manifest`).
    """
    root = Path(limits.folder(folder)).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    rejected: list[IngestItem] = []
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
            rejected.append(IngestItem(name, "error", message=f"{name}: file not found"))
            continue
        if not manifest and not real.is_relative_to(root):
            rejected.append(IngestItem(name, "error", message=f"{name}: links outside the import folder; refused"))
            continue
        if real.is_dir():
            if manifest:  # a walked folder named like a file is just walked into
                rejected.append(IngestItem(name, "error", message=f"{name}: is a directory, not an audio file"))
            continue
        ok_paths.append(real)
        ok_names.append(name)
        ok_meta.append(meta)
    return rejected, ok_paths, ok_names, ok_meta


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


def _header_seconds(path) -> float:
    """A file's length by its header, 0 when unknown (a bad file is reported later, by ingest)."""
    try:
        p = Path(path)
        return audio_mod.probe(p).duration_s if p.is_file() and os.access(p, os.R_OK) else 0.0
    except Exception:
        return 0.0


def _checked(name: str, meta: dict | None) -> tuple[str, dict] | IngestItem:
    """A file's display name and metadata within their bounds, or an error item saying which is not."""
    try:
        return limits.name(name), limits.clip_metadata(meta)
    except ValueError as err:
        shown = name if len(name) <= 80 else name[:77] + "..."
        return IngestItem(shown, "error", message=f"{shown}: {err}")
