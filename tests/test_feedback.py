"""Relevance feedback (issue 14, item 1): Rocchio on the stored vectors, searched again from the
service and the CLI; its simulated evaluation (residual P@10)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli_runner, sound, write_wav
from search_core.evaluate import feedback_round
from search_core.feedback import clip_vector, rocchio

MODEL = "mfcc_stats"


def test_rocchio_is_the_textbook_formula_on_unit_vectors():
    q, a, b, d = np.eye(4)
    moved = rocchio(q, [a, b], [d], alpha=1.0, beta=0.5, gamma=0.25)
    want = np.array([1.0, 0.25, 0.25, -0.25])
    assert moved == pytest.approx(want / np.linalg.norm(want), abs=1e-6)
    assert rocchio(3 * q) == pytest.approx(q)                      # nothing marked: the query itself
    assert rocchio(q, [], [d]) @ d < 0 < rocchio(q, [a]) @ a        # away from the disliked, toward the liked
    assert clip_vector([a, b]) == pytest.approx((a + b) / np.sqrt(2))   # a clip: its segments' mean


@pytest.mark.parametrize("args, said", [
    (dict(liked=[np.ones(3)]), "liked vectors have dimension 3, the query 4"),
    (dict(beta=-1), "beta must be a finite number >= 0"),
    (dict(alpha=0.0), "the moved query (its terms cancel out) is the zero vector"),
])
def test_rocchio_refuses_what_has_no_answer_in_one_sentence(args, said):
    with pytest.raises(ValueError, match=f"^{said.replace('(', '.').replace(')', '.')}"):
        rocchio(np.eye(4)[0], **args)


def test_one_simulated_round_scores_the_next_unseen_results():
    # clips on the unit circle (degrees), the query at 0: relevant on the + side, not on the - side
    deg = [0, -5, -10, 20, -30, -35, -40, 38, 43, 48]
    X = np.stack([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], axis=1)
    relevant = np.array([[d >= 0 for d in deg]])
    excluded = np.eye(1, len(deg), dtype=bool)            # the query itself
    f = feedback_round(X[:1], X, np.arange(len(deg)), relevant, excluded, k=3)
    # first page -5, -10, 20 (one relevant); without feedback the next is -30, -35, 38: 1/3
    assert f.queries == 1 and f.next_p == pytest.approx(1 / 3)
    # marked, the query turns ~10 degrees to the + side: 38, 43, 48 come next; toward 20 only (no
    # "less like" -5 and -10) it turns ~8.6 degrees and -30 still beats 48
    assert f.residual_p == 1.0 and f.residual_p_liked == pytest.approx(2 / 3)


def test_marked_ids_come_as_a_person_types_them():
    from search_core import limits

    assert limits.clip_ids("3, #7,,3") == [3, 7] and limits.clip_ids(["12", 5, "5,9"]) == [12, 5, 9]
    assert limits.clip_ids(None) == [] and limits.clip_ids("") == []
    with pytest.raises(ValueError, match="^At most 2 clips to hide may be given.$"):
        limits.clip_ids("1,2,3", "clips to hide", hi=2)


@pytest.fixture
def library(service, tmp_path):
    files = [write_wav(tmp_path / "lib" / f"s{i}.wav", sound(i)) for i in range(12)]
    rep = service.ingest_files(files, MODEL)
    assert len(rep.added) == 12
    return files, {it.name: it.clip_id for it in rep.items}


def test_search_again_moves_toward_a_liked_clip_and_hides_what_was_seen(service, library):
    files, ids = library
    first = service.search(files[0], MODEL, k=12)
    assert first.vector is not None and first.vector.shape == (80,)
    plain = [h.clip.id for h in first.hits]
    far = first.hits[-1]                         # the clip least like the query (one segment: its vector)
    near_far = [h.clip.id for h in service.search_vector(
        service.vectors.get(MODEL, [far.vector_id])[far.vector_id], MODEL, 4)]   # it and its neighbours
    far = far.clip.id
    again = [h.clip.id for h in service.search_feedback(first.vector, MODEL, liked=[far], k=12)]
    assert again.index(far) < plain.index(far)   # the liked clip and its neighbours move up
    assert sum(again.index(c) for c in near_far) < sum(plain.index(c) for c in near_far)

    top = plain[1]                               # the best hit after the query itself, disliked
    down = service.search_feedback(first.vector, MODEL, disliked=[top], k=12)
    assert [h.clip.id for h in down].index(top) >= plain.index(top)
    assert next(h.score for h in down if h.clip.id == top) < first.hits[1].score

    seen = plain[:5]                             # hide what was shown: the next five, in the new order
    hidden = [h.clip.id for h in service.search_feedback(first.vector, MODEL, liked=[far], k=5, exclude=seen)]
    assert len(hidden) == 5 and not set(hidden) & set(seen)
    assert hidden == [c for c in again if c not in seen][:5]


def test_bad_marks_are_one_sentence(service, library):
    files, _ = library
    vec = service.search(files[0], MODEL, k=3).vector
    for kw, said in ((dict(liked=[999]), "Clip #999 is not in the library for mfcc_stats."),
                     (dict(liked=[1], disliked=["1"]), "Clip #1 is marked both more and less like this."),
                     (dict(liked=["x"]), "The clip id must be a whole number"),
                     (dict(exclude=[0]), "The clip id must be a whole number from 1")):
        with pytest.raises(ValueError, match=said.replace(".", r"\.")):
            service.search_feedback(vec, MODEL, **kw)
    with pytest.raises(ValueError, match="must have 80 values for mfcc_stats"):
        service.search_feedback(vec[:10], MODEL, liked=[1])


def test_the_cli_searches_again_with_marks_and_hides_the_first_page(tmp_path):
    cli = cli_runner(tmp_path / "data")
    files = [write_wav(tmp_path / "in" / f"s{i}.wav", sound(i)) for i in range(8)]
    cli("ingest", *map(str, files), "--model", MODEL, "--quiet")
    plain = json.loads(cli("search", str(files[0]), "--model", MODEL, "-k", "3", "--json"))["hits"]
    far = json.loads(cli("search", str(files[0]), "--model", MODEL, "-k", "8", "--json"))["hits"][-1]["clip_id"]
    out = json.loads(cli("search", str(files[0]), "--model", MODEL, "-k", "3", "--json", "--like", str(far),
                         "--unlike", f"{plain[1]['clip_id']}", "--hide-seen"))["hits"]
    shown = {h["clip_id"] for h in plain} | {far}
    assert len(out) == 3 and not {h["clip_id"] for h in out} & shown
    text = cli("search", str(files[0]), "--model", MODEL, "-k", "3", "--like", f"#{far}")
    assert "3 hits (mfcc_stats" in text and "after relevance feedback" in text
    assert cli("search", str(files[0]), "--model", MODEL, "--like", "#999", code=2) == ""
