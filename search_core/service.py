"""The library service: the one face the CLI and the app call, composed of the rooms below it.

    audio -> models -> stores (metadata + vectors, :mod:`~search_core.stores`)
      -> ingest (:mod:`~search_core.ingest`, :mod:`~search_core.writer`) / search
         (:mod:`~search_core.search`) / maintenance (:mod:`~search_core.maintenance`),
         near-duplicates and speakers (:mod:`~search_core.duplicates`, :mod:`~search_core.speakers`)
      -> this service -> CLI and app

:class:`LibraryService` opens the stores, runs recovery on start-up, checks inputs against their
bounds, turns a store that stops answering into :class:`~search_core.faults.ServiceUnavailable`,
and hands each call to its room. The write order and what recovery repairs are described in
:mod:`search_core.writer` and :mod:`search_core.maintenance`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import audio as audio_mod
from . import duplicates, limits, recenter
from .audio import AudioError
from .config import Settings, get_settings
from .embedding import segment_params, warm_up
from .faults import StillOpening, _faults_reported, service_fault
from .ingest import BATCH_AUDIO_S, Ingest, collect_folder, plan_batches, read_manifest  # noqa: F401
from .libmap import LibraryMap, MapRoom
from .maintenance import Maintenance
from .centering import Center
from .metadata import ClipRow
from .models import EmbeddingModel, get_model, model_names
from .records import (Hit, IngestItem, IngestReport, ProgressFn, RecoveryReport, SearchResult,  # noqa: F401
                      clean_name, clean_text)
from .search import MAX_FETCH, Search, exact_search  # noqa: F401  (re-exported)
from .search import FILTER_EXACT_MAX  # a test lowers it here to force the over-fetch path
from .speakers import SpeakerRegistry
from .stores import Stores
from .writer import Writer

__all__ = ["LibraryService", "IngestItem", "IngestReport", "Hit", "SearchResult", "RecoveryReport",
           "clean_text", "clean_name", "segment_params", "read_manifest", "plan_batches", "exact_search"]


class LibraryService:
    """Ingest, search, browse, delete and recover. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings | None = None, *, recover: bool | str = True):
        """Open the stores and recover: ``recover=True`` runs the whole :meth:`recover`;
        ``"start"`` only what must precede serving (interrupted writes, and a vector sweep of a
        collection whose count disagrees with its rows; see
        :meth:`~search_core.maintenance.Maintenance.recover_at_start`), leaving the O(library)
        file check to :meth:`check_files`; ``False`` nothing."""
        self.settings = s = settings or get_settings()
        self.library_dir = s.library_dir
        self.fingerprints = duplicates.FingerprintCache()
        self.stores: Stores | None = None
        try:
            self.stores = st = Stores.open(s)
            self.meta, self.vectors, self.lease = st.meta, st.vectors, st.lease
            self.speakers = SpeakerRegistry(st.meta, s)  # enrol / identify / list / delete voiceprints
            self._search = Search(st)
            self._map = MapRoom(st)  # the library map of each model, cached in DATA_DIR/maps
            # the hooks are looked up on this service at each call, so a caller (a test) may replace them
            self._maintenance = Maintenance(st, on_error=lambda: self._recover_after_error())
            writer = Writer(st, self.fingerprints, on_error=lambda: self._recover_after_error(),
                            recover=lambda **kw: self.recover(**kw))
            self._ingest = Ingest(st, writer)
            if recover == "start":
                self._maintenance.recover_at_start()
            elif recover:
                self.recover()
        except Exception as err:
            fault = service_fault(err, s)
            self.close()
            if fault is None or fault is err:
                raise
            raise fault from err

    def close(self) -> None:
        if self.stores is not None:
            self.stores.close()

    @property
    def owner(self) -> str:
        """This service's writer id: its unfinished rows carry it (see :class:`~search_core.leases.WriterLease`)."""
        return self.stores.owner

    @property
    def fault_hook(self) -> Callable[[str], None] | None:
        """Test hook: a callable(step) called at each named step of ingest and delete."""
        return self.stores.fault_hook

    @fault_hook.setter
    def fault_hook(self, hook: Callable[[str], None] | None) -> None:
        self.stores.fault_hook = hook

    def _fault(self, step: str) -> None:
        self.stores.fault(step)

    def _recover_after_error(self) -> None:
        """Best effort, right after a failed write: finish or roll back what it left behind.

        If this fails too (the store is down), start-up recovery, or the next write, does it later.
        """
        try:
            self.recover(sweep_vectors=False)
        except Exception:
            self.stores.unrecovered = True

    # -- models -------------------------------------------------------------------------
    @staticmethod
    def models() -> list[str]:
        return model_names()

    @staticmethod
    def model(name: str) -> EmbeddingModel:
        return get_model(name)

    def warm_up(self, model: str) -> bool:
        """Load ``model`` and run one tiny embedding (see :func:`search_core.embedding.warm_up`)."""
        return warm_up(model)

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
        report = self._ingest.ingest_files(paths, get_model(model), names=names, metadata=metadata,
                                           progress=progress, batch_size=batch_size, workers=workers)
        self._center_if_due(model)
        return report

    def _center_if_due(self, model: str) -> None:
        """After an ingest: estimate the mean of a model centered by default once its collection
        is big enough, and again each time it has doubled (:func:`search_core.recenter.due`);
        skipped while other processes share the library, and never an error for the ingest that
        stored its clips (``centering_status`` says what is due)."""
        try:
            if recenter.due(self.stores, model):
                recenter.recenter(self.stores, model)
        except Exception as err:  # noqa: BLE001 - the clips are stored; the state line says the mean is due
            # (or which vectors are behind: search scores them exactly meanwhile); the log says why
            logging.getLogger(__name__).warning("%s: re-centering after the ingest not done: %s", model, err)

    def ingest_folder(self, folder: str | os.PathLike, model: str, *, manifest: str | os.PathLike | None = None,
                      progress: ProgressFn | None = None, recursive: bool = True) -> IngestReport:
        """Ingest every audio file under ``folder`` (symlinks leading outside it are refused).

        ``manifest``: an optional CSV with a ``path`` column (relative to the CSV) and any of
        ``label``, ``speaker``, ``source``, ``tags`` (``;``-separated); only its files are read.
        """
        rejected, paths, names, metas = collect_folder(folder, manifest, recursive)
        report = IngestReport(model, rejected)
        sub = self.ingest_files(paths, model, names=names, metadata=metas, progress=progress)
        report.items.extend(sub.items)
        report.seconds = sub.seconds
        return report

    def duplicate_groups(self, model: str | None = None) -> list[duplicates.DuplicateGroup]:
        """Groups of near-duplicate clips (marked at ingest), largest first, per model."""
        return duplicates.groups(self.meta, model)

    # -- search -------------------------------------------------------------------------
    def embed_query(self, query: audio_mod.Audio | str | os.PathLike, model: str,
                    raw: bool = False) -> tuple[audio_mod.Audio, np.ndarray]:
        """The query as searched (its first ``Settings.max_query_s`` seconds) and its embedding in
        the model's index space, what :meth:`search_vector` takes (``raw``: as the model gives it)."""
        return self._search.embed_query(query, model, raw)

    @_faults_reported
    def search(self, query: audio_mod.Audio | str | os.PathLike, model: str, k: int = 10,
               filters: dict | None = None, liked=(), disliked=(), hide_seen: bool = False) -> SearchResult:
        """The ``k`` clips most similar to ``query`` (a path or decoded audio), best first, moved by
        relevance feedback when clips are marked; see :meth:`search_core.search.Search.search`."""
        return self._search.search(query, model, k, filters, FILTER_EXACT_MAX, liked, disliked, hide_seen)

    @_faults_reported
    def search_vector(self, vec: np.ndarray, model: str, k: int = 10, filters: dict | None = None,
                      exclude=()) -> list[Hit]:
        """Search with an embedding; joins ready metadata rows and groups segments by clip; the
        clip ids in ``exclude`` are left out."""
        return self._search.search_vector(vec, model, k, filters, exclude, exact_max=FILTER_EXACT_MAX)

    @_faults_reported
    def search_feedback(self, vec: np.ndarray, model: str, liked=(), disliked=(), k: int = 10,
                        filters: dict | None = None, exclude=()) -> list[Hit]:
        """Search again with ``vec`` (a :attr:`SearchResult.vector`) moved toward the ``liked`` clip
        ids and away from the ``disliked`` ones, ``exclude`` left out; see
        :meth:`search_core.search.Search.search_feedback`."""
        return self._search.search_feedback(vec, model, liked, disliked, k, filters, exclude,
                                            exact_max=FILTER_EXACT_MAX)

    @_faults_reported
    def search_clip(self, clip_id: int, model: str, k: int = 10, filters: dict | None = None) -> list[Hit]:
        """The ``k`` clips most similar to library clip ``clip_id`` under ``model`` (itself left out)."""
        clip_id, k = limits.clip_id(clip_id), limits.top_k(k)
        get_model(model)  # an unknown model is named as such
        return self._search.search_clip(clip_id, model, k, filters, exact_max=FILTER_EXACT_MAX)

    # -- map ----------------------------------------------------------------------------
    @_faults_reported
    def library_map(self, model: str, refit: bool = False) -> LibraryMap:
        """Every clip of ``model`` on a 2-D map where similar clips lie close (see
        :mod:`search_core.libmap`): cached, extended with clips added since, fitted again on ``refit``."""
        get_model(model)
        return self._map.draw(model, refit=bool(refit))

    # -- browse -------------------------------------------------------------------------
    @_faults_reported
    def clip(self, clip_id: int) -> ClipRow | None:
        """The clip ``clip_id``, or None if there is none."""
        return self.meta.clip(limits.clip_id(clip_id))

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
        return self.stores.clip_path(clip)

    # -- maintenance --------------------------------------------------------------------
    @_faults_reported
    def delete_clip(self, clip_id: int) -> bool:
        """Delete a clip from every model's collection and the library. False if unknown."""
        return self._maintenance.delete_clip(clip_id)

    @_faults_reported
    def drop_model(self, model: str) -> int:
        """Drop a model's collection, its rows and its map; clips left with no vectors go too."""
        dropped = self._maintenance.drop_model(model)
        self._map.cache_path(model).unlink(missing_ok=True)
        return dropped

    @_faults_reported
    def recenter(self, model: str, off: bool = False) -> recenter.RecenterReport:
        """Estimate ``model``'s collection mean again (``off``: stop centering it) and re-index its
        vectors under it; see :mod:`search_core.recenter`."""
        get_model(model)
        return recenter.recenter(self.stores, model, off=off)

    @_faults_reported
    def center(self, model: str) -> Center:
        """The mean ``model``'s collection is searched with (version 0: none)."""
        return self.meta.center(model)

    @_faults_reported
    def centering_status(self, model: str) -> str:
        """One sentence on how ``model``'s collection is centered, for the page and the CLI."""
        c = self.meta.center(model)
        behind = self.meta.count_behind(model, c.version)
        if c.on:
            text = f"centered on the mean of {c.n} vectors (estimated {c.created_at:%Y-%m-%d %H:%M} UTC)"
        elif c.version:
            text = "not centered (turned off)"
        elif recenter.centered_by_default(model):
            text = f"not centered yet (the mean is estimated once it holds {recenter.MIN_VECTORS} vectors)"
        else:
            text = "not centered (not on by default for this model)"
        if behind:
            text += f"; {behind} vectors are still under an older mean: run recenter to finish"
        elif recenter.due(self.stores, model):  # the ingest skipped it: other processes share the library
            text += "; a new mean is due: run recenter (refused while other processes share the library)"
        return f"{model}: {text}"

    def raw_vectors(self, model: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The raw embeddings of stored vectors (index-space vectors undone, no re-embedding)."""
        return recenter.raw_vectors(self.stores, model, ids)

    @_faults_reported
    def recover(self, sweep_vectors: bool = True) -> RecoveryReport:
        """Finish or roll back interrupted writes; remove orphans of every kind (see
        :meth:`search_core.maintenance.Maintenance.recover`)."""
        return self._maintenance.recover(sweep_vectors)

    @_faults_reported
    def check_files(self) -> RecoveryReport:
        """Remove clips whose library file is gone and files that are no clip's (the part of
        recovery that stats every file; the app runs it in the background after start-up)."""
        return self._maintenance.check_files()

    @_faults_reported
    def check(self) -> dict[str, int]:
        """Consistency figures: rows without vectors, vectors without rows, files without rows."""
        return self._maintenance.check()


class OpeningService:
    """A :class:`LibraryService` opened in a background thread, so that a page can be served
    before its stores answer (a Milvus server takes 15–40 s to start and load its collections).

    Until it is open, its ``settings`` and ``library_dir`` are at hand and any other attribute
    waits up to ``wait_s`` for it, then raises :class:`~search_core.faults.StillOpening` (one
    sentence). If opening failed (a store down), that error is raised, and the next call tries
    to open it again, so the page recovers once the store is back.
    """

    def __init__(self, settings: Settings, wait_s: float = 60.0, **kwargs):
        self.settings, self.library_dir, self.wait_s, self._kwargs = settings, settings.library_dir, wait_s, kwargs
        self._lock = threading.Lock()
        self._svc: LibraryService | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._started = 0.0
        self._start()

    def _start(self) -> None:
        self._done.clear()
        self._error, self._started = None, time.monotonic()
        threading.Thread(target=self._open, daemon=True, name="library-open").start()

    def _open(self) -> None:
        try:
            self._svc = LibraryService(self.settings, **self._kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the next caller
            self._error = err
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> LibraryService:
        """The open service; waits up to ``timeout`` (default ``wait_s``) seconds for it."""
        with self._lock:
            if self._done.is_set() and self._svc is None:  # the last attempt failed: try again
                self._start()
        if not self._done.wait(self.wait_s if timeout is None else timeout):
            raise StillOpening(time.monotonic() - self._started)
        if self._svc is None:
            raise self._error
        return self._svc

    @property
    def is_open(self) -> bool:
        return self._svc is not None

    models = staticmethod(model_names)  # what needs no store is answered at once
    model = staticmethod(get_model)

    @staticmethod
    def warm_up(model: str) -> bool:
        return warm_up(model)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.wait(), name)

    def close(self) -> None:
        if self._svc is not None:
            self._svc.close()
