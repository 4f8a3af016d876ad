"""Evaluation metrics on hand-computed toy cases, and a small `eval` run through the CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, sound, write_wav
from search_core.evaluate import (PRESETS, Rules, ann_recall_at_k, average_precision_at_k, center, clip_scores,
                                  exact_ranking, exclusion_mask, precision_at_k, relevance_matrix, rules_for,
                                  score_rankings)


def test_precision_at_k_divides_by_k_even_for_short_lists():
    assert precision_at_k([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], 10) == pytest.approx(0.2)
    assert precision_at_k([1], 10) == pytest.approx(0.1)
    assert precision_at_k([0, 1, 1], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        precision_at_k([1], 0)


def test_average_precision_is_normalised_by_min_of_relevant_and_k():
    ranked = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    # hits at ranks 1 and 3: precisions 1/1 and 2/3
    assert average_precision_at_k(ranked, n_relevant=2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k(ranked, n_relevant=5) == pytest.approx((1 + 2 / 3) / 5)
    assert average_precision_at_k(ranked, n_relevant=40) == pytest.approx((1 + 2 / 3) / 10)
    assert average_precision_at_k([0, 1], n_relevant=1, k=2) == pytest.approx(0.5)
    assert average_precision_at_k([1] * 10, n_relevant=300) == pytest.approx(1.0)  # perfect top-10
    assert average_precision_at_k([0] * 10, n_relevant=3) == 0.0
    with pytest.raises(ValueError):
        average_precision_at_k([1, 1], n_relevant=1)
    with pytest.raises(ValueError):
        average_precision_at_k([0], n_relevant=0)


def test_ann_recall_counts_shared_ids():
    assert ann_recall_at_k([1, 2, 3], [3, 4, 5], k=3) == pytest.approx(1 / 3)
    assert ann_recall_at_k([5, 4, 3, 9], [3, 4, 5, 6], k=3) == pytest.approx(1.0)
    assert ann_recall_at_k([7], [1, 2], k=10) == 0.0


def test_exclusion_mask_drops_self_group_and_equal_values():
    cols = {"speaker": ["a", "a", "b", "b"], "digit": ["0", "1", "0", "1"], "src": ["x", "x", "y", "z"]}
    m = exclusion_mask(cols, Rules("speaker", drop_equal=("digit",)))
    assert m.tolist() == [[True, False, True, False], [False, True, False, True],
                          [True, False, True, False], [False, True, False, True]]
    g = exclusion_mask(cols, Rules("speaker", group="src"))
    assert g.tolist() == [[True, True, False, False], [True, True, False, False],
                          [False, False, True, False], [False, False, False, True]]
    assert exclusion_mask(cols, Rules("speaker")).tolist() == np.eye(4, dtype=bool).tolist()


# five clips: labels a a b b a; clips 0 and 1 are takes of one recording (src 1)
LABELS = ["a", "a", "b", "b", "a"]
SRC = ["1", "1", "2", "3", "4"]
SCORES = np.array([[1.0, 0.9, 0.8, 0.1, 0.5],
                   [0.9, 1.0, 0.2, 0.3, 0.7],
                   [0.1, 0.2, 1.0, 0.6, 0.3],
                   [0.5, 0.4, 0.3, 1.0, 0.2],
                   [0.3, 0.2, 0.9, 0.8, 1.0]])


def test_toy_collection_with_group_rule_matches_hand_computation():
    rules = Rules("label", group="src")
    excluded = exclusion_mask({"label": LABELS, "src": SRC}, rules)
    ranking = exact_ranking(SCORES, excluded, k=2)
    assert ranking == [[2, 4], [4, 3], [3, 4], [0, 1], [2, 3]]
    m = score_rankings(ranking, relevance_matrix(LABELS), excluded, k=2)
    # per query (P@2, AP@2, R@1): (.5,.5,0) (.5,1,1) (.5,1,1) (0,0,0) (0,0,0)
    assert (m.p_at_k, m.map_at_k, m.r_at_1) == pytest.approx((0.3, 0.5, 0.4))
    assert (m.queries, m.no_relevant) == (5, 0)


def test_toy_collection_without_group_rule_scores_the_other_take():
    excluded = exclusion_mask({"label": LABELS}, Rules("label"))
    ranking = exact_ranking(SCORES, excluded, k=2)
    assert ranking[0] == [1, 2] and ranking[1] == [0, 4]
    m = score_rankings(ranking, relevance_matrix(LABELS), excluded, k=2)
    assert (m.p_at_k, m.map_at_k, m.r_at_1) == pytest.approx((0.4, 0.5, 0.6))


def test_rankings_with_excluded_candidates_are_refused_and_queries_without_answers_counted():
    labels = ["a", "b", "b"]
    excluded = exclusion_mask({"label": labels}, Rules("label"))
    rel = relevance_matrix(labels)
    with pytest.raises(ValueError, match="excluded"):
        score_rankings([[0, 1], [2], [1]], rel, excluded, k=2)  # query 0 lists itself
    m = score_rankings([[1, 2], [2, 0], [1, 0]], rel, excluded, k=2)
    assert (m.queries, m.no_relevant) == (2, 1)  # "a" has no other member
    assert m.r_at_1 == 1.0 and m.p_at_k == pytest.approx(0.5)


def test_clip_scores_take_the_best_segment_and_center_renormalises():
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    s = clip_scores(np.array([[0.0, 1.0]]), vecs, np.array([0, 0, 1]), 2)
    assert s.tolist() == [[1.0, pytest.approx(0.8)]]
    c = center(np.array([[2.0, 1.0], [0.0, 1.0]]), np.array([1.0, 1.0]))
    assert c.tolist() == [[1.0, 0.0], [-1.0, 0.0]]


def test_presets_follow_the_data_readme():
    assert rules_for("x/esc50.csv") == Rules("label", group="src_file")
    assert rules_for("fsdd.csv") == Rules("speaker", drop_equal=("digit",))
    assert rules_for("emodb.csv") == PRESETS["emodb"] == Rules("speaker")
    assert rules_for("mine.csv") == Rules("label")
    assert rules_for("fsdd.csv", relevant="digit") == Rules("digit")


def _manifest(folder):
    """30 clips: 3 sound families x 10 takes, grouped in pairs by src_file (1 s each)."""
    rows = []
    for fam in range(3):
        for take in range(10):
            rng = np.random.default_rng(100 * fam + take)
            y = sound(fam, seconds=1.0) * (0.5 + 0.5 * rng.random()) + 0.02 * rng.standard_normal(16000)
            name = f"f{fam}_t{take}.wav"
            write_wav(folder / name, y.astype(np.float32))
            rows.append({"path": name, "label": f"fam{fam}", "src_file": f"{fam}-{take // 2}"})
    path = folder / "toy.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "src_file"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_eval_cli_on_generated_clips(tmp_path):
    manifest = _manifest(tmp_path / "clips")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "should-stay-empty"), "SEARCH_CORE_OFFLINE": "1",
           "TMPDIR": str(scratch)}
    out = subprocess.run([sys.executable, "-m", "search_core", "eval", str(manifest), "--model", "mfcc_stats",
                          "--relevant", "label", "--group", "src_file", "--center", "--json", "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["clips"] == 30 and res["rejected"] == 0 and res["k"] == 10
    assert res["rules"] == "relevant = same label; drop same src_file group"
    # 8 relevant among 27 candidates per query: chance P@10 is about 0.3
    assert res["exact"]["p_at_k"] > 0.8 and res["exact"]["r_at_1"] > 0.9
    assert res["ann_recall"] == pytest.approx(1.0)  # 30 vectors: the index must find the exact top-10
    assert res["ann"]["p_at_k"] == pytest.approx(res["exact"]["p_at_k"])
    assert res["centered"]["queries"] == 30
    assert not (tmp_path / "should-stay-empty").exists()  # stores went to a temporary folder ...
    assert not any(scratch.glob("search-core-eval-*"))  # ... which is gone afterwards


def test_eval_json_is_the_only_stdout_on_a_models_first_use(tmp_path):
    """`eval --json` with a Paddle model whose graph is not compiled yet: the one-time compile's log
    (paddle2onnx writes to the process' stdout) must not come before the JSON (issue 16, item 11)."""
    from test_paddle_threads import wheel_weights

    manifest = _manifest(tmp_path / "clips")
    weights = wheel_weights(tmp_path / "weights")
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "WEIGHTS_DIR": str(weights), "SEARCH_CORE_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "search_core", "eval", str(manifest), "--model", "aisfx",
                          "--relevant", "label", "--group", "src_file", "--json", "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (weights / "compiled").is_dir()  # the compile really ran in this process
    res = json.loads(out.stdout)
    assert res["clips"] == 30 and set(res["seconds"]) >= {"ingest", "query_embed", "ann_queries", "exact", "total"}
    assert res["seconds"]["total"] >= sum(v for k, v in res["seconds"].items() if k != "total") - 0.05
