"""The page as a person uses it: headless Chromium (Debian's) driven by Playwright against app.py.

Adds a clip through the upload control, searches by upload, by an example clip and by the
microphone (Chromium is fed a wav file as its microphone), plays a hit, uploads a non-audio
file, and checks the page on a 390 px wide phone screen. Screenshots go to tests/_artifacts/.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from apphelpers import REPO, running_app
from browserhelpers import (choose_files, chromium, close_page, images_loaded, library_count, new_page, open_tab,
                            screenshot, search_and_wait, toasts, upload_query, wait_query_ready)
from conftest import sound, write_wav

pytest.importorskip("playwright.sync_api")

MODEL = "mfcc_stats"
ASSETS = REPO / "assets"
pytestmark = pytest.mark.timeout(240)


def warble(seconds: float = 4.0, rate: int = 48000) -> np.ndarray:
    """A siren-like warble (900 +- 350 Hz at 2.5 Hz, with harmonics): unlike any other test clip.

    Its statistics are the same over any 3 s window, so a recording that starts anywhere in
    Chromium's looped playback of it still matches the indexed file.
    """
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(900 + 350 * np.sin(2 * np.pi * 2.5 * t)) / rate
    y = 0.5 * np.sin(phase) + 0.2 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)
    return (0.8 * y).astype(np.float32)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def mic_wav(work) -> Path:
    """The file Chromium plays as its microphone: 16-bit PCM at 48 kHz, as its fake capture wants."""
    path = work / "warble_mic.wav"
    sf.write(str(path), warble(), 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def app_url(work):
    with running_app(work / "data", env={"DEFAULT_SOUND_MODEL": MODEL}) as url:
        yield url


@pytest.fixture(scope="module")
def library(app_url, work, mic_wav) -> list[str]:
    """Index the example clips, six generated sounds and the microphone clip through the API."""
    from gradio_client import Client, handle_file

    files = sorted(ASSETS.glob("*.wav")) + [write_wav(work / "lib" / f"sound_{i}.wav", sound(i)) for i in range(6)]
    files.append(mic_wav)
    report, _, _ = Client(app_url, verbose=False).predict([handle_file(str(f)) for f in files], MODEL, "", "", "",
                                                          api_name="/ingest")
    assert f"{len(files)} added" in report
    return [f.name for f in files]


def api_count(app_url) -> int:
    """The clip count for MODEL as the app's /count endpoint reports it."""
    from gradio_client import Client

    m = re.search(rf"\*\*{MODEL}\*\*: (\d+)", Client(app_url, verbose=False).predict(api_name="/count"))
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def browser(mic_wav):
    with chromium(fake_microphone=mic_wav) as b:
        yield b


@pytest.fixture
def page(browser, app_url, request):
    p = new_page(browser, app_url, microphone=True)
    yield p
    close_page(p, f"last-{request.node.name}")


def test_add_a_clip_through_the_upload_control(page, work, app_url):
    clip = write_wav(work / "uploads" / "my_new_chirp.wav", sound(9, seconds=1.5))
    open_tab(page, "Library")
    before = api_count(app_url)
    page.locator("#library-counts", has_text=f"{MODEL}: {before}" if before else "empty").wait_for()
    choose_files(page, "#library-files", clip)
    page.locator("#add-button").click()
    page.locator("#ingest-report", has_text="1 added").wait_for()
    page.locator("#library-counts", has_text=f"{MODEL}: {before + 1}").wait_for()
    assert library_count(page, MODEL) == before + 1
    page.locator("#library-table", has_text="my_new_chirp.wav").wait_for()
    screenshot(page, "library")


