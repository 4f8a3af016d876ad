"""Retrieval evaluation: a driver that runs the product's own ingest and search paths over a labelled
manifest and scores them with the exact metrics of :mod:`search_core.metrics` (definitions there).
"""
from __future__ import annotations

import csv
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import Settings, get_settings
from .feedback import Feedback
from .metrics import (PRESETS, Metrics, Rules, ann_recall_at_k, average_precision_at_k,  # noqa: F401  (re-exported:
                      center, clip_scores, exact_ranking, exclusion_mask, feedback_round,  # tests import them
                      precision_at_k, relevance_matrix, score_rankings)                    # from here)


@dataclass
class EvalResult:
    manifest: str
    model: str
    rules: str
    k: int
    clips: int               # clips indexed and used as queries
    rejected: int            # manifest rows not indexed (unreadable, duplicate content, ...)
    index: str               # the Milvus index type that answered
    ann: Metrics             # through LibraryService.search_vector (Milvus + metadata join)
    exact: Metrics           # brute-force cosine over the same stored vectors
    ann_recall: float        # mean ANN recall@k against the exact ranking
    centered: Metrics | None = None  # exact, raw embeddings minus their mean
    uncentered: Metrics | None = None  # exact, raw embeddings as the model gives them
    space: str = "raw"       # the product's index space: "centered (mean of N vectors)" or "raw"
    feedback: Feedback | None = None  # one simulated round of relevance feedback (exact)
    every: int = 1           # every n-th manifest row was used (``--every``)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        k = self.k
        lines = [f"{self.model} on {self.manifest}: {self.clips} clips ({self.rejected} rejected); {self.rules}",
                 f"  index {self.index}: P@{k} {self.ann.p_at_k:.3f}  mAP@{k} {self.ann.map_at_k:.3f}  "
                 f"R@1 {self.ann.r_at_1:.3f}  ({self.ann.queries} queries, "
                 f"{self.ann.no_relevant} without relevant candidates)",
                 f"  exact: P@{k} {self.exact.p_at_k:.3f}  mAP@{k} {self.exact.map_at_k:.3f}  "
                 f"R@1 {self.exact.r_at_1:.3f};  ANN recall@{k} {self.ann_recall:.3f}"]
        lines.insert(1, f"  index space: {self.space}")
        for name, c in (("uncentered", self.uncentered), ("centered", self.centered)):
            if c:
                lines.append(f"  exact, {name}: P@{k} {c.p_at_k:.3f}  mAP@{k} {c.map_at_k:.3f}  R@1 {c.r_at_1:.3f}")
        if self.feedback:
            f = self.feedback
            lines.append(f"  feedback, exact: next {k} P {f.next_p:.3f} -> residual P@{k} {f.residual_p:.3f} "
                         f"(relevant marked only: {f.residual_p_liked:.3f})")
        lines.append("  time: " + ", ".join(f"{n} {v:.1f} s" for n, v in self.seconds.items()))
        return "\n".join(lines)


