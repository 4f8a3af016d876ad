"""Safe on a public link (issue 12, items 1, 2 and 7): every way to log in shares one throttle,
the throttle keys on an address the caller cannot choose, uploads are limited per client and
Gradio's cache (served to anyone with a file's URL) is kept under an age and size budget.

The launched app is driven over HTTP as the attacker did; where time matters the pieces are
tested with an injected clock (no test waits)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import sound, write_wav

MODEL = "mfcc_stats"
PASSWORD = "correct horse battery"
REFUSED = "Too many failed logins; try again in"


def _post_login(url: str, user: str, password: str, headers: dict | None = None, multipart: bool = False):
    data = {"username": user, "password": password}
    if multipart:
        return httpx.post(url + "login", files={k: (None, v) for k, v in data.items()}, headers=headers, timeout=30)
    return httpx.post(url + "login", data=data, headers=headers, timeout=30)


def _app_login(url: str, user: str, password: str, headers: dict | None = None) -> str:
    """The app's own login endpoint (Library tab button) over Gradio's HTTP API, as an attacker
    calls it; returns the event stream's text (the status, or the error sentence)."""
    r = httpx.post(url + "gradio_api/call/login", json={"data": [user, password]}, headers=headers, timeout=30)
    if r.status_code != 200:
        return r.text
    return httpx.get(url + f"gradio_api/call/login/{r.json()['event_id']}", headers=headers, timeout=60).text


# -- item 1: Gradio's own /login -------------------------------------------------------------------

def test_gradio_login_page_is_throttled_and_shares_the_apps_throttle(tmp_path):
    with running_app(tmp_path / "data", env={"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "false"}) as url:
        signed_in = Client(url, verbose=False, auth=("admin", PASSWORD))  # before anyone guesses
        # the 60 guesses in half a second, sent 20 at a time
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: _post_login(url, "admin", f"guess {i}"), range(60)))
        codes = [r.status_code for r in answers]
        assert codes.count(400) == 5, codes         # five wrong guesses are checked ...
        assert codes.count(429) == 55, codes        # ... the other 55 are not
        assert REFUSED in answers[-1].json()["detail"]
        # the right password is not even checked while the account waits: no oracle for a guesser
        assert _post_login(url, "admin", PASSWORD).status_code == 429
        assert _post_login(url, "admin", "guess", multipart=True).status_code == 429
        with pytest.raises(Exception):
            Client(url, verbose=False, auth=("admin", PASSWORD))
        # the app's own login (Library tab) is behind the same throttle
        assert REFUSED in _predict_login(signed_in)
        # an over-long field is a sentence, not a stored key
        r = _post_login(url, "u" * 5000, "x")
        assert r.status_code == 400 and "The user name is 5000 characters long" in r.json()["detail"]


def _predict_login(client: Client) -> str:
    try:
        return str(client.predict("admin", PASSWORD, api_name="/login"))
    except Exception as err:
        return str(err)


# -- item 2: X-Forwarded-For is believed only from TRUSTED_PROXIES ------------------------------------

