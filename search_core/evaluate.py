"""Retrieval evaluation: exact metric functions and a driver that runs the product's own paths.

Definitions (for one query, after removing its excluded candidates, see :class:`Rules`):

``rel_i``
    1 if the candidate at rank ``i`` (1-based) is relevant to the query, else 0.
``R``
    the number of relevant candidates in the whole (filtered) collection.
``P@k``
    ``(1/k) * sum_{i<=k} rel_i`` (a list shorter than ``k`` still divides by ``k``).
``AP@k``
    ``(1/min(R, k)) * sum_{i<=k} rel_i * P@i``, so a perfect ranking scores 1 even when
    ``R > k``; ``mAP@k`` is its mean over queries.
``R@1``
    ``rel_1``: the share of queries whose first hit is relevant.
``ANN recall@k``
    ``|ANN top-k ∩ exact top-k| / |exact top-k|``: how many of the true nearest neighbours the
    index returned (both after the same exclusions).
``residual P@k``
    one round of relevance feedback (:func:`feedback_round`): the exact top ``k`` marked by
    relevance, Rocchio, searched again without those ``k``. Baseline ``next P@k``: ranks ``k+1..2k``.

Queries with ``R == 0`` have no answer and are left out of every mean (they are counted).
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
from .feedback import ALPHA, BETA, GAMMA, Feedback, clip_vector, simulated_round

# -- pure metric functions ------------------------------------------------------------------


def precision_at_k(ranked_relevant: Sequence[bool], k: int = 10) -> float:
    """``P@k``: relevant hits among the first ``k`` over ``k``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return float(np.sum(np.asarray(ranked_relevant[:k], dtype=bool))) / k


def average_precision_at_k(ranked_relevant: Sequence[bool], n_relevant: int, k: int = 10) -> float:
    """``AP@k`` normalised by ``min(n_relevant, k)`` (see the module docstring).

    ``n_relevant`` is the number of relevant candidates in the whole filtered collection; it
    must be at least the number of relevant hits in the list.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rel = np.asarray(ranked_relevant[:k], dtype=bool)
    if rel.sum() > n_relevant:
        raise ValueError(f"{int(rel.sum())} relevant hits listed but n_relevant={n_relevant}")
    if n_relevant <= 0:
        raise ValueError("AP is undefined for a query without relevant candidates")
    hits = np.cumsum(rel)
    ranks = np.arange(1, len(rel) + 1)
    return float(np.sum((hits / ranks)[rel])) / min(n_relevant, k)


def ann_recall_at_k(approx: Sequence[int], exact: Sequence[int], k: int = 10) -> float:
    """Share of the exact top-``k`` ids that the approximate top-``k`` contains."""
    truth = list(exact[:k])
    if not truth:
        raise ValueError("exact neighbour list is empty")
    return len(set(approx[:k]) & set(truth)) / len(truth)


@dataclass(frozen=True)
class Rules:
    """Fair-evaluation rules over manifest columns.

    ``relevant``: candidates with the query's value here are relevant. ``group``: candidates in
    the query's group (e.g. takes of one recording, ``src_file``) are dropped. ``drop_equal``:
    candidates sharing the query's value in any of these columns are dropped (e.g. ``digit``).
    The query itself is always dropped.
    """

    relevant: str
    group: str | None = None
    drop_equal: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"relevant = same {self.relevant}"]
        if self.group:
            parts.append(f"drop same {self.group} group")
        parts += [f"drop same {c}" for c in self.drop_equal]
        return "; ".join(parts)


#: The rules of ../shared/data/README.md, by manifest name.
PRESETS: dict[str, Rules] = {
    "esc50": Rules("label", group="src_file"),
    "fsdd": Rules("speaker", drop_equal=("digit",)),
    "emodb": Rules("speaker"),
}


def exclusion_mask(columns: dict[str, Sequence], rules: Rules) -> np.ndarray:
    """``(n, n)`` bool: ``[q, c]`` is True when candidate ``c`` is dropped for query ``q``."""
    n = len(columns[rules.relevant])
    drop = np.eye(n, dtype=bool)
    for col in ([rules.group] if rules.group else []) + list(rules.drop_equal):
        values = np.asarray(columns[col], dtype=object)
        if len(values) != n:
            raise ValueError(f"column {col!r} has {len(values)} values for {n} clips")
        drop |= values[:, None] == values[None, :]
    return drop


def relevance_matrix(labels: Sequence) -> np.ndarray:
    """``(n, n)`` bool: ``[q, c]`` is True when ``c`` has the query's relevance value."""
    v = np.asarray(labels, dtype=object)
    return v[:, None] == v[None, :]


