"""Query latency, ANN recall and memory at 10k and 100k vectors, through the product's code.

    python benchmarks/bench_scale.py [--model aisfx] [--sizes 10000 100000] [--queries 100]
                                     [--curve] [--rss] [--tag NAME]

The collection is filled with *clustered* synthetic unit vectors of the model's dimension
(2000 Gaussian clusters around random centres; each query is a fresh member of a random
cluster), plus one metadata row per vector, written in bulk. Uniform random vectors would be
a worst case for any ANN index; clustered ones behave like real embedding collections, which
contain many groups of similar sounds.

Measured per size: search only (``LibraryService.search_vector``: Milvus search + SQL join +
grouping), the Milvus call alone, and end to end (``LibraryService.search`` on a 5 s wav:
decode + resample + embed + search + join), as p50/p95; ANN recall@10 against exact numpy
search. ``--curve`` adds a recall-vs-latency sweep at the largest size (HNSW ``ef``, and an
IVF_FLAT collection's ``nprobe``). ``--rss`` starts a fresh process on the filled store (the
app's engine: start-up recovery, model load, 30 end-to-end searches) and reports its peak RSS
and start-up time. Results: benchmarks/results/scale<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, peak_rss_mb, percentiles, rss_mb, save, write_clips

N_CLUSTERS = 2000
SPREAD = 0.35  # per-dimension noise relative to a unit centre: nearest neighbours at cosine ~0.9


def clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + SPREAD * rng.standard_normal((n, dim)) / np.sqrt(dim) * 2
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bulk_rows(svc, model: str, start_id: int, n: int) -> None:
    """Clip + ready vector rows for ids start_id .. start_id+n-1 (one transaction per 10k)."""
    from search_core.metadata import READY, clips, utcnow, vectors

    now = utcnow()
    with svc.meta.engine.begin() as c:
        for s in range(start_id, start_id + n, 10_000):
            ids = range(s, min(s + 10_000, start_id + n))
            c.execute(clips.insert(), [dict(id=i, sha256=f"{i:064x}", stored_name=f"{i:064x}.wav",
                                            original_name=f"synthetic_{i}.wav", duration_s=5.0, sample_rate=16000,
                                            channels=1, label=f"c{i % 50}", speaker=None, source="bench",
                                            tags="[]", created_at=now) for i in ids])
            c.execute(vectors.insert(), [dict(id=i, clip_id=i, model=model, seg=0, start_s=0.0, end_s=5.0,
                                              status=READY, created_at=now) for i in ids])


def lite_flush(uri: str, name: str) -> dict:
    """Flush a Milvus Lite collection and wait for its background compaction + index build.

    Milvus Lite (in-process) builds indexes in a background thread after a flush; without the
    wait the first searches would time a half-built index. Milvus standalone: flush only.
    """
    from pymilvus import MilvusClient

    MilvusClient(uri).flush(name)
    try:
        from milvus_lite.server_manager import server_manager_instance as mgr
    except ImportError:
        return {}
    entry = mgr._servers.get(str(Path(uri).resolve()))
    if not entry:
        return {}
    col = entry[1].get_collection(name)
    for _ in range(10):  # compaction can schedule another build after the first wait
        col._wait_for_bg()
        segs = [sg for sg in col._segments_snapshot() if sg.num_rows]
        if all("vector" in sg.indexes for sg in segs):
            break
        col._ensure_loaded_segments_indexed()
    return {"segments": [int(sg.num_rows) for sg in segs],
            "indexed": [sorted(sg.indexes) for sg in segs]}


def release_lite(uri: str) -> None:
    """Stop this process' Milvus Lite server for ``uri`` so that another process can open it."""
    try:
        from milvus_lite.server_manager import server_manager_instance as mgr
    except ImportError:
        return
    mgr.release_server(uri)


