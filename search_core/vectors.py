"""Vector store on Milvus through pymilvus' MilvusClient.

One collection per model (their dimensions differ), named ``audio_<model>``. The primary key
is an explicit int64 equal to the metadata ``vectors.id``; vectors are L2-normalised and
compared with COSINE. The same code talks to Milvus Lite (a local file URI, the default), to a
Milvus standalone server the app runs itself (``local://<folder>``, search_core/milvus_local.py)
and to a Milvus standalone/cluster (``http://host:19530``).

Consistency. A Milvus server makes a write visible to searches only once its query nodes have
consumed it (timeticks every 200 ms); its default, Bounded, lets a process search without
its own last write. Reads here use *Session* consistency: pymilvus remembers, per process,
the timestamp of the last insert/upsert/delete on each collection and sends it as the
search's guarantee timestamp, so the server waits only until that write is visible (once,
right after a write) and a process always sees its own writes - an ingest's count, the next
batch's near-duplicate check - without Strong's wait for the newest timestamp on every
search (~200 ms, BENCHMARKS.md). Writes of other processes show up within a timetick.
Milvus 2.3 returns no timestamp for a delete, so Session cannot wait for one: the first read
of a collection after this process deleted from it is Strong. Recovery, which must see every
process' writes, reads with Strong. Milvus Lite applies every write at once and accepts
(ignores) these parameters.
"""
from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# Milvus Lite has no server-side MVCC timestamp for iterators; pymilvus warns about it on every
# id sweep although the client-side fallback is what we want.
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)

#: ``local://<folder>``: a Milvus server run by the app with its data in ``folder`` (milvus_local.py).
LOCAL_SCHEME = "local://"


