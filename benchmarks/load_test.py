"""Bounded load test on loopback: N concurrent searches against the launched app.

    python benchmarks/load_test.py                       # 200 searches, 1/4/8 clients, 200-clip library
    python benchmarks/load_test.py --requests 100 --concurrency 4 --write-md
    python benchmarks/load_test.py --scenarios same-query,hostile --write-md   # issue 12 cases

Starts ``app.py`` on 127.0.0.1 with a throw-away data folder (or uses ``--url``, which must be a
loopback address), fills the library with generated clips through the engine, then sends
``--requests`` searches from ``--concurrency`` gradio_client sessions at once, each search a
real ``/search`` call (upload, embed, Milvus, metadata join, result pictures and audio).
Everything is bounded: a request count, a per-level time limit, and only 127.0.0.1.

Prints one JSON line per concurrency level (throughput, latency percentiles, errors) and, with
``--write-md``, rewrites the ``## Load test`` section of BENCHMARKS.md.

``--scenarios`` adds the public-link cases (each with the app's peak RSS during it):

* ``same-query``: 8 clients send the same query at once (identical result files for everyone);
* ``hostile``: clients upload small files that decode to gigabytes (20 min x 6 ch x 96 kHz and
  2 h mono 8 kHz FLAC, mostly silence) in a loop while others send normal searches; the library
  also holds a 20-min 6-channel 96 kHz clip, so long-clip thumbnails and segments are drawn.

With ``--write-md`` and scenarios, only the ``## Load test: public link`` section is rewritten.
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
PUBLIC_SECTION = "## Load test: public link"
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
    # every simulated client comes from 127.0.0.1: lift the per-address upload allowance (webguard)
    env = {**os.environ, "DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "SEARCH_CORE_OFFLINE": "1",
           "UPLOAD_LIMIT_FILES": "1000000", "UPLOAD_LIMIT_BYTES": str(1 << 40)}
    for var in ("MILVUS_URI", "DATABASE_URL", "LIBRARY_DIR", "ADMIN_PASSWORD"):
        env.pop(var, None)
    return env


def fill_library(data: Path, n: int, model: str, extra: int = 0) -> float:
    """Index ``n`` generated clips into ``data`` with the CLI (a separate process: Milvus Lite
    holds its data folder until the process exits). ``extra``: audio files already in the folder."""
    folder = data.parent / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(str(folder / f"clip_{i:05d}.wav"), clip(i), 16000, subtype="PCM_16")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "search_core", "ingest", str(folder), "--model", model, "--quiet"],
                       cwd=REPO, env=app_env(data), capture_output=True, text=True)
    if r.returncode != 0 or f"library: {n + extra} clips" not in r.stdout:
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
              time_limit: float, check_top1: bool = True) -> dict:
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
                    if check_top1 and (not hits or hits[0]["name"] != q.name):  # a library clip: it must come first
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


def long_flac(path: Path, seconds: float, rate: int, channels: int, loud_s: float = 3.0, seed: int = 7,
              bursts: bool = False) -> Path:
    """A small FLAC that decodes to a lot: ``loud_s`` of sound, then silence, written in blocks.

    ``bursts``: a 50 ms tone of its own pitch every 2.5 s instead of pure silence, so that every
    segment of the file embeds differently (hundreds of identical silent segment vectors would
    crowd the HNSW graph and hide the true top hit of other queries)."""
    hop = int(2.5 * rate)
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16", format="FLAC") as f:
        head = clip(seed, loud_s, rate)
        f.write(np.repeat(head[:, None], channels, axis=1))
        left, i = int(seconds * rate) - len(head), 0
        chunk = np.zeros((hop, channels), np.int16)
        t = np.arange(int(0.05 * rate)) / rate
        while left > 0:
            chunk[:] = 0
            if bursts:
                chunk[:len(t)] = (8000 * np.sin(2 * np.pi * (150 + 53 * (i % 97)) * t))[:, None].astype(np.int16)
            f.write(chunk[:min(hop, left)])
            left -= hop
            i += 1
    return path


def hostile_queries(folder: Path) -> list[Path]:
    """The issue's decompression bombs as queries: 20 min x 6 ch x 96 kHz and 119 min mono 8 kHz."""
    folder.mkdir(parents=True, exist_ok=True)
    return [long_flac(folder / "bomb_20min_6ch_96k.flac", 20 * 60, 96000, 6, seed=11),
            long_flac(folder / "bomb_2h_mono_8k.flac", 119 * 60, 8000, 1, seed=12)]


