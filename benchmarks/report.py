"""Markdown tables from benchmarks/results/*.json (for README.md and BENCHMARKS.md).

    python benchmarks/report.py eval            # retrieval table from benchmarks/results/eval/*.json
    python benchmarks/report.py eval --write    # ... written into README.md between its eval-table markers
    python benchmarks/report.py eval --run      # run every model x dataset eval first (make eval-table)
    python benchmarks/report.py speed           # embedding, ingest and scale tables

``--run`` runs ``python -m search_core eval DATA/DATASET.csv --model MODEL --center --feedback --json`` for every
model and dataset below (DATA is $SHARED_DATA or ../shared/data; FSDD takes ~15 minutes per model on
2 cores), keeps each JSON in benchmarks/results/eval/MODEL_DATASET.json and rewrites the README table,
so the table is always what the stored results say (tests/test_eval_table.py checks it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
README = REPO / "README.md"
MODELS = ("aisfx", "resemblyzer", "yamnet", "aisfx_yamnet", "mfcc_stats")
#: runs on a subset (``--every N``): the combined model runs both members, and its FSDD queries take hours
EVERY = {("aisfx_yamnet", "fsdd"): 10}
DATASETS = ("esc50", "fsdd", "emodb")
START, END = "<!-- eval-table: python benchmarks/report.py eval --run -->", "<!-- /eval-table -->"


def _change_line(runs: dict, models, key: str, title: str, change) -> str:
    """One sentence under the table: ``change(run)`` in points per model and data set, for the runs
    that have ``key``; empty when none has."""
    per_model = []
    for m in models:
        parts = [f"{d} {_points(change(runs[m, d]))}" for d in DATASETS if (m, d) in runs and runs[m, d].get(key)]
        if parts:
            per_model.append(f"`{m}` {', '.join(parts)}")
    return f"\n{title}: {'; '.join(per_model)}." if per_model else ""


def eval_table(folder: Path | None = None) -> str:
    """The README's retrieval table from the eval JSON files in ``folder`` (results/eval)."""
    runs = {}
    for p in sorted(Path(folder or RESULTS / "eval").glob("*.json")):
        r = json.loads(p.read_text())
        runs[(r["model"], Path(r["manifest"]).stem)] = r
    models = sorted({m for m, _ in runs}, key=lambda m: (m == "mfcc_stats", m))
    head = ("| model | dataset | clips | index space | P@10 | mAP@10 | R@1 | ANN recall@10 | "
            "uncentered P@10 / mAP@10 / R@1 | centered P@10 / mAP@10 / R@1 | feedback: next 10 P → residual P@10 | "
            "extra flags |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for m in models:
        for d in [*DATASETS, *sorted({d for mm, d in runs if mm == m} - set(DATASETS))]:
            r = runs.get((m, d))
            if r is None:
                continue
            a, fb = r["ann"], r.get("feedback")
            feedback = f"{fb['next_p']:.3f} → {fb['residual_p']:.3f}" if fb else "–"
            every = r.get("every") or EVERY.get((m, d), 1)
            flags = f"`--every {every}`" if every > 1 else ""
            lines.append(f"| `{m}` | {d} | {r['clips']} | {_space(r)} | {a['p_at_k']:.3f} | {a['map_at_k']:.3f} | "
                         f"{a['r_at_1']:.3f} | {r['ann_recall']:.3f} | {_triple(_uncentered(r))} | "
                         f"{_triple(r.get('centered'))} | {feedback} | {flags} |")
    lines.append(_change_line(runs, models, "centered", "Centering changes mAP@10 (exact search both ways, points)",
                              lambda r: r["centered"]["map_at_k"] - _uncentered(r)["map_at_k"]))
    lines.append(_change_line(runs, models, "feedback", "One round of relevance feedback changes P of the next 10 "
                              "(points)", lambda r: r["feedback"]["residual_p"] - r["feedback"]["next_p"]))
    return "\n".join(line for line in lines if line)


def _space(r: dict) -> str:
    """The product's index space of a run; runs made before the product centered have no ``space``
    (their plain columns are the raw space: they are stale for models now centered by default)."""
    if "space" not in r:
        return "raw (run before centering)"
    return "centered" if r["space"].startswith("centered") else "raw"


def _uncentered(r: dict) -> dict:
    """Exact search on the raw embeddings; before the product centered, that was ``exact``."""
    return r.get("uncentered") or (r["exact"] if "space" not in r else None)


def _triple(c: dict | None) -> str:
    return f"{c['p_at_k']:.3f} / {c['map_at_k']:.3f} / {c['r_at_1']:.3f}" if c else "–"


def _points(delta: float) -> str:
    """A change of a score in [0, 1] as signed points: +1.9, −0.3, ±0.0."""
    p = round(delta * 100, 1)
    return "±0.0" if p == 0 else f"{'+' if p > 0 else '−'}{abs(p):.1f}"


def readme_table(text: str) -> str:
    """The table between the eval-table markers of README text."""
    if START not in text or END not in text:
        raise ValueError(f"README has no {START} ... {END} markers")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write_readme(table: str, readme: Path = README) -> None:
    """Replace the README's table between the markers with ``table``."""
    text = readme.read_text()
    old = readme_table(text)
    readme.write_text(text.replace(f"{START}\n{old}\n{END}", f"{START}\n{table}\n{END}", 1))


def run_evals(models=MODELS, datasets=DATASETS, data: Path | None = None, folder: Path | None = None,
              python: str = sys.executable) -> list[Path]:
    """Run every model x dataset eval of the product (its CLI), each JSON into ``folder``."""
    data = Path(data or os.environ.get("SHARED_DATA") or REPO.parent / "shared" / "data")
    folder = Path(folder or RESULTS / "eval")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for m in models:
        for d in datasets:
            manifest = data / f"{d}.csv"
            t0 = time.monotonic()
            print(f"==> eval {manifest} --model {m}", file=sys.stderr, flush=True)
            every = ["--every", str(EVERY[m, d])] if (m, d) in EVERY else []
            out = subprocess.run([python, "-m", "search_core", "eval", str(manifest), "--model", m, "--center",
                                  "--feedback", "--json", "--quiet", *every], cwd=REPO, check=True, capture_output=True, text=True).stdout
            result = json.loads(out)      # only the JSON is on stdout
            (folder / f"{m}_{d}.json").write_text(json.dumps(result) + "\n")
            written.append(folder / f"{m}_{d}.json")
            print(f"    {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return written


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Markdown tables from benchmarks/results")
    p.add_argument("what", nargs="?", default="eval", choices=("eval", "speed"))
    p.add_argument("--run", action="store_true", help="run the evals first (implies --write)")
    p.add_argument("--write", action="store_true", help="write the eval table into README.md")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = p.parse_args(argv)
    if args.what == "speed":
        print(speed_tables())
        return
    if args.run:
        run_evals(args.models, args.datasets)
    table = eval_table()
    if args.run or args.write:
        write_readme(table)
    print(table)


if __name__ == "__main__":
    main()
