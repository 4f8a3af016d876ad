"""Calibrate the speaker-identification threshold: EER on FSDD and EmoDB of ../shared/data.

    python benchmarks/speaker_threshold.py [--models mfcc_stats,resemblyzer] [--enrol 5] [--tests 40]

Protocol, per data set: every speaker is enrolled from ``--enrol`` clips (the product's
``SpeakerRegistry`` rule: mean of unit clip embeddings, normalised); the other clips (up to
``--tests`` per speaker) are tested against every enrolled speaker of the set. A test against
its own speaker is a target trial, against another a non-target trial. On FSDD the enrolment
uses digits 0-4 and the tests digits 5-9, so that a model cannot score by matching the word.

Reports per model and set: EER (where false rejections = false acceptances), its threshold,
closed-set identification accuracy, and with the pooled (FSDD + EmoDB) EER threshold — the
constant in ``search_core.speakers.THRESHOLDS`` — the false-accept and false-reject rates.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SEARCH_CORE_OFFLINE", "1")

import numpy as np  # noqa: E402

from search_core.config import get_settings  # noqa: E402
from search_core.service import LibraryService  # noqa: E402
from search_core.speakers import mean_embedding, threshold_for  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def eer(target: np.ndarray, nontarget: np.ndarray) -> tuple[float, float]:
    """(equal error rate, threshold) from target and non-target scores."""
    thr = np.unique(np.concatenate([target, nontarget]))
    frr = np.array([(target < t).mean() for t in thr])
    far = np.array([(nontarget >= t).mean() for t in thr])
    i = int(np.argmin(np.abs(frr - far)))
    return float((frr[i] + far[i]) / 2), float(thr[i])


def split(rows: list[dict], dataset: str, n_enrol: int, n_tests: int, rng) -> tuple[dict, dict]:
    """Per speaker: enrolment paths and test paths."""
    by_spk: dict[str, list[dict]] = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    enrol, tests = {}, {}
    for spk, rs in sorted(by_spk.items()):
        rs = [rs[i] for i in rng.permutation(len(rs))]
        if dataset == "fsdd":
            first = [r for r in rs if int(r["digit"]) < 5]
            rest = [r for r in rs if int(r["digit"]) >= 5]
            enrol[spk] = [next(r for r in first if int(r["digit"]) == d % 5) for d in range(n_enrol)]
            tests[spk] = rest[:n_tests]
        else:
            enrol[spk], tests[spk] = rs[:n_enrol], rs[n_enrol:n_enrol + n_tests]
    return enrol, tests


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mfcc_stats")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--enrol", type=int, default=5)
    ap.add_argument("--tests", type=int, default=40)
    args = ap.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="spk_thr_")) / "data"
    s = replace(get_settings(), data_dir=data, milvus_uri=str(data / "milvus.db"),
                database_url=f"sqlite:///{data / 'metadata.sqlite'}", library_dir=data / "library")
    svc = LibraryService(s)
    print("| model | set | speakers | target / non-target trials | EER | EER threshold | closed-set ID accuracy | "
          "FAR / FRR at the pooled threshold |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        results = {}
        for dataset in ("fsdd", "emodb"):
            rows = list(csv.DictReader(open(args.data / f"{dataset}.csv", newline="")))
            enrol, tests = split(rows, dataset, args.enrol, args.tests, np.random.default_rng(0))
            names = sorted(enrol)
            prints = np.stack([mean_embedding(np.stack([svc.speakers.embed_clip(args.data / r["path"], model)
                                                        for r in enrol[n]])) for n in names])
            tgt, non, correct, total = [], [], 0, 0
            for n in names:
                for r in tests[n]:
                    sc = prints @ svc.speakers.embed_clip(args.data / r["path"], model)
                    i = names.index(n)
                    tgt.append(sc[i])
                    non.extend(np.delete(sc, i))
                    correct += int(np.argmax(sc) == i)
                    total += 1
            results[dataset] = (np.array(tgt), np.array(non), correct / total, len(names))
        pooled_t = np.concatenate([r[0] for r in results.values()])
        pooled_n = np.concatenate([r[1] for r in results.values()])
        pooled_eer, pooled_thr = eer(pooled_t, pooled_n)
        for dataset, (t, n, acc, n_spk) in results.items():
            e, thr = eer(t, n)
            print(f"| {model} | {dataset} | {n_spk} | {len(t)} / {len(n)} | {e:.1%} | {thr:.3f} | {acc:.1%} | "
                  f"{(n >= pooled_thr).mean():.1%} / {(t < pooled_thr).mean():.1%} |")
        print(f"| {model} | pooled | | {len(pooled_t)} / {len(pooled_n)} | {pooled_eer:.1%} | **{pooled_thr:.3f}** | | "
              f"configured now: {threshold_for(model):.3f} |")
    svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
