"""Long recordings: configurable window/hop, and a clip cut from the middle of a real long file
finds that file at the right offset (±1 hop); the player gets just that range."""
from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf

from conftest import ENGINE_STORES, SHARED_DATA, write_wav
from search_core.audio import segment_bounds
from search_core.service import segment_params

pytestmark = pytest.mark.stores(*ENGINE_STORES)  # Milvus Lite + SQLite, Milvus server + MariaDB
MODEL = "mfcc_stats"
ESC50 = SHARED_DATA / "esc50.csv"


@dataclass(frozen=True)
class _Info:
    name: str = "mfcc_stats"
    window_s: float = 5.0
    hop_s: float = 2.5


def test_segment_params_defaults_and_overrides():
    assert segment_params(_Info(), env={}) == (5.0, 2.5)
    assert segment_params(_Info(), env={"SEGMENT_WINDOW_S": "8", "SEGMENT_HOP_S": "2"}) == (8.0, 2.0)
    # the per-model variable wins over the global one, and only for that model
    env = {"SEGMENT_HOP_S": "2", "SEGMENT_HOP_S_MFCC_STATS": "1"}
    assert segment_params(_Info(), env=env) == (5.0, 1.0)
    assert segment_params(_Info(name="other"), env=env) == (5.0, 2.0)


@pytest.mark.parametrize("env, message", [
    ({"SEGMENT_HOP_S": "abc"}, "SEGMENT_HOP_S='abc' is not a number"),
    ({"SEGMENT_WINDOW_S": "-1"}, "must be between 0 and 3600"),
    ({"SEGMENT_HOP_S": "6"}, r"hop \(6.0 s\) is longer than the window \(5.0 s\)"),
])
def test_segment_params_rejects_bad_values(env, message):
    with pytest.raises(ValueError, match=message):
        segment_params(_Info(), env=env)


def _esc50_rows():
    with open(ESC50, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not ESC50.is_file(), reason=f"evaluation data not found at {ESC50}")
@pytest.mark.parametrize("hop", [None, 1.0])
def test_query_cut_from_a_long_recording_finds_file_and_offset(service, tmp_path, monkeypatch, hop):
    if hop:
        monkeypatch.setenv("SEGMENT_HOP_S_MFCC_STATS", str(hop))
    rows = _esc50_rows()
    firsts: dict[str, dict] = {}
    for r in rows:
        firsts.setdefault(r["label"], r)
    parts = list(firsts.values())[:8]  # eight 5 s clips of eight different classes
    rate = 32000
    audio = np.concatenate([sf.read(str(SHARED_DATA / r["path"]), dtype="float32")[0] for r in parts])
    long = write_wav(tmp_path / "long recording.wav", audio, rate)
    # distractors: other clips of the same classes, indexed as whole clips
    used = {r["path"] for r in parts}
    distractors = [SHARED_DATA / r["path"] for r in rows if r["path"] not in used
                   and r["label"] in {p["label"] for p in parts}][:16]
    rep = service.ingest_files([long, *distractors], MODEL)
    assert not rep.errors
    window, step = segment_params(service.model(MODEL).info)
    n_segments = len(segment_bounds(len(audio), rate, window, step))
    assert n_segments == (36 if hop else 15)  # 40 s: windows of 5 s every hop, the last one at 35 s
    assert service.vectors.count(MODEL) == len(distractors) + n_segments

    for offset in (12.3, 23.9):  # off the hop grid, straddling two source clips
        s = int(offset * rate)
        query = write_wav(tmp_path / f"cut_{offset}.wav", audio[s:s + int(window * rate)], rate)
        res = service.search(query, MODEL, k=5)
        top = res.hits[0]
        assert top.clip.original_name == "long recording.wav"
        assert top.is_segment and top.end_s - top.start_s == pytest.approx(window, abs=0.01)
        assert abs(top.start_s - offset) <= step + 1e-6, (top.start_s, offset, step)
        # hits from the long file are grouped: one result, its segments best first
        assert sum(h.clip.id == top.clip.id for h in res.hits) == 1
        scores = [sc for _, _, sc in top.segments]
        assert scores == sorted(scores, reverse=True) and top.score == scores[0]


def test_player_gets_just_the_matching_range(service, tmp_path):
    import app
    from conftest import sound

    rate = 16000
    long = write_wav(tmp_path / "long.wav", np.concatenate([sound(i, 4.0, rate) for i in range(4)]), rate)
    service.ingest_file(long, MODEL)
    s = int(6.0 * rate)
    query = write_wav(tmp_path / "q.wav", np.concatenate([sound(i, 4.0, rate) for i in range(4)])[s:s + 5 * rate], rate)
    hit = service.search(query, MODEL, k=1).hits[0]
    assert hit.is_segment
    sr, samples = app.hit_audio(hit) if app.hit_audio.__code__.co_argcount == 1 else app.hit_audio(service, hit)
    assert sr == rate
    assert len(samples) == pytest.approx((hit.end_s - hit.start_s) * rate, abs=2)
