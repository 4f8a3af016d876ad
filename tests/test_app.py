"""The app launched on 127.0.0.1 and driven through gradio_client: index, search, count, delete."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app

MODEL = "mfcc_stats"


APP_DATA = None  # the app's data folder: running_app writes the app's output beside it


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    global APP_DATA
    data = APP_DATA = tmp_path_factory.mktemp("app") / "data"
    with running_app(data) as url:
        yield url


def test_index_then_search_through_the_api(app_url, tmp_path):
    from conftest import sound, write_wav

    files = [write_wav(tmp_path / f"clip_{i}.wav", sound(i)) for i in range(4)]
    client = Client(app_url, verbose=False)
    report, counts, table = client.predict([handle_file(str(f)) for f in files], MODEL, "demo", "", "a, b",
                                           api_name="/ingest")
    assert "4 added" in report
    assert f"**{MODEL}**: 4" in counts
    assert {row[1] for row in table["data"]} == {f.name for f in files}

    out = client.predict(handle_file(str(files[2])), MODEL, 3, api_name="/search")
    hits = out[-1]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["name"] == "clip_2.wav" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert hits[0]["label"] == "demo"
    assert "3** hits" in out[2]

    # adding the same files again adds nothing
    report, counts, _ = client.predict([handle_file(str(files[0]))], MODEL, "", "", "", api_name="/ingest")
    assert "0 added, 1 already in the library" in report
    assert f"**{MODEL}**: 4" in client.predict(api_name="/count")


def test_bad_upload_gives_a_clear_error_and_changes_nothing(app_url, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    client = Client(app_url, verbose=False)
    before = client.predict(api_name="/count")
    report, counts, _ = client.predict([handle_file(str(bad))], MODEL, "", "", "", api_name="/ingest")
    assert "1 rejected" in report and "notes.wav: not a readable audio file" in report
    assert counts == before


def test_search_without_a_clip_is_an_error_not_a_crash(app_url):
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="Record or upload a clip first"):
        client.predict(None, MODEL, 3, api_name="/search")


def test_the_terminal_gets_one_line_per_user_error_and_no_gradio_share_hint(app_url):
    """A user's mistake is one line in the app's terminal, not a traceback; the start banner names the
    README's way to a public link, not Gradio's `share=True` (issue 16, item 10)."""
    port = app_url.rstrip("/").rsplit(":", 1)[1]
    log = APP_DATA.parent / f"app-{port}.log"  # where running_app writes the app's output
    before = len(log.read_text())
    with pytest.raises(Exception, match="Record or upload a clip first"):
        Client(app_url, verbose=False).predict(None, MODEL, 3, api_name="/search")
    text = log.read_text()
    added = text[before:]
    assert "[app] Search: Record or upload a clip first." in added
    assert "Traceback" not in added
    assert "share=True" not in text and 'make run ARGS="--share"' in text
