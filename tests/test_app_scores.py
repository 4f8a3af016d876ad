"""Scores a person can rank (issue 16, item 7): with aisfx a top five scored 0.88-0.91 and every bar
looked the same. The bars span the search's observed range; the cosine values stay exact."""
from __future__ import annotations

import dataclasses
import re

from conftest import sound, write_wav

MODEL = "mfcc_stats"


def _hit_infos(outs, n):
    """The info HTML of the first ``n`` result slots (slots of group, player, info, waveform from index 3)."""
    return [outs[3 + 4 * i + 2] for i in range(n)]


def _widths(infos):
    return [float(re.search(r'class="scorefill" style="width:([\d.]+)%"', x).group(1)) for x in infos]


def _search_with_scores(service, tmp_path, scores):
    for i in range(len(scores)):
        service.ingest_file(write_wav(tmp_path / f"clip_{i}.wav", sound(i)), MODEL)
    res = service.search(tmp_path / "clip_0.wav", MODEL, k=len(scores))
    assert len(res.hits) == len(scores)
    res.hits = [dataclasses.replace(h, score=s) for h, s in zip(res.hits, scores)]
    return res


def test_close_scores_get_bars_that_rank_them_and_exact_values(service, tmp_path):
    import app

    res = _search_with_scores(service, tmp_path, [0.91, 0.905, 0.895, 0.89, 0.88])
    outs = app.search_outputs(res, MODEL, tmp_path / "render")
    infos = _hit_infos(outs, 5)
    widths = _widths(infos)
    # the best fills its bar, the worst of this search is a short bar: the ranking is visible
    assert widths[0] == 100 and widths == sorted(widths, reverse=True)
    assert widths[-1] <= 25
    assert min(a - b for a, b in zip(widths, widths[1:])) >= 10  # 0.005 apart is a visible step
    # the numbers stay exact, and how far each is below the best is said
    assert "cosine similarity <b>0.905</b> · cosine distance 0.095" in infos[1]
    assert "0.030 below the best" in infos[4]
    assert "below the best" not in infos[0]
    assert "Bars run from 0.873 (empty) to 0.910 (full), this search's range" in outs[2]
    assert [row["score"] for row in outs[-1]] == [0.91, 0.905, 0.895, 0.89, 0.88]


def test_scores_that_differ_by_noise_get_bars_of_about_the_same_length(service, tmp_path):
    import app

    res = _search_with_scores(service, tmp_path, [0.9004, 0.9003, 0.9001])
    widths = _widths(_hit_infos(app.search_outputs(res, MODEL, tmp_path / "render"), 3))
    assert widths[0] == 100 and min(widths) >= 97  # 0.0003 apart: not shown as a real difference