class _NotImplementedByLite(logging.Filter):
    """Milvus Lite serves pymilvus from a gRPC server in this process and leaves some calls out
    (AllocTimestamp, which pymilvus asks for when it waits for a new index and skips when the server
    does not implement it); grpc logs each such call as an error with a traceback. Only those are
    dropped: any other error of the server is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


logging.getLogger("grpc._server").addFilter(_NotImplementedByLite())

#: gRPC options for Milvus Lite (a server thread in this process): no keepalive pings. pymilvus pings
#: every 10 s, more often than grpc servers accept by default (5 min), and Lite's server answered with
#: GOAWAY "too_many_pings" (logged as an error) and a reconnect; a loopback peer needs no liveness check.
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2 ** 31 - 1, "grpc.keepalive_permit_without_calls": False}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

#: Build parameters per index type; search parameters are derived from them in :meth:`search`.
INDEX_PARAMS: dict[str, dict] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "FLAT": {},
    "AUTOINDEX": {},
}


def collection_name(model: str) -> str:
    """The collection for ``model``; rejects names that are not ``[a-z][a-z0-9_]*``."""
    if not isinstance(model, str) or not _NAME_RE.match(model):
        raise ValueError(f"invalid model name {model!r}: use lower-case letters, digits and _")
    return f"audio_{model}"


#: Seconds a Milvus call may take before the server counts as unreachable (pymilvus would otherwise
#: retry an unreachable server 75 times, several minutes); loading a collection may take longer.
CALL_TIMEOUT_S = 20.0
LOAD_TIMEOUT_S = 300.0


#: Milvus' error code for a collection that does not exist (server and Lite alike).
COLLECTION_NOT_FOUND = 100


class _Client:
    """A MilvusClient whose calls give up after ``timeout`` seconds, and which loads a collection
    that a restarted server has not loaded yet ("collection not loaded") and retries once."""

    _NO_TIMEOUT = frozenset({"close", "prepare_index_params", "create_schema"})

    def __init__(self, client, timeout: float):
        self._client, self._timeout = client, float(timeout)

    def __getattr__(self, name: str):
        fn = getattr(self._client, name)
        if not callable(fn) or name in self._NO_TIMEOUT:
            return fn

        def call(*args, **kwargs):
            from pymilvus.exceptions import MilvusException

            kwargs.setdefault("timeout", LOAD_TIMEOUT_S if name == "load_collection" else self._timeout)
            try:
                return fn(*args, **kwargs)
            except MilvusException as err:
                collection = args[0] if args else kwargs.get("collection_name")
                if name == "load_collection" or not collection or "not loaded" not in str(err):
                    raise
                self._client.load_collection(collection, timeout=LOAD_TIMEOUT_S)
                return fn(*args, **kwargs)
        return call


@dataclass(frozen=True)
class VectorHit:
    id: int
    score: float  # cosine similarity in [-1, 1]


class VectorStore:
    """Thin wrapper over MilvusClient: ensure, upsert, search, delete, count, drop."""

    #: Reads see this process' own writes (module docstring); recovery reads with :data:`RECOVERY`.
    READ = "Session"
    RECOVERY = "Strong"
    #: Milvus' limit on the rows one query returns (quotaAndLimits ... maxQueryResultWindow).
    QUERY_WINDOW = 16384

    #: HNSW search breadth: recall@10 0.989 on a 10k one-segment collection (64 gave 0.931) and 1.0 at 100k,
    #: with no measurable latency cost in Milvus Lite (BENCHMARKS.md, recall vs latency).
    DEFAULT_EF = 256

    def __init__(self, uri: str, index_type: str = "HNSW", search_ef: int = DEFAULT_EF, nprobe: int = 32,
                 timeout: float = CALL_TIMEOUT_S):
        from pymilvus import MilvusClient

        index_type = index_type.upper()
        if index_type not in INDEX_PARAMS:
            raise ValueError(f"unsupported index type {index_type!r}; choose one of {sorted(INDEX_PARAMS)}")
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.index_type = index_type
        self.search_ef = search_ef
        self.nprobe = nprobe
        address, options = uri, {}
        if uri.startswith(LOCAL_SCHEME):  # a server this app runs for its data folder
            from search_core.milvus_local import ensure_server

            address = ensure_server(uri[len(LOCAL_SCHEME):])
        elif "://" not in uri:  # Milvus Lite, in this process
            options = {"grpc_options": LITE_GRPC_OPTIONS}
        self.client = _Client(MilvusClient(address, timeout=timeout, **options), timeout)
        self._ready: dict[str, int] = {}
        self._deleted: dict[str, float] = {}  # collection -> when this process last deleted from it
        self._lock = threading.Lock()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass

    def ensure(self, model: str, dim: int) -> str:
        """Create (if needed) and load the collection for ``model``; checks its dimension."""
        name = collection_name(model)
        if self._ready.get(name) == dim:
            return name
        from pymilvus import DataType, MilvusClient

        with self._lock:
            if self.client.has_collection(name):
                desc = self.client.describe_collection(name)
                have = next((f.get("params", {}).get("dim") for f in desc["fields"] if f["name"] == "vector"), None)
                if have is not None and int(have) != int(dim):
                    raise ValueError(f"collection {name} holds {have}-d vectors but model {model} "
                                     f"gives {dim}-d; drop the collection to re-index")
            else:
                self._remove_half_created(name)
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
                idx = self.client.prepare_index_params()
                idx.add_index(field_name="vector", index_type=self.index_type, metric_type="COSINE",
                              params=INDEX_PARAMS[self.index_type])
                self.client.create_collection(name, schema=schema, index_params=idx,
                                              consistency_level=self.READ)
            self.client.load_collection(name)
            self._ready[name] = int(dim)
        return name

    def _remove_half_created(self, name: str) -> None:
        """Milvus Lite creates a collection as a folder, then its ``schema.json``; a process killed
        between the two leaves a folder that Lite neither lists nor lets be created again (every
        later create fails with "File exists"). Remove such a leftover: it holds no data. Lite
        allows one process per database file, so no other process can be creating it now."""
        if "://" in self.uri:
            return
        folder = Path(self.uri) / "collections" / name
        if folder.is_dir() and not (folder / "schema.json").exists():
            shutil.rmtree(folder)

    def exists(self, model: str) -> bool:
        return self.client.has_collection(collection_name(model))

    def upsert(self, model: str, ids: Sequence[int], embeddings: np.ndarray) -> None:
        """Insert or replace vectors by id (idempotent, so a retried ingest cannot duplicate)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(ids)} ids for {len(embeddings)} vectors")
        if len(ids) == 0:
            return
        name = self.ensure(model, embeddings.shape[1])
        rows = [{"id": int(i), "vector": v} for i, v in zip(ids, embeddings)]
        for start in range(0, len(rows), 1000):
            self.client.upsert(name, rows[start:start + 1000])

    def search(self, model: str, queries: np.ndarray, k: int,
               filter_ids: Sequence[int] | None = None) -> list[list[VectorHit]]:
        """Top-``k`` ids by cosine similarity for each query row (best first)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        # asked once per collection, not per search (a round trip each on a server); one dropped
        # since (by another process) answers "not found" below
        name = collection_name(model)
        if self._ready.get(name) != queries.shape[1] and not self.exists(model):
            return [[] for _ in queries]
        self.ensure(model, queries.shape[1])
        params: dict = {"metric_type": "COSINE", "params": {}}
        if self.index_type == "HNSW":
            params["params"]["ef"] = max(self.search_ef, k)
        elif self.index_type.startswith("IVF"):
            params["params"]["nprobe"] = self.nprobe
        kwargs = {}
        if filter_ids is not None:
            if not filter_ids:
                return [[] for _ in queries]
            kwargs["filter"] = f"id in [{','.join(str(int(i)) for i in filter_ids)}]"
        from pymilvus.exceptions import MilvusException

        try:
            res = self._read(name, lambda level: self.client.search(
                name, data=list(queries), limit=int(k), search_params=params, output_fields=["id"],
                consistency_level=level, **kwargs))
        except MilvusException as err:
            if err.code != COLLECTION_NOT_FOUND:
                raise
            with self._lock:
                self._ready.pop(name, None)
            return [[] for _ in queries]
        return [[VectorHit(int(h["id"]), float(h["distance"])) for h in hits] for hits in res]

    def get(self, model: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by id (missing ids are left out)."""
        if not ids or not self.exists(model):
            return {}
        name = collection_name(model)
        out = {}
        for start in range(0, len(ids), 1000):
            chunk = [int(i) for i in ids[start:start + 1000]]
            rows = self._read(name, lambda level: self.client.get(name, ids=chunk, output_fields=["id", "vector"],
                                                                  consistency_level=level))
            for r in rows:
                out[int(r["id"])] = np.asarray(r["vector"], dtype=np.float32)
        return out

    def existing_ids(self, model: str, ids: Sequence[int]) -> set[int]:
        if not ids or not self.exists(model):
            return set()
        name = collection_name(model)
        self.ensure_loaded(name)
        found: set[int] = set()
        for start in range(0, len(ids), 1000):
            chunk = [int(i) for i in ids[start:start + 1000]]
            res = self._read(name, lambda level: self.client.query(
                name, filter=f"id in [{','.join(map(str, chunk))}]", output_fields=["id"],
                consistency_level=level), level=self.RECOVERY)  # every process' writes
            found.update(int(r["id"]) for r in res)
        return found

    def all_ids(self, model: str) -> set[int]:
        """Every id in the collection (for orphan sweeps)."""
        if not self.exists(model):
            return set()
        name = collection_name(model)
        self.ensure_loaded(name)
        # one query answers a library of up to QUERY_WINDOW vectors (each Strong read waits ~200 ms
        # on a server); larger ones are paged by an iterator
        everything = "id >= -9223372036854775807"
        res = self._read(name, lambda level: self.client.query(
            name, filter=everything, output_fields=["id"], limit=self.QUERY_WINDOW, consistency_level=level),
            level=self.RECOVERY)
        if len(res) < self.QUERY_WINDOW:
            return {int(r["id"]) for r in res}
        it = self.client.query_iterator(name, batch_size=5000, filter=everything, output_fields=["id"],
                                        consistency_level=self.RECOVERY)
        ids: set[int] = set()
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                ids.update(int(r["id"]) for r in batch)
        finally:
            it.close()
        return ids

    def ensure_loaded(self, name: str) -> None:
        if name not in self._ready:
            self.client.load_collection(name)
            self._ready[name] = -1

    def delete(self, model: str, ids: Sequence[int]) -> None:
        if not ids or not self.exists(model):
            return
        name = collection_name(model)
        self.ensure_loaded(name)
        try:
            for start in range(0, len(ids), 1000):
                self.client.delete(name, ids=[int(i) for i in ids[start:start + 1000]])
        finally:  # even a failed call may have deleted some
            with self._lock:
                self._deleted[name] = time.monotonic()

    def count(self, model: str, strong: bool = False) -> int:
        """Vectors in ``model``'s collection; ``strong``: every process' writes counted (a
        recovery read, see the module docstring)."""
        if not self.exists(model):
            return 0
        name = collection_name(model)
        self.ensure_loaded(name)
        res = self._read(name, lambda level: self.client.query(name, filter="", output_fields=["count(*)"],
                                                               consistency_level=level),
                         level=self.RECOVERY if strong else None)
        return int(res[0]["count(*)"])

    def _read(self, name: str, call, level: str | None = None):
        """``call(consistency_level)`` for a read of collection ``name``: ``level`` if given, else
        Session, or Strong when this process deleted from it since its last Strong read (module
        docstring). A collection a restarted server has not loaded yet is loaded by :class:`_Client`."""
        deleted = self._deleted.get(name)
        level = level or (self.READ if deleted is None else self.RECOVERY)
        out = call(level)
        if deleted is not None and level == self.RECOVERY:
            with self._lock:
                if self._deleted.get(name) == deleted:  # no delete since this read began
                    del self._deleted[name]
        return out

    def drop(self, model: str) -> None:
        name = collection_name(model)
        with self._lock:
            if self.client.has_collection(name):
                self.client.drop_collection(name)
            self._ready.pop(name, None)
            self._deleted.pop(name, None)

    def collections(self) -> list[str]:
        """Model names that have a collection."""
        return sorted(n[len("audio_"):] for n in self.client.list_collections() if n.startswith("audio_"))
