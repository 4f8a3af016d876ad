"""Consistency and durability: idempotent ingest, faults at every write step, kill -9, recovery,
a MariaDB restart under a running service, and concurrent ingests and searches.

After any fault, and after recovery, the invariants are: every vector has its row, every row its
vector and its file, every library file its row (``check()`` all zeros), search shows only whole
clips, and nothing that was fine before the fault is lost.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import ENGINE_STORES, MYSQL_ADMIN_URL, REPO, make_settings, sound, write_wav
from search_core.faults import ServiceUnavailable
from search_core.service import LibraryService

pytestmark = pytest.mark.stores(*ENGINE_STORES)  # Milvus Lite + SQLite, Milvus server + MariaDB
MODEL = "mfcc_stats"


class Fault(RuntimeError):
    """The injected failure."""


def zeros(svc: LibraryService) -> dict:
    return {k: 0 for k in svc.check()}


def assert_exact(svc: LibraryService, names: set[str]) -> None:
    """The library holds exactly ``names``: one row, one vector per segment, one file each."""
    assert svc.check() == zeros(svc)
    rows = svc.list_clips(MODEL, limit=1000)
    assert sorted(c.original_name for c, _ in rows) == sorted(names)
    assert svc.count(MODEL) == len(names)
    assert svc.vectors.count(MODEL) == svc.meta.count_vectors(MODEL, status=None)
    assert {p.name for p in svc.library_dir.iterdir()} == {c.stored_name for c, _ in rows}


def restart(settings) -> LibraryService:
    """A new process' service as the app opens it: the cheap start-up recovery, then (in the app, in
    the background) the library-file check."""
    svc = LibraryService(settings, recover="start")
    svc.check_files()
    return svc


def fault_at(step: str):
    def hook(s: str) -> None:
        if s == step:
            raise Fault(f"injected at {s}")
    return hook


# -- idempotence ------------------------------------------------------------------------------

def test_reimport_adds_nothing_and_same_bytes_under_another_name_is_one_clip(service, tmp_path):
    folder = tmp_path / "in"
    for i in range(5):
        write_wav(folder / f"s{i}.wav", sound(i))
    first = service.ingest_folder(folder, MODEL)
    assert len(first.added) == 5
    again = service.ingest_folder(folder, MODEL)
    assert (len(again.added), len(again.existing), len(again.errors)) == (0, 5, 0)
    # the same bytes under another name and extension, twice in one batch: still one clip
    twin = tmp_path / "other" / "twin.flac"
    twin.parent.mkdir()
    shutil.copy(folder / "s0.wav", twin)
    rep = service.ingest_files([twin, twin], MODEL)
    assert [i.status for i in rep.items] == ["exists", "exists"]
    assert_exact(service, {f"s{i}.wav" for i in range(5)})


def test_same_bytes_under_another_extension_for_a_second_model_reuses_the_stored_file(service, tmp_path, monkeypatch):
    """A second model indexing the same content must not leave a second, orphaned copy."""
    from dataclasses import replace

    from search_core.models import get_model
    from search_core.models.mfcc import MfccStats

    a = write_wav(tmp_path / "a.wav", sound(1))
    service.ingest_files([a], MODEL)
    b = tmp_path / "a_copy.flac"
    shutil.copy(a, b)

    class Copy(MfccStats):
        info = replace(MfccStats.info, name="mfcc_copy")
    other = Copy()
    monkeypatch.setattr("search_core.service.get_model", lambda name: other if name == "mfcc_copy" else get_model(name))
    rep = service.ingest_files([b], "mfcc_copy")
    assert rep.added[0].clip_id == service.list_clips(MODEL)[0][0].id
    assert service.check() == zeros(service)
    assert len(list(service.library_dir.iterdir())) == 1


# -- faults at each step, in process and as a crash -------------------------------------------

INGEST_STEPS = ["during_copy", "before_rows", "rows_commit", "after_rows", "vector_insert", "after_vectors",
                "ready_commit", "after_ready"]
# steps after which the vectors and rows are all written: recovery completes the clip
COMPLETES = {"after_vectors", "ready_commit", "after_ready"}


def _inject(svc: LibraryService, monkeypatch, step: str) -> None:
    """Make ``step`` of the next write fail: a named fault point, or a store call that raises."""
    if step == "rows_commit":  # the pending-rows transaction fails (rolled back by the database)
        def failing(*a, **kw):
            with svc.meta.engine.begin() as c:
                c.execute(sa.text("SELECT 1"))
                raise sa.exc.OperationalError("INSERT", {}, Fault("connection lost before commit"))
        monkeypatch.setattr(svc.meta, "begin_ingest", failing)
    elif step == "vector_insert":
        monkeypatch.setattr(svc.vectors, "upsert", lambda *a, **kw: (_ for _ in ()).throw(Fault("milvus down")))
    elif step == "ready_commit":  # fails once (a transient error), as a dropped connection would
        real_set, failed = svc.meta.set_status, []

        def set_status(ids, status):
            if status == "ready" and not failed:
                failed.append(1)
                raise Fault("commit failed")
            return real_set(ids, status)
        monkeypatch.setattr(svc.meta, "set_status", set_status)
    else:
        svc.fault_hook = fault_at(step)


@pytest.mark.parametrize("mode", ["error", "crash"])
@pytest.mark.parametrize("step", INGEST_STEPS)
def test_fault_during_ingest_leaves_no_orphan_and_loses_nothing(settings, tmp_path, monkeypatch, step, mode):
    """``error``: the step raises and the process lives on (it cleans up at once);
    ``crash``: the process dies at that step (no clean-up) and the next start-up recovers."""
    good = [write_wav(tmp_path / "in" / f"good{i}.wav", sound(i)) for i in range(2)]
    victim = write_wav(tmp_path / "in" / "victim.wav", sound(5, seconds=12.0))  # several segments
    svc = LibraryService(settings)
    svc.ingest_files(good, MODEL)
    before = {c.id: c.stored_name for c, _ in svc.list_clips(MODEL)}
    with monkeypatch.context() as mp:
        _inject(svc, mp, step)
        if mode == "crash":
            mp.setattr(svc, "_recover_after_error", lambda: None)
        # on MySQL a lost connection is the user's "MySQL ... is not answering" (search_core.faults)
        with pytest.raises((Fault, sa.exc.OperationalError, ServiceUnavailable)) as raised:
            svc.ingest_files([victim], MODEL)
        if raised.type is ServiceUnavailable:
            assert step == "rows_commit" and settings.database_url.startswith("mysql")
            assert "connection lost before commit" in str(raised.value)
        svc.fault_hook = None
    # search never shows a half-written clip, even before recovery
    assert all(h.clip.original_name != "victim.wav" or step in COMPLETES
               for h in svc.search(victim, MODEL, k=5).hits)
    if mode == "crash":
        svc.close()
        svc = restart(settings)
    else:
        assert svc.check() == zeros(svc)  # cleaned up right after the error
    expect = {"good0.wav", "good1.wav"} | ({"victim.wav"} if step in COMPLETES else set())
    assert_exact(svc, expect)
    assert {c.id: c.stored_name for c, _ in svc.list_clips(MODEL) if c.id in before} == before
    rep = svc.ingest_files([*good, victim], MODEL)  # the rerun completes it
    assert len(rep.added) == (0 if step in COMPLETES else 1) and not rep.errors
    assert_exact(svc, {"good0.wav", "good1.wav", "victim.wav"})
    assert "victim.wav" in [h.clip.original_name for h in svc.search(victim, MODEL, k=3).hits]
    svc.close()


@pytest.mark.parametrize("mode", ["error", "crash"])
@pytest.mark.parametrize("step", ["delete_after_mark", "delete_after_vectors", "delete_after_rows"])
def test_fault_during_delete_finishes_the_delete(settings, tmp_path, monkeypatch, step, mode):
    paths = [write_wav(tmp_path / "in" / f"c{i}.wav", sound(i, seconds=8.0 if i == 0 else 2.0)) for i in range(3)]
    svc = LibraryService(settings)
    svc.ingest_files(paths, MODEL)
    victim = next(c for c, _ in svc.list_clips(MODEL) if c.original_name == "c0.wav")
    svc.fault_hook = fault_at(step)
    if mode == "crash":
        monkeypatch.setattr(svc, "_recover_after_error", lambda: None)
    with pytest.raises(Fault):
        svc.delete_clip(victim.id)
    svc.fault_hook = None
    # hidden from search from the first step on
    assert all(h.clip.id != victim.id for h in svc.search(paths[0], MODEL, k=5).hits)
    if mode == "crash":
        svc.close()
        svc = restart(settings)
    assert_exact(svc, {"c1.wav", "c2.wav"})
    assert svc.meta.clip(victim.id) is None
    svc.close()


def test_partial_vector_insert_of_a_long_clip_is_rolled_back_whole(settings, tmp_path, monkeypatch):
    """A crash between two upserts of one clip's segments must not leave a half-indexed clip."""
    long = write_wav(tmp_path / "long.wav", sound(3, seconds=20.0))
    svc = LibraryService(settings)
    real = svc.vectors.upsert

    def half(model, ids, vecs):
        real(model, ids[: len(ids) // 2], vecs[: len(ids) // 2])
        raise Fault("killed half way")
    monkeypatch.setattr(svc.vectors, "upsert", half)
    monkeypatch.setattr(svc, "_recover_after_error", lambda: None)
    with pytest.raises(Fault):
        svc.ingest_files([long], MODEL)
    assert svc.meta.count_vectors(MODEL, status="pending") >= 4
    svc.close()
    svc = restart(settings)
    assert_exact(svc, set())
    assert svc.vectors.count(MODEL) == 0
    svc.close()


def test_recover_keeps_fine_clips_and_drops_a_clip_whose_vector_was_lost(service, tmp_path):
    paths = [write_wav(tmp_path / f"c{i}.wav", sound(i)) for i in range(4)]
    service.ingest_files(paths, MODEL)
    snapshot = sorted((c.id, c.stored_name) for c, _ in service.list_clips(MODEL))
    rep = service.recover()
    assert not rep.changed  # a healthy library: recovery touches nothing
    assert sorted((c.id, c.stored_name) for c, _ in service.list_clips(MODEL)) == snapshot
    # a vector lost by the vector store (e.g. an unflushed write) while its row says ready
    lost = service.list_clips(MODEL, query="c2")[0][0]
    refs = service.meta.ready_refs(service.meta.vector_ids(MODEL))
    ids = [i for i, ref in refs.items() if ref.clip.id == lost.id]
    service.vectors.delete(MODEL, ids)
    assert service.check()["rows_without_vectors"] == len(ids)
    service.recover()
    assert_exact(service, {"c0.wav", "c1.wav", "c3.wav"})
    assert service.ingest_files(paths, MODEL).added[0].name == "c2.wav"  # the rerun restores it
    assert_exact(service, {f"c{i}.wav" for i in range(4)})


def test_start_up_lists_every_vector_only_of_a_collection_whose_count_is_off(settings, tmp_path, monkeypatch):
    """Start-up recovery must not cost O(library) (minutes at 1M vectors on a server): a healthy
    library is opened on two counts per model; a lost vector or an unknown one still makes its
    collection be swept before the process serves."""
    paths = [write_wav(tmp_path / f"c{i}.wav", sound(i)) for i in range(3)]
    svc = LibraryService(settings)
    svc.ingest_files(paths, MODEL)
    svc.close()
    listed = []
    real_all_ids = type(svc.vectors).all_ids
    monkeypatch.setattr(type(svc.vectors), "all_ids", lambda self, m: listed.append(m) or real_all_ids(self, m))
    svc = LibraryService(settings, recover="start")
    assert listed == []  # healthy: no collection listed
    lost = svc.list_clips(MODEL, query="c1")[0][0]
    ids = [i for i, ref in svc.meta.ready_refs(svc.meta.vector_ids(MODEL)).items() if ref.clip.id == lost.id]
    svc.vectors.delete(MODEL, ids)  # the vector store lost a clip's vectors (an unflushed write)
    svc.close()
    svc = LibraryService(settings, recover="start")
    assert listed == [MODEL]
    assert_exact(svc, {"c0.wav", "c2.wav"})  # the lost clip rolled back whole: a rerun re-adds it
    svc.vectors.upsert(MODEL, [987654321], np.ones((1, 80), np.float32) / np.sqrt(80))  # a vector without a row
    svc.close()
    listed.clear()  # (assert_exact's check lists them too)
    svc = LibraryService(settings, recover="start")
    assert listed == [MODEL]
    assert_exact(svc, {"c0.wav", "c2.wav"})
    svc.close()


def test_leftover_temp_file_and_unknown_vector_are_swept(service, tmp_path):
    service.ingest_files([write_wav(tmp_path / "a.wav", sound(1))], MODEL)
    (service.library_dir / ".tmp-abc123").write_bytes(b"half a copy")
    (service.library_dir / ("f" * 64 + ".wav")).write_bytes(b"copied, row never written")
    service.vectors.upsert(MODEL, [987654321], np.ones((1, 80), np.float32) / np.sqrt(80))
    rep = service.recover()
    assert (rep.orphan_files, rep.orphan_vectors) == (2, 1)
    assert_exact(service, {"a.wav"})


@pytest.mark.stores("lite-sqlite")  # Milvus Lite's on-disk layout
def test_a_collection_half_created_by_a_kill_is_created_again(service, tmp_path):
    # Milvus Lite creates a collection as mkdir, then schema.json: a kill -9 between the two left a
    # folder it neither lists nor lets be created again ("File exists" on every later ingest)
    leftover = Path(service.settings.milvus_uri) / "collections" / "audio_mfcc_stats"
    leftover.mkdir(parents=True)
    assert not service.vectors.exists(MODEL)
    service.ingest_files([write_wav(tmp_path / "a.wav", sound(1))], MODEL)
    assert_exact(service, {"a.wav"})


# -- kill -9 of a real folder import ----------------------------------------------------------

def _cli(data: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DATA_DIR": str(data), "SEARCH_CORE_OFFLINE": "1"}
    for var in ("MILVUS_URI", "DATABASE_URL", "LIBRARY_DIR"):
        env.pop(var, None)
    return subprocess.Popen([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_at_random_moments_then_rerun_completes_exactly(tmp_path):
    """Kill a CLI folder import at a random point (once during start-up and decoding, then inside
    the writes); after each kill a rerun finishes it with no duplicate and no orphan."""
    folder = tmp_path / "in"
    n = 24
    for i in range(n):
        write_wav(folder / f"s{i:02d}.wav", sound(i, seconds=2.0 + (i % 3) * 3))
    write_wav(folder / "s00_again.wav", sound(0, seconds=2.0))  # same bytes as s00.wav
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    for trial, threshold in enumerate([0, rng.randint(1, n // 2), rng.randint(n // 2 + 1, n - 1)]):
        data = tmp_path / f"data{trial}"
        lib = data / "library"
        proc = _cli(data, "ingest", str(folder), "--model", MODEL, "--quiet")
        if threshold == 0:
            time.sleep(rng.uniform(1.0, 4.0))  # start-up, model load, decoding
        else:  # wait until `threshold` files are stored, then kill inside the next clip's writes
            while proc.poll() is None and (len(os.listdir(lib)) if lib.is_dir() else 0) < threshold:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert killed or threshold == 0, f"seed {seed}: import finished before the kill"
        # the rerun: start-up recovery, then the same folder import (in this process: no second
        # interpreter start-up; the code path is the CLI's)
        svc = LibraryService(replace(make_settings(tmp_path), data_dir=data, milvus_uri=str(data / "milvus.db"),
                                     database_url=f"sqlite:///{data / 'metadata.sqlite'}", library_dir=lib))
        try:
            assert svc.check() == zeros(svc), seed  # recovery alone leaves no orphan
            done_before = svc.count(MODEL)
            rep = svc.ingest_folder(folder, MODEL)
            assert not rep.errors and len(rep.added) == n - done_before, (seed, rep.summary())
            assert_exact(svc, {f"s{i:02d}.wav" for i in range(n)})
        finally:
            svc.close()


# -- the MariaDB server restarted under a running app -----------------------------------------

def _mariadb_up(timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["mariadb-admin", "-uroot", "ping"], capture_output=True, text=True)
        if r.returncode == 0 and "alive" in r.stdout:
            return True
        time.sleep(0.3)
    return False


def _start_mariadb() -> None:
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
                   check=False, capture_output=True)
    if not _mariadb_up():
        # the data dir might still be locked by the old server for a moment: try once more
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec",
                        "/usr/sbin/mariadbd"], check=False, capture_output=True)
        assert _mariadb_up(), "MariaDB did not come back"


@pytest.fixture
def own_mysql_url():
    """A throwaway database whose admin engine also survives the restart (pre-ping)."""
    name = f"audiosearch_restart_{os.getpid()}_{random.randrange(10**6)}"
    admin = sa.create_engine(MYSQL_ADMIN_URL, pool_pre_ping=True)
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as err:
        pytest.fail(f"MariaDB on 127.0.0.1:3306 is needed ({err})")
    try:
        yield MYSQL_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}?charset=utf8mb4"
    finally:
        _start_mariadb()
        with admin.begin() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def _restart_mariadb() -> None:
    try:
        subprocess.run(["mariadb-admin", "-uroot", "shutdown"], check=True, capture_output=True)
        deadline = time.time() + 30
        while subprocess.run(["mariadb-admin", "-uroot", "ping"], capture_output=True).returncode == 0:
            assert time.time() < deadline, "MariaDB did not stop"
            time.sleep(0.2)
    finally:
        _start_mariadb()  # always leave the server running: other tests need it


def test_mysql_restart_under_a_running_app(tmp_path, own_mysql_url):
    """The launched app on MariaDB: the server restarts between two requests; the next ones work."""
    from gradio_client import Client, handle_file

    from apphelpers import running_app

    if shutil.which("mariadb-admin") is None:
        pytest.fail("mariadb-admin is needed to restart the server")
    paths = [write_wav(tmp_path / f"c{i}.wav", sound(i)) for i in range(3)]
    data = tmp_path / "data"
    with running_app(data, env={"DATABASE_URL": own_mysql_url}) as url:
        client = Client(url, verbose=False)
        assert "2 added" in client.predict([handle_file(str(p)) for p in paths[:2]], MODEL, "", "", "",
                                           api_name="/ingest")[0]
        _restart_mariadb()
        # the pooled connections died with the old server: the very next requests must just work
        hits = client.predict(query_path=handle_file(str(paths[0])), model=MODEL, k=2, api_name="/search")[-1]
        assert hits[0]["name"] == "c0.wav"
        assert f"**{MODEL}**: 2" in client.predict(api_name="/count")
        assert "1 added" in client.predict([handle_file(str(paths[2]))], MODEL, "", "", "", api_name="/ingest")[0]
    svc = LibraryService(make_settings(tmp_path, own_mysql_url), recover=False)
    try:
        assert_exact(svc, {"c0.wav", "c1.wav", "c2.wav"})
    finally:
        svc.close()


# -- concurrency ----------------------------------------------------------------------------------

def test_concurrent_ingests_and_searches_do_not_corrupt(service, tmp_path):
    files = [write_wav(tmp_path / "in" / f"s{i:02d}.wav", sound(i)) for i in range(24)]
    service.ingest_files(files[:4], MODEL)
    errors: list[BaseException] = []
    results: list = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)
        return run

    def ingest(part):  # overlapping parts: the same file is ingested by two threads at once
        return guard(lambda: results.append(service.ingest_files(part, MODEL, batch_size=3)))

    def search(seed):
        def go():
            r = random.Random(seed)
            for _ in range(8):
                hits = service.search(files[r.randrange(4)], MODEL, k=5).hits
                assert hits and all(h.path.is_file() for h in hits)
                assert len({h.clip.id for h in hits}) == len(hits)
        return guard(go)

    threads = [threading.Thread(target=ingest(files[i:i + 12])) for i in (0, 6, 12)]
    threads += [threading.Thread(target=search(s)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(len(r.added) for r in results) == 20  # 24 files, 4 already there, overlaps counted once
    assert_exact(service, {f.name for f in files})
    assert not service.recover().changed
