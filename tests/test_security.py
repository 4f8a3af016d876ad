"""Security: files are served from the library only, only bound parameters reach SQL, and with a
password set the library can only be changed after a login (search public or not, by setting)."""
from __future__ import annotations

import http.client
import os
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import sound, write_wav
from search_core.service import LibraryService

MODEL = "mfcc_stats"
PASSWORD = "correct horse battery"
HOSTILE = ["'; DROP TABLE clips; --", "\" OR 1=1 --", "x') OR ('1'='1", "%", "_", "\\", "Robert'); DELETE FROM vectors;--"]


# -- SQL: bound parameters only ---------------------------------------------------------------

def test_hostile_text_never_reaches_sql_as_code(backend_settings, tmp_path):
    svc = LibraryService(backend_settings)
    statements: list[str] = []
    sa.event.listen(svc.meta.engine, "before_cursor_execute",
                    lambda conn, cur, stmt, params, ctx, many: statements.append(stmt))
    try:
        files = [write_wav(tmp_path / f"h{i}.wav", sound(i)) for i in range(len(HOSTILE))]
        rep = svc.ingest_files(files, MODEL, names=[f"{h}.wav" for h in HOSTILE],
                               metadata=[{"label": h, "speaker": h, "source": h, "tags": [h, "ok"]} for h in HOSTILE])
        assert len(rep.added) == len(HOSTILE), [i.message for i in rep.errors]
        for h in HOSTILE:
            rows = svc.list_clips(MODEL, query=h)
            assert h in {c.label for c, _ in rows}
        # LIKE wildcards in the filter text are literal: '%' and '_' match only themselves
        assert {c.label for c, _ in svc.list_clips(MODEL, query="%")} == {"%"}
        assert {c.label for c, _ in svc.list_clips(MODEL, query="_")} == {"_"}
        stored = {c.label: c for c, _ in svc.list_clips(MODEL, limit=100)}
        assert set(stored) == set(HOSTILE)
        assert all(stored[h].speaker == h and stored[h].tags == [h, "ok"] for h in HOSTILE)
        assert svc.delete_clip(stored[HOSTILE[0]].id)
        for bad_model in ["x'; DROP TABLE clips; --", 'mfcc"stats', "audio_mfcc_stats` --", "../etc"]:
            with pytest.raises((KeyError, ValueError)):
                svc.search(files[1], bad_model)
            with pytest.raises((KeyError, ValueError)):
                svc.ingest_files([files[1]], bad_model)
            with pytest.raises(ValueError, match="invalid model name"):
                svc.drop_model(bad_model)
        for text in HOSTILE:
            assert not any(text in s for s in statements if len(text) > 2), text
        assert sa.inspect(svc.meta.engine).has_table("clips") and svc.count(MODEL) == len(HOSTILE) - 1
        assert svc.check() == {k: 0 for k in svc.check()}
    finally:
        svc.close()


def test_collection_names_are_validated():
    from search_core.vectors import collection_name

    assert collection_name("mfcc_stats") == "audio_mfcc_stats"
    for bad in ["", "A", "x y", "x'y", 'x"y', "x;drop", "a" * 64, "1abc", "x-y", None]:
        with pytest.raises(ValueError, match="invalid model name"):
            collection_name(bad)


# -- who may change the library -----------------------------------------------------------------

def test_access_from_env(monkeypatch):
    from app import Access, access_from_env

    for var in ("ADMIN_USER", "ADMIN_PASSWORD", "PUBLIC_SEARCH"):
        monkeypatch.delenv(var, raising=False)
    assert Access().password is None  # no default password anywhere
    local = access_from_env(share=False, prompt=False)
    assert not local.login_required and local.public_search
    with pytest.raises(SystemExit, match="--share needs an admin password"):
        access_from_env(share=True, prompt=False)
    monkeypatch.setenv("ADMIN_PASSWORD", "short")
    with pytest.raises(SystemExit, match="at least 8 characters"):
        access_from_env(share=True, prompt=False)
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("ADMIN_USER", "curator")
    shared = access_from_env(share=True, prompt=False)
    assert shared.login_required and shared.public_search and shared.user == "curator"
    assert shared.check("curator", PASSWORD) and not shared.check("curator", PASSWORD + "x")
    assert not shared.check("admin", PASSWORD) and not shared.check("", "")
    for value, public in (("false", False), ("0", False), ("no", False), ("true", True), ("", True)):
        monkeypatch.setenv("PUBLIC_SEARCH", value)
        assert access_from_env(share=True, prompt=False).public_search is public


def test_launch_options_serve_the_library_only_and_require_auth_for_private_search(tmp_path):
    from app import Access, launch_kwargs
    from conftest import make_settings

    s = make_settings(tmp_path)
    kw = launch_kwargs(s, Access(password=PASSWORD, public_search=True))
    assert kw["allowed_paths"] == [str(s.library_dir)] and "auth" not in kw
    assert kw["max_file_size"] == s.max_upload_bytes
    private = launch_kwargs(s, Access(password=PASSWORD, public_search=False))
    assert private["auth"]("admin", PASSWORD) and not private["auth"]("admin", "guess")


