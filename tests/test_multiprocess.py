"""Several processes sharing one Milvus server, one MariaDB and one library folder.

Writers are the real CLI (``python -m search_core ingest``), each with its own DATA_DIR and the
shared MILVUS_URI / DATABASE_URL / LIBRARY_DIR of a deployment; ``recover`` is started over and
over meanwhile (as every process start does), and one writer is killed with SIGKILL. Start-up
recovery of one process must never touch another live process' work.
"""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import soundfile as sf

from conftest import REPO, SHARED_DATA, make_settings
from search_core.service import LibraryService

MODEL = "mfcc_stats"
MANIFEST = SHARED_DATA / "esc50.csv"
LEASE_S = 6  # short writer lease, so the test need not wait a minute for the killed writer's to expire

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"evaluation data not found at {MANIFEST}")


def _manifests(tmp_path: Path, writers: int, per_writer: int) -> list[tuple[Path, list[str]]]:
    """Disjoint manifests of ESC-50 clips (absolute paths) and the clip names of each."""
    rows = list(csv.DictReader(open(MANIFEST, newline="")))
    out = []
    for w in range(writers):
        part = rows[w * per_writer:(w + 1) * per_writer]
        path = tmp_path / f"writer{w}.csv"
        with open(path, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=["path", "label"])
            wr.writeheader()
            for r in part:
                wr.writerow({"path": str(SHARED_DATA / r["path"]), "label": r["label"]})
        out.append((path, [Path(r["path"]).name for r in part]))
    return out


def _env(tmp_path: Path, name: str, milvus_uri: str, mysql_url: str, library: Path) -> dict:
    env = {**os.environ, "DATA_DIR": str(tmp_path / name), "MILVUS_URI": milvus_uri, "DATABASE_URL": mysql_url,
           "LIBRARY_DIR": str(library), "SEARCH_CORE_OFFLINE": "1", "WRITER_LEASE_S": str(LEASE_S)}
    return env


def _start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_writers_recoveries_and_a_killed_writer_lose_nothing(tmp_path, milvus_uri, mysql_url):
    library = tmp_path / "library"
    manifests = _manifests(tmp_path, writers=3, per_writer=24)
    writers = [_start(_env(tmp_path, f"w{i}", milvus_uri, mysql_url, library),
                      "ingest", "--manifest", str(m), "--model", MODEL, "--quiet")
               for i, (m, _names) in enumerate(manifests)]
    victim = writers[1]
    renv = _env(tmp_path, "recover", milvus_uri, mysql_url, library)
    recoveries, killed = [], False
    recovering: list[subprocess.Popen | None] = [None, None]  # two recoveries at a time, restarted as they end
    deadline = time.monotonic() + 600
    while any(w.poll() is None for w in writers):
        assert time.monotonic() < deadline, "writers did not finish"
        for j, r in enumerate(recovering):
            if r is None or r.poll() is not None:
                if r is not None:
                    recoveries.append(r.communicate())
                recovering[j] = _start(renv, "recover")
        stored = len(list(library.iterdir())) if library.is_dir() else 0
        if not killed and stored >= 6 and victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    for r in recovering:
        recoveries.append(r.communicate())
    assert killed, f"the victim finished before it could be killed: {victim.communicate()}"
    assert recoveries, "no recovery ran during the ingests"
    outputs = [w.communicate() for w in writers]
    added: dict[int, int] = {}
    for i, (w, (out, err)) in enumerate(zip(writers, outputs)):
        if w is victim:
            continue
        assert w.returncode == 0, err[-3000:]
        m = re.search(r"(\d+) added, (\d+) already in the library, (\d+) rejected", out)
        assert m, out
        added[i] = int(m.group(1))
        # disjoint manifests: a writer that was not killed added every one of its clips
        assert added[i] == len(manifests[i][1]), (out, err[-2000:])

    time.sleep(LEASE_S + 1)  # the killed writer's lease expires; the next recovery may finish its work
    rec = _start(renv, "recover")
    out, err = rec.communicate(timeout=300)
    assert rec.returncode == 0, err[-3000:]

    settings = replace(make_settings(tmp_path), milvus_uri=milvus_uri, database_url=mysql_url, library_dir=library)
    svc = LibraryService(settings, recover=False)
    try:
        assert svc.check() == {k: 0 for k in svc.check()}
        clips = [c for c, _ in svc.list_clips(MODEL, limit=1000)]
        names = [c.original_name for c in clips]
        assert len(names) == len(set(names)), "a clip is in the library twice"
        survivors = {n for i in added for n in manifests[i][1]}
        assert survivors <= set(names), f"lost: {sorted(survivors - set(names))}"
        assert set(names) <= survivors | set(manifests[1][1])
        assert svc.count(MODEL) == len(names)
        for c in clips:  # every clip in the library is playable and found by its own audio
            path = svc.clip_path(c)
            assert sf.info(str(path)).frames > 0
            hits = svc.search(path, MODEL, k=1).hits
            assert hits and hits[0].clip.id == c.id, c.original_name
    finally:
        svc.close()

    # the killed writer's command, run again, completes its part
    w = _start(_env(tmp_path, "w1", milvus_uri, mysql_url, library),
               "ingest", "--manifest", str(manifests[1][0]), "--model", MODEL, "--quiet")
    out, err = w.communicate(timeout=600)
    assert w.returncode == 0, err[-3000:]
    svc = LibraryService(settings, recover=False)
    try:
        assert svc.check() == {k: 0 for k in svc.check()}
        names = sorted(c.original_name for c, _ in svc.list_clips(MODEL, limit=1000))
        assert names == sorted(n for _m, ns in manifests for n in ns)
    finally:
        svc.close()


