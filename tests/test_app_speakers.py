"""The app as deployed, speaker side (issue 11): launched with an empty compiled cache, its start-up
warm-up compiles the default sound model in a background thread; then, through gradio_client, two
FSDD speakers are enrolled with Resemblyzer, a third clip is identified, and a search by voice finds
the same speaker. And an unexpected exception in a handler reaches the page as a sentence."""
from __future__ import annotations

import csv
import sqlite3

import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import SHARED_DATA
from test_paddle_threads import wheel_weights

FSDD = SHARED_DATA / "fsdd.csv"
needs_fsdd = pytest.mark.skipif(not FSDD.is_file(), reason=f"FSDD not found at {FSDD}")
SPEAKER_MODEL = "resemblyzer"


def fsdd(speaker: str, digits, take: int = 0) -> list:
    """FSDD recordings of ``speaker`` saying ``digits`` (recording number ``take`` of each)."""
    with open(FSDD, newline="") as f:
        rows = {r["path"] for r in csv.DictReader(f) if r["speaker"] == speaker}
    return [handle_file(str(SHARED_DATA / f"fsdd/{d}_{speaker}_{take}.flac")) for d in digits
            if f"fsdd/{d}_{speaker}_{take}.flac" in rows]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on its own data folder, default models, weights present but nothing compiled yet."""
    root = tmp_path_factory.mktemp("speakers-app")
    weights = wheel_weights(root / "weights")
    env = {"WEIGHTS_DIR": str(weights), "PPSPEECH_HOME": str(root / "ppspeech"),
           "DEFAULT_SOUND_MODEL": "aisfx", "DEFAULT_SPEAKER_MODEL": SPEAKER_MODEL}
    with running_app(root / "data", env=env, timeout=240) as url:
        yield url, weights


@needs_fsdd
def test_enrol_identify_and_search_by_speaker_after_the_warm_up(app, tmp_path):
    url, weights = app
    client = Client(url, verbose=False)
    # a sound search first: it waits for the warm-up (aisfx, compiled in the start-up thread)
    out = client.predict(fsdd("jackson", [1])[0], "aisfx", 3, api_name="/search")
    assert "hits with **aisfx**" in out[2]
    assert any(p.name.startswith("aisfx-") for p in (weights / "compiled").iterdir())

    status, table = client.predict("george", fsdd("george", range(5)), SPEAKER_MODEL, False,
                                   api_name="/enrol_speaker")
    assert "Enrolled **george** with resemblyzer from 5 clip(s)" in status
    status, table = client.predict("theo", fsdd("theo", range(5)), SPEAKER_MODEL, False, api_name="/enrol_speaker")
    assert "Enrolled **theo**" in status
    assert sorted(row[0] for row in table["data"]) == ["george", "theo"]
    assert any(p.name.startswith("resemblyzer-") for p in (weights / "compiled").iterdir())

    text, ranking = client.predict(fsdd("george", [7])[0], SPEAKER_MODEL, api_name="/identify_speaker")
    assert text.startswith("**george**"), text
    assert [row[0] for row in ranking["data"]][0] == "george"

    for who in ("george", "theo", "jackson"):
        report, counts, _ = client.predict(fsdd(who, range(5, 9)), SPEAKER_MODEL, "", who, "",
                                           api_name="/ingest")
        assert "4 added" in report, report
    out = client.predict(fsdd("theo", [9])[0], SPEAKER_MODEL, 3, api_name="/search")
    hits = out[-1]
    assert len(hits) == 3 and hits[0]["speaker"] == "theo", hits


def test_an_unexpected_error_reaches_the_page_as_a_sentence(app):
    """A fault no handler expects (here: the metadata store lost its speakers table under the
    running app) is one sentence on the page, not a bare "Error"."""
    url, weights = app
    db = weights.parent / "data" / "metadata.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE speakers RENAME TO speakers_gone")
    try:
        with pytest.raises(Exception) as err:
            Client(url, verbose=False).predict(api_name="/speakers")
    finally:
        with sqlite3.connect(db) as con:
            con.execute("ALTER TABLE speakers_gone RENAME TO speakers")
    msg = str(err.value)
    assert "Listing the speakers failed: OperationalError" in msg, msg
    assert "\n" not in msg.strip()
