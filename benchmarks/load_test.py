"""Bounded load test on loopback: N concurrent searches against the launched app.

    python benchmarks/load_test.py                       # 200 searches, 1/4/8 clients, 200-clip library
    python benchmarks/load_test.py --requests 100 --concurrency 4 --write-md

Starts ``app.py`` on 127.0.0.1 with a throw-away data folder (or uses ``--url``, which must be a
loopback address), fills the library with generated clips through the engine, then sends
``--requests`` searches from ``--concurrency`` gradio_client sessions at once, each search a
real ``/search`` call (upload, embed, Milvus, metadata join, result pictures and audio).
Everything is bounded: a request count, a per-level time limit, and only 127.0.0.1.

Prints one JSON line per concurrency level (throughput, latency percentiles, errors) and, with
``--write-md``, rewrites the ``## Load test`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SECTION = "## Load test"
ENGINE_MS = re.compile(r"hits with \*\*[a-z0-9_]+\*\* in (\d+) ms")


def clip(seed: int, seconds: float = 3.0, rate: int = 16000) -> np.ndarray:
    """A deterministic test sound: three tones under a slow envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    y = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) for _ in range(3))
    y = y * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t) ** 2) + 0.05 * rng.standard_normal(len(t))
    return (0.4 * y / np.max(np.abs(y))).astype(np.float32)


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(data: Path) -> dict:
    env = {**os.environ, "DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "SEARCH_CORE_OFFLINE": "1"}
    for var in ("MILVUS_URI", "DATABASE_URL", "LIBRARY_DIR", "ADMIN_PASSWORD"):
        env.pop(var, None)
    return env


def fill_library(data: Path, n: int, model: str) -> float:
    """Index ``n`` generated clips into ``data`` with the CLI (a separate process: Milvus Lite
    holds its data folder until the process exits)."""
    folder = data.parent / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(str(folder / f"clip_{i:05d}.wav"), clip(i), 16000, subtype="PCM_16")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "search_core", "ingest", str(folder), "--model", model, "--quiet"],
                       cwd=REPO, env=app_env(data), capture_output=True, text=True)
    if r.returncode != 0 or f"library: {n} clips" not in r.stdout:
        raise RuntimeError(f"indexing failed: {r.stdout[-500:]} {r.stderr[-1500:]}")
    return time.perf_counter() - t0


