"""Speakers: enrol from clips (mean voiceprint), identify or answer "unknown", list, delete —
engine on EmoDB voices, the decision rule, both SQL backends, the CLI and the app's admin check."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import ENGINE_STORES, SHARED_DATA, cli_runner
from search_core import speakers
from search_core.service import LibraryService
from search_core.speakers import UNKNOWN, decide, mean_embedding

pytestmark = pytest.mark.stores(*ENGINE_STORES)  # Milvus Lite + SQLite, Milvus server + MariaDB
MODEL = "mfcc_stats"
EMODB = SHARED_DATA / "emodb.csv"
needs_data = pytest.mark.skipif(not EMODB.is_file(), reason=f"evaluation data not found at {EMODB}")


def _fsdd(speaker: str, digits) -> list:
    """One FSDD recording of ``speaker`` per digit."""
    with open(SHARED_DATA / "fsdd.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [SHARED_DATA / next(r["path"] for r in rows if r["speaker"] == speaker and int(r["digit"]) == d)
            for d in digits]


def _emodb(speaker: str, n: int, skip: int = 0) -> list:
    with open(EMODB, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] == speaker]
    return [SHARED_DATA / r["path"] for r in rows[skip:skip + n]]


def test_decision_rule():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    v = mean_embedding(np.stack([a, a, b]))  # closer to a
    res = decide(v, [("ann", a), ("bob", b)], threshold=0.8)
    assert res.name == "ann" and res.known and [n for n, _ in res.ranking] == ["ann", "bob"]
    assert res.score == pytest.approx(2 / np.sqrt(5), abs=1e-6)
    assert decide(v, [("ann", a), ("bob", b)], threshold=0.95).name == UNKNOWN
    assert decide(v, [], threshold=0.5).name == UNKNOWN
    assert np.linalg.norm(mean_embedding(np.stack([a, b]))) == pytest.approx(1.0)


@pytest.mark.parametrize("name, message", [("  ", "needs a name"), ("Unknown", "choose another name")])
def test_bad_names_are_refused(service, name, message):
    with pytest.raises(ValueError, match=message):
        service.speakers.enrol(name, ["x.wav"], MODEL)


@needs_data
def test_enrol_identify_list_delete(backend_settings):
    svc = LibraryService(backend_settings)
    try:
        # two FSDD speakers enrolled on digits 0-4, tested on other words (digits 5-8)
        svc.speakers.enrol("george", _fsdd("george", range(5)), MODEL)
        svc.speakers.enrol("theo", _fsdd("theo", range(5)), MODEL)
        assert [(s.name, s.n_clips) for s in svc.speakers.list(MODEL)] == [("george", 5), ("theo", 5)]
        right = 0
        tests = [(who, p) for who in ("george", "theo") for p in _fsdd(who, range(5, 9))]
        for who, path in tests:
            res = svc.speakers.identify(path, MODEL, threshold=-1.0)  # closed set: best match
            right += res.ranking[0][0] == who and res.name == who
        assert right >= 7, f"{right}/8 clips ranked their own speaker first"
        # above every similarity: unknown, whatever the voice
        assert svc.speakers.identify(tests[0][1], MODEL, threshold=1.01).name == UNKNOWN
        # re-enrolling replaces; --add accumulates
        svc.speakers.enrol("Speaker 03", _emodb("03", 2), MODEL)
        assert svc.speakers.get("Speaker 03", MODEL).n_clips == 2
        sp = svc.speakers.enrol("Speaker 03", _emodb("03", 3, skip=2), MODEL, add=True)
        assert sp.n_clips == 5 and np.linalg.norm(sp.embedding) == pytest.approx(1.0, abs=1e-5)
        assert svc.speakers.delete("Speaker 03") == 1
        assert [s.name for s in svc.speakers.list()] == ["george", "theo"]
        assert svc.speakers.delete("Speaker 03") == 0
    finally:
        svc.close()


def test_identify_without_enrolled_speakers_is_a_clear_error(service, clips):
    with pytest.raises(ValueError, match="no speakers are enrolled for model mfcc_stats"):
        service.speakers.identify(clips[0], MODEL)


def test_threshold_per_model_and_override(monkeypatch):
    assert speakers.threshold_for(MODEL) == speakers.THRESHOLDS[MODEL]
    assert speakers.threshold_for("not_calibrated") == speakers.DEFAULT_THRESHOLD
    monkeypatch.setenv("SPEAKER_THRESHOLD", "0.5")
    assert speakers.threshold_for(MODEL) == 0.5


@needs_data
def test_cli_enrol_identify_speakers(tmp_path):
    cli = cli_runner(tmp_path / "data")

    assert "enrolled anna with mfcc_stats from 3 clip(s)" in cli("enrol", "anna", *map(str, _emodb("08", 3)),
                                                                 "--model", MODEL)
    res = json.loads(cli("identify", str(_emodb("08", 1, skip=3)[0]), "--model", MODEL, "--json",
                         "--threshold", "-1"))
    assert res["speaker"] == "anna" and res["ranking"][0]["name"] == "anna"
    assert "anna\tmfcc_stats\t3 clips" in cli("speakers")
    assert "deleted anna" in cli("speakers", "--delete", "anna")
    cli("speakers", "--delete", "anna", code=1)


@needs_data
def test_app_enrol_needs_the_admin_and_identify_does_not(tmp_path):
    from gradio_client import Client, handle_file

    from apphelpers import running_app

    clips = [handle_file(str(p)) for p in _emodb("03", 3)]
    with running_app(tmp_path / "data", env={"ADMIN_PASSWORD": "correct horse"}) as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="Log in as the admin"):
            client.predict("bert", clips, MODEL, False, api_name="/enrol_speaker")
        client.predict("admin", "correct horse", api_name="/login")
        status, table = client.predict("bert", clips, MODEL, False, api_name="/enrol_speaker")
        assert "Enrolled **bert**" in status and table["data"][0][:3] == ["bert", MODEL, 3]
        text, ranking = client.predict(handle_file(str(_emodb("03", 1, skip=3)[0])), MODEL,
                                       api_name="/identify_speaker")
        assert ranking["data"][0][0] == "bert" and "threshold" in text
        assert client.predict(api_name="/duplicates")["data"] == []
        client.predict("bert", MODEL, api_name="/delete_speaker")
        assert client.predict(api_name="/speakers")["data"] == []
