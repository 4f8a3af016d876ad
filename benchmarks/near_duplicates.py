"""Precision/recall of the near-duplicate detector on degraded copies of real clips.

    python benchmarks/near_duplicates.py [--model mfcc_stats] [--data ../shared/data] [--limit N]

1. Index the ESC-50 clips of ``../shared/data`` (211 clips, 25 classes, 5 s at 32 kHz) into a
   fresh library with the product's own ingest.
2. Make degraded copies of every clip (:data:`DEGRADATIONS`: gain -9 dB, resampling to 22.05 kHz,
   MP3 re-encoding at 64 kbit/s, trimming 0.2 s + 0.1 s, white noise at 20 dB SNR). Each copy is
   a positive: it must be matched to its own original.
3. Negatives: every original probed against the library without itself (its best match is
   another clip, so any mark is false); the hardest are the clips whose ``src_file`` has other
   takes in the set (a different take of the same sound must not count).
4. Sweep the threshold over the best-match scores (``search_core.duplicates.best_match``, the
   code ingest runs: model candidates, then fingerprint correlation) and report precision/recall; then ingest every copy through
   ``LibraryService.ingest_files`` at the model's configured threshold and count the marks it
   actually writes (end to end).

Prints markdown; the figures in BENCHMARKS.md and the constant duplicates.THRESHOLD comes
from here.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SEARCH_CORE_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from search_core import audio as audio_mod  # noqa: E402
from search_core import duplicates  # noqa: E402
from search_core.config import get_settings  # noqa: E402
from search_core.models import get_model  # noqa: E402
from search_core.service import LibraryService, segment_params  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _gain(y, sr, rng):
    return y * 10 ** (-9 / 20), sr, "wav"


def _resample(y, sr, rng):
    return audio_mod.resample(y, sr, 22050), 22050, "wav"


def _mp3(y, sr, rng):
    return y, sr, "mp3"


def _trim(y, sr, rng):
    return y[int(0.2 * sr): len(y) - int(0.1 * sr)], sr, "wav"


def _noise(y, sr, rng, snr_db: float = 20.0):
    rms = float(np.sqrt(np.mean(y ** 2))) or 1e-4
    noise = rng.standard_normal(len(y)).astype(np.float32) * rms / 10 ** (snr_db / 20)
    out = y + noise
    peak = float(np.max(np.abs(out)))
    return (out / peak * 0.99 if peak > 1 else out), sr, "wav"


#: name -> fn(samples, rate, rng) -> (samples, rate, container)
DEGRADATIONS = {"gain -9 dB": _gain, "resample 22.05 kHz": _resample, "mp3 64 kbit/s": _mp3,
                "trim 0.3 s": _trim, "noise 20 dB SNR": _noise}


def write_degraded(src: Path, kind: str, out_dir: Path, rng) -> Path:
    """Write a degraded copy of ``src`` (kind from :data:`DEGRADATIONS`) into ``out_dir``."""
    y, sr = sf.read(str(src), dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    y, sr, fmt = DEGRADATIONS[kind](y, sr, rng)
    tag = kind.split()[0]
    if fmt == "mp3":
        path = out_dir / f"{src.stem}.{tag}.mp3"
        sf.write(str(path), y, sr, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT",
                 compression_level=0.75)
    else:
        path = out_dir / f"{src.stem}.{tag}.wav"
        sf.write(str(path), y, sr, subtype="PCM_16")
    return path


def embed_file(svc: LibraryService, model: str, path: Path):
    """Segment embeddings exactly as ingest makes them, and the decoded audio."""
    m = get_model(model)
    a = audio_mod.load(path, m.info.sample_rate)
    bounds = audio_mod.segment_bounds(len(a.samples), a.sample_rate, *segment_params(m.info))
    return m.embed([a.samples[s:e] for s, e in bounds]), a


def pr_at(thr, pos, neg):
    """Precision/recall at ``thr``: pos = [(score, correct)], neg = [score]."""
    tp = sum(1 for s, ok in pos if s >= thr and ok)
    fp = sum(1 for s, ok in pos if s >= thr and not ok) + sum(1 for s in neg if s >= thr)
    prec = tp / (tp + fp) if tp + fp else 1.0
    return prec, tp / len(pos), fp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mfcc_stats")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N clips (quick runs)")
    ap.add_argument("--min-precision", type=float, default=0.99)
    args = ap.parse_args(argv)
    rows = list(csv.DictReader(open(args.data / "esc50.csv", newline="")))
    if args.limit:
        rows = rows[:args.limit]
    root = Path(tempfile.mkdtemp(prefix="near_dup_"))
    data = root / "data"
    s = replace(get_settings(), data_dir=data, milvus_uri=str(data / "milvus.db"),
                database_url=f"sqlite:///{data / 'metadata.sqlite'}", library_dir=data / "library",
                weights_dir=data / "weights")
    svc = LibraryService(s)
    model = args.model
    t0 = time.perf_counter()
    paths = [args.data / r["path"] for r in rows]
    rep = svc.ingest_files(paths, model)
    assert not rep.errors, rep.errors[:3]
    by_name = {i.name: i.clip_id for i in rep.items}
    marks_originals = len(svc.meta.near_duplicate_pairs(model))
    src_count: dict[str, int] = {}
    for r in rows:
        src_count[r["src_file"]] = src_count.get(r["src_file"], 0) + 1

    # negatives: each original against the library without itself
    neg, neg_hard = [], []
    for r, p in zip(rows, paths):
        vecs, a = embed_file(svc, model, p)
        m = duplicates.best_match(svc, model, vecs, a.samples, a.sample_rate, exclude_clip=by_name[p.name])
        score = m.score if m else -1.0
        neg.append(score)
        if src_count[r["src_file"]] > 1:
            neg_hard.append(score)

    # positives: degraded copies against the originals
    rng = np.random.default_rng(0)
    copies_dir = root / "copies"
    copies_dir.mkdir()
    pos: dict[str, list[tuple[float, bool]]] = {k: [] for k in DEGRADATIONS}
    copies: list[tuple[Path, str, int]] = []
    for p in paths:
        for kind in DEGRADATIONS:
            c = write_degraded(p, kind, copies_dir, rng)
            vecs, a = embed_file(svc, model, c)
            m = duplicates.best_match(svc, model, vecs, a.samples, a.sample_rate)
            ok = m is not None and m.clip.id == by_name[p.name]
            pos[kind].append((m.score if m else -1.0, ok))
            copies.append((c, kind, by_name[p.name]))
    all_pos = [x for v in pos.values() for x in v]

    # sweep: the highest-recall threshold whose precision reaches --min-precision
    cands = sorted({round(x, 4) for x in [sc for sc, _ in all_pos] + neg})
    best = None
    for thr in cands:
        prec, rec, _ = pr_at(thr, all_pos, neg)
        if prec >= args.min_precision and (best is None or rec > best[2]):
            best = (thr, prec, rec)
    f1_best = max(((thr, *pr_at(thr, all_pos, neg)[:2]) for thr in cands),
                  key=lambda t: 2 * t[1] * t[2] / (t[1] + t[2] or 1))
    configured = duplicates.threshold_for(model)

    print(f"## Near-duplicates — {model}\n")
    print(f"{len(rows)} ESC-50 originals, {len(all_pos)} degraded copies (positives), {len(neg)} originals "
          f"probed without themselves (negatives; {len(neg_hard)} of them have another take of the same "
          f"recording in the set). Score = fingerprint correlation with the best of the model's "
          f"candidates (-1 when the model proposed none).\n")
    print("| threshold | precision | recall | false marks | note |")
    print("|---|---|---|---|---|")
    for thr, note in ((configured, "configured (duplicates.THRESHOLD)"),
                      (best[0] if best else None, f"highest recall at precision ≥ {args.min_precision}"),
                      (f1_best[0], "best F1")):
        if thr is None:
            continue
        prec, rec, fp = pr_at(thr, all_pos, neg)
        print(f"| {thr:.4f} | {prec:.3f} | {rec:.3f} | {fp} | {note} |")
    print(f"\nRecall per degradation at the configured threshold {configured}:\n")
    print("| degradation | recall | median score |")
    print("|---|---|---|")
    for kind, v in pos.items():
        rec = sum(1 for sc, ok in v if sc >= configured and ok) / len(v)
        print(f"| {kind} | {rec:.3f} | {np.median([sc for sc, _ in v]):.4f} |")
    print(f"| *negatives: other takes of the same recording* | false-mark rate "
          f"{np.mean([x >= configured for x in neg_hard]) if neg_hard else 0:.3f} | "
          f"{np.median(neg_hard) if neg_hard else float('nan'):.4f} |")
    print(f"| *negatives: all originals* | false-mark rate {np.mean([x >= configured for x in neg]):.3f} | "
          f"{np.median(neg):.4f} |")

    # end to end: ingest every copy and look at the marks ingest wrote
    rep2 = svc.ingest_files([c for c, _, _ in copies], model)
    marked = {i.name: i.duplicate_of for i in rep2.items}
    groups_root = {}
    for g in svc.duplicate_groups(model):
        for clip, _ in g.copies:
            groups_root[clip.id] = g.original.id
    root_of = {i.clip_id: groups_root.get(i.clip_id) for i in rep2.items if i.clip_id}
    tp = sum(1 for (c, _, orig), item in zip(copies, rep2.items) if item.clip_id and root_of.get(item.clip_id) == orig)
    flagged = sum(1 for v in marked.values() if v is not None)
    print(f"\nEnd to end (ingest at threshold {configured}): the {len(rows)} originals got {marks_originals} "
          f"marks among themselves (all false); of {len(copies)} copies ingested afterwards {flagged} were marked, "
          f"{tp} in their original's group (recall {tp / len(copies):.3f}); "
          f"{len(svc.duplicate_groups(model))} groups listed. {time.perf_counter() - t0:.0f} s in all.")
    svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
