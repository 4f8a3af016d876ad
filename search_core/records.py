"""What the library hands back, and text as it is stored: the plain values the rooms share.

:class:`IngestItem` / :class:`IngestReport` (ingest), :class:`Hit` / :class:`SearchResult`
(search), :class:`RecoveryReport` (maintenance); :func:`clean_text` and :func:`clean_name` turn
what people type or upload into what the metadata store keeps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import audio as audio_mod
from . import limits
from .schema import ClipRow

ProgressFn = Callable[[int, int, str], None]  # (done, total, current name)


@dataclass
class IngestItem:
    """The outcome for one file: ``added``, ``exists`` or ``error`` (with a one-line reason)."""

    name: str
    status: str
    clip_id: int | None = None
    message: str = ""
    duplicate_of: int | None = None   # an added clip that is a near-duplicate of this clip id
    duplicate_score: float | None = None


@dataclass
class IngestReport:
    model: str
    items: list[IngestItem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def added(self) -> list[IngestItem]:
        return [i for i in self.items if i.status == "added"]

    @property
    def existing(self) -> list[IngestItem]:
        return [i for i in self.items if i.status == "exists"]

    @property
    def errors(self) -> list[IngestItem]:
        return [i for i in self.items if i.status == "error"]

    @property
    def near_duplicates(self) -> list[IngestItem]:
        return [i for i in self.items if i.duplicate_of is not None]

    def summary(self) -> str:
        text = (f"{len(self.added)} added, {len(self.existing)} already in the library, "
                f"{len(self.errors)} rejected ({self.model}, {self.seconds:.1f} s)")
        if self.near_duplicates:
            text += f"; {len(self.near_duplicates)} marked as near-duplicates of earlier clips"
        return text


@dataclass
class Hit:
    """One search result: a clip, its best-matching segment and its score."""

    rank: int
    clip: ClipRow
    vector_id: int
    score: float          # cosine similarity of unit vectors, in [-1, 1]
    start_s: float
    end_s: float
    path: Path            # the stored copy in the library (always playable)
    segments: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, score)

    @property
    def distance(self) -> float:
        """Cosine distance, ``1 - score``."""
        return 1.0 - self.score

    @property
    def is_segment(self) -> bool:
        return self.start_s > 0.0 or self.end_s < self.clip.duration_s - 1e-3


@dataclass
class SearchResult:
    model: str
    query: audio_mod.Audio
    hits: list[Hit]
    seconds: dict[str, float] = field(default_factory=dict)
    #: the query's vector as searched, in the collection's stored space (relevance feedback moves it)
    vector: np.ndarray | None = None


@dataclass
class RecoveryReport:
    completed: int = 0
    rolled_back: int = 0
    deleted_rows: int = 0
    orphan_clips: int = 0
    orphan_files: int = 0
    orphan_vectors: int = 0
    missing_files: int = 0   # ready clips whose library file was gone: removed (names in ``removed``)
    reindexed: int = 0       # vectors an interrupted re-index left in its journal, rewritten
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(vars(self).values())


def clean_text(value: str | None, limit: int = limits.MAX_TEXT) -> str | None:
    """Metadata text as stored: control characters removed, NFC, trimmed, length-limited.

    Values typed by people are checked against their bound first (:mod:`search_core.limits`);
    this cut only guards values that never passed a check.
    """
    if value is None:
        return None
    return limits.clean(value)[:limit] or None


def clean_name(name: str) -> str:
    """A display name from an uploaded or imported name: its last path part, never a path
    (its length is checked per file by :func:`search_core.limits.name`)."""
    base = re.split(r"[\\/]", str(name))[-1]
    return limits.clean(base) or "unnamed"
