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
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .metadata import ClipRow

if TYPE_CHECKING:  # pragma: no cover
    from .service import LibraryService

#: Fingerprint-correlation threshold, from ``benchmarks/near_duplicates.py`` on degraded copies
#: of the 211 ESC-50 clips of ../shared/data (BENCHMARKS.md, "Near-duplicates").
THRESHOLD = 0.93
#: Per model: the least embedding similarity for a clip to be checked as a candidate (a loose
#: gate that only saves fingerprint work; the recall figures in BENCHMARKS.md include it).
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
    raw = os.environ.get("NEAR_DUPLICATE_THRESHOLD", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"NEAR_DUPLICATE_THRESHOLD={raw!r} is not a number") from None
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"NEAR_DUPLICATE_THRESHOLD must be a correlation in [-1, 1], got {value}")
        return value
    return THRESHOLD


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
    """Pearson correlation of two fingerprints at the best time offset (overlap >= 75 %)."""
    if max_shift_s is None:
        max_shift_s = min(3.0, max(0.5, 0.1 * max(len(a), len(b)) * FP_HOP / FP_RATE))
    shift = int(round(max_shift_s * FP_RATE / FP_HOP))
    need = 0.75 * min(len(a), len(b))
    best = -1.0
    for d in range(-shift, shift + 1):
        x, y = (a[d:], b) if d >= 0 else (a, b[-d:])
        n = min(len(x), len(y))
        if n < max(need, 1):
            continue
        x = x[:n].ravel() - x[:n].mean()
        y = y[:n].ravel() - y[:n].mean()
        den = float(np.linalg.norm(x) * np.linalg.norm(y))
        if den > 0:
            best = max(best, float(x @ y) / den)
    return best


@dataclass
class Match:
    clip: ClipRow
    score: float


def candidates(svc: "LibraryService", model: str, vecs: np.ndarray, duration_s: float,
               exclude_clip: int | None = None, fetch: int = 10, before_clip: int | None = None) -> list[Match]:
    """Indexed clips close to a clip with segment embeddings ``vecs`` (rows), best first.

    The score of a candidate is the mean over the query's segments of the best similarity any
    of its segments reaches. ``exclude_clip`` (the clip itself) is left out; candidates below
    the model's gate or with a too different duration too, and with ``before_clip`` every clip
    not older than it (a clip is a copy of an earlier one, even within one ingest batch). At most
    :data:`MAX_CANDIDATES`.
    """
    vecs = np.atleast_2d(np.asarray(vecs, dtype=np.float32))
    if len(vecs) == 0:
        return []
    raw = svc.vectors.search(model, vecs, fetch + 8)
    refs = svc.meta.ready_refs(sorted({h.id for hits in raw for h in hits}))
    per_clip: dict[int, np.ndarray] = {}
    clips: dict[int, ClipRow] = {}
    for q, hits in enumerate(raw):
        for h in hits:
            ref = refs.get(h.id)
            if ref is None or ref.clip.id == exclude_clip or (before_clip is not None and ref.clip.id >= before_clip):
                continue
            best = per_clip.setdefault(ref.clip.id, np.full(len(vecs), -1.0))
            best[q] = max(best[q], h.score)
            clips[ref.clip.id] = ref.clip
    gate = CANDIDATE_GATES.get(model, DEFAULT_GATE)
    out = []
    for cid, best in per_clip.items():
        other = clips[cid].duration_s
        ratio = max(other, duration_s) / max(min(other, duration_s), 1e-6)
        score = float(best.mean())
        if ratio <= MAX_DURATION_RATIO and score >= gate:
            out.append(Match(clips[cid], score))
    return sorted(out, key=lambda m: -m.score)[:MAX_CANDIDATES]


def best_match(svc: "LibraryService", model: str, vecs: np.ndarray, samples: np.ndarray, rate: int,
               exclude_clip: int | None = None, before_clip: int | None = None) -> Match | None:
    """The candidate whose fingerprint correlates best with the clip's (``score`` = correlation)."""
    from . import audio as audio_mod

    duration = len(samples) / rate
    if duration > MAX_FINGERPRINT_S:
        return None
    found = candidates(svc, model, vecs, duration, exclude_clip, before_clip=before_clip)
    if not found:
        return None
    fp = fingerprint(samples, rate)
    best: Match | None = None
    for m in found:
        path = svc.clip_path(m.clip)
        try:
            other = audio_mod.load(path, FP_RATE, max_bytes=1 << 62, max_duration_s=MAX_FINGERPRINT_S * 1.5)
        except (audio_mod.AudioError, OSError):
            continue  # a stored file that vanished is recover()'s business, not a duplicate
        sim = fingerprint_similarity(fp, fingerprint(other.samples, other.sample_rate))
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