# -- two services on the same stores, one paused inside its write ------------------------------

def _shared_settings(tmp_path: Path, milvus_uri: str, database_url: str, **kw):
    return replace(make_settings(tmp_path), milvus_uri=milvus_uri, database_url=database_url,
                   library_dir=tmp_path / "library", **kw)


@contextmanager
def writer_paused_at(svc: LibraryService, step: str, files: list):
    """Run ``svc.ingest_files(files)`` in a thread that stops the first time it reaches fault step
    ``step``; the block runs while it waits, and it goes on when the block ends. Yields the list
    that receives the writer's report."""
    reached, go, result = threading.Event(), threading.Event(), []

    def pause(s: str) -> None:
        if s == step and not reached.is_set():
            reached.set()
            assert go.wait(120)

    svc.fault_hook = pause
    t = threading.Thread(target=lambda: result.append(svc.ingest_files(files, MODEL)))
    t.start()
    try:
        assert reached.wait(120), "the writer never reached " + step
        yield result
    finally:
        go.set()
        t.join(120)


@pytest.mark.parametrize("step", ["during_copy", "before_rows", "after_rows", "after_vectors"])
def test_recovery_never_touches_a_live_writers_work(tmp_path, milvus_uri, mysql_url, step):
    """Process B starts (and recovers) while process A is inside a write: B changes nothing of
    A's, and A's clips all end up added, searchable and playable."""
    from conftest import sound, write_wav

    files = [write_wav(tmp_path / "in" / f"s{i}.wav", sound(i, seconds=3.0 + 5 * (i == 0))) for i in range(3)]
    settings = _shared_settings(tmp_path, milvus_uri, mysql_url)
    a = LibraryService(settings)
    with writer_paused_at(a, step, files) as result:
        b = LibraryService(settings)  # start-up recovery, while A is paused
        rep = b.recover()
        assert not rep.changed, rep
    try:
        assert result and len(result[0].added) == 3, result and result[0].summary()
        assert b.check() == {k: 0 for k in b.check()}
        for f in files:
            hits = b.search(f, MODEL, k=1).hits
            assert hits[0].clip.original_name == f.name and hits[0].path.is_file()
    finally:
        a.close()
        b.close()


def test_a_write_rolled_back_under_its_writer_is_not_reported_added(tmp_path, milvus_uri, mysql_url):
    """If a writer's lease lapses (a stalled process) and another process' recovery rolls its
    pending clips back, the writer reports them as not stored (never "added") and leaves no orphan."""
    from conftest import sound, write_wav
    from search_core.metadata import writers

    files = [write_wav(tmp_path / "in" / f"s{i}.wav", sound(i)) for i in range(3)]
    settings = _shared_settings(tmp_path, milvus_uri, mysql_url)
    a, b = LibraryService(settings), LibraryService(settings)
    a.ingest_files(files[:1], MODEL)
    with writer_paused_at(a, "after_rows", files[1:]) as result:
        with a.meta.engine.begin() as c:  # A's lease runs out while it is stalled
            c.execute(writers.update().where(writers.c.owner == a.owner).values(expires_at=datetime(2000, 1, 1)))
        assert b.recover().rolled_back == 2
    try:
        rep = result[0]
        assert not rep.added and [i.status for i in rep.items] == ["error", "error"], rep.items
        assert "run the same command again" in rep.items[0].message
        assert b.check() == {k: 0 for k in b.check()}
        assert [c.original_name for c, _ in b.list_clips(MODEL)] == ["s0.wav"]
        assert len(a.ingest_files(files, MODEL).added) == 2  # the rerun stores them
        assert b.check() == {k: 0 for k in b.check()}
    finally:
        a.close()
        b.close()


