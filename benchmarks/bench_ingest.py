"""Bulk ingest end to end (decode, embed, insert vectors and rows): the product vs the seed's design.

    python benchmarks/bench_ingest.py [--model mfcc_stats] [--manifest ../shared/data/esc50.csv] [--limit N]
                                      [--rounds 1] [--tag NAME]

The baseline follows the seed: one file at a time -- decode, embed, insert the vector into a
Milvus IVF_SQ8 collection with L2, then insert one metadata row (one transaction per file).
The product is ``LibraryService.ingest_files`` with its defaults. Same model (weights and
network), same files, same run; each run starts from empty stores in a temporary folder.

For a Paddle model the baseline runs twice: with the network executed eagerly, as the seed ran
its Paddle models (``ratio``, the figure the target is about), and with the product's compiled
network (``ratio_same_runtime``: what the ingest pipeline alone gains). Both model instances are
loaded and warmed up before timing. Reported: files/s and ratios (median over rounds).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, eager_twin, machine, save, write_clips


def baseline_ingest(paths: list[Path], model, folder: Path) -> float:
    """The seed's design. Returns seconds."""
    import sqlalchemy as sa
    from pymilvus import DataType, MilvusClient

    from search_core import audio

    client = MilvusClient(str(folder / "seed.db"))
    schema = MilvusClient.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=model.info.dim)
    idx = client.prepare_index_params()
    idx.add_index(field_name="vector", index_type="IVF_SQ8", metric_type="L2", params={"nlist": 1024})
    client.create_collection("seed", schema=schema, index_params=idx)
    engine = sa.create_engine(f"sqlite:///{folder / 'seed.sqlite'}")
    meta = sa.MetaData()
    rows = sa.Table("audio", meta, sa.Column("id", sa.BigInteger, primary_key=True),
                    sa.Column("path", sa.String(512)), sa.Column("duration_s", sa.Float))
    meta.create_all(engine)
    t0 = time.perf_counter()
    for p in paths:
        a = audio.load(p, model.info.sample_rate)
        vec = model.embed([a.samples])[0]
        res = client.insert("seed", [{"vector": vec.tolist()}])
        with engine.begin() as c:
            c.execute(rows.insert().values(id=int(res["ids"][0]), path=str(p), duration_s=a.duration_s))
    seconds = time.perf_counter() - t0
    client.close()
    engine.dispose()
    return seconds


def product_ingest(paths: list[Path], model_name: str, folder: Path) -> tuple[float, int]:
    from search_core.evaluate import temporary_settings
    from search_core.service import LibraryService

    svc = LibraryService(temporary_settings(folder))
    try:
        t0 = time.perf_counter()
        rep = svc.ingest_files(paths, model_name)
        seconds = time.perf_counter() - t0
        assert not rep.errors, rep.errors[:3]
        return seconds, len(rep.added)
    finally:
        svc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mfcc_stats")
    ap.add_argument("--manifest", default=str(SHARED_DATA / "esc50.csv"),
                    help="real files to ingest; 'synthetic' for generated 5 s clips")
    ap.add_argument("--limit", type=int, default=211)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    from search_core.models import get_model

    if args.manifest == "synthetic":
        paths = write_clips(Path(tempfile.gettempdir()) / "bench_clips_5s", args.limit)
    else:
        man = Path(args.manifest)
        paths = [man.parent / r["path"] for r in csv.DictReader(open(man))][:args.limit]
    m = get_model(args.model).load()
    warm = [np.zeros(m.info.sample_rate, np.float32) + 0.01]
    m.embed(warm)  # warm-up outside the timings; PANNs/ECAPA compile on their first embed
    eager = eager_twin(m)
    if eager is not None:
        eager.embed(warm)
    base, same, prod = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            same.append(len(paths) / baseline_ingest(paths, m, Path(d)))
        if eager is not None:
            with tempfile.TemporaryDirectory() as d:
                base.append(len(paths) / baseline_ingest(paths, eager, Path(d)))
        else:
            base.append(same[-1])
        with tempfile.TemporaryDirectory() as d:
            s, added = product_ingest(paths, args.model, Path(d))
            assert added == len(paths), (added, len(paths))
            prod.append(len(paths) / s)
    res = {"model": args.model, "files": len(paths), "source": args.manifest, "rounds": args.rounds,
           "baseline_runtime": "eager paddle" if eager is not None else "same as product",
           "baseline_files_per_s": round(statistics.median(base), 2),
           "baseline_same_runtime_files_per_s": round(statistics.median(same), 2),
           "product_files_per_s": round(statistics.median(prod), 2),
           "ratio": round(statistics.median(prod) / statistics.median(base), 2),
           "ratio_same_runtime": round(statistics.median(prod) / statistics.median(same), 2),
           "all_baseline": [round(x, 2) for x in base], "all_product": [round(x, 2) for x in prod],
           "machine": machine()}
    path = RESULTS / "ingest.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else {}
    old[f"{args.model}{args.tag}"] = res
    save("ingest", {"runs": old})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
