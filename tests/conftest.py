"""Shared fixtures: isolated settings per test, both metadata backends, a Milvus server, generated audio."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

# Tests and every process they start run on their own stores, whatever the shell says: a user's
# MILVUS_URI / DATABASE_URL / DATA_DIR must never receive test clips.
STORE_VARIABLES = ("DATA_DIR", "MILVUS_URI", "DATABASE_URL", "LIBRARY_DIR", "WEIGHTS_DIR")
for _var in STORE_VARIABLES:
    os.environ.pop(_var, None)
# the servers the tests start stop with their last user, whatever the shell asks for the app's own
os.environ.pop("MILVUS_KEEP_SERVER", None)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("SEARCH_CORE_OFFLINE", "1")
# gRPC (pymilvus <-> Milvus Lite) logs keepalive chatter at interpreter exit, after pytest's summary
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import numpy as np
import pytest
import soundfile as sf

from search_core.config import get_settings

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
MYSQL_ADMIN_URL = os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
#: the browser tests' ``browser`` and ``page`` fixtures (a module may define its own)
pytest_plugins = ["browserhelpers"]


def tone(freq: float, seconds: float = 2.0, rate: int = 16000, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A sine (optionally with noise) as float32 mono."""
    t = np.arange(int(seconds * rate)) / rate
    y = 0.5 * np.sin(2 * np.pi * freq * t)
    if noise:
        y = y + noise * np.random.default_rng(seed).standard_normal(len(t))
    return y.astype(np.float32)


def sound(kind: int, seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    """Distinct synthetic sounds: tones, chirps, noise bursts, clicks (deterministic per kind)."""
    rng = np.random.default_rng(kind)
    t = np.arange(int(seconds * rate)) / rate
    family = kind % 4
    if family == 0:
        y = np.sin(2 * np.pi * (200 + 150 * kind) * t)
    elif family == 1:
        f0, f1 = 100 + 50 * kind, 2000 + 300 * kind
        y = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    elif family == 2:
        y = rng.standard_normal(len(t)) * (np.sin(2 * np.pi * (1 + kind) * t) > 0)
    else:
        y = np.zeros(len(t))
        y[:: int(rate / (3 + kind))] = 1.0
        y = np.convolve(y, np.hanning(64), mode="same")
    y = y / (np.max(np.abs(y)) + 1e-9) * 0.6
    return y.astype(np.float32)


def write_wav(path: Path, y: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, rate, subtype=subtype)
    return path


def cli_runner(data_dir: Path, timeout: float = 300):
    """A function that runs ``python -m search_core ARGS`` on its own ``DATA_DIR``, checks the exit
    code (``code``, default 0) and returns what it printed."""
    env = {**os.environ, "DATA_DIR": str(data_dir), "SEARCH_CORE_OFFLINE": "1"}

    def cli(*args: str, code: int = 0) -> str:
        out = subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == code, out.stderr[-2000:]
        return out.stdout

    return cli


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server for the whole session (see tests/milvus_server.py).

    Started from the launcher ``make test`` installs; it must be there (the server path is part
    of the product, so its tests fail rather than skip). Tests that kill and restart it use
    :meth:`~tests.milvus_server.MilvusServer.restart` and leave it running.
    """
    from milvus_server import MilvusServer

    try:
        server = MilvusServer(tmp_path_factory.mktemp("milvus-server")).start()
    except RuntimeError as err:
        pytest.fail(f"cannot start the Milvus server: {err}")
    yield server
    server.kill()


@pytest.fixture
def milvus_uri(milvus_server):
    """A Milvus database of its own on the session's server, dropped after the test; its URI."""
    from milvus_server import create_database, drop_database

    if milvus_server.proc is None:  # a previous test killed it and failed before restarting
        milvus_server.start()
    name = f"t_{uuid.uuid4().hex[:12]}"
    uri = create_database(milvus_server.uri, name)
    yield uri
    try:
        drop_database(milvus_server.uri, name)
    except Exception:  # noqa: BLE001 - a server killed by the test may refuse; its data dir goes anyway
        pass


@pytest.fixture
def clips(tmp_path) -> list[Path]:
    """Eight distinct generated wav clips."""
    return [write_wav(tmp_path / "in" / f"sound_{i}.wav", sound(i)) for i in range(8)]


def _mysql_database():
    """Create a throwaway database on the local MariaDB; yields its URL; drops it after."""
    sa = pytest.importorskip("sqlalchemy")
    name = f"audiosearch_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(MYSQL_ADMIN_URL, pool_pre_ping=True)  # MariaDB may restart meanwhile
    try:
        with admin.begin() as c:
            c.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except Exception as err:  # the tests of the MySQL path must run: fail, don't skip
        pytest.fail(f"MariaDB on 127.0.0.1:3306 is needed for the MySQL tests ({err}); "
                    "start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd")
    url = MYSQL_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}?charset=utf8mb4"
    try:
        yield url
    finally:
        with admin.begin() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