def start_app(data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = app_env(data)
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {log.read_text()[-1500:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("app did not start in 180 s")
            time.sleep(0.5)


def run_level(url: str, queries: list[Path], model: str, k: int, requests: int, concurrency: int,
              time_limit: float) -> dict:
    """``requests`` searches from ``concurrency`` client sessions; stops starting new ones at ``time_limit``."""
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False) for _ in range(concurrency)]
    lock = threading.Lock()
    counter = {"next": 0}
    latencies: list[float] = []
    engine: list[float] = []  # the engine's own time (embed + Milvus + join), from the status line
    errors: list[str] = []
    wrong = 0
    t_start = time.perf_counter()

    def worker(idx: int) -> None:
        nonlocal wrong
        client = clients[idx]
        while True:
            with lock:
                i = counter["next"]
                if i >= requests or time.perf_counter() - t_start > time_limit:
                    return
                counter["next"] += 1
            q = queries[i % len(queries)]
            t0 = time.perf_counter()
            try:
                out = client.predict(query_path=handle_file(str(q)), model=model, k=k, api_name="/search")
                hits = out[-1]
                dt = time.perf_counter() - t0
                m = next((ENGINE_MS.search(o) for o in out if isinstance(o, str) and ENGINE_MS.search(o)), None)
                with lock:
                    latencies.append(dt)
                    if m:
                        engine.append(float(m.group(1)) / 1000)
                    if not hits or hits[0]["name"] != q.name:  # each query is in the library: it must come first
                        wrong += 1
            except Exception as err:  # counted and reported, the run goes on
                with lock:
                    errors.append(f"{type(err).__name__}: {str(err)[:120]}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - t_start
    for c in clients:
        try:
            c.close()
        except Exception:
            pass
    done = len(latencies)
    return {"concurrency": concurrency, "requests": done + len(errors), "ok": done, "errors": len(errors),
            "wrong_top1": wrong, "wall_s": round(wall, 2), "throughput_rps": round(done / wall, 2) if wall else 0,
            **percentiles(latencies), "engine_p50_ms": percentiles(engine)["p50_ms"],
            "error_samples": sorted(set(errors))[:3]}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [SECTION, "",
             f"`python benchmarks/load_test.py --requests {meta['requests']} --concurrency "
             f"{','.join(str(r['concurrency']) for r in results)} --clips {meta['clips']} "
             f"--time-limit {meta['time_limit']:g} --write-md` "
             f"({meta['when']}, {meta['cpus']} CPUs, load average before the run {meta['load_avg_1m']}).",
             "",
             f"The app (`app.py`, queue concurrency 4) on 127.0.0.1 with Milvus Lite + SQLite, a library of "
             f"{meta['clips']} generated 3 s clips indexed with `{meta['model']}`; each request is a full "
             f"`/search` call through gradio_client from its own session (upload a 3 s wav, embed, Milvus top-{meta['k']}, "
             f"metadata join, result pictures and audio). Every query is a library clip, so its top hit must be itself.",
             "",
             "| clients | requests | errors | wrong top-1 | throughput (req/s) | p50 (ms) | p95 (ms) | max (ms) "
             "| engine p50 (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['wrong_top1']} | "
                     f"{r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
                     f"{r['engine_p50_ms']} |")
    lines += ["", "Latency is the client's wall time per request; *engine* is the search itself "
              "(query decode + embedding + Milvus + metadata join) as the app reports it in its status line; "
              "the rest is upload, queueing, result pictures and audio, and the HTTP/SSE round trips."]
    lines += ["", meta.get("note", ""), ""]
    return "\n".join(lines)


def write_section(md: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    """Replace (or append) the ``## Load test`` section, leaving the other sections as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + md.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + md.rstrip() + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an app already running on loopback (default: start one)")
    p.add_argument("--queries", help="with --url: a folder of query clips that are in that app's library")
    p.add_argument("--model", default="mfcc_stats")
    p.add_argument("--clips", type=int, default=200, help="library size when starting an app")
    p.add_argument("--requests", type=int, default=200, help="searches per concurrency level (max 2000)")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated client counts (max 32)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per level before no new request starts")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--write-md", action="store_true", help="rewrite the '## Load test' section of BENCHMARKS.md")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not (1 <= args.requests <= 2000) or not levels or not all(1 <= c <= 32 for c in levels):
        p.error("requests must be 1..2000 and each concurrency 1..32")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error("only a loopback URL (127.0.0.1) may be load-tested")

    tmp = Path(tempfile.mkdtemp(prefix="loadtest-"))
    proc = None
    meta = {"requests": args.requests, "clips": args.clips, "time_limit": args.time_limit, "model": args.model, "k": args.k,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        if args.url:
            url = args.url
            queries = sorted(Path(args.queries).glob("*.wav")) if args.queries else []
            if not queries:
                p.error("with --url, give --queries: a folder of wav clips that are in that app's library")
        else:
            meta["index_s"] = round(fill_library(tmp / "data", args.clips, args.model), 1)
            proc, url = start_app(tmp / "data", tmp / "app.log")
            queries = sorted((tmp / "clips").glob("*.wav"))
        # one warm-up search (model load, first Milvus query) outside the measurements
        run_level(url, queries[:1], args.model, args.k, 1, 1, 60)
        results = []
        for c in levels:
            r = run_level(url, queries, args.model, args.k, args.requests, c, args.time_limit)
            print(json.dumps(r), flush=True)
            results.append(r)
        if args.write_md:
            best = max(results, key=lambda r: r["throughput_rps"])
            meta["note"] = (f"Peak {best['throughput_rps']} searches/s at {best['concurrency']} clients; "
                            f"{sum(r['errors'] for r in results)} errors and "
                            f"{sum(r['wrong_top1'] for r in results)} wrong top-1 hits in "
                            f"{sum(r['requests'] for r in results)} requests. Beyond 4 clients, requests wait "
                            f"in Gradio's queue (concurrency limit 4), so their latency includes the wait.")
            if meta["load_avg_1m"] > (os.cpu_count() or 1):
                meta["note"] += (f" The machine was shared with other jobs during this run (load average "
                                 f"{meta['load_avg_1m']} on {os.cpu_count()} CPUs), so absolute figures are "
                                 f"pessimistic; the ratio of engine time to request time is the robust finding.")
            write_section(markdown(results, meta))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