def rss(pid: int) -> dict:
    """Current and peak resident set of ``pid`` in MB (VmRSS / VmHWM of /proc/PID/status)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


def reset_peak(pid: int) -> bool:
    """Start a new peak-RSS measurement for our own child (``5`` > clear_refs resets VmHWM)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_hostile(url: str, normal: list[Path], bombs: list[Path], model: str, k: int, requests: int,
                normal_clients: int, hostile_clients: int, time_limit: float) -> dict:
    """``hostile_clients`` upload decompression bombs in a loop while ``normal_clients`` send ``requests``
    normal searches; returns the normal searches' figures plus the hostile ones'."""
    from gradio_client import Client, handle_file

    stop = threading.Event()
    lock = threading.Lock()
    bad = {"ok": 0, "errors": [], "latencies": [], "parts": set()}

    def hostile(idx: int) -> None:
        client = Client(url, verbose=False)
        i = idx
        try:
            while not stop.is_set():
                q = bombs[i % len(bombs)]
                i += 1
                t0 = time.perf_counter()
                try:
                    out = client.predict(query_path=handle_file(str(q)), model=model, k=k, api_name="/search")
                    note = next((o for o in out if isinstance(o, str) and "hits with" in o), "")
                    with lock:
                        bad["ok"] += 1
                        bad["latencies"].append(time.perf_counter() - t0)
                        m = re.search(r"\(searched the first [^)]*\)", note)
                        bad["parts"].add(m.group(0) if m else note[:80])
                except Exception as err:
                    with lock:
                        bad["errors"].append(f"{type(err).__name__}: {str(err)[:120]}")
        finally:
            client.close()

    threads = [threading.Thread(target=hostile, args=(i,), daemon=True) for i in range(hostile_clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # the bombs are in flight before the first normal search
    try:
        r = run_level(url, normal, model, k, requests, normal_clients, time_limit)
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    lat = percentiles(bad["latencies"])
    r.update({"hostile_clients": hostile_clients, "hostile_ok": bad["ok"], "hostile_errors": len(bad["errors"]),
              "hostile_p50_ms": lat["p50_ms"], "hostile_max_ms": lat["max_ms"],
              "hostile_parts": sorted(bad["parts"]), "hostile_error_samples": sorted(set(bad["errors"]))[:3]})
    return r


def search_working_set(data: Path, bomb: Path, model: str) -> float:
    """Peak growth (MB) of one search on a query at the length limit, measured in a fresh process on
    an empty ``data`` folder (the app holds its own): streamed decode, the query part, the model's
    work on it and the query's two pictures."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import app
from search_core import plots
from search_core.service import LibraryService
app.return_freed_buffers_to_the_os()
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024
svc = LibraryService(recover=False)
def one(q):
    a, _ = svc.embed_query(q, {model!r})
    plots.image_bytes(plots.waveform_image(a.samples, 640, 80))
    plots.image_bytes(plots.spectrogram_image(a.samples, a.sample_rate, 640, 120), "jpeg")
one({str(bomb)!r})  # warm-up: imports, first-call compilation
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from here
base = hwm()
one({str(bomb)!r})
print(json.dumps(hwm() - base))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=app_env(data), capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-1500:])
    return round(json.loads(r.stdout.strip().splitlines()[-1]) / 2**20, 1)


def memory_bound(search_mb: float, window_s: float, wide_rate: int, wide_channels: int,
                 workers: int = 4, render_threads: int = 4) -> dict:
    """The app's peak over its idle resident set, derived from the limits (MB): each search worker
    holds at most one search on a query part at the length limit (``search_mb``, measured), each
    render thread one decode block and one window of the widest library clip as 16-bit WAV (the
    player of a segment hit; its thumbnail streams one block)."""
    from search_core.audio import BLOCK_SAMPLES

    block = BLOCK_SAMPLES * 4
    per_render = 2 * block + window_s * wide_rate * wide_channels * 2
    mb = lambda x: round(x / 2**20, 1)  # noqa: E731
    return {"per_search_mb": search_mb, "per_render_mb": mb(per_render),
            "bound_mb": round(workers * search_mb + render_threads * per_render / 2**20, 1)}


def public_markdown(results: dict, meta: dict) -> str:
    b = meta["bound"]
    lines = [PUBLIC_SECTION, "",
             f"`python benchmarks/load_test.py --scenarios {','.join(results)} --requests {meta['requests']} "
             f"--clips {meta['clips']} --write-md` ({meta['when']}, {meta['cpus']} CPUs, load average before "
             f"the run {meta['load_avg_1m']}).", "",
             f"The app on 127.0.0.1 (search queue: 4 workers) with a library of {meta['clips']} generated 3 s clips "
             f"plus one 20-min 6-channel 96 kHz clip (mostly silence; its hits draw the long-clip thumbnail and "
             f"segment), indexed with `{meta['model']}`. *same-query*: 8 clients send the same library clip at "
             f"once, so every response carries the same result files. *hostile*: {meta['hostile_clients']} "
             f"clients upload, in a loop, the issue's small files that decode to gigabytes (a 20-min 6-ch 96 kHz "
             f"FLAC and a 2-h mono 8 kHz FLAC, about 1 MB each) while {meta['normal_clients']} clients send "
             f"normal 3 s searches. Peak RSS is the app's VmHWM during the scenario (reset before it); idle is its "
             f"RSS before.", "",
             "| scenario | normal requests | errors | wrong top-1 | p50 (ms) | p95 (ms) | max (ms) "
             "| hostile requests (errors) | hostile p50 (ms) | app RSS idle → peak (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        host = f"{r['hostile_ok'] + r['hostile_errors']} ({r['hostile_errors']})" if "hostile_ok" in r else "–"
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['wrong_top1']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['max_ms']} | {host} | {r.get('hostile_p50_ms') or '–'} | "
                     f"{r['idle_rss_mb']} → {r['peak_rss_mb']} |")
    parts = sorted({p for r in results.values() for p in r.get("hostile_parts", [])})
    grown = {n: round(r["peak_rss_mb"] - r["idle_rss_mb"], 1) for n, r in results.items()
             if r.get("peak_rss_mb") is not None and r.get("idle_rss_mb") is not None}
    lines += ["", f"What the hostile queries got: {'; '.join(parts) or '–'}. Peak over idle: "
              + ", ".join(f"{n} +{g} MB" for n, g in grown.items())
              + f" (bound below: {b['bound_mb']} MB). The load average was {meta.get('load_avg_after')} on "
              f"{meta['cpus']} CPUs at the end (other jobs shared the machine), so latencies are pessimistic; "
              f"a hostile query now holds a search worker for seconds (its first {meta['max_query_s']:g} s), "
              f"not the 274 s of a whole 2-h decode with aisfx.", "",
              f"**Memory bound.** Files are decoded in blocks of {meta['block_samples']:,} samples and a query "
              f"only for its first {meta['max_query_s']:g} s, so what one request can hold no longer depends on "
              f"the file. One search on a query at that limit (the 20-min 6-ch 96 kHz FLAC: streamed decode, the "
              f"part at {meta['model_rate'] / 1000:g} kHz, the model's work on it and the query's two pictures) "
              f"raises a fresh process's peak by {b['per_search_mb']} MB (measured by the script); a render thread "
              f"holds one {meta['window_s']:g} s window of the widest library clip (6 ch × 96 kHz) as 16-bit WAV plus "
              f"two blocks = {b['per_render_mb']} MB. Four search workers and four render threads: "
              f"**{b['bound_mb']} MB over the idle app**, plus what Gradio itself holds per request (see "
              f"*same-query*, whose hits are 3 s clips). The app sets glibc's mmap threshold to 1 MB "
              f"(`return_freed_buffers_to_the_os`): by default freed MB-sized buffers stay in up to 8 arenas per "
              f"core, and the peak grows with the number of threads that ever ran a search. Before these limits "
              f"one such query took the app from 0.67 to 4.26 GB (issue 12). Ingest (admin only) holds the mono "
              f"output at the model's rate, at most MAX_DURATION_S × rate × 4 B per file (2 h at 16 kHz: 460 MB; "
              f"at aisfx's 44.1 kHz: 1.27 GB), and at most three import batches (cut at 600 s of audio by the "
              f"headers, or one longer file) at a time.", ""]
    return "\n".join(lines)


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


def write_section(md: str, path: Path = REPO / "BENCHMARKS.md", section: str = SECTION) -> None:
    """Replace (or append) the ``section``, leaving the other sections as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    heading = re.compile("^" + re.escape(section) + "$", re.M)
    found = heading.search(text)
    if found:
        start = found.start()
        nxt = text.find("\n## ", start + len(section))
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
    p.add_argument("--scenarios", default="", help="instead of the levels: same-query and/or hostile (comma-separated)")
    p.add_argument("--normal-clients", type=int, default=4, help="hostile scenario: clients sending normal searches")
    p.add_argument("--hostile-clients", type=int, default=4, help="hostile scenario: clients uploading decode bombs")
    args = p.parse_args(argv)
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    if any(x not in ("same-query", "hostile") for x in scenarios):
        p.error("--scenarios: same-query, hostile")
    if scenarios and args.url:
        p.error("--scenarios starts its own app (it reads the app's memory)")
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
            if scenarios:  # a long, wide library clip: its hits draw long-clip thumbnails and segments
                (tmp / "clips").mkdir(parents=True, exist_ok=True)
                long_flac(tmp / "clips" / "wide_20min_6ch_96k.flac", 20 * 60, 96000, 6, seed=99, bursts=True)
            meta["index_s"] = round(fill_library(tmp / "data", args.clips, args.model, extra=int(bool(scenarios))), 1)
            proc, url = start_app(tmp / "data", tmp / "app.log")
            queries = sorted((tmp / "clips").glob("*.wav"))
        # one warm-up search (model load, first Milvus query) outside the measurements
        run_level(url, queries[:1], args.model, args.k, 1, 1, 60)
        if scenarios:
            return run_scenarios(args, scenarios, url, queries, proc, tmp, meta)
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


def run_scenarios(args, scenarios: list[str], url: str, queries: list[Path], proc, tmp: Path, meta: dict) -> int:
    """The public-link cases; each measures the app's peak RSS while it runs (our own child only)."""
    from search_core.audio import BLOCK_SAMPLES
    from search_core.config import get_settings
    from search_core.models import get_model
    from search_core.service import segment_params

    info = get_model(args.model).info
    settings = get_settings()
    results = {}
    for name in scenarios:
        idle = rss(proc.pid)["rss_mb"] if proc else None
        if proc:
            reset_peak(proc.pid)
        if name == "same-query":
            r = run_level(url, queries[:1], args.model, args.k, args.requests, 8, args.time_limit)
        else:
            r = run_hostile(url, queries, hostile_queries(tmp / "bombs"), args.model, args.k, args.requests,
                            args.normal_clients, args.hostile_clients, args.time_limit)
        r.update(idle_rss_mb=idle, peak_rss_mb=rss(proc.pid)["peak_rss_mb"] if proc else None)
        print(json.dumps({"scenario": name, **r}), flush=True)
        results[name] = r
    meta.update(normal_clients=args.normal_clients, hostile_clients=args.hostile_clients,
                block_samples=BLOCK_SAMPLES, max_query_s=settings.max_query_s, model_rate=info.sample_rate,
                window_s=segment_params(info)[0],
                bound=memory_bound(search_working_set(tmp / "measure", hostile_queries(tmp / "bombs")[0], args.model),
                                   segment_params(info)[0], 96000, 6))
    meta["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps({"memory_bound": meta["bound"]}), flush=True)
    if args.write_md:
        write_section(public_markdown(results, meta), section=PUBLIC_SECTION)
    return 0

if __name__ == "__main__":
    sys.exit(main())
