"""The stores every room works on, opened together: metadata (SQL), vectors (Milvus), the
library folder, this process' writer lease and the one write lock.

Ingest, search, maintenance, near-duplicates and speakers take a :class:`Stores` (or the parts
of it they need), never the service: data flows one way, from here up to the service.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .config import Settings
from .feedback import clip_vector
from .metadata import ClipRow, MetadataStore, WriterLease
from .vectors import VectorStore

#: A library file being copied in is named ``.tmp-<owner>-...`` until its atomic rename.
TMP_PREFIX = ".tmp-"


@dataclass
class Stores:
    settings: Settings
    meta: MetadataStore
    vectors: VectorStore
    lease: WriterLease
    library_dir: Path
    #: Held by every write (ingest's writer thread, delete, drop, recovery); re-entrant, since a
    #: write that fails runs recovery under it.
    write_lock: threading.RLock = field(default_factory=threading.RLock)
    #: An earlier write failed and could not be cleaned up at once (a store was down): the next
    #: write runs recovery first.
    unrecovered: bool = False
    #: Test hook: a callable(step) called at each named step of the write paths (to inject faults).
    fault_hook: Callable[[str], None] | None = None

    @classmethod
    def open(cls, settings: Settings) -> "Stores":
        """Create the folders and connect to both stores (raises the stores' own errors; whatever
        was opened before the error is closed again)."""
        s = settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.library_dir.mkdir(parents=True, exist_ok=True)
        meta = lease = vectors = None
        try:
            meta = MetadataStore(s.database_url)
            lease = WriterLease(meta, s.writer_lease_s)  # other processes' recovery leaves our work alone
            vectors = VectorStore(s.milvus_uri, s.index_type, timeout=s.milvus_timeout_s)
        except Exception:
            for part in (lease, vectors, meta):
                if part is not None:
                    part.close()
            raise
        return cls(s, meta, vectors, lease, s.library_dir)

    def close(self) -> None:
        for part in (self.lease, self.vectors, self.meta):
            part.close()

    @property
    def owner(self) -> str:
        """This process' writer id: its unfinished rows and temp files carry it (see :class:`WriterLease`)."""
        return self.lease.owner

    def clip_path(self, clip: ClipRow) -> Path:
        """The stored copy of ``clip`` in the library."""
        return self.library_dir / clip.stored_name

    def clip_vectors(self, model: str, by_clip: dict[int, list[int]]) -> dict[int, np.ndarray]:
        """``{clip id: unit vector}``: each clip's segment vectors (``by_clip``: their ids, see
        :meth:`MetadataStore.clip_vector_ids`) averaged; clips whose vectors are gone are left out."""
        stored = self.vectors.get(model, [v for vids in by_clip.values() for v in vids])
        out = {}
        for cid, vids in by_clip.items():
            got = [stored[v] for v in vids if v in stored]
            if got:
                out[cid] = clip_vector(got).astype(np.float32)
        return out

    def remove_file(self, stored_name: str) -> None:
        """Remove a library file (only ever one directly inside the library folder)."""
        p = self.library_dir / stored_name
        if p.parent == self.library_dir:
            p.unlink(missing_ok=True)

    def fault(self, step: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(step)
