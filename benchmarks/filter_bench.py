"""Metadata-filtered search at 100k clips: Milvus scalar filter vs SQL join, measured.

    python benchmarks/filter_bench.py [--n 100000] [--dim 128] [--queries 30] [--out DIR]

Builds a synthetic library of ``n`` clips (one vector each) with the product's own stores
(SQLite metadata via :class:`MetadataStore`, Milvus Lite via :class:`VectorStore`) plus, for
comparison, a second Milvus collection that carries label/speaker/source/tags as scalar fields.
Then, for filters of different selectivity, it times top-10 search four ways:

``milvus_scalar``   filter expression on scalar fields inside Milvus (needs the fields in the collection)
``sql_ids``         SQL selects the matching ready vector ids; Milvus searches with ``id in [...]``
``sql_post``        Milvus searches unfiltered, over-fetching; SQL joins and drops non-matching hits
``service``         what :meth:`LibraryService.search_vector` does with ``filters`` (the product path:
                    exact numpy search over the matching vectors when they are few, else sql_post
                    with the over-fetch sized by the filter's selectivity)

and reports the median/p95 latency and recall@10 against exact (brute-force) filtered search.
Prints a markdown table; the figures in BENCHMARKS.md come from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SEARCH_CORE_OFFLINE", "1")

import numpy as np  # noqa: E402

from search_core.config import get_settings  # noqa: E402
from search_core.metadata import READY, clips, utcnow, vectors  # noqa: E402
from search_core.service import LibraryService  # noqa: E402
from search_core.vectors import collection_name  # noqa: E402

MODEL = "bench"
N_LABELS, N_SPEAKERS, N_TAGS = 50, 1000, 20
SOURCES = ("field", "studio")


def synth(n: int, dim: int, seed: int = 0):
    """Clustered unit vectors (a cluster per label, as real embeddings are) and metadata."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, N_LABELS, n)
    centres = rng.standard_normal((N_LABELS, dim)).astype(np.float32)
    vecs = centres[label] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    speaker = rng.integers(0, N_SPEAKERS, n)
    source = rng.integers(0, len(SOURCES), n)
    tags = [sorted({int(a), int(b)}) for a, b in rng.integers(0, N_TAGS, (n, 2))]
    meta = [{"label": f"label{label[i]}", "speaker": f"spk{speaker[i]}", "source": SOURCES[source[i]],
             "tags": [f"tag{t}" for t in tags[i]]} for i in range(n)]
    return vecs, meta


def fill_sql(svc: LibraryService, meta: list[dict]) -> list[int]:
    """Bulk-insert clip rows and one ready vector row each; returns the vector ids."""
    now = utcnow()
    with svc.meta.engine.begin() as c:
        for start in range(0, len(meta), 5000):
            c.execute(clips.insert(), [
                {"id": i + 1, "sha256": f"{i:064x}", "stored_name": f"{i:064x}.wav", "original_name": f"clip{i}.wav",
                 "duration_s": 5.0, "sample_rate": 16000, "channels": 1, "label": m["label"],
                 "speaker": m["speaker"], "source": m["source"], "tags": json.dumps(m["tags"]), "created_at": now}
                for i, m in enumerate(meta[start:start + 5000], start)])
            c.execute(vectors.insert(), [
                {"id": i + 1, "clip_id": i + 1, "model": MODEL, "seg": 0, "start_s": 0.0, "end_s": 5.0,
                 "status": READY, "created_at": now} for i in range(start, min(start + 5000, len(meta)))])
    return list(range(1, len(meta) + 1))


def fill_scalar_collection(client, name: str, dim: int, ids, vecs, meta) -> None:
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    for f in ("label", "speaker", "source"):
        schema.add_field(f, DataType.VARCHAR, max_length=255)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=64)
    idx = client.prepare_index_params()
    idx.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
    client.create_collection(name, schema=schema, index_params=idx)
    for start in range(0, len(ids), 2000):
        client.insert(name, [{"id": int(i), "vector": v, **m} for i, v, m in
                             zip(ids[start:start + 2000], vecs[start:start + 2000], meta[start:start + 2000])])
    client.load_collection(name)


def milvus_expr(flt: dict) -> str:
    key, value = next(iter(flt.items()))
    if key == "tag":
        return f'array_contains(tags, "{value}")'
    return f'{key} == "{value}"'


def matches(m: dict, flt: dict) -> bool:
    key, value = next(iter(flt.items()))
    return value in m["tags"] if key == "tag" else m[key] == value