def exact_top(X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    s = Q @ X.T
    top = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.take_along_axis(s, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1) + 1  # ids are row + 1


def recall(found: list[list[int]], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def time_calls(fn, items) -> tuple[list[float], list]:
    secs, outs = [], []
    for it in items:
        t0 = time.perf_counter()
        outs.append(fn(it))
        secs.append(time.perf_counter() - t0)
    return secs, outs


def measure(svc, model: str, X: np.ndarray, Q: np.ndarray, wavs: list[Path]) -> dict:
    vs = svc.vectors
    truth = exact_top(X, Q, 10)
    svc.search_vector(Q[0], model, 10)  # warm-up
    raw_s, raw = time_calls(lambda q: [h.id for h in vs.search(model, q[None, :], 10)[0]], Q)
    sv_s, _ = time_calls(lambda q: svc.search_vector(q, model, 10), Q)
    svc.search(wavs[0], model, 10)
    e2e_s, res = time_calls(lambda p: svc.search(p, model, 10), wavs)
    parts = {key: percentiles([r.seconds[key] for r in res]) for key in ("embed", "search")}
    return {"vectors": len(X), "milvus_search": percentiles(raw_s), "search_only": percentiles(sv_s),
            "end_to_end": percentiles(e2e_s), "end_to_end_parts": parts,
            "ann_recall_at_10": round(recall(raw, truth), 4), "index": vs.index_type,
            "search_ef": vs.search_ef}


def curve(svc, model: str, X: np.ndarray, Q: np.ndarray, settings, ivf_nlist: int) -> dict:
    from search_core import vectors as vmod

    vs = svc.vectors
    truth = exact_top(X, Q, 10)
    out = {"HNSW": [], "IVF_FLAT": []}
    old_ef = vs.search_ef
    for ef in (10, 16, 24, 32, 48, 64, 96, 128, 256):
        vs.search_ef = ef
        secs, found = time_calls(lambda q: [h.id for h in vs.search(model, q[None, :], 10)[0]], Q)
        out["HNSW"].append({"ef": ef, "recall": round(recall(found, truth), 4), **percentiles(secs)})
    vs.search_ef = old_ef
    if not ivf_nlist:
        return out
    vmod.INDEX_PARAMS["IVF_FLAT"] = {"nlist": ivf_nlist}
    ivf = vmod.VectorStore(settings.milvus_uri, "IVF_FLAT")
    t0 = time.perf_counter()
    ivf.upsert("bench_ivf", np.arange(1, len(X) + 1), X)
    out["ivf_segments"] = lite_flush(settings.milvus_uri, vmod.collection_name("bench_ivf"))
    build = time.perf_counter() - t0
    ivf.search("bench_ivf", Q[:1], 10)
    for nprobe in (1, 2, 4, 8, 16, 32, 64):
        ivf.nprobe = nprobe
        secs, found = time_calls(lambda q: [h.id for h in ivf.search("bench_ivf", q[None, :], 10)[0]], Q)
        out["IVF_FLAT"].append({"nprobe": nprobe, "nlist": ivf_nlist, "recall": round(recall(found, truth), 4),
                                **percentiles(secs)})
    out["ivf_insert_flush_s"] = round(build, 1)
    ivf.drop("bench_ivf")
    return out


class PhasePeaks:
    """Samples the resident set size every 20 ms and keeps the peak of each named phase."""

    def __init__(self) -> None:
        import threading

        self.phase, self.peaks = "imports", {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            p = self.phase
            self.peaks[p] = max(self.peaks.get(p, 0.0), rss_mb())
            time.sleep(0.02)

    def enter(self, phase: str) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss_mb())
        self.phase = phase


def rss_child(data_dir: str, model: str, queries: int) -> None:
    """Run in a fresh process: what the app's engine costs on the filled store."""
    t0 = time.perf_counter()
    peaks = PhasePeaks()
    from search_core.evaluate import temporary_settings
    from search_core.service import LibraryService

    base = rss_mb()
    peaks.enter("startup")
    svc = LibraryService(temporary_settings(data_dir))  # includes start-up recovery
    startup = time.perf_counter() - t0
    after_start = rss_mb()
    wavs = sorted(Path(data_dir, "queries").glob("*.wav"))
    peaks.enter("model")
    t1 = time.perf_counter()
    svc.embed_query(wavs[0], model)  # model load + first-call warm-up (numba, kernels)
    model_s = time.perf_counter() - t1
    after_model = rss_mb()
    peaks.enter("searches")
    t1 = time.perf_counter()
    svc.search(wavs[0], model, 10)
    first = time.perf_counter() - t1
    secs, _ = time_calls(lambda p: svc.search(p, model, 10), (wavs * 10)[:queries])
    peaks.enter("end")
    print(json.dumps({"startup_s": round(startup, 2), "model_load_and_warmup_s": round(model_s, 2),
                      "first_search_s": round(first, 2),
                      "count": svc.vectors.count(model), "end_to_end": percentiles(secs),
                      "peak_rss_mb": peak_rss_mb(), "rss_mb": {"imports": base, "after_startup": after_start,
                                                               "after_model": after_model, "end": rss_mb()},
                      "peak_rss_mb_by_phase": {k: round(v, 1) for k, v in peaks.peaks.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="aisfx")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--wavs", type=int, default=30, help="5 s clips for the end-to-end figures")
    ap.add_argument("--curve", action="store_true")
    ap.add_argument("--ivf-nlist", type=int, default=1024, help="0: no IVF_FLAT sweep")
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--no-flush", action="store_true", help="leave inserted vectors in Milvus Lite's memtable")
    ap.add_argument("--data-dir")
    ap.add_argument("--tag", default="")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.model, args.wavs)

    from search_core.evaluate import temporary_settings
    from search_core.models import get_model
    from search_core.service import LibraryService
    from search_core.vectors import collection_name

    m = get_model(args.model).load()
    dim = m.info.dim
    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="bench-scale-")
    data_dir = Path(args.data_dir or tmp.name)
    settings = temporary_settings(data_dir)
    svc = LibraryService(settings)
    wavs = write_clips(data_dir / "queries", args.wavs)
    centres = np.random.default_rng(1).standard_normal((N_CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    Q = clustered(args.queries, dim, 999, centres)
    X = np.zeros((0, dim), np.float32)
    results = {"model": args.model, "dim": dim, "vectors": "clustered synthetic", "clusters": N_CLUSTERS,
               "queries": args.queries, "sizes": {}}
    for size in sorted(args.sizes):
        add = clustered(size - len(X), dim, size, centres)
        t0 = time.perf_counter()
        bulk_rows(svc, args.model, len(X) + 1, len(add))
        rows_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        svc.vectors.upsert(args.model, np.arange(len(X) + 1, len(X) + len(add) + 1), add)
        upsert_s = time.perf_counter() - t0
        X = np.concatenate([X, add])
        t0 = time.perf_counter()
        segments = {} if args.no_flush else lite_flush(settings.milvus_uri, collection_name(args.model))
        flush_s = time.perf_counter() - t0
        r = measure(svc, args.model, X, Q, wavs)
        r.update(rows_insert_s=round(rows_s, 1), vector_upsert_s=round(upsert_s, 1),
                 flush_and_index_s=round(flush_s, 1), flushed=not args.no_flush, **segments)
        results["sizes"][str(size)] = r
        print(size, json.dumps(r), flush=True)
        save(f"scale{args.tag}", results)
    if args.curve:
        results["curve"] = curve(svc, args.model, X, Q, settings, args.ivf_nlist)
        print(json.dumps(results["curve"]), flush=True)
        save(f"scale{args.tag}", results)
    svc.close()
    release_lite(settings.milvus_uri)
    if args.rss:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--rss-child", str(data_dir),
                              "--wavs", str(args.wavs)], capture_output=True, text=True, cwd=REPO)
        line = (out.stdout.strip().splitlines() or ["{}"])[-1]
        results["app_process"] = json.loads(line) if out.returncode == 0 else {"error": out.stderr[-500:]}
        print(json.dumps(results["app_process"]), flush=True)
        save(f"scale{args.tag}", results)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
