"""Search latency on Milvus Lite and on a Milvus server, per consistency level, through the product's code.

    python benchmarks/bench_backends.py [--sizes 10000 100000] [--queries 200] [--backends lite server local]
                                        [--breakdown] [--tag NAME] [--e2e N] [--writer-sample N]
                                        [--index-timeout S] [--settle S]

Each back-end gets the same collection of clustered synthetic 512-d unit vectors (the dimension of
the default sound model ``aisfx``; see bench_scale.py) with one clip row and one ``ready`` vector
row per vector in SQLite. ``server`` is PyPI's ``milvus==2.3.5`` standalone, started by the tests'
harness on free ports (``MILVUS_SERVER_BIN`` or ``.venv-milvus``); ``local`` is the same server
started by the product itself (``MILVUS_URI=local``, search_core/milvus_local.py), what ``make run``
uses. After the inserts the collection is flushed and the timings start once its index covers
every vector. Beside each size: numpy's exact top-10 over the same vectors (one query at a time,
and per query in batches of 50).

Timed per size and back-end, p50/p95 over ``--queries`` queries:

* ``milvus``: ``VectorStore.search`` alone (top 10), and its recall@10 against numpy's exact top 10;
* ``search+join``: ``LibraryService.search_vector`` (Milvus search, SQL join, grouping);
* ``after own write``: a one-vector upsert (a near copy of the query), then the timed search, and
  whether that search found the vector just written (read-your-own-writes).

On the server this is done with the product's Session consistency, with Strong (what waiting
for every write would cost) and with Bounded (Milvus' default, which does not see a process'
own recent writes). Milvus Lite ignores the level. ``--breakdown`` times Milvus Lite layer by
layer (``VectorStore``, pymilvus, the in-process engine, FAISS alone) and profiles its engine.
``local`` ends by stopping its server and timing a new start on the filled data (server ready,
then ``LibraryService`` with the app's start-up recovery, the background file check, and the full
recovery as the baseline); ``--e2e N`` then times a fresh app-like process on it (start-up, N
end-to-end ``aisfx`` searches of 5 s clips, peak RSS). Each size after the first is loaded while
another thread searches every 0.5 s (answers, errors, latency; the synthetic clips get their (empty)
library files with their rows, so hits survive the join; ``rows_insert_s`` includes making them). The
bulk load writes rows in SQL batches and vectors with ``VectorStore.upsert``; ``--writer-sample N`` then times N more synthetic clips through
the product's own write path (``Writer.write_batch``: file copy, rows, upsert, ``ready``). Results: benchmarks/results/backends<tag>.json and
benchmarks/backends_latency_vs_size<tag>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import REPO, percentiles, save
from bench_scale import N_CLUSTERS, bulk_rows, clustered, exact_top, lite_flush, release_lite, time_calls

sys.path.insert(0, str(REPO / "tests"))

MODEL = "aisfx"  # only its collection name and dimension are used: no model is loaded
DIM = 512
LEVELS = {"lite": ["Session"], "server": ["Session", "Strong", "Bounded"], "local": ["Session"]}


def wait_indexed(svc, n: int, timeout_s: float = 1800) -> float:
    """Flush, then wait until the collection's index covers ``n`` vectors; returns the seconds taken."""
    from search_core.vectors import collection_name

    t0 = time.perf_counter()
    name = collection_name(MODEL)
    if "://" not in svc.settings.milvus_uri:  # Milvus Lite (local:// is a server)
        lite_flush(svc.settings.milvus_uri, name)
        return time.perf_counter() - t0
    client = svc.vectors.client
    client.flush(name)
    index = client.list_indexes(name)[0]
    while time.perf_counter() - t0 < timeout_s:
        desc = client.describe_index(name, index)
        if int(desc.get("indexed_rows", 0)) >= n and int(desc.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(1)
    return time.perf_counter() - t0


def measure(svc, Q: np.ndarray, level: str, writes: int, truth: np.ndarray) -> dict:
    from bench_scale import recall

    vs = svc.vectors
    vs.READ = level  # the consistency level of every read of this store
    vs.search(MODEL, Q[:1], 10)  # warm-up
    raw_s, raw = time_calls(lambda q: [h.id for h in vs.search(MODEL, q[None, :], 10)[0]], Q)
    sv_s, _ = time_calls(lambda q: svc.search_vector(q, MODEL, 10), Q)
    after, seen = [], 0
    rng = np.random.default_rng(7)
    for i in range(writes):  # an id without a row: invisible to the product, swept by recovery
        vs.upsert(MODEL, [10**9 + i], Q[i % len(Q)][None, :] + 0.01 * rng.standard_normal((1, DIM)))
        t0 = time.perf_counter()
        hits = vs.search(MODEL, Q[i % len(Q)][None, :], 10)[0]
        after.append(time.perf_counter() - t0)
        seen += any(h.id == 10**9 + i for h in hits)
    vs.delete(MODEL, [10**9 + i for i in range(writes)])
    vs.search(MODEL, Q[:1], 10)  # the Strong read that follows a delete, not timed
    return {"milvus": percentiles(raw_s), "ann_recall_at_10": round(recall(raw, truth), 4),
            "search_join": percentiles(sv_s), "after_own_write": percentiles(after),
            "sees_own_write": f"{seen}/{writes}"}


def exact_scan(X: np.ndarray, Q: np.ndarray, batch: int = 50) -> dict:
    """numpy exact top-10 (one matrix product): one query at a time and per query in batches of ``batch``."""
    one, _ = time_calls(lambda q: exact_top(X, q[None, :], 10), Q)
    t0 = time.perf_counter()
    for s in range(0, len(Q), batch):
        exact_top(X, Q[s:s + batch], 10)
    return {"one_query": percentiles(one), "batched_ms_per_query": round((time.perf_counter() - t0) * 1000 / len(Q), 2),
            "batch": batch}


def lite_breakdown(svc, Q: np.ndarray, profile_file: Path | None = None) -> dict:
    """Where one Milvus Lite search spends its time, layer by layer, on the filled collection.

    ``VectorStore.search`` (has_collection + search over gRPC), pymilvus' ``MilvusClient.search``
    alone, the engine's ``Collection.search`` called in-process (no gRPC, no client), and its
    per-segment FAISS searches alone; plus the segment layout and a cProfile of the engine call.
    """
    import cProfile
    import pstats
    from pymilvus import MilvusClient

    from milvus_lite.server_manager import server_manager_instance as mgr
    from search_core.vectors import collection_name

    name = collection_name(MODEL)
    vs = svc.vectors
    params = {"metric_type": "COSINE", "params": {"ef": vs.search_ef}}
    raw = MilvusClient(svc.settings.milvus_uri)
    col = mgr._servers[str(Path(svc.settings.milvus_uri).resolve())][1].get_collection(name)
    segs = [sg for sg in col._segments_snapshot() if sg.num_rows]
    layers = {
        "VectorStore.search": lambda q: vs.search(MODEL, q[None, :], 10),
        "has_collection": lambda q: raw.has_collection(name),
        "MilvusClient.search": lambda q: raw.search(name, data=[q], limit=10, search_params=params,
                                                     output_fields=["id"]),
        "engine Collection.search": lambda q: col.search([q.tolist()], top_k=10, output_fields=["id"],
                                                         search_params={"ef": vs.search_ef}),
        "FAISS per segment": lambda q: [sg.indexes["vector"].search(q[None, :], 10, valid_mask=None,
                                                                    params={"ef": vs.search_ef}) for sg in segs],
    }
    out = {"segments": [int(sg.num_rows) for sg in segs], "indexed": [sorted(sg.indexes) for sg in segs],
           "layers": {}}
    for label, fn in layers.items():
        fn(Q[0])
        out["layers"][label] = percentiles(time_calls(fn, Q)[0])
        print("lite", label, out["layers"][label], flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for q in Q[:50]:
        col.search([q.tolist()], top_k=10, output_fields=["id"], search_params={"ef": vs.search_ef})
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = sorted(((v[2], f"{k[0].split('site-packages/')[-1]}:{k[1]}({k[2]})") for k, v in stats.stats.items()),
                  reverse=True)[:8]
    out["engine_profile_self_time"] = [{"fn": fn, "share": round(t / total, 3)} for t, fn in rows]
    if profile_file:
        stats.dump_stats(str(profile_file))
    raw.close()
    return out


def touch_files(svc, start_id: int, n: int) -> None:
    """Empty library files for the synthetic clips start_id .. start_id+n-1 (bulk_rows' names):
    search drops a hit whose file is gone, so without them a search during the load finds nothing."""
    d = svc.settings.library_dir
    d.mkdir(parents=True, exist_ok=True)
    for i in range(start_id, start_id + n):
        (d / f"{i:064x}.wav").touch()


def writer_sample(svc, n: int, batch: int = 64) -> dict:
    """``n`` synthetic 5 s clips through the product's own write path, ``Writer.write_batch`` (file
    copy with fsync, clip and ``pending`` rows per clip, one Milvus upsert and one ``ready``
    transaction per batch), in ingest's batch size: the rows/s a real import writes at, without
    decoding and embedding."""
    import hashlib

    from search_core.audio import Audio

    src = Path(svc.settings.data_dir) / "writer-sample.wav"
    src.write_bytes(b"RIFF" + bytes(40))  # the bytes copied per clip; never decoded here
    a = Audio(np.zeros(80_000, np.float32), 16_000, 16_000, 1)
    rng = np.random.default_rng(11)
    writer = svc._ingest.writer
    t0, added = time.perf_counter(), 0
    for s in range(0, n, batch):
        entries = []
        for pos in range(min(batch, n - s)):
            sha = hashlib.sha256(f"writer-sample-{s + pos}".encode()).hexdigest()
            v = rng.standard_normal((1, DIM)).astype(np.float32)
            entries.append((pos, {"audio": a, "sha": sha, "path": src, "name": f"w{s + pos}.wav"},
                            [(0, 80_000)], v / np.linalg.norm(v)))
        out = writer.write_batch(entries, [{} for _ in entries], MODEL)
        added += sum(item.status == "added" for _pos, item, _v, _a in out)
    secs = time.perf_counter() - t0
    return {"clips": n, "added": added, "batch": batch, "seconds": round(secs, 1), "rows_per_s": round(n / secs),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def group_rss_mb(pid: int) -> float:
    """Resident MB of every process in process group ``pid`` (the launcher and its milvus)."""
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pid:
                total += int(next(ln for ln in (proc / "status").read_text().splitlines()
                                  if ln.startswith("VmRSS:")).split()[1])
        except (OSError, ValueError, StopIteration):
            continue
    return round(total / 1024, 1)


def local_restart(settings, e2e: int = 0) -> dict:
    """Stop the app's local server on the filled folder, then time a new process' way back:
    server start + log replay + every collection answering (``ensure_server``); the app's
    ``LibraryService`` start-up (``recover="start"``: interrupted writes and two counts per
    model) on top; then the part the app runs in the background (``check_files``) and, as the
    baseline of the same run, the full ``recover()`` that start-up ran before (every id listed).
    With ``e2e``, a fresh app-like process then times its own start-up, the ``aisfx`` load and
    ``e2e`` end-to-end searches of 5 s clips, with its peak resident size. The server's resident
    size, filled and after the restart."""
    from search_core import milvus_local
    from search_core.service import LibraryService

    folder = settings.milvus_uri[len("local://"):]  # the clips' files are there (touch_files)
    rss_before = group_rss_mb(milvus_local._state(Path(folder))["pid"])
    t0 = time.perf_counter()
    milvus_local.release(folder)
    stop_s = time.perf_counter() - t0 if milvus_local.stopped(folder, 120) else None  # else ensure_server kills it
    t0 = time.perf_counter()
    milvus_local.ensure_server(folder)
    server_s = time.perf_counter() - t0
    svc = LibraryService(settings, recover="start")
    total_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    files = svc.check_files()
    files_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    full = svc.recover()
    full_s = time.perf_counter() - t1
    rss_after = group_rss_mb(milvus_local._state(Path(folder))["pid"])
    out = {"stop_s": stop_s and round(stop_s, 1), "server_ready_s": round(server_s, 1),
           "service_start_s": round(total_s, 1), "start_recovery_s": round(total_s - server_s, 2),
           "background_file_check_s": round(files_s, 1), "full_recover_s_baseline": round(full_s, 1),
           "recoveries_changed": files.changed or full.changed,
           "server_rss_mb_filled": rss_before, "server_rss_mb_after_restart": rss_after,
           "load_avg_1m": round(os.getloadavg()[0], 2)}
    if e2e:
        child = subprocess.run([sys.executable, __file__, "--app-child", str(settings.data_dir), settings.milvus_uri,
                                "--queries", str(e2e)], capture_output=True, text=True, cwd=REPO)
        line = (child.stdout.strip().splitlines() or ["{}"])[-1]
        out["app_process"] = json.loads(line) if child.returncode == 0 else {"error": child.stderr[-800:]}
    svc.close()
    print("local restart", out, flush=True)
    milvus_local.release(folder)
    milvus_local.stopped(folder, 120)
    return out


def app_child(data_dir: str, uri: str, queries: int) -> None:
    """Run in a fresh process on the filled store (its server running): what the app's engine
    costs: start-up as the app opens it, the ``aisfx`` load, end-to-end searches of 5 s clips
    (decode + embed + search + join), peak resident size."""
    from _common import peak_rss_mb, rss_mb, write_clips

    from search_core.evaluate import temporary_settings
    from search_core.service import LibraryService

    t0 = time.perf_counter()
    settings = replace(temporary_settings(data_dir), milvus_uri=uri)
    svc = LibraryService(settings, recover="start")
    startup = time.perf_counter() - t0
    wavs = write_clips(Path(data_dir) / "queries", min(queries, 30))
    t1 = time.perf_counter()
    svc.search(wavs[0], MODEL, 10)  # model load + first-call warm-up
    model_s = time.perf_counter() - t1
    secs, res = time_calls(lambda p: svc.search(p, MODEL, 10), (wavs * (queries // len(wavs) + 1))[:queries])
    parts = {key: percentiles([r.seconds[key] for r in res]) for key in ("embed", "search")}
    print(json.dumps({"startup_s_with_imports": round(startup, 2), "first_search_with_model_load_s": round(model_s, 2),
                      "end_to_end": percentiles(secs), "end_to_end_parts": parts, "count": svc.vectors.count(MODEL),
                      "rss_mb_end": rss_mb(), "peak_rss_mb": peak_rss_mb()}))
    svc.close()


class Searcher:
    """Searches the collection from another thread while a bulk load runs: is it searchable?"""

    def __init__(self, svc, Q: np.ndarray):
        import threading

        self.svc, self.Q, self.secs, self.errors, self.empty = svc, Q, [], [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                hits = self.svc.search_vector(self.Q[i % len(self.Q)], MODEL, 10)
                self.secs.append(time.perf_counter() - t0)
                self.empty += not hits
            except Exception as err:  # noqa: BLE001 - counted, the load goes on
                self.errors.append(str(err)[:200])
            i += 1
            self._stop.wait(0.5)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"searches": len(self.secs), "errors": len(self.errors), "first_errors": self.errors[:3],
                "empty_answers": self.empty, **(percentiles(self.secs) if self.secs else {})}


def run_backend(kind: str, sizes: list[int], Q: np.ndarray, centres: np.ndarray, writes: int,
                breakdown: bool = False, e2e: int = 0, index_timeout: float = 1800, writer_n: int = 0,
                settle: float = 0) -> dict:
    from search_core.evaluate import temporary_settings
    from search_core.service import LibraryService

    tmp = tempfile.TemporaryDirectory(prefix=f"bench-{kind}-")
    settings = temporary_settings(tmp.name)
    server = None
    if kind == "local":  # the server the app runs itself (MILVUS_URI=local)
        settings = replace(settings, milvus_uri=f"local://{Path(tmp.name) / 'milvus-server'}")
    if kind == "server":
        from milvus_server import MilvusServer

        server = MilvusServer(Path(tmp.name) / "milvus-server").start()
        settings = replace(settings, milvus_uri=server.uri)
    out: dict = {}
    try:
        t0 = time.perf_counter()
        svc = LibraryService(settings)
        out["service_start_s"] = round(time.perf_counter() - t0, 1)
        have, parts = 0, []
        for size in sorted(sizes):
            X = clustered(size - have, DIM, size, centres)
            parts.append(X)
            searcher = Searcher(svc, Q) if have else None  # the library searched while it grows
            t0 = time.perf_counter()
            bulk_rows(svc, MODEL, have + 1, len(X))
            touch_files(svc, have + 1, len(X))
            rows_s = time.perf_counter() - t0
            svc.vectors.upsert(MODEL, np.arange(have + 1, size + 1), X)
            insert_s = time.perf_counter() - t0
            have = size
            index_s = wait_indexed(svc, size, index_timeout)
            time.sleep(settle)  # the server may still compact the segments it just indexed
            during = searcher.stop() if searcher else None
            row = {"insert_s": round(insert_s, 1), "rows_insert_s": round(rows_s, 1),
                   "rows_per_s": round(len(X) / insert_s), "searches_during_load_and_index": during,
                   "flush_and_index_s": round(index_s, 1), "levels": {},
                   "numpy_exact": exact_scan(np.concatenate(parts), Q)}
            truth = exact_top(np.concatenate(parts), Q, 10)
            if breakdown and kind == "lite":
                row["lite_breakdown"] = lite_breakdown(svc, Q)
            for level in LEVELS[kind]:
                load = os.getloadavg()[0]
                row["levels"][level] = {**measure(svc, Q, level, writes, truth), "load_avg_1m": round(load, 2)}
                print(kind, size, level, json.dumps(row["levels"][level]), flush=True)
            if kind == "local" and writer_n and size == max(sizes):  # its ids follow the last size's
                row["writer_path"] = writer_sample(svc, writer_n)
                print(kind, size, "writer path", row["writer_path"], flush=True)
            out[str(size)] = row
        svc.close()
        if kind == "local":
            out["restart"] = local_restart(settings, e2e)
    finally:
        if server:
            server.kill()
        else:
            release_lite(settings.milvus_uri)
        tmp.cleanup()
    return out


def plot(results: dict, out: Path) -> None:
    """Search + join p50 (and p95) per back-end against collection size, with numpy's exact scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = {"lite": "Milvus Lite", "server": "Milvus server", "local": "Milvus server run by the app (local)"}
    exact = {}
    for i, (kind, rows) in enumerate(results["backends"].items()):
        sizes = sorted((int(s) for s in rows if s.isdigit()))
        for pct, style in (("p50_ms", "-o"), ("p95_ms", "--x")):
            ax.plot(sizes, [rows[str(n)]["levels"]["Session"]["search_join"][pct] for n in sizes], style,
                    color=f"C{i}", label=f"{names[kind]}: search + join {pct[:3]}")
        for n in sizes:
            exact[n] = rows[str(n)]["numpy_exact"]["one_query"]["p50_ms"]
    ax.plot(sorted(exact), [exact[n] for n in sorted(exact)], ":s", color="grey", label="numpy exact scan, p50")
    for target, n in ((10, 100_000), (20, 1_000_000)):
        ax.plot([n], [target], "v", color="red")
    ax.plot([], [], "v", color="red", label="targets (search p50 at 100k, 1M)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors in the collection (512-d)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"top-10 search, HNSW M16 ef 256; load avg {results['machine']['load_avg_1m']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--writes", type=int, default=20, help="write-then-search rounds")
    ap.add_argument("--backends", nargs="+", default=["lite", "server", "local"], choices=["lite", "server", "local"])
    ap.add_argument("--breakdown", action="store_true", help="time Milvus Lite layer by layer (and profile it)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--e2e", type=int, default=0,
                    help="local: after the restart, a fresh process times this many end-to-end aisfx searches")
    ap.add_argument("--index-timeout", type=float, default=1800, help="seconds to wait for the index after a load")
    ap.add_argument("--settle", type=float, default=0, help="seconds to wait after the index before timing")
    ap.add_argument("--writer-sample", type=int, default=0,
                    help="local: after the largest size, time this many synthetic clips through Writer.write_batch")
    ap.add_argument("--app-child", nargs=2, metavar=("DATA_DIR", "URI"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.app_child:
        return app_child(*args.app_child, args.queries)

    centres = np.random.default_rng(1).standard_normal((N_CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    Q = clustered(args.queries, DIM, 999, centres)
    results = {"dim": DIM, "vectors": "clustered synthetic", "queries": args.queries, "writes": args.writes,
               "index": "HNSW", "backends": {}}
    for kind in args.backends:
        results["backends"][kind] = run_backend(kind, args.sizes, Q, centres, args.writes, args.breakdown, args.e2e,
                                                  args.index_timeout, args.writer_sample, args.settle)
        path = save(f"backends{args.tag}", results)
        plot(json.loads(path.read_text()), REPO / "benchmarks" / f"backends_latency_vs_size{args.tag}.png")


if __name__ == "__main__":
    main()
