"""Choose the aisfx weight of ``aisfx_yamnet`` on half of ESC-50, check it on the other half.

    WEIGHTS_DIR=... python benchmarks/combined_weight.py [--manifest ../shared/data/esc50.csv]

ESC-50's ``fold`` column cannot split the shared subset (200 of its 211 clips are fold 4), so the
recordings are split: within each label, the ``src_file`` groups sorted by the sha1 of their name
go alternately to the dev half and the held-out half (takes of one recording never straddle the
halves). Every clip is loaded as ingest loads it (44.1 kHz) and embedded once by each member
through :meth:`AisfxYamnet.member_embeddings`; the combined vectors for each weight come from
:func:`combine`, the model's own composition. Scores are exact search with the fair rules of
ESC-50 (relevant = same label, drop same ``src_file``), queries and candidates within one half.
The weight with the best dev mAP@10 (the first, on a tie) is the model's ``AISFX_WEIGHT``; the
result goes to ``benchmarks/results/combined_weight.json`` with the held-out figures and, as a
check of how stable the choice is, the weight the held-out half would have chosen.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from _common import RESULTS, SHARED_DATA, machine  # noqa: E402
from search_core import audio  # noqa: E402
from search_core.evaluate import (PRESETS, exact_ranking, exclusion_mask, relevance_matrix,  # noqa: E402
                                  score_rankings)
from search_core.models import get_model  # noqa: E402
from search_core.models.combined import combine  # noqa: E402

GRID = [round(x, 2) for x in np.arange(0.0, 1.0001, 0.05)]


def split_halves(rows: list[dict]) -> np.ndarray:
    """0 (dev) or 1 (held out) per row: each label's src_file groups, sha1-sorted, alternately."""
    groups = defaultdict(set)
    for r in rows:
        groups[r["label"]].add(r["src_file"])
    half = {}
    for label, files in groups.items():
        for i, f in enumerate(sorted(files, key=lambda f: hashlib.sha1(f.encode()).hexdigest())):
            half[f] = i % 2
    return np.array([half[r["src_file"]] for r in rows])


def scores(vectors: np.ndarray, cols: dict, rows: np.ndarray) -> dict:
    """Exact P@10, mAP@10, R@1 of ``vectors[rows]`` queried against each other (ESC-50 rules)."""
    rules = PRESETS["esc50"]
    sub = {c: [v[i] for i in rows] for c, v in cols.items()}
    excluded, relevant = exclusion_mask(sub, rules), relevance_matrix(sub[rules.relevant])
    x = vectors[rows].astype(np.float64)
    m = score_rankings(exact_ranking(x @ x.T, excluded, 10), relevant, excluded, 10)
    return {"p_at_10": round(m.p_at_k, 4), "map_at_10": round(m.map_at_k, 4), "r_at_1": round(m.r_at_1, 4),
            "queries": m.queries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default=str(SHARED_DATA / "esc50.csv"))
    args = ap.parse_args()
    manifest = Path(args.manifest)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    model = get_model("aisfx_yamnet")
    waves = [audio.load(manifest.parent / r["path"], model.info.sample_rate).samples for r in rows]
    a, y = [], []
    for start in range(0, len(waves), 16):
        ea, ey = model.member_embeddings(waves[start:start + 16])
        a.append(ea)
        y.append(ey)
    a, y = np.concatenate(a), np.concatenate(y)
    cols = {c: [r[c] for r in rows] for c in ("label", "src_file")}
    half = split_halves(rows)
    parts = {"dev": np.flatnonzero(half == 0), "held_out": np.flatnonzero(half == 1),
             "all": np.arange(len(rows))}
    curve = {w: {p: scores(combine(a, y, w), cols, idx) for p, idx in parts.items()} for w in GRID}
    best = max(GRID, key=lambda w: (curve[w]["dev"]["map_at_10"], -w))
    best_held = max(GRID, key=lambda w: (curve[w]["held_out"]["map_at_10"], -w))
    out = {"manifest": manifest.name, "clips": len(rows),
           "split": "per label, src_file groups sorted by sha1 go alternately to dev / held_out",
           "clips_per_half": {p: int(len(idx)) for p, idx in parts.items()},
           "metric": "exact mAP@10 within the half (relevant = same label, drop same src_file)",
           "chosen_weight": best, "weight_the_held_out_half_would_choose": best_held,
           "curve": {str(w): v for w, v in curve.items()}, "machine": machine()}
    (RESULTS / "combined_weight.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'w':>5} " + "  ".join(f"{p:>26}" for p in parts))
    for w in GRID:
        print(f"{w:5.2f} " + "  ".join(f"P {c['p_at_10']:.3f} mAP {c['map_at_10']:.3f} R1 {c['r_at_1']:.3f}"
                                       for c in curve[w].values()))
    print(f"chosen on dev: w = {best}; the held-out half would choose {best_held}")


if __name__ == "__main__":
    main()
