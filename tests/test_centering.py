"""Centering (issue 14, item 2): one mean per model collection, subtracted from stored and query
vectors, estimated automatically and by ``recenter`` (CLI and page), re-indexing without
re-embedding and finishing after a crash."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ENGINE_STORES, cli_runner, tone, write_wav

from search_core import recenter as recenter_mod

MODEL = "mfcc_stats"  # weight-free and centered by default

pytestmark = pytest.mark.stores(*ENGINE_STORES)


class SimulatedCrash(RuntimeError):
    """A fault injected at a named step of the re-index (as a crash there would stop it)."""


def make_clips(folder, n, start=0):
    """``n`` distinct clips: noisy tones of different pitch."""
    return [write_wav(folder / f"c{i:03d}.wav", tone(150 + 23 * i, 1.0, noise=0.2, seed=i))
            for i in range(start, start + n)]


def raw_embeddings(svc, paths) -> np.ndarray:
    """The model's own embeddings of ``paths`` (what a query embeds, before any centering)."""
    return np.stack([svc.embed_query(p, MODEL, raw=True)[1] for p in paths]).astype(np.float64)


def exact_ranking(raw: np.ndarray, mean, q: int, k: int = 10) -> list[int]:
    x = raw - (0 if mean is None else mean)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return list(np.argsort(-(x @ x[q]), kind="stable")[:k])


def names(hits) -> list[str]:
    return [h.clip.original_name for h in hits]


def test_a_collection_gets_its_mean_once_big_enough_and_search_ranks_by_centered_cosine(service, tmp_path):
    paths = make_clips(tmp_path / "in", 60)
    service.ingest_files(paths[:40], MODEL)
    assert not service.center(MODEL).on          # below recenter.MIN_VECTORS: nothing changes yet
    assert "not centered yet" in service.centering_status(MODEL)
    service.ingest_files(paths[40:], MODEL)
    c = service.center(MODEL)
    raw = raw_embeddings(service, paths)
    assert c.on and c.n == 60
    np.testing.assert_allclose(c.mean, raw.mean(axis=0), atol=1e-5)
    assert "centered on the mean of 60 vectors" in service.centering_status(MODEL)
    for q in (3, 31, 57):
        hits = service.search(paths[q], MODEL, k=10).hits
        assert names(hits) == [paths[i].name for i in exact_ranking(raw, c.mean, q)]
        # not the uncentered ranking any more (this set of clips ranks differently without the mean)
    assert any(names(service.search(paths[q], MODEL, k=10).hits) != [paths[i].name for i in exact_ranking(raw, None, q)]
               for q in range(0, 60, 3))
    # the raw embeddings come back from the index space without re-embedding
    ids = service.meta.vector_ids(MODEL)
    back = service.raw_vectors(MODEL, ids)
    by_name = {r.clip.original_name: back[i] for i, r in service.meta.ready_refs(ids).items()}
    np.testing.assert_allclose(np.stack([by_name[p.name] for p in paths]), raw, atol=1e-5)

    # centering off: searched by raw cosine again, and ingest does not turn it back on
    rep = service.recenter(MODEL, off=True)
    assert not rep.on and rep.moved == 60
    assert names(service.search(paths[5], MODEL, k=10).hits) == [paths[i].name for i in exact_ranking(raw, None, 5)]
    service.ingest_files(make_clips(tmp_path / "more", 70, start=60), MODEL)
    assert not service.center(MODEL).on and "turned off" in service.centering_status(MODEL)


def test_a_failed_automatic_re_index_keeps_the_ingest_and_says_why_in_the_log(service, tmp_path, monkeypatch,
                                                                            caplog):
    """The mean estimated after an ingest fails (a store fault midway): the clips the ingest stored
    are reported added and searchable, the state line says a mean is due, and the log says why."""
    def fails(stores, model, **kw):
        raise SimulatedCrash("Milvus stopped answering")

    monkeypatch.setattr(recenter_mod, "recenter", fails)
    paths = make_clips(tmp_path / "in", 60)
    with caplog.at_level("WARNING", logger="search_core.service"):
        rep = service.ingest_files(paths, MODEL)
    assert len(rep.added) == 60
    assert names(service.search(paths[7], MODEL, k=1).hits) == [paths[7].name]
    assert "a new mean is due" in service.centering_status(MODEL)
    assert any("re-centering after the ingest not done: Milvus stopped answering" in r.getMessage()
               for r in caplog.records)


