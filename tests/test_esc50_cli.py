"""Index the 211 ESC-50 clips through the CLI and check that neighbours are sensible."""
from __future__ import annotations

import csv
import json
import os
from collections import Counter

import pytest

from conftest import SHARED_DATA, cli_runner

MODEL = "mfcc_stats"
MANIFEST = SHARED_DATA / "esc50.csv"


@pytest.mark.skipif(not MANIFEST.is_file(), reason=f"evaluation data not found at {MANIFEST}")
def test_cli_indexes_esc50_and_neighbours_share_labels(tmp_path):
    cli = cli_runner(tmp_path / "data", timeout=900)
    out = cli("ingest", "--manifest", str(MANIFEST), "--model", MODEL, "--quiet")
    assert "211 added" in out
    assert cli("count", "--model", MODEL).strip() == "211"

    rows = list(csv.DictReader(open(MANIFEST)))
    labels = Counter(r["label"] for r in rows)
    # chance that a random other clip shares the query's label, averaged over queries
    chance = sum(n * (n - 1) for n in labels.values()) / (len(rows) * (len(rows) - 1))
    queries = rows[::7]  # 31 queries spread over the classes
    out = cli("search", *[str(SHARED_DATA / r["path"]) for r in queries], "--model", MODEL, "-k", "6",
                  "--json")
    results = [json.loads(line)["hits"] for line in out.splitlines()]
    assert len(results) == len(queries)
    hits_same = 0
    for r, res in zip(queries, results):
        assert res[0]["name"] == os.path.basename(r["path"]) and res[0]["score"] > 0.999
        assert res[0]["label"] == r["label"]  # the manifest's labels were stored
        neighbours = res[1:]
        hits_same += sum(h["label"] == r["label"] for h in neighbours) / len(neighbours)
    precision = hits_same / len(queries)
    assert precision > 2 * chance, (precision, chance)
