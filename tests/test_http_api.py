"""The HTTP API a script can call (issue 16, item 13): the README's curl examples run against the
launched app, behind the page's login throttle and upload allowance, with one sentence and an
unchanged library for bad input."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from apphelpers import REPO, running_app
from conftest import sound, write_wav

MODEL = "mfcc_stats"
PASSWORD = "correct horse battery"
README_URL = "http://127.0.0.1:7860"
REFUSED = "Too many failed logins; try again in"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")


def readme_commands() -> list[str]:
    """The commands of the first ```bash block under the README's "### HTTP API" heading, one per
    logical line (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n### HTTP API\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def run_commands(commands: list[str], base: str, cwd: Path) -> list[tuple[str, str]]:
    """Run ``commands`` in one bash (they may share variables) against ``base`` instead of the
    README's address, in ``cwd``; each command with what it printed."""
    marker = "@@@ end of command @@@"
    script = "set -e\n" + "".join(f"{c.replace(README_URL, base)}\necho; echo '{marker}'\n" for c in commands)
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "ADMIN_PASSWORD": PASSWORD})
    assert out.returncode == 0, out.stderr
    printed = out.stdout.split(marker + "\n")[:-1]
    assert len(printed) == len(commands)
    return list(zip(commands, (p.strip() for p in printed)))


def answer(results: list[tuple[str, str]], *words: str) -> list:
    """The JSON printed by each command containing all of ``words``."""
    return [json.loads(text) for cmd, text in results if all(w in cmd for w in words)]


def api(url: str, method: str, path: str, auth=None, **kw) -> httpx.Response:
    return httpx.request(method, url.rstrip("/") + path, auth=auth, timeout=60, **kw)


def count(url: str, auth=None) -> dict:
    r = api(url, "GET", "/api/count", auth)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    data = tmp_path_factory.mktemp("http_api") / "data"
    with running_app(data, env={"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "true",
                                "MAX_UPLOAD_BYTES": "2000000"}) as url:
        yield url


ADMIN = ("admin", PASSWORD)


def test_the_readme_curl_examples_search_add_count_list_and_delete(app_url, tmp_path):
    write_wav(tmp_path / "dog.wav", sound(0))
    write_wav(tmp_path / "cat.wav", sound(1))
    write_wav(tmp_path / "my_sounds" / "bird song.wav", sound(2))  # a space in a name
    write_wav(tmp_path / "my_sounds" / "drip.wav", sound(3))
    noise = np.random.default_rng(1).standard_normal(32000) * 0.01
    write_wav(tmp_path / "query.wav", sound(0) * 0.5 + noise)  # the dog, quieter and noisy

    commands = readme_commands()
    drop = [c for c in commands if "/api/models/" in c]  # run last, after the files are checked
    results = run_commands([c for c in commands if c not in drop], app_url.rstrip("/"), tmp_path)

    models = {m["name"]: m for m in answer(results, "/api/models")[0]}
    assert models[MODEL]["ready"] and models[MODEL]["dim"] == 80
    added, folder = answer(results, "/api/clips", "-F")
    assert [a["name"] for a in added["added"]] == ["dog.wav", "cat.wav"] and not added["rejected"]
    assert sorted(a["name"] for a in folder["added"]) == ["bird song.wav", "drip.wav"]
    top5, filtered, again = answer(results, "/api/search")
    hit = top5["hits"][0]
    assert hit["name"] == "dog.wav" and hit["id"] == added["added"][0]["id"]
    assert hit["score"] > 0.9 and hit["distance"] == pytest.approx(1 - hit["score"], abs=1e-3)
    assert (hit["label"], hit["tags"], hit["start_s"], hit["end_s"]) == ("animal", ["pets", "indoor"], 0.0, 2.0)
    assert [h["rank"] for h in top5["hits"]] == [1, 2, 3, 4]
    assert {h["name"] for h in filtered["hits"]} == {"dog.wav", "cat.wav"}  # label=animal only
    cat = next(h for h in filtered["hits"] if h["name"] == "cat.wav")
    # relevance feedback, new clips only: neither the marked clips nor the first page (top 2) come back
    seen = {h["id"] for h in top5["hits"][:2]} | {2, 3}
    assert {h["id"] for h in again["hits"]} == {h["id"] for h in top5["hits"]} - seen, again
    served = httpx.get(app_url.rstrip("/") + cat["audio_url"], timeout=30)
    assert served.status_code == 200 and served.content == (tmp_path / "cat.wav").read_bytes()
    assert answer(results, "/api/count")[0] == {"clips": 4, "by_model": {MODEL: 4}}
    listed = answer(results, "/api/clips?")[0]["clips"]
    assert len(listed) == 4 and {c["name"] for c in listed} >= {"dog.wav", "bird song.wav"}
    assert answer(results, "DELETE", "/api/clips/1")[0] == {"deleted": 1}
    assert count(app_url)["clips"] == 3
    assert api(app_url, "GET", hit["audio_url"]).json() == {"error": "No clip with id 1."}  # deleted

    assert answer(run_commands(drop, app_url.rstrip("/"), tmp_path))[0] == {"dropped": MODEL, "vectors": 3}
    assert count(app_url) == {"clips": 0, "by_model": {}}


def test_adding_and_deleting_need_the_admin_login(app_url, tmp_path):
    f = write_wav(tmp_path / "intruder.wav", sound(5))
    before = count(app_url)
    for auth, said in ((None, "Log in as the admin"), (("admin", "wrong password"), "Wrong user name or password")):
        with open(f, "rb") as fh:
            r = api(app_url, "POST", "/api/clips", auth, files={"files": ("intruder.wav", fh)}, data={"model": MODEL})
        assert r.status_code == 401 and said in r.json()["error"], r.text
        r = api(app_url, "DELETE", "/api/clips/2", auth)
        assert r.status_code == 401 and said in r.json()["error"], r.text
        r = api(app_url, "DELETE", f"/api/models/{MODEL}?confirm={MODEL}", auth)
        assert r.status_code == 401 and said in r.json()["error"], r.text
    assert count(app_url) == before
    with open(f, "rb") as fh:  # searching is public, as on the page
        r = api(app_url, "POST", "/api/search", files={"file": ("intruder.wav", fh)}, data={"model": MODEL})
    assert r.status_code == 200 and "hits" in r.json()
    with open(f, "rb") as fh:
        r = api(app_url, "POST", "/api/clips", ADMIN, files={"files": ("intruder.wav", fh)}, data={"model": MODEL})
    assert r.status_code == 200 and r.json()["added"][0]["name"] == "intruder.wav"
    assert api(app_url, "DELETE", f"/api/clips/{r.json()['added'][0]['id']}", ADMIN).json()["deleted"]
    assert count(app_url) == before


def test_bad_input_is_one_sentence_and_changes_nothing(app_url, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    good = write_wav(tmp_path / "good.wav", sound(6))
    with open(good, "rb") as fh:  # a library with something to lose
        assert api(app_url, "POST", "/api/clips", ADMIN, files={"files": ("good.wav", fh)}).status_code == 200
    before, listed = count(app_url), api(app_url, "GET", "/api/clips").json()
    assert before["clips"] >= 1

    def post(path, name, fields, field="files", auth=ADMIN):
        with open(tmp_path / name, "rb") as fh:
            return api(app_url, "POST", path, auth, files={field: (name, fh)}, data=fields)

    cases = [
        (post("/api/clips", "notes.wav", {"model": MODEL}), "notes.wav: not a readable audio file"),
        (post("/api/search", "notes.wav", {"model": MODEL}, "file"), "notes.wav: not a readable audio file"),
        (post("/api/search", "good.wav", {"model": MODEL, "k": "0"}, "file"), "top-k) must be a whole number from 1"),
        (post("/api/search", "good.wav", {"model": MODEL, "k": "1001"}, "file"), "from 1 to 1000; got '1001'"),
        (post("/api/search", "good.wav", {"model": "nope"}, "file"), "unknown model 'nope'"),
        (post("/api/clips", "good.wav", {"model": "nope"}), "unknown model 'nope'"),
        (post("/api/clips", "good.wav", {"model": MODEL, "label": "x" * 300}), "The label is 300 characters long"),
        (post("/api/search", "good.wav", {"model": MODEL, "lable": "dog"}, "file"), "Unknown field 'lable'"),
        (post("/api/search", "good.wav", {"model": MODEL, "like": "two"}, "file"), "clip id must be a whole number"),
        (post("/api/search", "good.wav", {"model": MODEL, "like": "999999"}, "file"),
         f"Clip #999999 is not in the library for {MODEL}."),
        (post("/api/search", "good.wav", {"model": MODEL, "hide_seen": "maybe"}, "file"), "must be true or false"),
        (api(app_url, "POST", "/api/search", data={"model": MODEL}), "Send a multipart form"),
        (api(app_url, "GET", "/api/clips?per_page=0"), "per_page) must be a whole number"),
        (api(app_url, "DELETE", "/api/clips/abc", ADMIN), "The clip id must be a whole number"),
        (api(app_url, "DELETE", f"/api/models/{MODEL}", ADMIN), f"Add ?confirm={MODEL} to drop"),
        (api(app_url, "DELETE", f"/api/models/{MODEL}?confirm=aisfx", ADMIN), f"Add ?confirm={MODEL} to drop"),
        (api(app_url, "DELETE", "/api/models/nope?confirm=nope", ADMIN), "unknown model 'nope'"),
    ]
    for r, said in cases:
        assert r.status_code == 400, (said, r.status_code, r.text)
        error = r.json()["error"]
        assert said in error and "\n" not in error and "/tmp" not in error, (said, error)
    r = api(app_url, "DELETE", "/api/clips/999999", ADMIN)
    assert r.status_code == 404 and r.json() == {"error": "No clip with id 999999."}
    assert count(app_url) == before and api(app_url, "GET", "/api/clips").json() == listed


def test_a_query_over_the_size_limit_is_refused_before_it_is_read(app_url, tmp_path):
    big = write_wav(tmp_path / "big.wav", np.tile(sound(4), 40))  # 2.6 MB > MAX_UPLOAD_BYTES = 2 MB
    before = count(app_url)
    with open(big, "rb") as fh:
        r = api(app_url, "POST", "/api/search", files={"file": ("big.wav", fh)}, data={"model": MODEL})
    assert r.status_code == 413 and "at most 2000000 bytes (MAX_UPLOAD_BYTES)" in r.json()["error"], r.text
    with open(big, "rb") as fh:  # added: refused by the file's size, before it is decoded
        r = api(app_url, "POST", "/api/clips", ADMIN, files={"files": ("big.wav", fh)}, data={"model": MODEL})
    assert r.status_code == 400 and r.json()["error"].startswith("big.wav: file is 2.6 MB, over the"), r.text
    assert count(app_url) == before


def test_a_segment_hit_hands_out_just_its_range_and_a_bad_range_is_one_sentence(app_url, tmp_path):
    """A long recording found by a part of it: the hit's ``segment_url`` is that range as WAV, sample
    for sample (what the page's player plays), its ``audio_url`` the whole stored file."""
    import io

    import soundfile as sf

    parts = [sound(k, 5.0) for k in (8, 9, 10)]
    long = write_wav(tmp_path / "three takes.wav", np.concatenate(parts), subtype="PCM_16")  # 15 s
    with open(long, "rb") as fh:
        r = api(app_url, "POST", "/api/clips", ADMIN, files={"files": ("three takes.wav", fh)},
                data={"model": MODEL, "label": "long-take"})
    assert r.status_code == 200, r.text
    cid = r.json()["added"][0]["id"]
    with open(write_wav(tmp_path / "q.wav", parts[1]), "rb") as fh:  # the middle take
        r = api(app_url, "POST", "/api/search", files={"file": ("q.wav", fh)}, data={"model": MODEL, "label": "long-take"})
    hit = r.json()["hits"][0]
    assert (hit["id"], hit["start_s"], hit["end_s"]) == (cid, 5.0, 10.0) and hit["score"] > 0.99, hit
    assert hit["segment_url"] == f"/api/clips/{cid}/audio?start=5.000&end=10.000"

    r = api(app_url, "GET", hit["segment_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text[:200]
    assert "three%20takes_5.000-10.000s.wav" in r.headers["content-disposition"]
    got, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    stored, _ = sf.read(long, dtype="float32")
    assert rate == 16000 and np.array_equal(got, stored[5 * rate:10 * rate])
    assert api(app_url, "GET", hit["audio_url"]).content == long.read_bytes()

    for query, said in (("?start=5", "Give both start and end"),
                        ("?start=0&end=16", "The end must be a number of seconds from 0 to 15.000"),
                        ("?start=nan&end=2", "The start must be a number of seconds"),
                        ("?start=4&end=3", "The start (4 s) must come before the end (3 s)")):
        r = api(app_url, "GET", f"/api/clips/{cid}/audio{query}")
        assert r.status_code == 400 and said in r.json()["error"], (query, r.text)
    assert api(app_url, "GET", "/api/clips/999999/audio?start=0&end=1").status_code == 404
    assert api(app_url, "DELETE", f"/api/clips/{cid}", ADMIN).json()["deleted"]


def test_an_excerpt_is_at_most_a_minute():
    from search_core.limits import MAX_EXCERPT_S, excerpt_range

    assert excerpt_range("0", str(MAX_EXCERPT_S), 3600.0) == (0.0, MAX_EXCERPT_S)
    with pytest.raises(ValueError, match="An excerpt is at most 60 s long; 0 to 61 s is 61 s"):
        excerpt_range(0, 61, 3600.0)


def test_private_search_logins_and_uploads_share_the_pages_throttle_and_allowance(tmp_path):
    """PUBLIC_SEARCH=false: every endpoint needs the login; the API's uploads count against the page's
    per-address allowance; 5 wrong passwords over the API lock the page's logins too."""
    f = write_wav(tmp_path / "a.wav", sound(1))
    g = write_wav(tmp_path / "b.wav", sound(2))
    env = {"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "false", "UPLOAD_LIMIT_FILES": "3"}
    with running_app(tmp_path / "data", env=env) as url:
        for path in ("/api/count", "/api/clips", "/api/models"):
            r = api(url, "GET", path)
            assert r.status_code == 401 and "Log in as the admin to use this library" in r.json()["error"]
        with open(f, "rb") as fh:
            assert api(url, "POST", "/api/search", files={"file": ("a.wav", fh)}).status_code == 401
        assert count(url, ADMIN) == {"clips": 0, "by_model": {}}
        assert api(url, "GET", "/api/clips/1/audio").status_code == 401  # a hit's audio too

        # uploads: 2 files added + 1 query = the allowance of 3; the next upload, API or page, is refused
        with open(f, "rb") as a, open(g, "rb") as b:
            r = api(url, "POST", "/api/clips", ADMIN, files=[("files", ("a.wav", a)), ("files", ("b.wav", b))],
                    data={"model": MODEL})
        assert r.status_code == 200 and len(r.json()["added"]) == 2
        with open(f, "rb") as fh:
            r = api(url, "POST", "/api/search", ADMIN, files={"file": ("a.wav", fh)}, data={"model": MODEL})
        assert r.status_code == 200 and r.json()["hits"][0]["name"] == "a.wav"
        assert api(url, "GET", r.json()["hits"][0]["audio_url"], ADMIN).content == f.read_bytes()
        with open(f, "rb") as fh:
            r = api(url, "POST", "/api/search", ADMIN, files={"file": ("a.wav", fh)}, data={"model": MODEL})
        assert r.status_code == 429 and "Too many uploads: at most 3 files" in r.json()["error"]
        with open(f, "rb") as fh:
            r = httpx.post(url + "gradio_api/upload", files={"files": ("a.wav", fh)}, timeout=30)
        assert r.status_code == 429 and "Too many uploads" in r.text

        # logins: 5 wrong passwords over the API, then even the right one waits, here and on the page
        for i in range(5):
            r = api(url, "GET", "/api/count", ("admin", f"guess {i}"))
            assert r.status_code == 401 and r.json()["error"] == "Wrong user name or password."
        r = api(url, "GET", "/api/count", ADMIN)
        assert r.status_code == 429 and REFUSED in r.json()["error"] and int(r.headers["Retry-After"]) > 0
        r = httpx.post(url + "login", data={"username": "admin", "password": PASSWORD}, timeout=30)
        assert r.status_code == 429 and REFUSED in r.json()["detail"]