@pytest.fixture
def mysql_url():
    yield from _mysql_database()


def make_settings(tmp_path: Path, database_url: str | None = None, **kw):
    base = get_settings()
    data = tmp_path / "data"
    return replace(base, data_dir=data, milvus_uri=str(data / "milvus.db"),
                   database_url=database_url or f"sqlite:///{data / 'metadata.sqlite'}",
                   library_dir=data / "library", weights_dir=data / "weights", index_type="HNSW", **kw)


# -- the stores a test runs on ------------------------------------------------------------------
# A store pair is "<vector store>-<metadata store>": Milvus Lite or the Milvus server, SQLite or
# MariaDB. Tests about the engine run on both shapes users deploy: everything embedded in one
# process (lite-sqlite) and the servers shared by processes (server-mysql); a module opts in with
# ``pytestmark = pytest.mark.stores(*ENGINE_STORES)``. Tests that take ``backend_settings`` (the
# round trips) run on the whole matrix: each vector store with each metadata store. A test that
# needs one pair (e.g. Milvus Lite's on-disk layout) says so with its own ``stores`` mark.
ENGINE_STORES = ("lite-sqlite", "server-mysql")
METADATA_STORES = ("sqlite", "mysql")


def pytest_configure(config):
    config.addinivalue_line("markers", "stores(*pairs): run the test on these vector-metadata store pairs "
                                       "(lite-sqlite, lite-mysql, server-sqlite, server-mysql)")


def pytest_generate_tests(metafunc):
    if "stores" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("stores")
    pairs = list(marker.args) if marker else ["lite-sqlite"]
    if "backend_settings" in metafunc.fixturenames:
        vector_stores = dict.fromkeys(p.split("-")[0] for p in pairs)
        pairs = [f"{v}-{m}" for v in vector_stores for m in METADATA_STORES]
    if pairs != ["lite-sqlite"]:
        metafunc.parametrize("stores", pairs, indirect=True)


@pytest.fixture
def stores(request) -> str:
    """The store pair of this test (see ENGINE_STORES); Milvus Lite and SQLite unless parametrized."""
    return getattr(request, "param", "lite-sqlite")


@pytest.fixture
def settings(request, stores, tmp_path):
    """Settings on this test's own stores: a Milvus Lite file or a database on the session's
    Milvus server; a SQLite file or a throwaway MariaDB database."""
    vector_store, metadata_store = stores.split("-")
    url = request.getfixturevalue("mysql_url") if metadata_store == "mysql" else None
    s = make_settings(tmp_path, url)
    if vector_store == "server":
        s = replace(s, milvus_uri=request.getfixturevalue("milvus_uri"))
    return s


@pytest.fixture
def backend_settings(settings):
    """Settings for every metadata store (SQLite, MariaDB), with each vector store the module runs on."""
    return settings


@pytest.fixture
def service(settings):
    from search_core.service import LibraryService

    svc = LibraryService(settings)
    yield svc
    svc.close()