def exact_ranking(scores: np.ndarray, excluded: np.ndarray, k: int) -> list[list[int]]:
    """Top-``k`` candidate indices per query row of ``scores`` (higher is better), best first.

    Excluded candidates never appear; ties are broken by the lower index (stable).
    """
    s = np.where(excluded, -np.inf, np.asarray(scores, dtype=np.float64))
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return [[int(c) for c in row if np.isfinite(s[q, c])] for q, row in enumerate(order)]


@dataclass
class Metrics:
    p_at_k: float
    map_at_k: float
    r_at_1: float
    queries: int          # queries that have at least one relevant candidate
    no_relevant: int      # queries left out: nothing relevant after the exclusions


def score_rankings(rankings: Sequence[Sequence[int]], relevant: np.ndarray, excluded: np.ndarray,
                   k: int = 10) -> Metrics:
    """P@k, mAP@k and R@1 of ranked candidate lists (indices into the collection).

    ``relevant`` and ``excluded`` are the ``(n, n)`` matrices of :func:`relevance_matrix` and
    :func:`exclusion_mask`; a ranking that contains an excluded candidate is an error.
    """
    p, ap, r1 = [], [], []
    skipped = 0
    for q, ranked in enumerate(rankings):
        ranked = list(ranked)
        if any(excluded[q, c] for c in ranked):
            raise ValueError(f"query {q}: the ranking contains an excluded candidate")
        n_rel = int(np.sum(relevant[q] & ~excluded[q]))
        if n_rel == 0:
            skipped += 1
            continue
        rel = [bool(relevant[q, c]) for c in ranked[:k]]
        p.append(precision_at_k(rel, k))
        ap.append(average_precision_at_k(rel, n_rel, k))
        r1.append(float(rel[0]) if rel else 0.0)
    mean = (lambda xs: float(np.mean(xs)) if xs else float("nan"))
    return Metrics(mean(p), mean(ap), mean(r1), len(p), skipped)


def center(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Subtract ``mean`` and L2-normalise rows again (zero rows stay zero)."""
    x = np.asarray(vectors, dtype=np.float64) - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clip_scores(queries: np.ndarray, vectors: np.ndarray, owner: np.ndarray, n_clips: int) -> np.ndarray:
    """Cosine of each query with each clip: the best of the clip's vectors (unit rows assumed)."""
    s = np.asarray(queries, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    out = np.full((n_clips, len(queries)), -np.inf)
    np.maximum.at(out, np.asarray(owner), s.T)
    return out.T


def feedback_round(queries: np.ndarray, vectors: np.ndarray, owner: np.ndarray, relevant: np.ndarray,
                   excluded: np.ndarray, k: int = 10, weights=(ALPHA, BETA, GAMMA)) -> Feedback:
    """One round of relevance feedback on exact search (module docstring: residual P@k); a clip's
    vector is the mean of its segments; queries without relevant candidates are left out."""
    n = relevant.shape[1]  # clips; ``owner`` maps each row of ``vectors`` to one
    clips = np.stack([clip_vector(vectors[owner == j]) for j in range(n)])
    asked = [q for q in range(len(queries)) if np.any(relevant[q] & ~excluded[q])]
    first = exact_ranking(clip_scores(queries[asked], vectors, owner, n), excluded[asked], 2 * k)
    seen, rel = excluded[asked], relevant[asked]
    for i, r in enumerate(first):
        seen[i, r[:k]] = True
    p = lambda ranks: float(np.mean([precision_at_k([rel[i, c] for c in r], k) for i, r in enumerate(ranks)]))  # noqa
    again = [exact_ranking(clip_scores(simulated_round(queries[asked], clips, first, rel, k, *weights[:2], g),
                                       vectors, owner, n), seen, k) for g in (weights[2], 0.0)]
    return Feedback(p([r[k:] for r in first]), p(again[0]), p(again[1]), len(asked), tuple(weights))


# -- the driver -----------------------------------------------------------------------------


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
    centered: Metrics | None = None  # exact, after subtracting the collection mean
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
        if self.centered:
            c = self.centered
            lines.append(f"  exact, centered: P@{k} {c.p_at_k:.3f}  mAP@{k} {c.map_at_k:.3f}  R@1 {c.r_at_1:.3f}")
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
    rows only (a deterministic subset).
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
    centered = None
    if with_centered:
        mu = X.astype(np.float64).mean(axis=0)
        centered = score_rankings(exact_ranking(clip_scores(center(Q, mu), center(X, mu), owner, n),
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
        centered=centered, feedback=feedback,
        seconds={k_: round(v, 2) for k_, v in times.items()})
