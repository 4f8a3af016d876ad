"""Near-duplicate detection: is a newly ingested clip the same recording as one already indexed?

Two stages. The model proposes: :func:`candidates` takes the library clips whose embeddings are
closest to the new clip's (mean over its segments of the best cosine similarity, at least the
model's gate in :data:`CANDIDATE_GATES`, duration within :data:`MAX_DURATION_RATIO`). A
fingerprint decides: :func:`fingerprint_similarity` correlates the two clips' log-mel
spectrograms at the best time offset (up to a few seconds, so trimming is allowed). A copy that
went through a gain change, resampling, lossy re-encoding, a little trimming or noise at 20 dB
SNR keeps its time-frequency pattern (correlation > 0.94); a different take of the same sound
does not (median 0.43 on ESC-50 takes of one recording). The mark is written when the
correlation reaches :data:`THRESHOLD`. Embeddings alone cannot make this call: the weight-free
model scores most pairs of ESC-50 clips above 0.99, and a gain change moves it more than that.

The functions read the stores (``stores.vectors``, ``stores.meta``, ``stores.clip_path``: a
:class:`~search_core.stores.Stores`, or the service, which offers the same three); the writer
calls them at ingest and writes the marks.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .centering import to_index_space
from .config import env_unit_float
from .metadata import ClipRow, MetadataStore
from .recenter import raw_vectors
from .stores import Stores
from .vectors import VectorHit

#: Fingerprint-correlation threshold, from ``benchmarks/near_duplicates.py`` on degraded copies
#: of the 211 ESC-50 clips of ../shared/data (BENCHMARKS.md, "Near-duplicates").
THRESHOLD = 0.93
#: Per model: the least embedding similarity for a clip to be checked as a candidate (a loose
#: gate that only saves fingerprint work; the recall figures in BENCHMARKS.md include it). The gate applies to the raw
#: embeddings' cosine, as calibrated: a centered collection (search_core/centering.py) is searched
#: in its index space and its candidates scored again on their raw embeddings.
CANDIDATE_GATES: dict[str, float] = {
    "mfcc_stats": 0.90,
}
DEFAULT_GATE = 0.5
#: How many of the closest clips are checked with the fingerprint.
MAX_CANDIDATES = 5
#: A near-duplicate's duration is within this factor of its original's.
MAX_DURATION_RATIO = 1.25
#: Clips longer than this are not fingerprinted (the check would cost seconds); not marked.
MAX_FINGERPRINT_S = 900.0

FP_RATE, FP_HOP, FP_FLOOR_DB = 8000, 128, 40.0


def threshold_for(model: str | None = None) -> float:
    """The fingerprint threshold; ``NEAR_DUPLICATE_THRESHOLD`` overrides it (same for every model)."""
    value = env_unit_float("NEAR_DUPLICATE_THRESHOLD", "correlation")
    return THRESHOLD if value is None else value


def fingerprint(samples: np.ndarray, rate: int) -> np.ndarray:
    """A gain-free log-mel picture of a clip: (frames, 32) at 16 ms, 40 dB below its peak clipped."""
    import librosa

    from .audio import resample

    y = resample(samples, rate, FP_RATE)
    if len(y) < 512:
        y = np.pad(y, (0, 512 - len(y)))
    mel = librosa.feature.melspectrogram(y=y, sr=FP_RATE, n_fft=512, hop_length=FP_HOP, n_mels=32)
    db = 10 * np.log10(mel + 1e-12)
    db = np.maximum(db, db.max() - FP_FLOOR_DB)
    return (db - db.mean()).T.astype(np.float32)


def fingerprint_similarity(a: np.ndarray, b: np.ndarray, max_shift_s: float | None = None) -> float:
    """Pearson correlation of two fingerprints at the best time offset (overlap >= 75 %).

    Equal to correlating the overlapping frames (flattened) at every shift, but computed from one
    frame Gram matrix (its diagonals are the cross terms) and cumulative sums (the means and
    variances of each overlap), so it costs about one matrix product instead of one per shift.
    """
    if max_shift_s is None:
        max_shift_s = min(3.0, max(0.5, 0.1 * max(len(a), len(b)) * FP_HOP / FP_RATE))
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    la, lb, feats = len(a), len(b), a.shape[1]
    shift = int(round(max_shift_s * FP_RATE / FP_HOP))
    need = max(0.75 * min(la, lb), 1)
    gram = a @ b.T  # gram[i, j] = <a[i], b[j]>
    ca = np.concatenate([[0.0], np.cumsum(a.sum(axis=1))])
    ca2 = np.concatenate([[0.0], np.cumsum((a * a).sum(axis=1))])
    cb = np.concatenate([[0.0], np.cumsum(b.sum(axis=1))])
    cb2 = np.concatenate([[0.0], np.cumsum((b * b).sum(axis=1))])
    best = -1.0
    for d in range(-shift, shift + 1):
        if d >= 0:  # a[d:d+n] against b[:n]
            n = min(la - d, lb)
            a0, b0 = d, 0
        else:       # a[:n] against b[-d:-d+n]
            n = min(la, lb + d)
            a0, b0 = 0, -d
        if n < need:
            continue
        sxy = np.trace(gram, offset=b0 - a0)
        sx, sxx = ca[a0 + n] - ca[a0], ca2[a0 + n] - ca2[a0]
        sy, syy = cb[b0 + n] - cb[b0], cb2[b0 + n] - cb2[b0]
        size = n * feats
        cov = sxy - sx * sy / size
        den2 = (sxx - sx * sx / size) * (syy - sy * sy / size)
        if den2 > 0:
            best = max(best, float(cov / np.sqrt(den2)))
    return best


class FingerprintCache:
    """Fingerprints of library clips, most recently used kept, bounded in bytes (thread-safe).

    Keyed by ``(clip id, sha256)`` so a reused id can never return another clip's picture. Bulk
    ingest fingerprints each added clip from the samples it already holds, so the candidates of
    later clips rarely need their stored file decoded again.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, clip: ClipRow) -> np.ndarray | None:
        with self._lock:
            fp = self._items.get((clip.id, clip.sha256))
            if fp is not None:
                self._items.move_to_end((clip.id, clip.sha256))
            return fp

    def put(self, clip_id: int, sha256: str, fp: np.ndarray) -> None:
        if fp.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop((clip_id, sha256), None)
            self._bytes -= old.nbytes if old is not None else 0
            self._items[(clip_id, sha256)] = fp
            self._bytes += fp.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Match:
    clip: ClipRow
    score: float


