"""Retrieval metrics: exact, pure functions over rankings and vectors (used by :mod:`search_core.evaluate`).

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

from dataclasses import dataclass
from typing import Sequence

import numpy as np

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