def test_a_re_index_that_crashes_midway_never_mixes_means_and_a_re_run_finishes_it(service, tmp_path, monkeypatch):
    monkeypatch.setattr(recenter_mod, "CHUNK", 8)
    paths = make_clips(tmp_path / "in", 75)
    service.ingest_files(paths[:60], MODEL)   # centered on 60
    service.ingest_files(paths[60:], MODEL)   # 15 more, under that mean
    raw = raw_embeddings(service, paths)
    calls = []

    def crash(step):
        if step == "recenter_after_vectors":
            calls.append(step)
            if len(calls) == 3:      # two chunks moved, the third upserted but its rows not updated
                raise SimulatedCrash(step)

    service.fault_hook = crash
    with pytest.raises(SimulatedCrash):
        service.recenter(MODEL)
    service.fault_hook = None
    new = service.center(MODEL)
    np.testing.assert_allclose(new.mean, raw.mean(axis=0), atol=1e-5)
    assert service.meta.rows_behind(MODEL, new.version)        # half done ...
    assert service.meta.journal(MODEL)                          # ... with one chunk in flight
    assert "still under an older mean" in service.centering_status(MODEL)
    for q in (0, 20, 70):  # ... yet every score is under the new mean: the ranking is the exact one
        assert names(service.search(paths[q], MODEL, k=10).hits) == \
            [paths[i].name for i in exact_ranking(raw, new.mean, q)]

    rep = service.recenter(MODEL)                               # the re-run finishes
    assert rep.from_journal == 8 and not service.meta.journal(MODEL)
    assert not service.meta.rows_behind(MODEL, service.center(MODEL).version)
    assert not any(service.check().values())
    for q in (0, 20, 70):
        assert names(service.search(paths[q], MODEL, k=10).hits) == \
            [paths[i].name for i in exact_ranking(raw, raw.mean(axis=0), q)]


def test_recovery_rewrites_the_chunk_a_crashed_re_index_left_in_its_journal(service, tmp_path):
    paths = make_clips(tmp_path / "in", 60)
    service.ingest_files(paths, MODEL)

    def crash(step):
        if step == "recenter_after_journal":
            raise SimulatedCrash(step)

    service.fault_hook = crash
    with pytest.raises(SimulatedCrash):
        service.recenter(MODEL)
    service.fault_hook = None
    assert service.meta.journal(MODEL)
    assert service.recover().reindexed > 0 and not service.meta.journal(MODEL)
    assert not any(service.check().values())


def test_recenter_refuses_while_another_process_may_be_writing(service, tmp_path):
    paths = make_clips(tmp_path / "in", 60)
    service.ingest_files(paths, MODEL)
    before = service.center(MODEL)
    service.meta.renew_lease("another-writer", "elsewhere", 1, 60)
    with pytest.raises(recenter_mod.RecenterRefused, match="other process"):
        service.recenter(MODEL)
    assert service.center(MODEL).version == before.version
    service.ingest_files(make_clips(tmp_path / "more", 60, start=60), MODEL)   # twice as big: a mean is due ...
    assert service.center(MODEL).version == before.version                     # ... but not made behind its back
    assert "a new mean is due" in service.centering_status(MODEL)
    service.meta.drop_lease("another-writer")
    assert service.recenter(MODEL).n == 120


def test_near_duplicates_are_still_found_in_a_centered_collection(service, tmp_path):
    paths = make_clips(tmp_path / "in", 60)
    service.ingest_files(paths, MODEL)
    assert service.center(MODEL).on
    y = tone(150 + 23 * 7, 1.0, noise=0.2, seed=7) * 0.5     # a quieter copy of c007
    item = service.ingest_file(write_wav(tmp_path / "copy.wav", y), MODEL)
    original = service.meta.ready_refs(service.meta.vector_ids(MODEL))
    of = {r.clip.id: r.clip.original_name for r in original.values()}
    assert of.get(item.duplicate_of) == "c007.wav"


@pytest.mark.stores("lite-sqlite")
def test_the_recenter_command(tmp_path):
    cli = cli_runner(tmp_path / "data")
    make_clips(tmp_path / "in", 55)
    cli("ingest", str(tmp_path / "in"), "--model", MODEL, "--quiet")
    assert "centered on the mean of 55 vectors" in cli("recenter", "--model", MODEL, "--status")
    out = cli("recenter", "--model", MODEL)
    assert "mean of 55 vectors" in out and "55 vectors re-indexed" in out
    assert "not centered (turned off)" in cli("recenter", "--model", MODEL, "--off")
    cli("drop", MODEL, "--yes")                     # a dropped collection's means go with it
    assert "not centered yet" in cli("recenter", "--model", MODEL, "--status")
    cli_runner(tmp_path / "empty")("recenter", "--model", MODEL, code=2)   # an empty library: one line, exit 2


@pytest.mark.stores("lite-sqlite")
def test_the_library_tab_shows_the_centering_and_its_button_re_indexes(tmp_path):
    from apphelpers import running_app
    from gradio_client import Client

    folder = tmp_path / "in"
    make_clips(folder, 55)
    with running_app(tmp_path / "data") as url:
        client = Client(url, verbose=False)
        client.predict(str(folder), MODEL, api_name="/import_folder")
        out = client.predict(MODEL, api_name="/recenter")
    assert "centered on the mean of 55 vectors" in out