def candidates(stores: Stores, model: str, vecs: np.ndarray, duration_s: float,
               exclude_clip: int | None = None, fetch: int = 10, before_clip: int | None = None) -> list[Match]:
    """Indexed clips close to a clip with segment embeddings ``vecs`` (rows), best first.

    The score of a candidate is the mean over the query's segments of the best similarity any
    of its segments reaches. ``exclude_clip`` (the clip itself) is left out; candidates below
    the model's gate or with a too different duration too, and with ``before_clip`` every clip
    not older than it (a clip is a copy of an earlier one, even within one ingest batch). At most
    :data:`MAX_CANDIDATES`.
    """
    return candidates_many(stores, model, [(vecs, duration_s, exclude_clip, before_clip)], fetch)[0]


def candidates_many(stores: Stores, model: str,
                    queries: list[tuple[np.ndarray, float, int | None, int | None]], fetch: int = 10) -> list[list[Match]]:
    """:func:`candidates` for several clips ``(vecs, duration_s, exclude_clip, before_clip)`` at once:
    one vector search and one metadata query for all of them (an ingest batch)."""
    rows = [np.atleast_2d(np.asarray(q[0], dtype=np.float32)) for q in queries]
    if not rows or sum(len(r) for r in rows) == 0:
        return [[] for _ in queries]
    center = stores.meta.center(model)
    queries_raw = np.concatenate([r for r in rows if len(r)])
    raw = stores.vectors.search(model, to_index_space(queries_raw, center.mean)[0], fetch + 8)
    refs = stores.meta.ready_refs(sorted({h.id for hits in raw for h in hits}))
    if center.version or any(ref.center_version for ref in refs.values()):
        raw = _raw_cosines(stores, model, queries_raw, raw)
    gate = CANDIDATE_GATES.get(model, DEFAULT_GATE)
    out, start = [], 0
    for (_, duration_s, exclude_clip, before_clip), r in zip(queries, rows):
        mine, start = raw[start:start + len(r)], start + len(r)
        per_clip: dict[int, np.ndarray] = {}
        clips: dict[int, ClipRow] = {}
        for q, hits in enumerate(mine):
            for h in hits:
                ref = refs.get(h.id)
                if ref is None or ref.clip.id == exclude_clip or (before_clip is not None
                                                                  and ref.clip.id >= before_clip):
                    continue
                best = per_clip.setdefault(ref.clip.id, np.full(len(r), -1.0))
                best[q] = max(best[q], h.score)
                clips[ref.clip.id] = ref.clip
        found = []
        for cid, best in per_clip.items():
            other = clips[cid].duration_s
            ratio = max(other, duration_s) / max(min(other, duration_s), 1e-6)
            score = float(best.mean())
            if ratio <= MAX_DURATION_RATIO and score >= gate:
                found.append(Match(clips[cid], score))
        out.append(sorted(found, key=lambda m: -m.score)[:MAX_CANDIDATES])
    return out


