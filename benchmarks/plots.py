"""Draw the benchmark figures from benchmarks/results/*.json.

    python benchmarks/plots.py [--scale benchmarks/results/scale.json]

Writes benchmarks/latency_vs_size.png and benchmarks/recall_vs_latency.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def latency_vs_size(scale: dict, out: Path) -> None:
    sizes = sorted(scale["sizes"], key=int)
    xs = [int(s) for s in sizes]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("milvus_search", "Milvus search"), ("search_only", "search + SQL join"),
                       ("end_to_end", "end to end (decode + embed + search + join)")):
        for pct, style in (("p50_ms", "-o"), ("p95_ms", "--x")):
            ys = [scale["sizes"][s][key][pct] for s in sizes]
            ax.plot(xs, ys, style, label=f"{label}, {pct[:3]}")
    ax.axhline(250, color="grey", lw=0.8, ls=":", label="target: end to end p50 250 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors in the collection")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{scale['model']} ({scale['dim']}-d), {scale['sizes'][sizes[-1]]['index']}, "
                 f"load avg {scale['machine']['load_avg_1m']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def recall_vs_latency(scale: dict, out: Path, small: dict | None = None) -> None:
    curve = scale["curve"]
    n = max(int(s) for s in scale["sizes"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [(curve["HNSW"], f"HNSW M=16, efConstruction=200, {n:,} vectors (3 segments)", "-o")]
    if small and "curve" in small:
        m = max(int(s) for s in small["sizes"])
        series.append((small["curve"]["HNSW"], f"HNSW, {m:,} vectors (1 segment)", "-^"))
    for h, label, style in series:
        ax.plot([p["p50_ms"] for p in h], [p["recall"] for p in h], style, label=label)
        for p in h:
            ax.annotate(f"ef {p['ef']}", (p["p50_ms"], p["recall"]), fontsize=7, xytext=(3, -8),
                        textcoords="offset points")
    v = curve.get("IVF_FLAT") or []
    if v:
        ax.plot([p["p50_ms"] for p in v], [p["recall"] for p in v], "-s",
                label=f"IVF_FLAT nlist={v[0]['nlist']}")
        for p in v:
            ax.annotate(f"nprobe {p['nprobe']}", (p["p50_ms"], p["recall"]), fontsize=7, xytext=(3, 4),
                        textcoords="offset points")
    ax.axhline(0.95, color="grey", lw=0.8, ls=":", label="target recall@10 0.95")
    ax.set_xscale("log")
    ax.set_ylim(0.8, 1.005)
    ax.set_xlabel("Milvus search latency p50 (ms)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_title(f"clustered synthetic {scale['dim']}-d vectors, Milvus Lite, top-10", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default=str(HERE / "results" / "scale.json"))
    args = ap.parse_args()
    scale = json.loads(Path(args.scale).read_text())
    latency_vs_size(scale, HERE / "latency_vs_size.png")
    small = HERE / "results" / "scale_10k.json"
    if "curve" in scale:
        recall_vs_latency(scale, HERE / "recall_vs_latency.png",
                          json.loads(small.read_text()) if small.exists() else None)


if __name__ == "__main__":
    main()