def _get(base: str, path: str) -> tuple[int, bytes]:
    """GET a raw path (no client-side normalisation of ``..`` or escapes)."""
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def guarded_app(tmp_path_factory):
    """The app with an admin password and public search, and a data folder with secrets in it."""
    root = tmp_path_factory.mktemp("secure")
    data = root / "data"
    data.mkdir()
    (data / "secret.txt").write_text("TOP-SECRET-DATA-DIR\n")
    with running_app(data, env={"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "true", "MAX_UPLOAD_BYTES": "2000000",
                                "GRADIO_TEMP_DIR": str(root / "gradio_tmp")}) as url:
        yield url, data, root


def _blocked(message: str):
    return pytest.raises(Exception, match=message)


def test_changes_need_a_login_in_the_same_session(guarded_app, tmp_path):
    url, data, _ = guarded_app
    f = write_wav(tmp_path / "first.wav", sound(1))
    anon = Client(url, verbose=False)
    # search is public
    out = anon.predict(query_path=handle_file(str(f)), model=MODEL, k=3, api_name="/search")
    assert out[-1] == []
    for call in (lambda c: c.predict([handle_file(str(f))], MODEL, "", "", "", api_name="/ingest"),
                 lambda c: c.predict(str(tmp_path), MODEL, api_name="/import_folder"),
                 lambda c: c.predict(1, MODEL, "", api_name="/delete"),
                 lambda c: c.predict(MODEL, MODEL, api_name="/drop")):
        with _blocked("Log in as the admin"):
            call(anon)
    named = anon.view_api(return_format="dict", print_info=False)["named_endpoints"]
    if "/enrol_speaker" in named:  # speaker enrolment changes the library too
        with _blocked("Log in as the admin"):
            anon.predict("mallory", [handle_file(str(f))], MODEL, False, api_name="/enrol_speaker")
    if "/delete_speaker" in named:
        with _blocked("Log in as the admin"):
            anon.predict("mallory", MODEL, api_name="/delete_speaker")
    # a wrong password does not log in
    anon.predict("admin", "wrong password", api_name="/login")
    with _blocked("Log in as the admin"):
        anon.predict([handle_file(str(f))], MODEL, "", "", "", api_name="/ingest")
    assert "empty" in anon.predict(api_name="/count")
    # the right one does, for this session only
    admin = Client(url, verbose=False)
    status = admin.predict("admin", PASSWORD, api_name="/login")
    assert "Logged in" in str(status)
    report, counts, table = admin.predict([handle_file(str(f))], MODEL, "", "", "", api_name="/ingest")
    assert "1 added" in report
    folder = tmp_path / "folder"
    write_wav(folder / "second.wav", sound(2))
    assert "1 added" in admin.predict(str(folder), MODEL, api_name="/import_folder")[0]
    with _blocked("Log in as the admin"):
        Client(url, verbose=False).predict(table["data"][0][0], MODEL, "", api_name="/delete")
    with _blocked("Log in as the admin"):
        anon.predict([handle_file(str(write_wav(tmp_path / "third.wav", sound(3))))], MODEL, "", "", "",
                     api_name="/ingest")
    ids = [row[0] for row in table["data"]]
    admin.predict(ids[0], MODEL, "", api_name="/delete")
    assert f"**{MODEL}**: 1" in anon.predict(api_name="/count")
    with _blocked("Log in as the admin"):
        anon.predict(MODEL, MODEL, api_name="/drop")
    admin.predict(MODEL, MODEL, api_name="/drop")
    assert "empty" in anon.predict(api_name="/count")


