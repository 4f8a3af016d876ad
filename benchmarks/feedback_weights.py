"""How much the Rocchio weights matter: residual P@10 of one simulated feedback round over a grid of
(beta, gamma), alpha = 1, picked on ESC-50 (dev) and checked on EmoDB (held out).

    WEIGHTS_DIR=... python benchmarks/feedback_weights.py [--models aisfx yamnet resemblyzer mfcc_stats]

Each model x data set is indexed once with the product's ingest (``evaluate_manifest`` with a kept
``--data-dir``); the stored vectors are read back and every grid point is scored by
``search_core.evaluate.feedback_round`` (exact search, the data set's fair rules; queries are the
clips' stored vectors, the mean of their segments for a clip of several). One weight pair serves
every model, so the pair with the best mean residual P@10 over the models on ESC-50 is "the dev
choice"; EmoDB says whether it beats the textbook (0.75, 0.15) on data it was not picked on.
Result: benchmarks/results/feedback_weights.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from _common import RESULTS, SHARED_DATA, machine  # noqa: E402
from search_core.evaluate import (PRESETS, evaluate_manifest, exclusion_mask, feedback_round,  # noqa: E402
                                  relevance_matrix, temporary_settings)
from search_core.feedback import ALPHA, BETA, GAMMA, clip_vector  # noqa: E402
from search_core.records import clean_name  # noqa: E402

BETAS = (0.25, 0.5, 0.75, 1.0, 1.5)
GAMMAS = (0.0, 0.15, 0.25, 0.5, 1.0)


def stored_round_inputs(data_dir: Path, manifest: Path, model: str):
    """Queries, stored vectors, their clip index, relevance and exclusion matrices read back from the stores."""
    from search_core.service import LibraryService

    rows = list(csv.DictReader(open(manifest, newline="", encoding="utf-8")))
    by_name = {clean_name(Path(r["path"]).name): r for r in rows}
    svc = LibraryService(temporary_settings(data_dir))
    try:
        vids = svc.meta.vector_ids(model)
        refs = svc.meta.ready_refs(vids)
        stored = svc.vectors.get(model, vids)
    finally:
        svc.close()
    clips = sorted({refs[v].clip.id: refs[v].clip.original_name for v in vids if v in refs and v in stored}.items())
    index = {cid: j for j, (cid, _) in enumerate(clips)}
    vec_ids = [v for v in vids if v in refs and v in stored]
    X = np.stack([stored[v] for v in vec_ids]).astype(np.float32)
    owner = np.array([index[refs[v].clip.id] for v in vec_ids])
    Q = np.stack([clip_vector(X[owner == j]) for j in range(len(clips))]).astype(np.float32)
    kept = [by_name[name] for _, name in clips]
    rules = PRESETS[manifest.stem]
    cols = {c: [r.get(c) for r in kept] for c in kept[0]}
    return Q, X, owner, relevance_matrix(cols[rules.relevant]), exclusion_mask(cols, rules)


def grid(model: str, dataset: str, data: Path) -> dict[str, float]:
    manifest = data / f"{dataset}.csv"
    with tempfile.TemporaryDirectory(prefix="feedback-weights-") as tmp:
        evaluate_manifest(manifest, model, PRESETS[dataset], data_dir=tmp)
        Q, X, owner, relevant, excluded = stored_round_inputs(Path(tmp), manifest, model)
        out = {"next_p": None}
        for b in BETAS:
            for g in GAMMAS:
                f = feedback_round(Q, X, owner, relevant, excluded, 10, (ALPHA, b, g))
                out[f"{b}/{g}"] = f.residual_p
                out["next_p"] = f.next_p
        from search_core.evaluate import _release_lite
        _release_lite(str(Path(tmp).resolve() / "milvus.db"))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["aisfx", "yamnet", "resemblyzer", "mfcc_stats"])
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    args = p.parse_args(argv)
    runs = {d: {m: grid(m, d, args.data) for m in args.models} for d in ("esc50", "emodb")}
    keys = [f"{b}/{g}" for b in BETAS for g in GAMMAS]
    mean = {d: {k: float(np.mean([runs[d][m][k] for m in args.models])) for k in keys} for d in runs}
    pick = max(keys, key=lambda k: (mean["esc50"][k], -keys.index(k)))
    textbook = f"{BETA}/{GAMMA}"
    out = {"models": args.models, "grid": {"beta": BETAS, "gamma": GAMMAS}, "runs": runs, "mean": mean,
           "dev_choice": pick, "textbook": textbook,
           "held_out": {"choice": mean["emodb"][pick], "textbook": mean["emodb"][textbook],
                        "held_out_best": max(keys, key=lambda k: mean["emodb"][k])},
           "machine": machine()}
    (RESULTS / "feedback_weights.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"dev (ESC-50) choice beta/gamma {pick}: mean residual P@10 {mean['esc50'][pick]:.3f} "
          f"(textbook {textbook}: {mean['esc50'][textbook]:.3f})")
    print(f"held out (EmoDB): choice {mean['emodb'][pick]:.3f}, textbook {mean['emodb'][textbook]:.3f}, "
          f"EmoDB's own best {out['held_out']['held_out_best']}")


if __name__ == "__main__":
    main()
