"""Embedding throughput per model on 5 s clips: one clip per call, and batched.

    python benchmarks/bench_embed.py [--models mfcc_stats aisfx ...] [--clips 32] [--batch 16]

Models whose weights are not installed are listed as skipped. Results go to
benchmarks/results/embed.json (merged per model, so models can be run separately).
"""
from __future__ import annotations

import argparse
import json
import time

from _common import RESULTS, machine, peak_rss_mb, save, synthetic_clip


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
    return {"dim": m.info.dim, "rate": rate, "load_s": round(load_s, 2), "clips": clips, "batch": batch,
            "single_clips_per_s": round(single, 2), "batched_clips_per_s": round(batched, 2),
            "peak_rss_mb": peak_rss_mb()}


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
