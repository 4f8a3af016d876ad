"""Embedding throughput per model on 5 s clips: one clip per call, and batched.

    python benchmarks/bench_embed.py [--models mfcc_stats aisfx ...] [--clips 32] [--batch 16]

Models whose weights are not installed are listed as skipped. Results go to
benchmarks/results/embed.json (merged per model, so models can be run separately).
"""
from __future__ import annotations

import argparse
import json
import time

from _common import RESULTS, eager_twin, machine, peak_rss_mb, save, synthetic_clip


def python_slowdown(model, waves: list) -> float:
    """How much slower a pure-Python loop runs while another thread embeds (1 = not at all).

    A model whose native code holds the GIL stalls every other thread of the app (web server,
    other searches) for as long as a batch takes: that shows as a slowdown of 10x or more here.
    """
    import threading

    def loop() -> float:
        t0 = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        return time.perf_counter() - t0

    alone = loop()
    stop = threading.Event()

    def embed_until_stopped() -> None:
        while not stop.is_set():
            model.embed(waves[:4])

    worker = threading.Thread(target=embed_until_stopped)
    worker.start()
    time.sleep(0.3)
    during = loop()
    stop.set()
    worker.join()
    return round(during / alone, 2)


def bench_model(name: str, clips: int, batch: int) -> dict:
    from search_core.audio import resample
    from search_core.models import get_model

    m = get_model(name)
    st = m.status()
    if not st.ready:
        return {"skipped": st.message}
    t0 = time.perf_counter()
    m.load()
    load_s = time.perf_counter() - t0
    rate = m.info.sample_rate
    waves = [resample(synthetic_clip(i), 16000, rate) for i in range(clips)]
    m.embed(waves[:2])  # warm-up (first-call allocations, JIT, kernels)
    t0 = time.perf_counter()
    for w in waves:
        m.embed([w])
    single = clips / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    m.embed(waves, batch_size=batch)
    batched = clips / (time.perf_counter() - t0)
    out = {"dim": m.info.dim, "rate": rate, "load_s": round(load_s, 2), "clips": clips, "batch": batch,
           "single_clips_per_s": round(single, 2), "batched_clips_per_s": round(batched, 2),
           "peak_rss_mb": peak_rss_mb(), "python_thread_slowdown": python_slowdown(m, waves)}
    eager = eager_twin(m)   # the same network run eagerly (Paddle dygraph): the before of the compiled path
    if eager is not None:
        eager.embed(waves[:2])
        n = min(clips, 8)
        t0 = time.perf_counter()
        for w in waves[:n]:
            eager.embed([w])
        out["eager_single_clips_per_s"] = round(n / (time.perf_counter() - t0), 2)
        out["compiled_speedup"] = round(single / out["eager_single_clips_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tag", default="", help="suffix for the result key (e.g. before/after a change)")
    args = ap.parse_args()
    from search_core.models import model_names

    path = RESULTS / "embed.json"
    old = json.loads(path.read_text())["models"] if path.exists() else {}
    for name in args.models or model_names():
        try:
            res = bench_model(name, args.clips, args.batch)
        except Exception as err:  # a model that cannot load is reported, not fatal
            res = {"skipped": f"{type(err).__name__}: {err}"[:300]}
        res["machine"] = machine()
        old[name + args.tag] = res
        print(name + args.tag, json.dumps(res))
        save("embed", {"models": old})


if __name__ == "__main__":
    main()
