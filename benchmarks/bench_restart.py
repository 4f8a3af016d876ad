"""Stop and restart of the app's own Milvus server (``MILVUS_URI=local``) on a small library, with
Milvus' session TTL and graceful-stop timeout as ``search_core.milvus_local`` sets them and as given.

    python benchmarks/bench_restart.py [--rounds 2] [--vectors 100] [--tag NAME]

For each setting (the product's: TTL 10 s, graceful stop 3 s; Milvus' defaults as the product had
them before: TTL 30 s, graceful stop 10 s; TTL 5 s): a fresh folder, a first start, one collection with
``--vectors`` vectors (flushed, loaded), then ``--rounds`` times: the last user leaves
(``release``: SIGTERM, the server's graceful stop) and a new start (``ensure_server``: the server
answers and every collection answers a Strong read). A restarted server waits for the etcd
sessions its predecessor left to expire before its nodes take the data over
(milvus-io/milvus#28183), so the TTL bounds a restart from below whatever the library's size.
Results: benchmarks/results/restart<tag>.json.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save

SETTINGS = {"product": {"ttl": None, "grace": None}, "milvus_defaults": {"ttl": 30, "grace": 10},
            "ttl_5": {"ttl": 5, "grace": 3}}  # the floor a shorter TTL would give (not used: see BENCHMARKS.md)


def rounds(ttl: int | None, grace: int | None, n_rounds: int, n_vectors: int) -> dict:
    from pymilvus import MilvusClient

    from search_core import milvus_local as ml

    if ttl is not None:
        ml.SESSION_TTL_S = ttl
    if grace is not None:
        ml.GRACEFUL_STOP_S = grace
    out = {"session_ttl_s": ml.SESSION_TTL_S, "graceful_stop_s": ml.GRACEFUL_STOP_S, "stop_s": [], "restart_s": []}
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        folder = Path(tmp) / "milvus-server"
        t0 = time.perf_counter()
        uri = ml.ensure_server(folder)
        out["first_start_s"] = round(time.perf_counter() - t0, 1)
        client = MilvusClient(uri)
        client.create_collection("t", dimension=8, metric_type="COSINE")
        x = np.random.default_rng(0).random((n_vectors, 8))
        client.insert("t", [{"id": i, "vector": v.tolist()} for i, v in enumerate(x)])
        client.flush("t")
        client.close()
        for _ in range(n_rounds):
            t0 = time.perf_counter()
            ml.release(folder)
            ml.stopped(folder, 120)
            out["stop_s"].append(round(time.perf_counter() - t0, 1))
            t0 = time.perf_counter()
            uri = ml.ensure_server(folder)
            out["restart_s"].append(round(time.perf_counter() - t0, 1))
            client = MilvusClient(uri)
            res = client.query("t", filter="", output_fields=["count(*)"], consistency_level="Strong")
            out.setdefault("count_after_restart", []).append(int(res[0]["count(*)"]))
            client.close()
        ml.release(folder)
        ml.stopped(folder, 120)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=100)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    from search_core import milvus_local as ml

    product = {"ttl": ml.SESSION_TTL_S, "grace": ml.GRACEFUL_STOP_S}
    results = {}
    for name, s in SETTINGS.items():
        s = product if name == "product" else s
        results[name] = rounds(s["ttl"], s["grace"], args.rounds, args.vectors)
    save(f"restart{args.tag}", results)


if __name__ == "__main__":
    main()
