"""Markdown tables from benchmarks/results/*.json (for README.md and BENCHMARKS.md).

    python benchmarks/report.py eval      # retrieval table from benchmarks/results/eval/*.json
    python benchmarks/report.py speed     # embedding, ingest and scale tables
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("esc50", "fsdd", "emodb")
FULL = {"esc50": 211, "fsdd": 3000, "emodb": 535}


def eval_table() -> str:
    runs = {}
    for p in sorted((RESULTS / "eval").glob("*.json")):
        r = json.loads(p.read_text())
        runs[(r["model"], Path(r["manifest"]).stem)] = r
    models = sorted({m for m, _ in runs}, key=lambda m: (m == "mfcc_stats", m))
    head = ("| model | dataset | clips | P@10 | mAP@10 | R@1 | ANN recall@10 | centered P@10 / mAP@10 / R@1 | "
            "extra flags |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for m in models:
        for d in DATASETS:
            r = runs.get((m, d))
            if r is None:
                continue
            a, c = r["ann"], r.get("centered")
            cen = f"{c['p_at_k']:.3f} / {c['map_at_k']:.3f} / {c['r_at_1']:.3f}" if c else "–"
            every = round(FULL[d] / r["clips"]) if d in FULL else 1
            flags = f"`--every {every}`" if every > 1 else ""
            lines.append(f"| `{m}` | {d} | {r['clips']} | {a['p_at_k']:.3f} | {a['map_at_k']:.3f} | "
                         f"{a['r_at_1']:.3f} | {r['ann_recall']:.3f} | {cen} | {flags} |")
    return "\n".join(lines)


def speed_tables() -> str:
    out = []
    e = json.loads((RESULTS / "embed.json").read_text())["models"]
    out.append("| model | dim | single clips/s | batched clips/s (16) | eager Paddle single clips/s | speed-up | "
               "other threads slowed | load avg |\n|---|---|---|---|---|---|---|---|")
    for name, r in e.items():
        if "skipped" in r:
            out.append(f"| `{name}` | – | skipped: {r['skipped'][:60]} | | | | | |")
        else:
            out.append(f"| `{name}` | {r['dim']} | {r['single_clips_per_s']} | {r['batched_clips_per_s']} | "
                       f"{r.get('eager_single_clips_per_s', '–')} | {r.get('compiled_speedup', '–')} | "
                       f"×{r.get('python_thread_slowdown', '–')} | {r['machine']['load_avg_1m']} |")
    ing = RESULTS / "ingest.json"
    if ing.exists():
        out.append("\n| run | files | seed design files/s | product files/s | ratio | seed design with the "
                   "product's runtime files/s | ratio | load avg |\n|---|---|---|---|---|---|---|---|")
        for name, r in json.loads(ing.read_text())["runs"].items():
            same = r.get("baseline_same_runtime_files_per_s", r["baseline_files_per_s"])
            out.append(f"| `{name}` | {r['files']} | {r['baseline_files_per_s']} | {r['product_files_per_s']} | "
                       f"{r['ratio']} | {same} | {r.get('ratio_same_runtime', r['ratio'])} | "
                       f"{r['machine']['load_avg_1m']} |")
    for p in sorted(RESULTS.glob("scale*.json")):
        s = json.loads(p.read_text())
        out.append(f"\n{p.name}: {s['model']} {s['dim']}-d, {s['vectors']} vectors, load avg "
                   f"{s['machine']['load_avg_1m']}\n")
        out.append("| vectors | Milvus p50/p95 ms | search+join p50/p95 ms | end to end p50/p95 ms | "
                   "embed p50 ms | ANN recall@10 | upsert s | flush+index s |\n|---|---|---|---|---|---|---|---|")
        for n, r in sorted(s["sizes"].items(), key=lambda kv: int(kv[0])):
            f = lambda d: f"{d['p50_ms']:.0f} / {d['p95_ms']:.0f}"  # noqa: E731
            out.append(f"| {int(n):,} | {f(r['milvus_search'])} | {f(r['search_only'])} | {f(r['end_to_end'])} | "
                       f"{r['end_to_end_parts']['embed']['p50_ms']:.0f} | {r['ann_recall_at_10']} | "
                       f"{r['vector_upsert_s']} | {r['flush_and_index_s']} |")
        if "curve" in s:
            out.append("\n| index | parameter | recall@10 | p50 ms | p95 ms |\n|---|---|---|---|---|")
            for pt in s["curve"]["HNSW"]:
                out.append(f"| HNSW M16 | ef {pt['ef']} | {pt['recall']} | {pt['p50_ms']} | {pt['p95_ms']} |")
            for pt in s["curve"].get("IVF_FLAT", []):
                out.append(f"| IVF_FLAT nlist {pt['nlist']} | nprobe {pt['nprobe']} | {pt['recall']} | "
                           f"{pt['p50_ms']} | {pt['p95_ms']} |")
        if "app_process" in s:
            out.append(f"\napp process: {json.dumps(s['app_process'])}")
    return "\n".join(out)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "eval"
    print(eval_table() if what == "eval" else speed_tables())
