"""Tests never touch a user's data: whatever MILVUS_URI / DATABASE_URL / DATA_DIR the shell names,
a test run and the processes its tests start (the CLI, the app) use stores of their own."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import sqlalchemy as sa

from conftest import REPO

# an engine module (service fixtures, the CLI runner) and a test that launches the app
RUN = ["tests/test_filters.py", "tests/test_speakers.py::test_app_enrol_needs_the_admin_and_identify_does_not"]


def test_a_test_run_leaves_the_library_named_by_the_shell_untouched(tmp_path, milvus_server, mysql_url):
    from pymilvus import MilvusClient

    from milvus_server import create_database, drop_database

    # the user's library: a database on a Milvus server, one on MariaDB, a data folder
    name = f"user_{uuid.uuid4().hex[:12]}"
    milvus_uri = create_database(milvus_server.uri, name)
    user = tmp_path / "user-data"
    user.mkdir()
    env = {**os.environ, "MILVUS_URI": milvus_uri, "DATABASE_URL": mysql_url, "DATA_DIR": str(user),
           "LIBRARY_DIR": str(user / "library"), "WEIGHTS_DIR": str(user / "weights")}
    try:
        # the Lite + SQLite runs: those that would otherwise take the shell's stores
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not server",
                              *RUN], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert " passed" in out.stdout and " skipped" not in out.stdout, out.stdout[-1000:]

        client = MilvusClient(milvus_uri)
        try:
            assert client.list_collections() == []
        finally:
            client.close()
        engine = sa.create_engine(mysql_url)
        try:
            assert sa.inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
        assert list(user.iterdir()) == []
    finally:
        drop_database(milvus_server.uri, name)
