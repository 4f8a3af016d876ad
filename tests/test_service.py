"""The engine end to end: ingest -> search -> delete on Milvus Lite with SQLite and with MariaDB."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ENGINE_STORES
from search_core.audio import AudioError
from search_core.service import LibraryService

pytestmark = pytest.mark.stores(*ENGINE_STORES)  # Milvus Lite + SQLite, Milvus server + MariaDB
MODEL = "mfcc_stats"


def test_ingest_search_delete_roundtrip(backend_settings, clips):
    svc = LibraryService(backend_settings)
    try:
        rep = svc.ingest_files(clips, MODEL)
        assert len(rep.added) == len(clips) and not rep.errors
        assert svc.count(MODEL) == len(clips)
        assert svc.vectors.count(MODEL) == len(clips)

        # a clip searched against a library that contains it comes back first with score ~ 1
        for path in clips[:4]:
            res = svc.search(path, MODEL, k=3)
            assert res.hits[0].clip.original_name == path.name
            assert res.hits[0].score == pytest.approx(1.0, abs=1e-3)
            assert res.hits[0].distance == pytest.approx(0.0, abs=1e-3)
            assert res.hits[0].path.is_file()
            assert [h.rank for h in res.hits] == [1, 2, 3]
            assert res.hits[0].score >= res.hits[1].score >= res.hits[2].score

        # delete is exact: the clip, its vector, its row and its stored file are gone
        victim = svc.search(clips[0], MODEL, k=1).hits[0]
        assert svc.delete_clip(victim.clip.id) is True
        assert svc.count(MODEL) == len(clips) - 1
        assert svc.vectors.count(MODEL) == len(clips) - 1
        assert not victim.path.exists()
        assert all(h.clip.id != victim.clip.id for h in svc.search(clips[0], MODEL, k=10).hits)
        assert svc.delete_clip(victim.clip.id) is False
        assert svc.check() == {k: 0 for k in svc.check()}
    finally:
        svc.close()


def test_same_content_twice_is_one_clip(service, clips, tmp_path):
    service.ingest_files(clips[:3], MODEL)
    copy = tmp_path / "renamed copy.wav"
    copy.write_bytes(clips[0].read_bytes())
    rep = service.ingest_files([copy, clips[1]], MODEL)
    assert [i.status for i in rep.items] == ["exists", "exists"]
    assert service.count(MODEL) == 3
    assert len(list(service.library_dir.iterdir())) == 3


def test_a_copy_in_the_next_batch_is_one_clip_with_the_first_ones_id(service, clips, tmp_path):
    # batch 2 is embedded while batch 1 is still being written, so the copy is only caught at write
    # time: it must still come out as "exists" with the original's id, and no second file or row
    copy = tmp_path / "copy of sound_0.wav"
    copy.write_bytes(clips[0].read_bytes())
    rep = service.ingest_files([clips[0], copy, clips[1]], MODEL, batch_size=1)
    assert [i.status for i in rep.items] == ["added", "exists", "added"]
    assert rep.items[1].clip_id == rep.items[0].clip_id is not None
    assert "already in the library" in rep.items[1].message
    assert service.count(MODEL) == 2
    assert len(list(service.library_dir.iterdir())) == 2


def test_bad_file_in_batch_is_reported_and_the_rest_indexed(service, clips, tmp_path):
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"this is not a wav file at all" * 10)
    rep = service.ingest_files([clips[0], bad, clips[1]], MODEL)
    assert [i.status for i in rep.items] == ["added", "error", "added"]
    assert rep.errors[0].message.startswith("not_audio.wav: ")
    assert service.count(MODEL) == 2


def test_single_bad_file_raises_and_changes_nothing(service, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: file is empty"):
        service.ingest_file(empty, MODEL)
    assert service.count() == 0
    assert list(service.library_dir.iterdir()) == []


def test_metadata_is_stored_and_browsable(service, clips):
    service.ingest_file(clips[0], MODEL, label="dog", speaker="rex", tags=["pets", "loud"])
    rows = service.list_clips(MODEL)
    assert len(rows) == 1
    clip, models = rows[0]
    assert (clip.label, clip.speaker, clip.tags, models) == ("dog", "rex", ["pets", "loud"], [MODEL])
    assert clip.duration_s == pytest.approx(2.0, abs=0.01)
    assert clip.sample_rate == 16000
    assert service.list_clips(MODEL, query="DOG")[0][0].id == clip.id
    assert service.list_clips(MODEL, query="cat") == []


def test_drop_model_removes_its_collection_and_clips(service, clips):
    service.ingest_files(clips[:3], MODEL)
    assert service.drop_model(MODEL) == 3
    assert service.count(MODEL) == 0
    assert not service.vectors.exists(MODEL)
    assert list(service.library_dir.iterdir()) == []


def test_unknown_model_is_a_clear_error(service, clips):
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        service.ingest_files(clips[:1], "nope")


def test_search_empty_library_returns_no_hits(service, clips):
    assert service.search(clips[0], MODEL, k=5).hits == []


def test_long_recording_is_indexed_as_segments(service, tmp_path):
    from conftest import sound, write_wav

    rate = 16000
    parts = [sound(i, seconds=4.0, rate=rate) for i in range(4)]
    long = write_wav(tmp_path / "long.wav", np.concatenate(parts), rate)
    service.ingest_file(long, MODEL)
    n_vectors = service.vectors.count(MODEL)
    assert n_vectors > 1  # 16 s with a 5 s window, 2.5 s hop
    res = service.search(long, MODEL, k=3)
    assert len(res.hits) == 1 and len(res.hits[0].segments) == n_vectors  # grouped by file


@pytest.mark.stores("lite-sqlite")  # about loading models, not about the stores
def test_warm_up_loads_a_ready_model_and_skips_a_missing_one(service, monkeypatch, tmp_path):
    from search_core.models import get_model

    monkeypatch.setenv("PPSPEECH_HOME", str(tmp_path / "no-paddlespeech-cache"))
    assert service.warm_up(MODEL) is True and get_model(MODEL).loaded
    assert service.warm_up("panns_cnn6") is False  # weights not installed: nothing loaded, no error
    assert not get_model("panns_cnn6").loaded
