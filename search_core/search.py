"""Search: a query's embedding against a model's collection, joined with ready metadata rows and
grouped by clip; metadata filters resolved in SQL, a small filtered subset searched exactly.

Queries are searched in the model's index space (minus the collection's mean,
:mod:`search_core.centering`): :meth:`Search.embed_query` applies it, ``search_vector`` takes a
vector already in it.
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import audio as audio_mod
from . import limits
from .centering import from_index_space, to_index_space
from .embedding import at_model_rate
from .feedback import clip_vector, rocchio
from .metadata import filter_conditions
from .models import get_model
from .records import Hit, SearchResult
from .stores import Stores
from .vectors import VectorHit

#: A metadata filter matching at most this many vectors is searched exactly: SQL gives the ids,
#: Milvus their vectors, numpy the cosine. A broader one is applied in the SQL join to hits
#: over-fetched in proportion to its selectivity. Pushing ``id in [...]`` (or a scalar-field
#: filter) into Milvus' HNSW search loses matches on sealed segments when the filter is
#: selective (4 of 10 found at ef 64 in Milvus Lite 2.6); see benchmarks/filter_bench.py.
FILTER_EXACT_MAX = 4096
#: Milvus' largest top-k.
MAX_FETCH = 16_384


class Search:
    """Similarity search over the stores (reads only)."""

    def __init__(self, stores: Stores):
        self.stores = stores

    def embed_query(self, query: audio_mod.Audio | str | os.PathLike, model: str,
                    raw: bool = False) -> tuple[audio_mod.Audio, np.ndarray]:
        """The query as searched and its embedding in the model's index space (``raw``: as the
        model gives it).

        Only the first ``Settings.max_query_s`` seconds of a longer query are decoded and embedded
        (``Audio.is_part`` and ``Audio.source_duration_s`` say so), which bounds the memory and the
        compute of one search; a query shorter than the model's ``min_duration_s`` is refused.
        """
        m = get_model(model)
        m.load()
        a = at_model_rate(query, m, self.stores.settings, self.stores.settings.max_query_s, "query")
        vec = m.embed([a.samples])[0]
        return a, vec if raw else to_index_space(vec, self.stores.meta.center(model).mean)[0][0]

    def search(self, query: audio_mod.Audio | str | os.PathLike, model: str, k: int = 10,
               filters: dict | None = None, exact_max: int = FILTER_EXACT_MAX, liked=(), disliked=(),
               hide_seen: bool = False) -> SearchResult:
        """The ``k`` clips most similar to ``query`` (a path or decoded audio), best first.

        Long recordings are indexed as segments; hits from one file are grouped into one result
        (its best segment first, the others in ``Hit.segments``). ``filters`` restricts the
        search to clips whose ``label``/``speaker``/``source`` equals, or whose tags contain
        (``tag``), the given value (case-insensitive; empty values are ignored).

        With ``liked``/``disliked`` clip ids (or ``hide_seen``), the hits are those of
        :meth:`search_feedback` after this search, for one request that carries its marks (the CLI,
        the HTTP API); ``hide_seen`` then hides the clips this search without feedback shows (its
        top ``k``) and the marked ones. :attr:`SearchResult.vector` is the query's own vector.
        """
        k = limits.top_k(k)
        filter_conditions(filters)  # unknown filter keys fail before the query is embedded
        marks = (limits.clip_ids(liked, "clips marked more like this"),
                 limits.clip_ids(disliked, "clips marked less like this"))
        t0 = time.perf_counter()
        a, vec = self.embed_query(query, model)
        t1 = time.perf_counter()
        hits = self.search_vector(vec, model, k, filters=filters, exact_max=exact_max)
        if marks[0] or marks[1] or hide_seen:
            seen = {h.clip.id for h in hits} | set(marks[0]) | set(marks[1]) if hide_seen else ()
            hits = self.search_feedback(vec, model, *marks, k, filters, seen, exact_max)
        t2 = time.perf_counter()
        return SearchResult(model, a, hits, {"embed": t1 - t0, "search": t2 - t1, "total": t2 - t0}, vector=vec)

    def search_feedback(self, vec: np.ndarray, model: str, liked=(), disliked=(), k: int = 10,
                        filters: dict | None = None, exclude=(), exact_max: int = FILTER_EXACT_MAX) -> list[Hit]:
        """Search again after relevance feedback: ``vec`` (the query vector a search returned,
        :attr:`SearchResult.vector`) moved toward the ``liked`` clips and away from the ``disliked``
        ones (:func:`search_core.feedback.rocchio`, on their stored vectors: nothing is embedded
        again), the clips in ``exclude`` (e.g. those already seen) left out.

        A marked clip that has no vectors for ``model`` (unknown, deleted) raises ValueError.
        """
        k = limits.top_k(k)
        liked = limits.clip_ids(liked, "clips marked more like this")
        disliked = limits.clip_ids(disliked, "clips marked less like this")
        exclude = set(limits.clip_ids(exclude, "clips to hide", limits.MAX_SEEN))
        both = set(liked) & set(disliked)
        if both:
            raise ValueError(f"Clip #{min(both)} is marked both more and less like this.")
        filter_conditions(filters)
        vec, dim = np.asarray(vec, dtype=np.float32), get_model(model).info.dim
        if vec.ndim != 1 or (dim and vec.size != dim):
            raise ValueError(f"The query vector must have {dim} values for {model}; got shape {vec.shape}.")
        marked = self.clip_vectors(model, liked + disliked)
        moved = rocchio(vec, [marked[c] for c in liked], [marked[c] for c in disliked])
        return self.search_vector(moved, model, k, filters=filters, exclude=exclude, exact_max=exact_max)

    def clip_vectors(self, model: str, clip_ids) -> dict[int, np.ndarray]:
        """``{clip id: the mean of its stored segment vectors for model}`` (see
        :func:`search_core.feedback.clip_vector`); a clip without vectors raises ValueError."""
        ids = self.stores.meta.clip_vector_ids(model, clip_ids)
        missing = [c for c in clip_ids if c not in ids]
        if missing:
            raise ValueError(f"Clip #{missing[0]} is not in the library for {model}.")
        stored = self.stores.vectors.get(model, [v for vs in ids.values() for v in vs])
        out = {}
        for cid, vids in ids.items():
            if not all(v in stored for v in vids):
                raise ValueError(f"Clip #{cid} is not in the library for {model}.")
            out[cid] = clip_vector([stored[v] for v in vids])
        return out

    def search_clip(self, clip_id: int, model: str, k: int = 10, filters: dict | None = None,
                    exact_max: int = FILTER_EXACT_MAX) -> list[Hit]:
        """The ``k`` clips most similar to library clip ``clip_id`` (its stored vector: the mean of
        its segments' for a long recording), the clip itself left out."""
        by_clip = self.stores.meta.clip_vector_ids(model, [clip_id])
        vec = self.stores.clip_vectors(model, by_clip).get(clip_id)
        if vec is None:
            raise KeyError(f"No clip {clip_id} in the library for {model}.")
        return self.search_vector(vec, model, k, filters, exclude={clip_id}, exact_max=exact_max)

    def search_vector(self, vec: np.ndarray, model: str, k: int = 10, filters: dict | None = None,
                      exclude=(), exact_max: int = FILTER_EXACT_MAX) -> list[Hit]:
        """Search with an embedding; joins ready metadata rows and groups segments by clip.

        Clips whose id is in ``exclude`` (a set, or one id) are left out; the search fetches on
        until ``k`` others are found.

        With ``filters``, SQL resolves which vectors may match. A selective filter (at most
        ``exact_max`` vectors) is searched exactly over that subset; a broad one is applied in the
        SQL join to hits over-fetched in proportion to its selectivity. See
        ``benchmarks/filter_bench.py`` for why this beats a Milvus filter here.
        """
        meta, vectors = self.stores.meta, self.stores.vectors
        exclude = {int(exclude)} if isinstance(exclude, (int, np.integer)) else set(exclude or ())
        filters = {key: v for key, v in (filters or {}).items() if v is not None and str(v).strip()}
        filter_conditions(filters)
        post_filters: dict | None = None
        fetch = min(MAX_FETCH, int(k) * 3 + 10 + len(exclude))  # hidden clips may take up to that many ranks
        search = lambda n: vectors.search(model, vec[None, :], n)[0]  # noqa: E731
        if filters:
            allowed = meta.filtered_vector_ids(model, filters, limit=exact_max)
            if not allowed:
                return []
            if len(allowed) <= exact_max:
                search = lambda n: exact_search(vectors.get(model, allowed), vec, n)  # noqa: E731
            else:
                post_filters = filters
                share = meta.count_filtered(model, filters) / max(1, meta.count_vectors(model))
                fetch = min(MAX_FETCH, int(fetch / max(share, 1e-6) * 1.5))
        grouped: dict[int, Hit] = {}
        center = meta.center(model)
        while True:  # over-fetch until k distinct clips are found (segments of one file share a clip)
            raw = search(fetch)
            refs = meta.ready_refs([h.id for h in raw], post_filters)
            raw = self._rescore(model, raw, refs, vec, center)
            grouped = {}
            for h in raw:
                ref = refs.get(h.id)
                if ref is None:
                    continue  # not ready (being written or deleted): never shown
                cid = ref.clip.id
                if cid in exclude:
                    continue
                if cid not in grouped:
                    grouped[cid] = Hit(0, ref.clip, h.id, h.score, ref.start_s, ref.end_s,
                                       self.stores.clip_path(ref.clip))
                grouped[cid].segments.append((ref.start_s, ref.end_s, h.score))
            if len(grouped) >= k or len(raw) < fetch or fetch >= MAX_FETCH:
                break
            fetch = min(fetch * 4, MAX_FETCH)
        # a clip deleted since the rows were read has lost its file: it drops out, it is never a broken hit
        hits = [h for h in sorted(grouped.values(), key=lambda h: -h.score) if h.path.is_file()][:k]
        for r, h in enumerate(hits, 1):
            h.rank = r
        return hits

    def _rescore(self, model: str, hits: list[VectorHit], refs: dict, vec: np.ndarray, center) -> list[VectorHit]:
        """Hits whose vector is still under an older mean (a re-index is under way, or was
        interrupted) scored exactly under the mean in use, so that scores never mix means."""
        journal = {h.id: refs[h.id].raw for h in hits if h.id in refs and refs[h.id].raw is not None}
        old = [h.id for h in hits if h.id in refs and h.id not in journal
               and refs[h.id].center_version != center.version]
        if not old and not journal:
            return hits
        units = self.stores.vectors.get(model, old) if old else {}
        means = self.stores.meta.center_means(model, {refs[i].center_version for i in units})
        raws = {i: from_index_space(u, [refs[i].norm], means.get(refs[i].center_version)) for i, u in units.items()}
        raws.update(journal)  # being rewritten right now: the journal has the raw embedding
        score = {i: float(to_index_space(x, center.mean)[0][0] @ np.asarray(vec, dtype=np.float32))
                 for i, x in raws.items()}
        out = [VectorHit(h.id, score.get(h.id, h.score)) for h in hits]
        return sorted(out, key=lambda h: -h.score)


def exact_search(stored: dict[int, np.ndarray], vec: np.ndarray, k: int) -> list[VectorHit]:
    """Top-``k`` of ``{id: unit vector}`` by cosine similarity with ``vec``, best first."""
    if not stored:
        return []
    ids = np.fromiter(stored.keys(), dtype=np.int64, count=len(stored))
    scores = np.stack(list(stored.values())) @ np.asarray(vec, dtype=np.float32)
    top = np.argsort(-scores, kind="stable")[:int(k)]
    return [VectorHit(int(ids[i]), float(scores[i])) for i in top]
