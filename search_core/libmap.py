"""The library map: every clip of a model as a point on a 2-D map (see :mod:`search_core.projection`).

The fitted projection and the positions already computed are kept per model in
``$DATA_DIR/maps/<model>.npz``. Drawing the map again fetches from Milvus only the vectors of clips
added since (and places them without moving the others); clips deleted since are left out. The map
is fitted again on request, when the library has grown by a quarter since its fit or lost half the
clips it was fitted on, or when the file is missing or unreadable. Processes sharing the data folder
each update the file by an atomic replace: a reader sees a whole file, and the last writer's wins.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import projection
from .schema import ClipRow
from .stores import Stores


@dataclass
class LibraryMap:
    """A drawn map: ``clips[i]`` lies at ``xy[i]`` (both axes within [-1, 1])."""
    model: str
    clips: list[ClipRow]
    xy: np.ndarray              # (n, 2) float32
    fitted_on: int              # clips the projection was fitted on
    refitted: bool              # fitted on this call
    placed: int                 # clips placed on this call (added since the last drawing)
    #: ``(low, high)`` corners of the fitted landmarks' box: every placed clip lies inside, and it stays
    #: the same until the next fit, so a view scaled to it does not move when clips are added
    bounds: tuple[np.ndarray, np.ndarray] = (np.full(2, -1.0), np.full(2, 1.0))
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clips)

    def write_csv(self, path: str | Path) -> None:
        """The map as CSV: ``clip_id, name, label, x, y``, a row per clip."""
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "name", "label", "x", "y"])
            w.writerows([c.id, c.original_name, c.label or "", f"{x:.5f}", f"{y:.5f}"] for c, (x, y) in zip(self.clips, self.xy))


class MapRoom:
    """Draws and caches the library map of each model (reads the stores, writes only its cache file)."""

    def __init__(self, stores: Stores):
        self.stores = stores
        self._lock = threading.Lock()  # one drawing at a time in this process: a fit is a few seconds of CPU

    def cache_path(self, model: str) -> Path:
        return self.stores.settings.data_dir / "maps" / f"{model}.npz"

    def draw(self, model: str, refit: bool = False) -> LibraryMap:
        """The map of ``model``'s clips, fitted again when ``refit`` (or when it must be, see the module)."""
        with self._lock:
            return self._draw(model, refit)

    def _draw(self, model: str, refit: bool) -> LibraryMap:
        t0 = time.perf_counter()
        meta, path = self.stores.meta, self.cache_path(model)
        by_clip = meta.clip_vector_ids(model)
        if not by_clip:
            raise ValueError(f"No clips for {model} yet: add some to the library first.")
        t_rows = time.perf_counter()
        proj = None if refit else projection.load(path, model)
        if proj is not None and projection.needs_refit(proj, by_clip):
            proj = None
        placed = 0
        if proj is None:
            vecs = self.stores.clip_vectors(model, by_clip)
            if not vecs:
                raise ValueError(f"No vectors for {model}'s clips: run `python -m search_core recover`.")
            t_vec = time.perf_counter()
            proj = projection.fit(model, list(vecs), np.stack(list(vecs.values())))
            changed = refitted = True
        else:
            refitted = False
            new = {cid: vids for cid, vids in by_clip.items() if cid not in proj.positions}
            gone = [cid for cid in proj.positions if cid not in by_clip]
            vecs = self.stores.clip_vectors(model, new) if new else {}
            t_vec = time.perf_counter()
            if vecs and next(iter(vecs.values())).shape[0] != proj.dim:  # the model's vectors changed size
                return self._draw(model, refit=True)
            for cid in gone:
                del proj.positions[cid]
            if vecs:
                xy = projection.place(proj, np.stack(list(vecs.values())))
                proj.positions.update(zip(vecs, map(tuple, xy.tolist())))
            placed, changed = len(vecs), bool(vecs or gone)
        t_fit = time.perf_counter()
        if changed:
            try:
                projection.save(proj, path)
            except OSError:
                pass  # a read-only data folder: the map is drawn, only not kept
        ids = [cid for cid in by_clip if cid in proj.positions]
        rows = meta.clips_by_id(ids)
        ids = [cid for cid in ids if cid in rows]  # a clip deleted meanwhile
        xy = np.asarray([proj.positions[cid] for cid in ids], dtype=np.float32).reshape(-1, 2)
        t1 = time.perf_counter()
        bounds = (proj.landmark_xy.min(axis=0), proj.landmark_xy.max(axis=0))
        return LibraryMap(model, [rows[cid] for cid in ids], xy, proj.fitted_on, refitted, placed, bounds, t1 - t0,
                          {"rows": t_rows - t0, "vectors": t_vec - t_rows, "projection": t_fit - t_vec,
                           "clips": t1 - t_fit})