def test_files_are_served_from_the_library_only(guarded_app, tmp_path):
    url, data, root = guarded_app
    f = write_wav(tmp_path / "served.wav", sound(5))
    admin = Client(url, verbose=False)
    admin.predict("admin", PASSWORD, api_name="/login")
    admin.predict([handle_file(str(f))], MODEL, "", "", "", api_name="/ingest")
    lib = data / "library"
    stored = next(p for p in lib.iterdir() if p.suffix == ".wav")

    # a library file returned in a result is servable: the result's audio, and the file route
    out = Client(url, verbose=False).predict(query_path=handle_file(str(f)), model=MODEL, k=1, api_name="/search")
    assert out[-1][0]["name"] == "served.wav"
    audio = [o for o in out if isinstance(o, str) and o.endswith(".wav") and os.path.isfile(o)]
    got, rate = sf.read(audio[0])  # downloaded by the client from the app's file route
    np.testing.assert_allclose(got, sf.read(str(stored))[0], atol=1e-4)
    status, body = _get(url, "/gradio_api/file=" + quote(str(stored)))
    assert status == 200 and body == stored.read_bytes()

    secrets = {
        Path("/etc/passwd"): b"root:",
        data / "metadata.sqlite": b"SQLite format 3",
        data / "secret.txt": b"TOP-SECRET",
        Path(__file__).resolve().parent.parent / "app.py": b"import gradio",
    }
    milvus_files = [p for p in (data / "milvus.db").rglob("*") if p.is_file()] if (data / "milvus.db").is_dir() \
        else [data / "milvus.db"]
    for p in milvus_files[:3]:
        secrets[p] = p.read_bytes()[:64] or b"\x00never-empty"
    up = "../" * 12
    for target, marker in secrets.items():
        t = str(target)
        rel_from_lib = os.path.relpath(target, lib)
        variants = [
            f"/gradio_api/file={t}", f"/file={t}", f"/gradio_api/file/{t}",
            f"/gradio_api/file={quote(t, safe='')}", f"/gradio_api/file={quote(quote(t, safe=''), safe='')}",
            f"/gradio_api/file={lib}/{rel_from_lib}", f"/gradio_api/file={quote(str(lib))}/{quote(rel_from_lib)}",
            f"/gradio_api/file={lib}/%2e%2e/{quote(rel_from_lib[3:])}",
            f"/gradio_api/file={lib}%2f..%2f{quote(rel_from_lib[3:], safe='')}",
            f"/gradio_api/file={up}{t.lstrip('/')}", f"/gradio_api/file={quote(up + t.lstrip('/'), safe='')}",
            f"/gradio_api/file=..%5c..%5c..%5c..%5c{quote(t.lstrip('/'))}",
            f"/gradio_api/file=file://{t}", f"/gradio_api/file=//{t.lstrip('/')}",
            f"/static/{quote(up + t.lstrip('/'), safe='')}", f"/assets/{quote(up + t.lstrip('/'), safe='')}",
            f"/static/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f{t.lstrip('/')}",
            f"/gradio_api/file={lib}/../../{rel_from_lib[6:]}" if rel_from_lib.startswith("../../") else f"/x/{t}",
        ]
        for v in variants:
            status, body = _get(url, v)
            assert not (status == 200 and marker in body), f"served {target} via {v}"
    # the server must not fetch loopback URLs for a caller (SSRF) either
    for v in (f"/gradio_api/file=http://127.0.0.1:{urlparse(url).port}/config",
              f"/gradio_api/proxy=http://127.0.0.1:{urlparse(url).port}/config",
              "/gradio_api/file=http://127.0.0.1:3306/"):
        status, _ = _get(url, v)
        assert status != 200, v


def test_private_search_needs_the_login_page(tmp_path):
    data = tmp_path / "data"
    with running_app(data, env={"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "false"}) as url:
        assert _get(url, "/config")[0] == 401
        with pytest.raises(Exception):
            Client(url, verbose=False).predict(api_name="/count")
        with pytest.raises(Exception):
            Client(url, verbose=False, auth=("admin", "wrong password"))
        client = Client(url, verbose=False, auth=("admin", PASSWORD))
        f = write_wav(tmp_path / "p.wav", sound(7))
        assert "1 added" in client.predict([handle_file(str(f))], MODEL, "", "", "", api_name="/ingest")[0]
        assert client.predict(query_path=handle_file(str(f)), model=MODEL, k=1, api_name="/search")[-1][0]["name"] == "p.wav"


def test_upload_over_the_size_limit_is_refused_by_the_app(guarded_app, tmp_path):
    import httpx

    url, data, _ = guarded_app
    big = write_wav(tmp_path / "big.wav", np.tile(sound(4), 40))  # 2.6 MB > MAX_UPLOAD_BYTES=2 MB
    admin = Client(url, verbose=False)
    admin.predict("admin", PASSWORD, api_name="/login")
    before = admin.predict(api_name="/count")
    with pytest.raises(Exception, match=r"exceeds the maximum file size of 2000000 bytes"):
        admin.predict([handle_file(str(big))], MODEL, "", "", "", api_name="/ingest")
    # a client that ignores the advertised limit is refused by the server's upload route
    with open(big, "rb") as fh:
        r = httpx.post(url + "gradio_api/upload", files={"files": ("big.wav", fh, "audio/wav")}, timeout=60)
    assert r.status_code >= 400 and "exceeded maximum allowed size" in r.text, (r.status_code, r.text[:200])
    assert admin.predict(api_name="/count") == before


def test_login_guessing_is_throttled_per_client():
    from app import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(limit=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert not throttle.blocked("1.2.3.4")
        throttle.failed("1.2.3.4")
    assert throttle.blocked("1.2.3.4")      # the 4th guess is refused, even a right one
    assert not throttle.blocked("5.6.7.8")  # other clients are not affected
    now[0] += 61
    assert not throttle.blocked("1.2.3.4")  # failures are forgotten after the window
