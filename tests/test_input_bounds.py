"""Every input field has a bound and a sentence when it is exceeded (issue 12, item 8): the engine,
the CLI and the app refuse the same values, and a refused value changes nothing."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import cli_runner, sound, write_wav
from search_core import limits
from search_core.audio import AudioError

MODEL = "mfcc_stats"
PASSWORD = "correct horse battery"
BIG_TAG = "x" * 50_001            # the 50 KB tag filter
HUGE_ID = 2 ** 70                 # the issue's /delete id


def _unchanged(svc, before):
    assert (svc.count(), sorted(p.name for p in svc.library_dir.iterdir())) == before
    assert svc.check() == {k: 0 for k in svc.check()}


def test_engine_refuses_each_over_long_or_out_of_range_value(service, tmp_path):
    svc = service
    f = write_wav(tmp_path / "a.wav", sound(1))
    svc.ingest_file(f, MODEL, label="dog", tags=["outdoor"])
    before = (svc.count(), sorted(p.name for p in svc.library_dir.iterdir()))
    g = write_wav(tmp_path / "b.wav", sound(2))

    # search filters: a sentence, not sqlite's "LIKE or GLOB pattern too complex"
    with pytest.raises(ValueError, match=r"^The tag filter is 50001 characters long; at most 255 are allowed\.$"):
        svc.search(f, MODEL, filters={"tag": BIG_TAG})
    with pytest.raises(ValueError, match=r"^The label filter is 300 characters long"):
        svc.search(f, MODEL, filters={"label": "y" * 300})
    for k in (0, 1001, 2 ** 70, float("nan"), float("inf"), 2.5, "many"):
        with pytest.raises(ValueError, match=r"^The number of results \(top-k\) must be a whole number from 1 to 1000"):
            svc.search(f, MODEL, k=k)
    with pytest.raises(KeyError) as info:  # a made-up model name is not echoed whole
        svc.search(f, "m" * 100_000)
    assert len(str(info.value)) < 300 and "unknown model 'mmm" in str(info.value)
    # clip ids: no OverflowError from the database driver
    for bad in (HUGE_ID, -1, 0, float("inf"), float("nan"), "1; DROP TABLE clips"):
        with pytest.raises(ValueError, match=r"^The clip id must be a whole number from 1 to 9223372036854775807"):
            svc.delete_clip(bad)
    assert svc.delete_clip(2 ** 63 - 1) is False  # in range, just unknown
    # browsing
    with pytest.raises(ValueError, match=r"^The page number|^The list offset"):
        svc.list_clips(MODEL, "", offset=HUGE_ID)
    with pytest.raises(ValueError, match=r"^The browse text is 10000 characters long"):
        svc.list_clips(MODEL, "q" * 10_000)
    # stored metadata is refused whole, never cut or stored unbounded
    for kw, message in (
            (dict(tags=[str(i) for i in range(100_000)]), r"100000 tags were given; at most 50 are allowed per clip\."),
            (dict(tags=["t" * 65]), r"The tag is 65 characters long; at most 64 are allowed\."),
            (dict(label="l" * 256), r"The label is 256 characters long; at most 255 are allowed\."),
            (dict(speaker="s" * 1000), r"The speaker is 1000 characters long"),
            (dict(source="s" * 300), r"The source is 300 characters long"),
            (dict(name="n" * 300 + ".wav"), r"The name is 304 characters long; at most 255 are allowed\.")):
        with pytest.raises(AudioError, match=message):
            svc.ingest_file(g, MODEL, **kw)
        _unchanged(svc, before)
    # 50 tags of 64 characters are fine
    item = svc.ingest_file(g, MODEL, tags=[f"{i:02d}" + "t" * 62 for i in range(50)], label="l" * 255)
    assert len(svc.meta.clip(item.clip_id).tags) == 50
    # speakers
    with pytest.raises(ValueError, match=r"^The speaker name is 256 characters long"):
        svc.speakers.enrol("a" * 256, [f], MODEL)
    with pytest.raises(ValueError, match=r"^The folder path is 5000 characters long"):
        svc.ingest_folder("/" + "d" * 4999, MODEL)


def test_manifest_row_over_a_bound_is_reported_and_the_rest_indexed(service, tmp_path):
    folder = tmp_path / "m"
    write_wav(folder / "ok.wav", sound(3))
    write_wav(folder / "many.wav", sound(4))
    tags = ";".join(f"t{i}" for i in range(60))
    (folder / "manifest.csv").write_text(f"path,label,tags\nok.wav,good,a;b\nmany.wav,x,{tags}\n")
    rep = service.ingest_folder(folder, MODEL, manifest=folder / "manifest.csv")
    assert {i.name: i.status for i in rep.items} == {"ok.wav": "added", "many.wav": "error"}
    assert rep.errors[0].message == "many.wav: 60 tags were given; at most 50 are allowed per clip."
    assert service.check() == {k: 0 for k in service.check()}


def test_limits_functions_take_numbers_as_people_type_them():
    assert limits.clip_id("17") == 17 and limits.clip_id(17.0) == 17 and limits.clip_id(" 5 ") == 5
    assert limits.top_k(20.0) == 20 and limits.page(None) == 1
    assert limits.tags("a, b ,, c") == ["a", "b", "c"] and limits.tags(None) == []
    assert limits.text("  \x00dog\n ", "label") == "dog" and limits.text("", "label") is None
    with pytest.raises(ValueError, match=r"^The user name is 129 characters long"):
        limits.login("u" * 129, "p")
    with pytest.raises(ValueError, match=r"^The password is 1025 characters long"):
        limits.login("admin", "p" * 1025)


def test_cli_refuses_the_same_values(tmp_path):
    cli = cli_runner(tmp_path / "data")
    f = write_wav(tmp_path / "q.wav", sound(5))
    assert cli("count").startswith("0 clips: the library is empty")  # not an empty line
    cli("ingest", str(f), "--model", MODEL)
    out = _stderr_of(tmp_path, "search", str(f), "--model", MODEL, "--tag", BIG_TAG)
    assert "error: The tag filter is 50001 characters long; at most 255 are allowed." in out
    out = _stderr_of(tmp_path, "delete", str(HUGE_ID))
    assert "error: The clip id must be a whole number from 1 to 9223372036854775807" in out
    assert "Traceback" not in out
    assert cli("count").strip() == f"{MODEL}: 1"


def _stderr_of(tmp_path, *args) -> str:
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SEARCH_CORE_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    return out.stderr


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    with running_app(root / "data", env={"ADMIN_PASSWORD": PASSWORD, "PUBLIC_SEARCH": "true",
                                         "GRADIO_TEMP_DIR": str(root / "gradio_tmp")}) as url:
        yield url


def _refused(sentence: str):
    return pytest.raises(Exception, match=sentence)


def test_app_answers_each_bound_with_its_sentence(app_url, tmp_path):
    f = write_wav(tmp_path / "q.wav", sound(6))
    admin = Client(app_url, verbose=False)
    assert "Logged in" in str(admin.predict("admin", PASSWORD, api_name="/login"))
    assert "1 added" in admin.predict([handle_file(str(f))], MODEL, "dog", "", "", api_name="/ingest")[0]
    before = admin.predict(api_name="/count")

    anon = Client(app_url, verbose=False)
    with _refused(r"The tag filter is 50001 characters long; at most 255 are allowed\."):
        anon.predict(handle_file(str(f)), MODEL, 5, "", "", "", BIG_TAG, api_name="/search")
    with _refused(r"The speaker filter is 300 characters long"):
        anon.predict(handle_file(str(f)), MODEL, 5, "", "s" * 300, "", "", api_name="/search")
    # Gradio's slider checks its range itself; the core's bound stands behind it
    with _refused(r"Value 1000000000 is greater than maximum value 20\.|The number of results \(top-k\)"):
        anon.predict(handle_file(str(f)), MODEL, 10 ** 9, "", "", "", "", api_name="/search")
    with _refused(r"not in the list of choices"):  # Gradio's dropdown checks a made-up model itself
        anon.predict(handle_file(str(f)), "m" * 5000, 5, "", "", "", "", api_name="/search")
    with _refused(r"The user name is 10000 characters long"):
        anon.predict("u" * 10_000, "x", api_name="/login")
    with _refused(r"The password is 100000 characters long"):
        anon.predict("admin", "p" * 100_000, api_name="/login")

    with _refused(r"The clip id must be a whole number from 1 to 9223372036854775807"):
        admin.predict(HUGE_ID, MODEL, "", api_name="/delete")
    g = write_wav(tmp_path / "g.wav", sound(7))
    with _refused(r"The tags are 588889 characters long; at most 50 tags of 64 characters are allowed\."):
        admin.predict([handle_file(str(g))], MODEL, "", "", ",".join(map(str, range(100_000))), api_name="/ingest")
    with _refused(r"60 tags were given; at most 50 are allowed per clip\."):
        admin.predict([handle_file(str(g))], MODEL, "", "", ",".join(map(str, range(60))), api_name="/ingest")
    with _refused(r"The label is 300 characters long; at most 255 are allowed\."):
        admin.predict([handle_file(str(g))], MODEL, "l" * 300, "", "", api_name="/ingest")
    with _refused(r"The folder path is 5000 characters long"):
        admin.predict("/" + "d" * 4999, MODEL, api_name="/import_folder")
    with _refused(r"The confirmation is 1000 characters long"):
        admin.predict(MODEL, "c" * 1000, api_name="/drop")
    with _refused(r"The speaker name is 300 characters long"):
        admin.predict("n" * 300, [handle_file(str(g))], MODEL, False, api_name="/enrol_speaker")
    with _refused(r"The speaker name is 300 characters long"):
        admin.predict("n" * 300, MODEL, api_name="/delete_speaker")
    assert admin.predict(api_name="/count") == before