def timed(fn, reps: int):
    times, out = [], None
    for r in range(reps):
        t0 = time.perf_counter()
        out = fn(r)
        times.append(time.perf_counter() - t0)
    return times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", help="folder for the stores (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="filter_bench_"))
    data = root / "data"
    s = replace(get_settings(), data_dir=data, milvus_uri=str(data / "milvus.db"),
                database_url=f"sqlite:///{data / 'metadata.sqlite'}", library_dir=data / "library",
                weights_dir=data / "weights", index_type="HNSW")
    svc = LibraryService(s, recover=False)
    vecs, meta = synth(args.n, args.dim)
    t0 = time.perf_counter()
    ids = fill_sql(svc, meta)
    t_sql = time.perf_counter() - t0
    t0 = time.perf_counter()
    svc.vectors.upsert(MODEL, ids, vecs)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    scalar_name = "bench_scalar"
    fill_scalar_collection(svc.vectors.client, scalar_name, args.dim, ids, vecs, meta)
    t_scalar = time.perf_counter() - t0
    # seal the segments, as a library that has been running a while has them (searching a
    # growing, unflushed segment is several times slower in Milvus Lite)
    svc.vectors.client.flush(collection_name(MODEL))
    svc.vectors.client.flush(scalar_name)
    print(f"built n={args.n} dim={args.dim}: SQL rows {t_sql:.1f} s, Milvus ids-only {t_vec:.1f} s, "
          f"Milvus with scalar fields {t_scalar:.1f} s", file=sys.stderr)

    rng = np.random.default_rng(1)
    queries = vecs[rng.integers(0, args.n, args.queries)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    filters = [("speaker (0.1%)", {"speaker": "spk7"}), ("label (2%)", {"label": "label7"}),
               ("tag (~10%)", {"tag": "tag3"}), ("source (50%)", {"source": "studio"})]
    k = args.k
    params = {"metric_type": "COSINE", "params": {"ef": 64}}
    rows = []
    for title, flt in filters:
        mask = np.array([matches(m, flt) for m in meta])
        sub = np.flatnonzero(mask)
        exact = [set((sub[np.argsort(-(vecs[sub] @ q))[:k]] + 1).tolist()) for q in queries]

        def recall(results):
            return float(np.mean([len(set(r) & e) / len(e) for r, e in zip(results, exact)]))

        def run_scalar(i):
            res = svc.vectors.client.search(scalar_name, data=[queries[i]], limit=k, filter=milvus_expr(flt),
                                            search_params=params, output_fields=["id"])
            return [int(h["id"]) for h in res[0]]

        def run_sql_ids(i):
            keep = svc.meta.filtered_vector_ids(MODEL, flt)
            return [h.id for h in svc.vectors.search(MODEL, queries[i], k, filter_ids=keep)[0]]

        def run_sql_post(i):
            fetch = k * 4
            while True:
                raw = svc.vectors.search(MODEL, queries[i], fetch)[0]
                refs = svc.meta.ready_refs([h.id for h in raw])
                got = [h.id for h in raw if h.id in refs and
                       matches({"label": refs[h.id].clip.label, "speaker": refs[h.id].clip.speaker,
                                "source": refs[h.id].clip.source, "tags": refs[h.id].clip.tags}, flt)]
                if len(got) >= k or len(raw) < fetch or fetch >= 4096:
                    return got[:k]
                fetch *= 4

        def run_service(i):
            return [h.vector_id for h in svc.search_vector(queries[i], MODEL, k, filters=flt)]

        row = {"filter": title, "matching": int(mask.sum())}
        for name, fn in (("milvus_scalar", run_scalar), ("sql_ids", run_sql_ids), ("sql_post", run_sql_post),
                         ("service", run_service)):
            fn(0)  # warm-up
            times, results = [], []
            for i in range(args.queries):
                t0 = time.perf_counter()
                results.append(fn(i))
                times.append(time.perf_counter() - t0)
            times.sort()
            row[name] = (statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000,
                         recall(results))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    t_none = []
    for i in range(args.queries):
        t0 = time.perf_counter()
        svc.search_vector(queries[i], MODEL, k)
        t_none.append(time.perf_counter() - t0)
    print(f"\nn = {args.n:,} clips, {args.dim}-d, Milvus Lite HNSW (ef 64) + SQLite, top-{k}, "
          f"{args.queries} queries per row; unfiltered product search median "
          f"{statistics.median(t_none) * 1000:.1f} ms.\n")
    print("| filter | matching clips | Milvus scalar filter | SQL ids → `id in [...]` | SQL post-filter | "
          "product (`search_vector`) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[n][0]:.1f} ms (p95 {r[n][1]:.1f}), recall {r[n][2]:.2f}"
                 for n in ("milvus_scalar", "sql_ids", "sql_post", "service")]
        print(f"| {r['filter']} | {r['matching']:,} | " + " | ".join(cells) + " |")
    svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