def _raw_cosines(stores: Stores, model: str, queries_raw: np.ndarray, found: list[list]) -> list[list]:
    """``found`` (hits per query row) scored by the cosine of the raw embeddings."""
    stored = raw_vectors(stores, model, sorted({h.id for hits in found for h in hits}))
    q = to_index_space(queries_raw, None)[0]
    unit = {i: to_index_space(x, None)[0][0] for i, x in stored.items()}
    return [[VectorHit(h.id, float(q[r] @ unit[h.id])) for h in hits if h.id in unit]
            for r, hits in enumerate(found)]


def best_match(stores: Stores, model: str, vecs: np.ndarray, samples: np.ndarray, rate: int,
               exclude_clip: int | None = None, before_clip: int | None = None,
               fp: np.ndarray | None = None, cache: FingerprintCache | None = None,
               found: list[Match] | None = None) -> Match | None:
    """The candidate whose fingerprint correlates best with the clip's (``score`` = correlation).

    ``fp`` is the clip's own fingerprint if already computed; ``cache`` holds candidates' ones;
    ``found`` the clip's :func:`candidates` if already looked up.
    """
    from . import audio as audio_mod

    duration = len(samples) / rate
    if duration > MAX_FINGERPRINT_S:
        return None
    if found is None:
        found = candidates(stores, model, vecs, duration, exclude_clip, before_clip=before_clip)
    if not found:
        return None
    fp = fingerprint(samples, rate) if fp is None else fp
    best: Match | None = None
    for m in found:
        other_fp = cache.get(m.clip) if cache is not None else None
        if other_fp is None:
            try:
                other = audio_mod.load(stores.clip_path(m.clip), FP_RATE, max_bytes=1 << 62,
                                       max_duration_s=MAX_FINGERPRINT_S * 1.5)
            except (audio_mod.AudioError, OSError):
                continue  # a stored file that vanished is recover()'s business, not a duplicate
            other_fp = fingerprint(other.samples, other.sample_rate)
            if cache is not None:
                cache.put(m.clip.id, m.clip.sha256, other_fp)
        sim = fingerprint_similarity(fp, other_fp)
        if best is None or sim > best.score:
            best = Match(m.clip, sim)
    return best


@dataclass
class DuplicateGroup:
    """An original (the earliest clip of the group) and the clips marked as its near-duplicates."""

    model: str
    original: ClipRow
    copies: list[tuple[ClipRow, float]] = field(default_factory=list)  # (clip, similarity to its match)

    @property
    def size(self) -> int:
        return 1 + len(self.copies)


def groups(meta: MetadataStore, model: str | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate clips (marked at ingest), largest first, per model."""
    pairs = meta.near_duplicate_pairs(model)
    clips = meta.clips_by_id({i for a, b, _, _ in pairs for i in (a, b)})
    out = []
    for m, found in group_pairs(pairs).items():
        for root, members in found:
            if root in clips:
                out.append(DuplicateGroup(m, clips[root], [(clips[c], sc) for c, sc in members if c in clips]))
    return sorted(out, key=lambda g: (-g.size, g.model, g.original.id))


def group_pairs(pairs: list[tuple[int, int, str, float]]) -> dict[str, list[tuple[int, list[tuple[int, float]]]]]:
    """Connected components of ``(clip, of_clip, model, score)`` marks, per model.

    Returns ``{model: [(root, [(member, score), ...]), ...]}`` with ``root`` the smallest id.
    """
    out: dict[str, list[tuple[int, list[tuple[int, float]]]]] = {}
    by_model: dict[str, list[tuple[int, int, float]]] = {}
    for a, b, model, score in pairs:
        by_model.setdefault(model, []).append((a, b, score))
    for model, edges in by_model.items():
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in edges:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        members: dict[int, list[tuple[int, float]]] = {}
        for a, b, score in edges:
            members.setdefault(find(a), []).append((a, score))
        out[model] = sorted((root, sorted(m)) for root, m in members.items())
    return out