def test_search_by_upload_shows_players_scores_and_pictures_and_plays(page, library, app_url):
    upload_query(page, ASSETS / "doorbell.wav")
    titles = search_and_wait(page)
    assert len(titles) == 5 and titles[0] == "#1 doorbell.wav"
    assert [int(t.split()[0][1:]) for t in titles] == [1, 2, 3, 4, 5]

    # a score bar per hit, as wide as the score, best first
    widths = page.eval_on_selector_all(".hit-group:visible .scorefill", "els => els.map(e => e.style.width)")
    pct = [float(w.rstrip("%")) for w in widths]
    assert len(pct) == 5 and pct[0] == 100 and pct == sorted(pct, reverse=True)
    assert "cosine similarity 1.000" in page.locator(".hit-group:visible .hit-meta").first.inner_text()

    # pictures: the query's waveform and spectrogram, a waveform per hit; all loaded, sensibly small
    (qw, qh), = images_loaded(page, "#query-waveform img")
    (sw, sh), = images_loaded(page, "#query-spectrogram img")
    assert (qw, qh) == (640, 80) and (sw, sh) == (640, 120)
    thumbs = images_loaded(page, ".hit-group .hit-wave img")
    assert len(thumbs) == 5 and all(w <= 640 and h <= 100 for w, h in thumbs)

    # a player per hit, served by the app; press play on the first one
    players = page.locator(".hit-group:visible audio")
    assert players.count() == 5
    audio = players.first
    src = audio.get_attribute("src") or audio.evaluate("a => a.currentSrc")
    assert src.startswith(app_url)
    body = page.request.get(src)
    assert body.ok and body.body()[:4] == b"RIFF"
    audio.scroll_into_view_if_needed()
    box = audio.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + box["height"] / 2)  # the play button of the native controls
    page.wait_for_function("a => !a.paused && a.currentTime > 0.2 && a.readyState >= 2",
                           arg=audio.element_handle(), timeout=10_000)
    screenshot(page, "search")


def test_an_example_clip_is_one_click_away(page, library):
    page.locator("#example-clips").get_by_text("bird chirps", exact=True).click()
    wait_query_ready(page)
    assert search_and_wait(page)[0] == "#1 bird_chirps.wav"


def test_the_clip_played_into_the_microphone_is_the_top_hit(page, library, mic_wav):
    box = page.locator("#query-audio")
    box.get_by_role("button", name="Record audio").click()
    box.locator("button.record-button").click()
    page.wait_for_timeout(3000)
    box.locator("button.stop-button").click()
    wait_query_ready(page)
    titles = search_and_wait(page)
    assert titles[0] == f"#1 {mic_wav.name}"
    m = re.search(r"query (\d+\.\d) s", page.locator("#search-status").inner_text())
    assert m and 2.0 <= float(m.group(1)) <= 6.0  # about the 3 s that were recorded


def test_non_audio_upload_is_a_clear_message_and_changes_nothing(page, library, work, app_url):
    bad = work / "uploads" / "notes.wav"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("these are my notes, not a sound")
    open_tab(page, "Library")
    before = api_count(app_url)
    page.locator("#library-counts", has_text=f"{MODEL}: {before}").wait_for()
    choose_files(page, "#library-files", bad)
    page.locator("#add-button").click()
    report = page.locator("#ingest-report", has_text="1 rejected")
    report.wait_for()
    assert "notes.wav: not a readable audio file" in report.inner_text()
    page.locator("[data-testid=toast-text]", has_text="rejected").first.wait_for()
    assert library_count(page, MODEL) == before
    assert "notes.wav" not in page.locator("#library-table").inner_text()

    # the same file as a search query: an error toast naming the problem, no trace, no server path
    open_tab(page, "Search")
    page.locator("#query-audio input[type=file]").set_input_files(str(bad))
    page.locator("#search-button").click()
    page.locator("[data-testid=toast-text]", has_text="not a readable audio file").first.wait_for()
    shown = "\n".join(toasts(page)) + "\n" + page.locator("body").inner_text()
    leaks = [line for line in shown.splitlines() if re.search(r"Traceback|/tmp/|Errno|\.py\b", line)]
    assert not leaks, leaks


def test_phone_width_no_sideways_scrolling_and_search_reachable(browser, app_url, library):
    page = new_page(browser, app_url, width=390, height=844, microphone=True)
    try:
        def page_width():
            return page.evaluate("document.documentElement.scrollWidth")

        assert page_width() <= 390
        button = page.locator("#search-button")
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["width"] >= 200
        button.click()  # reachable and working: no query yet, so a clear message
        page.locator("[data-testid=toast-text]", has_text="Record or upload a clip first").wait_for()

        upload_query(page, ASSETS / "rain.wav")
        assert search_and_wait(page)[0] == "#1 rain.wav"
        images_loaded(page, ".hit-group .hit-wave img")
        assert page_width() <= 390
        for el in page.locator(".hit-group:visible").all():
            b = el.bounding_box()
            assert b["x"] >= 0 and b["x"] + b["width"] <= 390
        screenshot(page, "search-phone")
    finally:
        page.context.close()
