"""A 2-D projection of embeddings in which similar clips lie close: fitted once, extended cheaply.

**Fit** (:func:`fit`): t-SNE (scikit-learn, Barnes-Hut) of at most :data:`LANDMARKS` clips — all of a
small library, a fixed random sample of a larger one — after PCA to :data:`PCA_DIMS` dimensions.
**Place** (:func:`place`): any other clip, and every clip added later, goes to the similarity-weighted
mean of the positions of its :data:`NEIGHBOURS` most similar landmarks (cosine in the embedding
space). So adding clips never moves the clips already drawn, a 10k library costs one small t-SNE
plus a matrix product, and the map is fitted again only when asked or when the library has grown
by :data:`REFIT_GROWTH` since its fit (:func:`needs_refit`).

Why not PCA alone: on 211 ESC-50 clips (aisfx, 25 labels) the 5 nearest neighbours of a clip share its
label 56.5 % of the time in the embedding space, 54.2 % on this map and 20.7 % on the first two principal
components (``benchmarks/libmap_bench.py``, README *Library map*).

:func:`save` / :func:`load` keep a fitted projection and the positions already computed in one
``.npz`` file, replaced atomically, so processes sharing a data folder never read half a file.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Clips fitted by t-SNE at most (the rest are placed among them).
LANDMARKS = 1000
#: Dimensions kept by PCA before t-SNE.
PCA_DIMS = 50
#: Landmarks a placed clip's position is averaged from.
NEIGHBOURS = 5
#: Fit again once the library holds this many times the clips it was fitted on.
REFIT_GROWTH = 1.25
#: t-SNE iterations (scikit-learn's minimum is 250, the early exaggeration alone).
TSNE_ITER = 500
#: Version of the file layout written by :func:`save`; a file of another version is ignored.
FORMAT = 1


@dataclass
class Projection:
    """A fitted map: the landmarks' clip ids, unit vectors and 2-D positions; ``positions`` holds
    every clip placed so far (``{clip id: (x, y)}``, landmarks included)."""
    model: str
    landmark_ids: np.ndarray      # (m,) int64
    landmark_vecs: np.ndarray     # (m, dim) float32, unit rows
    landmark_xy: np.ndarray       # (m, 2) float32
    fitted_on: int                # clips in the library when fitted
    positions: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.landmark_vecs.shape[1])


def unit_rows(vecs: np.ndarray) -> np.ndarray:
    """``vecs`` as float32 rows of length 1 (a zero row stays zero)."""
    v = np.asarray(vecs, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {v.shape}")
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _pca(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` centred and projected on its first ``k`` principal axes (signs fixed: deterministic)."""
    c = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    vt = vt[:k]
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1, 1)[:, None]
    return c @ vt.T


def _layout(x: np.ndarray, seed: int) -> np.ndarray:
    """2-D positions of unit rows ``x``: t-SNE from 8 rows up, PCA below (t-SNE needs a few points
    to estimate neighbourhoods), the origin for one row. Scaled to [-1, 1] on the longer axis."""
    n = len(x)
    if n == 1:
        return np.zeros((1, 2), np.float32)
    p = _pca(x.astype(np.float64), min(PCA_DIMS, n, x.shape[1]))
    if n < 8:
        y = np.zeros((n, 2))
        y[:, :min(2, p.shape[1])] = p[:, :2]
    else:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        # one OpenMP thread: on a busy machine, threads spinning for each other made a 200-point
        # fit take 22 s instead of 1.7 s (load average 12 on 2 cores)
        with threadpool_limits(1, user_api="openmp"):
            y = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", max_iter=TSNE_ITER,
                     random_state=seed, n_jobs=1).fit_transform(p)
    y = y - (y.max(axis=0) + y.min(axis=0)) / 2
    span = np.abs(y).max()
    return (y / span if span > 0 else y).astype(np.float32)


