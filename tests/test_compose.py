"""docker-compose.yaml cannot run here (no Docker engine); check its structure instead."""
from __future__ import annotations

import re

import yaml

from conftest import REPO


def load():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_compose_has_milvus_standalone_and_mysql_with_health_checks_and_volumes():
    doc = load()
    services = doc["services"]
    assert set(services) == {"etcd", "minio", "standalone", "mysql"}
    for name, svc in services.items():
        assert re.match(r"^[\w./-]+:[\w.-]+$", svc["image"]), f"{name}: image must be pinned to a tag"
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc.get("volumes"), f"{name} keeps no data"
    assert services["standalone"]["depends_on"] == {"etcd": {"condition": "service_healthy"},
                                                    "minio": {"condition": "service_healthy"}}
    assert "19530:19530" in services["standalone"]["ports"]
    assert "3306:3306" in services["mysql"]["ports"]
    env = services["mysql"]["environment"]
    assert env["MYSQL_DATABASE"] == "audio_search"


def test_readme_switch_matches_compose_credentials():
    services = load()["services"]
    env = services["mysql"]["environment"]
    url = f"mysql+pymysql://{env['MYSQL_USER']}:{env['MYSQL_PASSWORD']}@127.0.0.1:3306/{env['MYSQL_DATABASE']}"
    readme = (REPO / "README.md").read_text()
    assert url in readme and "MILVUS_URI=http://127.0.0.1:19530" in readme