def test_recover_removes_a_ready_clip_whose_file_is_gone(service, tmp_path):
    from conftest import sound, write_wav

    files = [write_wav(tmp_path / "in" / f"s{i}.wav", sound(i)) for i in range(3)]
    service.ingest_files(files, MODEL)
    gone = next(c for c, _ in service.list_clips(MODEL) if c.original_name == "s1.wav")
    service.clip_path(gone).unlink()
    assert service.check()["rows_without_files"] == 1
    rep = service.recover()
    assert (rep.missing_files, rep.removed) == (1, ["s1.wav"])
    assert service.check() == {k: 0 for k in service.check()}
    assert all(h.clip.id != gone.id for h in service.search(files[1], MODEL, k=3).hits)
    assert [i.name for i in service.ingest_files(files, MODEL).added] == ["s1.wav"]  # the rerun restores it
    assert service.check() == {k: 0 for k in service.check()}


def test_a_database_made_by_the_previous_release_is_migrated(backend_settings, tmp_path):
    """Tables created without the ``owner`` and centering columns (and without ``writers``,
    ``centers`` and ``recenter_journal``) get them; rows stay, and an interrupted write of the old
    release (no owner) is still recovered."""
    import sqlalchemy as sa

    from search_core import metadata

    old = sa.MetaData()
    for t in metadata._meta.sorted_tables:
        if t.name not in ("writers", "centers", "recenter_journal"):
            sa.Table(t.name, old, *[c._copy() for c in t.columns if c.name not in ("owner", "center_version", "norm")])
    engine = sa.create_engine(backend_settings.database_url)
    backend_settings.data_dir.mkdir(parents=True, exist_ok=True)
    old.create_all(engine)
    now = metadata.utcnow()
    with engine.begin() as c:
        c.execute(old.tables["clips"].insert().values(
            id=1, sha256="a" * 64, stored_name="a.wav", original_name="a.wav", duration_s=1.0, sample_rate=16000,
            channels=1, tags="[]", created_at=now))
        c.execute(old.tables["vectors"].insert().values(id=7, clip_id=1, model=MODEL, seg=0, start_s=0.0, end_s=1.0,
                                                        status="pending", created_at=now))
    engine.dispose()
    for _ in range(2):  # a second start finds the columns there
        store = metadata.MetadataStore(backend_settings.database_url)
        cols = {c["name"] for c in sa.inspect(store.engine).get_columns("vectors")}
        assert {"owner", "center_version", "norm"} <= cols and sa.inspect(store.engine).has_table("writers")
        assert store.unfinished(owner="someone") == [(7, MODEL, "pending")]
        store.close()
    svc = LibraryService(backend_settings)  # start-up recovery rolls the old interrupted write back
    try:
        assert svc.meta.unfinished() == [] and svc.meta.clip(1) is None
        assert svc.check() == {k: 0 for k in svc.check()}
    finally:
        svc.close()


def test_content_another_writer_is_adding_is_not_reported_as_existing(tmp_path, milvus_uri, mysql_url):
    """B ingests the file A is in the middle of writing: B must not say "already in the library"
    (A might still fail); it says another process is adding it, and a rerun finds it stored."""
    from conftest import sound, write_wav

    f = write_wav(tmp_path / "in" / "s.wav", sound(2))
    settings = _shared_settings(tmp_path, milvus_uri, mysql_url)
    a, b = LibraryService(settings), LibraryService(settings)
    with writer_paused_at(a, "after_rows", [f]):
        item = b.ingest_files([f], MODEL).items[0]
        assert item.status == "error" and "another process is adding or deleting it" in item.message
    try:
        assert b.ingest_files([f], MODEL).items[0].status == "exists"
        assert b.check() == {k: 0 for k in b.check()}
    finally:
        a.close()
        b.close()


def test_a_transaction_mysql_rolled_back_for_a_conflict_runs_again(mysql_url):
    """Writers and recoveries share one MySQL: a transaction MySQL rolls back for a deadlock with
    another process (error 1213, seen in the multi-process test) runs again instead of ending the
    ingest as "MySQL is not answering"; a real outage (2003) is not retried."""
    import pymysql
    import sqlalchemy as sa

    from search_core.metadata import MetadataStore

    store = MetadataStore(mysql_url)
    try:
        real, calls = store.engine.begin, []

        def begin_once_deadlocked():
            calls.append(1)
            if len(calls) == 1:
                raise sa.exc.OperationalError("UPDATE vectors", {}, pymysql.err.OperationalError(
                    1213, "Deadlock found when trying to get lock; try restarting transaction"))
            return real()

        store.engine.begin = begin_once_deadlocked
        store.renew_lease("w1", "host", 1, 60.0)
        assert len(calls) == 2 and "w1" in store.live_owners()

        def begin_down():
            raise sa.exc.OperationalError("UPDATE", {}, pymysql.err.OperationalError(
                2003, "Can't connect to MySQL server on '127.0.0.1'"))

        store.engine.begin = begin_down
        with pytest.raises(sa.exc.OperationalError, match="Can't connect"):
            store.drop_lease("w1")
    finally:
        store.engine.begin = real
        store.close()