def fit(model: str, ids, vecs: np.ndarray, *, landmarks: int = LANDMARKS, seed: int = 0) -> Projection:
    """Fit a map of ``model``'s clips ``ids`` with embeddings ``vecs`` (one row per clip) and place
    every clip. Deterministic: the same clips give the same map. At least one clip is needed."""
    ids = np.asarray(ids, dtype=np.int64)
    x = unit_rows(vecs)
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} clip ids for {len(x)} vectors")
    if len(ids) == 0:
        raise ValueError(f"no clips to draw for {model}: add some first")
    order = np.argsort(ids, kind="stable")  # the sample does not depend on the order rows came in
    ids, x = ids[order], x[order]
    pick = np.arange(len(ids))
    if len(ids) > landmarks:
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), landmarks, replace=False))
    proj = Projection(model, ids[pick], x[pick], _layout(x[pick], seed), fitted_on=len(ids))
    xy = place(proj, x)
    xy[pick] = proj.landmark_xy  # the landmarks stay where t-SNE put them
    proj.positions = dict(zip(ids.tolist(), map(tuple, xy.tolist())))
    return proj


def place(proj: Projection, vecs: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """(n, 2) positions for unit vectors ``vecs`` among ``proj``'s landmarks: the mean of the
    positions of the ``neighbours`` most similar landmarks, weighted by similarity (the most similar
    counts most). Does not change ``proj``."""
    x = unit_rows(vecs)
    if x.shape[0] and x.shape[1] != proj.dim:
        raise ValueError(f"{x.shape[1]}-d vectors for a map of {proj.dim}-d embeddings")
    out = np.empty((len(x), 2), np.float32)
    k = min(neighbours, len(proj.landmark_ids))
    for start in range(0, len(x), 2048):  # bounded memory: 2048 x landmarks similarities at a time
        sim = x[start:start + 2048] @ proj.landmark_vecs.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else \
            np.broadcast_to(np.arange(k), sim.shape[:1] + (k,))
        s = np.take_along_axis(sim, top, axis=1)
        w = np.exp((s - s.max(axis=1, keepdims=True)) * 50.0)  # the closest landmark dominates
        out[start:start + 2048] = (w[..., None] * proj.landmark_xy[top]).sum(axis=1) / w.sum(axis=1)[:, None]
    return out


def needs_refit(proj: Projection, clip_ids) -> bool:
    """True once the library (``clip_ids``, its clips now) holds :data:`REFIT_GROWTH` times the clips
    ``proj`` was fitted on (a fit on few clips places many later ones poorly), or has lost more than
    half of its landmarks (the model was dropped and filled again, or much was deleted)."""
    ids = clip_ids if isinstance(clip_ids, (set, frozenset, dict)) else set(clip_ids)
    n = len(ids)
    if n and n >= max(proj.fitted_on + 1, proj.fitted_on * REFIT_GROWTH):
        return True
    kept = sum(1 for i in proj.landmark_ids.tolist() if i in ids)
    return kept * 2 < len(proj.landmark_ids)


def save(proj: Projection, path: Path) -> None:
    """Write ``proj`` to ``path`` (``.npz``) atomically: a concurrent reader sees the old file or this one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pos_ids = np.fromiter(proj.positions.keys(), dtype=np.int64, count=len(proj.positions))
    pos_xy = np.asarray(list(proj.positions.values()), dtype=np.float32).reshape(-1, 2)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-map-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=FORMAT, model=proj.model, landmark_ids=proj.landmark_ids,
                     landmark_vecs=proj.landmark_vecs, landmark_xy=proj.landmark_xy,
                     fitted_on=proj.fitted_on, pos_ids=pos_ids, pos_xy=pos_xy)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, model: str) -> Projection | None:
    """The projection saved at ``path`` for ``model``, or None when there is none (or it is
    unreadable, of another format or another model: the caller fits again)."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            if int(z["format"]) != FORMAT or str(z["model"]) != model:
                return None
            proj = Projection(model, z["landmark_ids"].astype(np.int64), z["landmark_vecs"].astype(np.float32),
                              z["landmark_xy"].astype(np.float32), int(z["fitted_on"]))
            proj.positions = dict(zip(z["pos_ids"].tolist(), map(tuple, z["pos_xy"].tolist())))
            return proj
    except (OSError, ValueError, KeyError, EOFError):
        return None