def read_table(manifest: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a CSV manifest (needs a ``path`` column, relative to the CSV)."""
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{Path(manifest).name}: a manifest needs a 'path' column")
        return list(reader)


def rules_for(manifest: str | os.PathLike, relevant: str | None = None, group: str | None = None,
              drop_equal: Sequence[str] = ()) -> Rules:
    """Explicit rules if ``relevant`` is given, else the preset named like the manifest, else ``label``."""
    if relevant:
        return Rules(relevant, group or None, tuple(drop_equal))
    preset = PRESETS.get(Path(manifest).stem)
    if preset and not group and not drop_equal:
        return preset
    return Rules("label", group or None, tuple(drop_equal))


def temporary_settings(data_dir: str | os.PathLike, base: Settings | None = None) -> Settings:
    """Settings whose stores live under ``data_dir`` (model weights stay where they are)."""
    base = base or get_settings()
    d = Path(data_dir).resolve()
    return replace(base, data_dir=d, milvus_uri=str(d / "milvus.db"),
                   database_url=f"sqlite:///{d / 'metadata.sqlite'}", library_dir=d / "library")


def evaluate_manifest(manifest: str | os.PathLike, model: str, rules: Rules, *, k: int = 10,
                      settings: Settings | None = None, data_dir: str | os.PathLike | None = None,
                      with_centered: bool = False, limit: int | None = None, every: int = 1, with_feedback=False,
                      progress: Callable[[str, int, int], None] | None = None) -> EvalResult:
    """Index every clip of ``manifest`` with the product's ingest path, query with each one.

    Stores live in a temporary folder unless ``data_dir`` (or ``settings``) is given. The ANN
    figures go through :meth:`LibraryService.search_vector` (Milvus search, metadata join,
    segment grouping); a clip's query vector is its stored vector when it has one segment
    (what :meth:`LibraryService.embed_query` computes for the whole clip), else the whole clip
    is embedded as a query would be. ``every``/``limit`` evaluate every n-th row / the first
    rows only (a deterministic subset). Ingest centers the collection as the product does
    (:mod:`search_core.recenter`); ``with_centered`` adds exact search on the raw embeddings
    (:meth:`LibraryService.raw_vectors`) with and without subtracting their mean.
    """
    from .service import LibraryService, clean_name

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    manifest = Path(manifest)
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    rows = read_table(manifest)[::every]
    rows = rows[:limit] if limit else rows
    for col in [rules.relevant] + ([rules.group] if rules.group else []) + list(rules.drop_equal):
        if rows and col not in rows[0]:
            raise ValueError(f"{manifest.name}: no column {col!r} (columns: {', '.join(rows[0])})")
    tmp = None
    if settings is None:
        if data_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="search-core-eval-")
            data_dir = tmp.name
        settings = temporary_settings(data_dir)
    svc = LibraryService(settings)
    try:
        return replace(_evaluate(svc, manifest, rows, model, rules, k, with_centered, progress, clean_name,
                                 with_feedback), every=every)
    finally:
        svc.close()
        if tmp is not None:
            _release_lite(settings.milvus_uri)
            tmp.cleanup()


def _space(c) -> str:
    return f"centered (mean of {c.n} vectors)" if c.on else "raw"


def _release_lite(uri: str) -> None:
    """Stop this process' Milvus Lite server for ``uri`` (else it writes into the folder at exit)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(uri)


def _evaluate(svc, manifest: Path, rows, model, rules: Rules, k, with_centered, progress, clean_name, with_feedback):
    times: dict[str, float] = {}
    started = time.perf_counter()
    paths = [manifest.parent / r["path"] for r in rows]
    metas = []
    for r in rows:
        meta = {c: r.get(c) for c in ("label", "speaker", "source") if r.get(c)}
        if r.get("tags"):
            meta["tags"] = [t for t in r["tags"].split(";") if t.strip()]
        metas.append(meta)
    t0 = time.perf_counter()
    rep = svc.ingest_files(paths, model, names=[clean_name(p.name) for p in paths], metadata=metas,
                           progress=(lambda d, n, _name: progress("ingest", d, n)) if progress else None)
    times["ingest"] = time.perf_counter() - t0
    # keep the rows that became a clip of their own (duplicated content is indexed once)
    keep, clip_ids, seen = [], [], set()
    for i, item in enumerate(rep.items):
        if item.status == "added" and item.clip_id is not None and item.clip_id not in seen:
            keep.append(i)
            clip_ids.append(item.clip_id)
            seen.add(item.clip_id)
    if not keep:
        raise ValueError(f"{manifest.name}: no clip could be indexed with {model}")
    row_of_clip = {cid: j for j, cid in enumerate(clip_ids)}
    cols = {c: [rows[i].get(c) for i in keep] for c in rows[0]}
    n = len(keep)
    excluded = exclusion_mask(cols, rules)
    relevant = relevance_matrix(cols[rules.relevant])

    # every stored vector, with the clip it belongs to
    vids = svc.meta.vector_ids(model)
    refs = svc.meta.ready_refs(vids)
    stored = svc.vectors.get(model, vids)
    vec_ids = [v for v in vids if v in stored and v in refs and refs[v].clip.id in row_of_clip]
    X = np.stack([stored[v] for v in vec_ids]).astype(np.float32)
    owner = np.array([row_of_clip[refs[v].clip.id] for v in vec_ids])
    counts = np.bincount(owner, minlength=n)
    Q = np.zeros((n, X.shape[1]), dtype=np.float32)
    for v, j in zip(vec_ids, owner):
        if counts[j] == 1:
            Q[j] = stored[v]
    t0 = time.perf_counter()  # multi-segment clips are queried with their whole recording, embedded again
    for j in np.flatnonzero(counts != 1):
        Q[j] = svc.embed_query(paths[keep[j]], model)[1]
    times["query_embed"] = time.perf_counter() - t0

    # approximate: the product's search path, fetching enough to survive the exclusions
    t0 = time.perf_counter()
    ann_rank: list[list[int]] = []
    n_drop = excluded.sum(axis=1)
    for q in range(n):
        fetch = int(min(n, n_drop[q] + k))
        hits = svc.search_vector(Q[q], model, fetch)
        ranked = [row_of_clip[h.clip.id] for h in hits if h.clip.id in row_of_clip]
        ann_rank.append([c for c in ranked if not excluded[q, c]][:k])
        if progress and (q % 50 == 0 or q == n - 1):
            progress("query", q + 1, n)
    times["ann_queries"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exact_rank = exact_ranking(clip_scores(Q, X, owner, n), excluded, k)
    centered = uncentered = None
    if with_centered:  # the raw embeddings, the product's index space undone
        raw = svc.raw_vectors(model, vec_ids)
        Xr = np.stack([raw[v] for v in vec_ids])
        Qr = np.zeros(Xr.shape, dtype=np.float64)[:n]
        for i, j in enumerate(owner):
            if counts[j] == 1:
                Qr[j] = Xr[i]
        for j in np.flatnonzero(counts != 1):
            Qr[j] = svc.embed_query(paths[keep[j]], model, raw=True)[1]
        zero = np.zeros(Xr.shape[1])
        uncentered = score_rankings(exact_ranking(clip_scores(center(Qr, zero), center(Xr, zero), owner, n),
                                                  excluded, k), relevant, excluded, k)
        mu = Xr.mean(axis=0)
        centered = score_rankings(exact_ranking(clip_scores(center(Qr, mu), center(Xr, mu), owner, n),
                                                excluded, k), relevant, excluded, k)
    times["exact"] = time.perf_counter() - t0
    feedback = feedback_round(Q, X, owner, relevant, excluded, k) if with_feedback else None
    recall = [ann_recall_at_k(a, e, k) for a, e in zip(ann_rank, exact_rank) if e]
    times["total"] = time.perf_counter() - started
    return EvalResult(
        manifest=manifest.name, model=model, rules=rules.describe(), k=k, clips=n,
        rejected=len(rows) - n, index=svc.vectors.index_type,
        ann=score_rankings(ann_rank, relevant, excluded, k),
        exact=score_rankings(exact_rank, relevant, excluded, k),
        ann_recall=float(np.mean(recall)) if recall else float("nan"),
        centered=centered, uncentered=uncentered, space=_space(svc.center(model)), feedback=feedback,
        seconds={k_: round(v, 2) for k_, v in times.items()})
