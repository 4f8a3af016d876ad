"""Relevance feedback: move a query toward the clips a person marked "more like this" and away from
those marked "less like this" (Rocchio), on the vectors the collection stores; nothing is embedded
again.

A clip's vector here is the mean of its stored segment vectors, normalised (:func:`clip_vector`):
a person marks a whole clip, not the segment that happened to match, and the mean does not depend
on which query found the clip. For a clip of one segment (most clips) it is that segment's vector.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: The textbook weights (Manning, Raghavan & Schütze, *Introduction to Information Retrieval*,
#: section 9.1.1); not tuned on the evaluation sets (README, "Relevance feedback").
ALPHA, BETA, GAMMA = 1.0, 0.75, 0.15


@dataclass
class Feedback:
    """One simulated round's figures (:func:`search_core.evaluate.feedback_round`)."""

    next_p: float            # P over ranks k+1..2k of the first exact search: no feedback
    residual_p: float        # P@k of the search again, the first k hidden (relevant and others marked)
    residual_p_liked: float  # the same with only the relevant ones marked (gamma 0)
    queries: int
    weights: tuple[float, float, float] = (ALPHA, BETA, GAMMA)


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm):
        raise ValueError(f"{what} has non-finite values")
    if norm < 1e-12:
        raise ValueError(f"{what} is the zero vector")
    return v / norm


def clip_vector(segments: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """One unit vector for a clip: the normalised mean of its segment vectors (rows)."""
    x = np.asarray(segments, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("a clip needs at least one segment vector")
    return _unit(x.mean(axis=0), "the clip's mean segment vector")


def rocchio(query: np.ndarray, liked: Sequence[np.ndarray] | np.ndarray = (),
            disliked: Sequence[np.ndarray] | np.ndarray = (), alpha: float = ALPHA, beta: float = BETA,
            gamma: float = GAMMA) -> np.ndarray:
    """The moved query, as a unit vector::

        q' = alpha * q + beta * mean(liked) - gamma * mean(disliked),   then q' / |q'|

    ``query`` and every row of ``liked``/``disliked`` are vectors of one space (unit vectors
    in this product; the query is normalised first so the weights mean the same at any scale).
    An empty ``liked`` or ``disliked`` drops its term; with both empty the result is the
    normalised query. Raises ValueError for a negative or non-finite weight, a dimension that
    does not match, or a result that is the zero vector.
    """
    for name, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {w}")
    q = np.asarray(query, dtype=np.float64)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"the query must be one vector, got shape {q.shape}")
    moved = alpha * _unit(q, "the query vector")
    for name, rows, w in (("liked", liked, beta), ("disliked", disliked, -gamma)):
        x = np.asarray(rows, dtype=np.float64)
        if x.size == 0:
            continue
        x = x[None, :] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != q.size:
            raise ValueError(f"{name} vectors have dimension {x.shape[-1]}, the query {q.size}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} vectors have non-finite values")
        moved = moved + w * x.mean(axis=0)
    return _unit(moved, "the moved query (its terms cancel out)").astype(np.float32)


def simulated_round(queries: np.ndarray, clips: np.ndarray, first: Sequence[Sequence[int]], relevant: np.ndarray,
                    k: int = 10, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> np.ndarray:
    """The evaluation's simulated user: each query row moved by :func:`rocchio` after its ranked
    clips ``first[q][:k]`` (indices into ``clips``) were marked, relevant ones (``relevant[q, c]``)
    "more like this", the others "less like this"."""
    out = np.zeros((len(queries), np.shape(clips)[1]), dtype=np.float32)
    for q, ranked in enumerate(first):
        seen = list(ranked[:k])
        out[q] = rocchio(queries[q], clips[[c for c in seen if relevant[q, c]]],
                         clips[[c for c in seen if not relevant[q, c]]], alpha, beta, gamma)
    return out
