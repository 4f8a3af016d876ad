"""The Map tab through gradio_client, as the page uses it: draw a small library's map, choose a point
(its clip plays), search from it; clips added later are placed on the cached map without a refit."""
from __future__ import annotations

import json

import numpy as np
import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import sound, write_wav

MODEL = "mfcc_stats"
KINDS = {0: "tone", 1: "chirp", 2: "noise", 3: "clicks"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("map-app")
    with running_app(root / "data") as url:
        yield url, root


def add_clips(client, folder, kind: int, takes, label: str):
    noise = [0.02 * np.random.default_rng([kind, t]).standard_normal(32000).astype(np.float32) for t in takes]
    files = [write_wav(folder / f"{label}_{t}.wav", sound(kind) + n) for t, n in zip(takes, noise)]
    report, _, _ = client.predict([handle_file(str(f)) for f in files], MODEL, label, "", "", api_name="/ingest")
    assert f"{len(files)} added" in report


def test_draw_choose_a_point_and_search_from_it(app, tmp_path):
    url, root = app
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=f"No clips for {MODEL} yet"):
        client.predict(MODEL, False, api_name="/library_map")
    for kind, label in KINDS.items():
        add_clips(client, tmp_path, kind, range(6), label)

    data, status = client.predict(MODEL, False, api_name="/library_map")
    m = json.loads(data)
    assert len(m["id"]) == 24 and "**24 clips**" in status and "fitted now on 24 clips" in status
    assert sorted(m["labels"]) == sorted(KINDS.values()) and m["counts"] == [6] * 4
    assert all(0 <= v <= 10_000 for v in m["x"] + m["y"])
    assert len(set(m["colors"])) == 4  # one colour per label
    # similar clips lie close: each point's nearest neighbour on the map has its label
    xy = np.c_[m["x"], m["y"]].astype(float)
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(len(xy)) * 1e18
    labels = np.array(m["l"])
    assert (labels[d.argmin(1)] == labels).mean() >= 0.9

    # choosing a point (the canvas reports its clip id) plays that clip and names it
    i = m["name"].index("chirp_3.wav")
    clip_id, audio, info = client.predict(m["id"][i], api_name="/map_clip")
    assert clip_id == m["id"][i] and "chirp_3.wav" in info and "label **chirp**" in info
    assert audio and open(audio, "rb").read(4) == b"RIFF"
    # ... and a search from it finds the other chirps first, itself left out
    table, _ = client.predict(m["id"][i], MODEL, 5, api_name="/map_search")
    names = [row[2] for row in table["data"]]
    assert len(names) == 5 and "chirp_3.wav" not in names
    assert all(n.startswith("chirp_") for n in names)

    # clips added later are placed on the cached map: nobody moves, no refit
    add_clips(client, tmp_path, 1, [6], "chirp")
    data2, status2 = client.predict(MODEL, False, api_name="/library_map")
    m2 = json.loads(data2)
    assert len(m2["id"]) == 25 and "fitted earlier on 24 clips, 1 added since placed" in status2
    old = {cid: (x, y) for cid, x, y in zip(m["id"], m["x"], m["y"])}
    assert all(old[cid] == (x, y) for cid, x, y in zip(m2["id"], m2["x"], m2["y"]) if cid in old)
    new = [j for j, cid in enumerate(m2["id"]) if cid not in old][0]
    xy2 = np.c_[m2["x"], m2["y"]].astype(float)
    near = np.argsort(((xy2 - xy2[new]) ** 2).sum(1))[1:4]
    assert all(m2["labels"][m2["l"][j]] == "chirp" for j in near)
    assert (root / "data" / "maps" / f"{MODEL}.npz").is_file()

    # asked to, it fits again on all 25
    _, status3 = client.predict(MODEL, True, api_name="/library_map")
    assert "fitted now on 25 clips" in status3


def test_bad_choices_are_one_sentence(app):
    client = Client(app[0], verbose=False)
    with pytest.raises(Exception, match="No clip 999999 in the library"):
        client.predict(999999, api_name="/map_clip")
    with pytest.raises(Exception, match="Click a point on the map first"):
        client.predict(None, MODEL, 5, api_name="/map_search")
