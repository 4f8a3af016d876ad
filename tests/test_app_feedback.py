"""Relevance feedback on the page, driven through the app with gradio_client as a person does:
search, mark hits 👍 / 👎, Search again (issue 14, item 1)."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import sound, write_wav

MODEL = "mfcc_stats"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app_feedback") / "data") as url:
        yield url


def test_marking_hits_and_searching_again_moves_the_list(app_url, tmp_path):
    files = [write_wav(tmp_path / f"clip_{i}.wav", sound(i)) for i in range(12)]
    client = Client(app_url, verbose=False)
    report, _, _ = client.predict([handle_file(str(f)) for f in files], MODEL, "", "", "", api_name="/ingest")
    assert "12 added" in report

    first = client.predict(handle_file(str(files[0])), MODEL, 12, api_name="/search")[-1]
    names = [h["name"] for h in first]
    far, near = len(first) - 1, 1       # the hit least like the query; the best after the query itself
    assert client.predict(api_name=f"/like_{far}") == f"More like: #{first[far]['clip_id']} · less like: none"
    out_liked = client.predict(False, api_name="/search_again")[-1]
    liked = [h["name"] for h in out_liked]
    assert liked.index(names[far]) < names.index(names[far])       # the liked clip moves up

    note = client.predict(api_name=f"/unlike_{liked.index(names[near])}")
    assert note == f"More like: #{first[far]['clip_id']} · less like: #{first[near]['clip_id']}"
    out = client.predict(False, api_name="/search_again")
    both = {h["name"]: h for h in out[-1]}
    assert "searched again: 1 more like, 1 less like" in out[2]
    # the disliked clip scores lower than with the like alone, and ranks no higher (a weak push:
    # gamma 0.15 against beta 0.75, and these synthetic clips all score ~0.95 with mfcc_stats)
    assert list(both).index(names[near]) >= liked.index(names[near])
    assert both[names[near]]["score"] < next(h["score"] for h in out_liked if h["name"] == names[near])

    # a second press takes a mark off; hiding what was seen leaves only new clips: none in 12
    note = client.predict(api_name=f"/unlike_{list(both).index(names[near])}")
    assert note == f"More like: #{first[far]['clip_id']} · less like: none"
    hidden = client.predict(True, api_name="/search_again")
    assert hidden[-1] == [] and "the 12 clips already shown are hidden" in hidden[2]


def test_searching_again_before_a_search_says_what_to_do(app_url):
    with pytest.raises(Exception, match="Search first, then mark hits"):
        Client(app_url, verbose=False).predict(False, api_name="/search_again")


def test_a_hit_deleted_from_the_results_loses_its_mark():
    """Else the next Search again would name a clip that is gone."""
    from search_core.ui.search_tab import hit_deleted

    *_, fb, note = hit_deleted(1, 7.0, {"marks": {7: 1, 9: -1}, "shown": [3, 7, 9]})
    assert fb["marks"] == {9: -1} and note == "More like: none · less like: #9"
