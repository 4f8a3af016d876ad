"""The README's evaluation table is what the stored eval results say, and one command remakes both
(issue 16, item 12: the table had drifted from what `eval` gives on the current code)."""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


def _report():
    spec = importlib.util.spec_from_file_location("report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_one_rendered_from_the_stored_results():
    report = _report()
    assert report.readme_table((REPO / "README.md").read_text()) == report.eval_table()
    for model in report.MODELS:                  # every model x dataset of `make eval-table` is stored
        for dataset in report.DATASETS:
            assert (report.RESULTS / "eval" / f"{model}_{dataset}.json").is_file(), (model, dataset)


@pytest.mark.skipif(not (SHARED / "esc50.csv").is_file(), reason="needs ../shared/data (SHARED_DATA)")
def test_the_one_command_runs_the_products_eval_and_rewrites_the_table(tmp_path):
    report = _report()
    with open(SHARED / "esc50.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:24]
    for r in rows:
        r["path"] = str(SHARED / r["path"])
    with open(tmp_path / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.START}\n| old |\n{report.END}\n\nafter\n")

    written = report.run_evals(["mfcc_stats"], ["esc50"], data=tmp_path, folder=tmp_path / "eval")
    report.write_readme(report.eval_table(tmp_path / "eval"), readme)

    assert [p.name for p in written] == ["mfcc_stats_esc50.json"]
    text = readme.read_text()
    assert "| old |" not in text and text.endswith("\n\nafter\n")
    row = [line for line in report.readme_table(text).splitlines() if line.startswith("| `mfcc_stats` | esc50 |")]
    assert len(row) == 1 and row[0].split("|")[3].strip() == "24"
