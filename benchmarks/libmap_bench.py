"""The library map on a real library: how long it takes, how large the page's payload is, and how well
labels stay together on it (vs. the embedding space and the first two principal components).

    DATA_DIR=... python benchmarks/libmap_bench.py --model aisfx          # a library you ingested

Prints one JSON line: the fit (wall and CPU seconds, load average), a second drawing from the cache,
placing 1 % more clips, the JSON the page receives (bytes), and the share of each clip's 5 nearest
neighbours that carry its label: in the embedding space (cosine), on the map, and on PCA-2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_core import projection  # noqa: E402
from search_core.service import LibraryService  # noqa: E402
from search_core.ui.map_tab import map_json  # noqa: E402


def label_agreement(points: np.ndarray, labels: np.ndarray, k: int = 5, cosine: bool = False) -> float:
    """Mean share of each point's ``k`` nearest others (Euclidean, or cosine for unit rows) with its label."""
    out = []
    for s in range(0, len(points), 1000):
        block = points[s:s + 1000]
        if cosine:
            d = -(block @ points.T)
        else:
            d = (block ** 2).sum(1)[:, None] - 2 * block @ points.T + (points ** 2).sum(1)[None]
        d[np.arange(len(block)), np.arange(s, s + len(block))] = np.inf
        nn = np.argpartition(d, k, axis=1)[:, :k]
        out.append((labels[nn] == labels[s:s + 1000, None]).mean(1))
    return float(np.concatenate(out).mean())


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--quality", action="store_true", help="also the label agreement (reads every vector)")
    args = ap.parse_args()
    svc = LibraryService()
    try:
        m, wall, cpu = timed(lambda: svc.library_map(args.model, refit=True))
        res = {"model": args.model, "clips": len(m), "fit_wall_s": wall, "fit_cpu_s": cpu,
               "fit_parts_s": {k: round(v, 2) for k, v in m.timings.items()}, "load_after_fit": os.getloadavg()}
        _, res["cached_wall_s"], res["cached_cpu_s"] = timed(lambda: svc.library_map(args.model))
        payload = map_json(m)
        res["payload_bytes"] = len(payload.encode())
        if args.quality:
            by_clip = svc.meta.clip_vector_ids(args.model)
            vecs = svc.stores.clip_vectors(args.model, by_clip)
            ids = [c.id for c in m.clips]
            x = np.stack([vecs[i] for i in ids])
            labels = np.array([c.label or "" for c in m.clips])
            res["agreement_5nn"] = {"embedding": round(label_agreement(x, labels, cosine=True), 3),
                                    "map": round(label_agreement(m.xy.astype(np.float64), labels), 3),
                                    "pca2": round(label_agreement(projection._pca(x.astype(np.float64), 2), labels), 3)}
            # placing 1 % more clips on the fitted map (their own vectors again: the cost, not the result)
            proj = projection.load(svc._map.cache_path(args.model), args.model)
            extra = x[: max(1, len(x) // 100)]
            _, res["place_1pct_wall_s"], _ = timed(lambda: projection.place(proj, extra))
        print(json.dumps(res))
    finally:
        svc.close()


if __name__ == "__main__":
    main()