def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_address(tmp_path):
    with running_app(tmp_path / "data", env={"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "true"}) as url:
        # wrong user names count against the address only: a fresh header each time must not help
        answers = [_app_login(url, f"mallory{i}", "guess", headers={"X-Forwarded-For": f"10.9.{i}.1"})
                   for i in range(12)]
        assert all("Not logged in" in a for a in answers[:5]), answers
        assert all(REFUSED in a for a in answers[5:]), answers
        # the address really is blocked (the same tunnel address over --share): also for the admin, until
        # the back-off expires (tests/test_public_guard.py::test_share_guesser_cannot_lock_out_the_admin)
        assert REFUSED in _app_login(url, "admin", PASSWORD, headers={"X-Forwarded-For": "10.200.0.1"})


def test_trusted_proxy_addresses_separate_a_guesser_from_the_admin(tmp_path):
    env = {"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "true", "TRUSTED_PROXIES": "127.0.0.1"}
    with running_app(tmp_path / "data", env=env) as url:
        guesser = {"X-Forwarded-For": "203.0.113.7"}
        answers = [_app_login(url, f"mallory{i}", "guess", headers=guesser) for i in range(7)]
        assert REFUSED in answers[-1] and "Not logged in" in answers[0], answers
        # the proxy's client address is believed: the admin behind the same proxy gets in
        assert "Logged in" in _app_login(url, "admin", PASSWORD, headers={"X-Forwarded-For": "198.51.100.2"})
        # guessing the admin's password from ever new addresses hits the account's back-off
        spread = [_app_login(url, "admin", f"guess {i}", headers={"X-Forwarded-For": f"192.0.2.{i}"})
                  for i in range(7)]
        assert all("Not logged in" in a for a in spread[:5]) and REFUSED in spread[-1], spread


def test_forwarding_setting_reaches_uvicorn(monkeypatch):
    import uvicorn

    from search_core.webguard import GuardSettings, trust_forwarding_from

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    assert GuardSettings.from_env().trusted_proxies == ""  # off by default
    trust_forwarding_from(GuardSettings.from_env().trusted_proxies)
    assert uvicorn.Config(app=None).forwarded_allow_ips == ""  # uvicorn's own default trusts loopback
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    trust_forwarding_from(GuardSettings.from_env().trusted_proxies)
    assert uvicorn.Config(app=None).forwarded_allow_ips == "10.0.0.0/8, 127.0.0.1"
    monkeypatch.setenv("UPLOAD_LIMIT_FILES", "many")
    with pytest.raises(ValueError, match=r"UPLOAD_LIMIT_FILES='many' is not a whole number"):
        GuardSettings.from_env()


def test_share_guesser_cannot_lock_out_the_admin():
    """Over --share every visitor comes from one address: the guesser and the admin share every key."""
    from search_core.webguard import LoginThrottle

    now = [0.0]
    # attempts are counted when they start: five sent at once use up the free tries
    t = LoginThrottle(clock=lambda: now[0], account="admin")
    assert [t.begin("10.0.0.1", "admin") for _ in range(6)][:5] == [None] * 5
    assert t.begin("10.0.0.2", "admin") == "Too many failed logins; try again in 31 s."
    t.succeeded("10.0.0.1", "admin")  # the one that was right clears the back-off
    assert t.begin("10.0.0.2", "admin") is None

    t = LoginThrottle(clock=lambda: now[0], account="admin")
    tunnel = "127.0.0.1"
    for i in range(5):
        assert not t.blocked(tunnel, "admin")
        t.failed(tunnel, "admin")
    assert t.refusal(tunnel, "admin") == "Too many failed logins; try again in 31 s."
    now[0] += 31  # the back-off is over: the admin's next attempt is checked
    assert not t.blocked(tunnel, "admin")
    t.succeeded(tunnel, "admin")
    assert not t.blocked(tunnel, "admin")
    # a guesser who keeps going waits 30, 60, 120, ... s per guess, never more than 15 minutes
    waits = []
    for i in range(12):
        t.failed(tunnel, "admin")
        waits.append(t.wait(tunnel, "admin"))
        now[0] += waits[-1]
    assert waits[:4] == [0, 0, 0, 0] and waits[4:8] == [30, 60, 120, 240] and max(waits) == 900
    # ... and whenever a wait is over, the right password still gets in
    assert not t.blocked(tunnel, "admin")
    t.succeeded(tunnel, "admin")
    assert t.wait(tunnel, "admin") == 0
    # failures are forgotten after a day without any
    for _ in range(4):
        t.failed(tunnel, "mallory")
    now[0] += 86_401
    t.failed(tunnel, "mallory")
    assert not t.blocked(tunnel)


def test_made_up_addresses_cannot_fill_the_memory():
    from search_core.webguard import Backoff

    b = Backoff(free=5, base_s=30, cap_s=900, forget_s=86_400, clock=lambda: 0.0, max_keys=1000)
    for i in range(5000):
        b.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(b._keys) == 1000


# -- item 7: uploads per client, Gradio's cache under a budget ----------------------------------------

def _cache_bytes(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except FileNotFoundError:  # swept meanwhile
            pass
    return total


def _upload(url: str, path: Path, headers: dict | None = None) -> httpx.Response:
    with open(path, "rb") as fh:
        return httpx.post(url + "gradio_api/upload", files={"files": (path.name, fh, "audio/wav")},
                          headers=headers, timeout=60)


def test_uploads_are_limited_per_client_and_the_cache_stays_in_its_budget(tmp_path):
    cache = tmp_path / "gradio_cache"
    budget = 300_000
    env = {"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "true", "GRADIO_TEMP_DIR": str(cache),
           "UPLOAD_LIMIT_FILES": "16", "GRADIO_CACHE_MAX_BYTES": str(budget)}
    with running_app(tmp_path / "data", env=env) as url:
        admin = Client(url, verbose=False)
        admin.predict("admin", PASSWORD, api_name="/login")
        lib = write_wav(tmp_path / "lib.wav", sound(1))
        admin.predict([handle_file(str(lib))], MODEL, "", "", "", api_name="/ingest")  # upload 1

        # five 96 kB uploads: the oldest go once the cache holds more than the budget
        files = [write_wav(tmp_path / f"up{i}.wav", np.tile(sound(i), 3)[:48_000]) for i in range(5)]
        stored = []
        for f in files:
            r = _upload(url, f)
            assert r.status_code == 200, r.text
            stored += r.json()
        assert stored[0].startswith(str(cache))
        assert _cache_bytes(cache) <= budget + 96_100
        assert not Path(stored[0]).exists() and Path(stored[-1]).exists()
        status = httpx.get(url + "gradio_api/file=" + stored[0], timeout=30).status_code
        assert status != 200
        # every search leaves its query and pictures in the cache: they do not pile up either
        anon = Client(url, verbose=False)
        for i in range(6):
            q = write_wav(tmp_path / f"q{i}.wav", sound(10 + i))
            out = anon.predict(handle_file(str(q)), MODEL, 5, "", "", "", "", api_name="/search")
            assert out[-1], "a search found nothing"
        r = _upload(url, files[0])  # upload 13 (a sweep follows each upload)
        assert r.status_code == 200
        assert _cache_bytes(cache) <= budget + 96_100
        # per client and window: 16 files, then a sentence; a made-up forwarding header does not help
        for _ in range(3):
            assert _upload(url, files[1]).status_code == 200
        refused = _upload(url, files[2])
        assert refused.status_code == 429, refused.text
        assert refused.json()["detail"] == ("Too many uploads: at most 16 files per 10 minutes from one "
                                            "address; try again later.")
        assert _upload(url, files[2], headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 429
        # an upload that does not say its length is refused before it is read
        r = httpx.post(url + "gradio_api/upload", content=iter([b"--x\r\n"]),
                       headers={"content-type": "multipart/form-data; boundary=x"}, timeout=30)
        assert r.status_code == 411
        # any other request body is capped at 1 MB
        r = httpx.post(url + "gradio_api/queue/join", content=b"{" + b" " * (1 << 20) + b"}",
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413


def test_janitor_deletes_by_age_and_size_and_keeps_examples(tmp_path):
    from search_core.webguard import CacheJanitor

    root = tmp_path / "cache"
    made = []
    for i in range(6):
        p = root / f"h{i}" / f"f{i}.wav"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x" * 1000)
        made.append(str(p))
    files = set(made)
    owned = tmp_path / "pictures"  # a folder the app writes per-search files into itself
    owned.mkdir()
    (owned / "query.png").write_bytes(b"p" * 10)
    now = [max(os.stat(f).st_ctime for f in made) + 1]
    j = CacheJanitor(lambda: set(files), lambda: {made[0]}, max_age_s=3600, max_bytes=3510, root=root,
                     dirs=[owned], clock=lambda: now[0], forget=lambda gone: files.difference_update(gone))
    assert j.sweep() == 2  # over the budget: the oldest go first, the kept example stays
    assert [Path(f).exists() for f in made] == [True, False, False, True, True, True]
    assert not (root / "h1").exists() and root.exists()  # emptied per-file folders go too
    assert files == {made[0], made[3], made[4], made[5]}
    assert (owned / "query.png").exists()
    now[0] += 3601  # an hour later everything but the example is gone
    assert j.sweep() == 4 and [Path(f).exists() for f in made] == [True] + [False] * 5
    assert not (owned / "query.png").exists() and owned.is_dir()


def test_gradio_cache_files_are_the_uploads_and_outputs_of_the_blocks(tmp_path):
    import gradio as gr

    from search_core.webguard import gradio_cache_files

    with gr.Blocks() as demo:
        img = gr.Image()
    demo.upload_file_set.add(str(tmp_path / "upload.wav"))
    img.temp_files.add(str(tmp_path / "picture.png"))
    img.keep_in_cache.add(str(tmp_path / "example.png"))
    files, keep, forget = gradio_cache_files(demo)
    assert {str(tmp_path / "upload.wav"), str(tmp_path / "picture.png")} <= set(files())
    assert keep() == {str(tmp_path / "example.png")}
    forget({str(tmp_path / "upload.wav")})
    assert str(tmp_path / "upload.wav") not in set(files())
