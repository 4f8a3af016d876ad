"""The page a newcomer meets (issue 16), in headless Chromium: the model dropdown tells the truth
whenever the page is loaded or the dropdown opened; a failed action shows one message and leaves
the earlier results alone; the Speakers and Duplicates tables are fresh on every load and after
each change, and say what would fill them when empty. Screenshots go to tests/_artifacts/."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from apphelpers import REPO, running_app
from browserhelpers import choose_files, open_tab, screenshot, search_and_wait, upload_query
from conftest import sound, write_wav

pytest.importorskip("playwright.sync_api")

MODEL = "mfcc_stats"
ASSETS = REPO / "assets"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("page")


@pytest.fixture(scope="module")
def app_url(root):
    """The app offline, with an empty weights folder and PaddleSpeech home: only mfcc_stats is ready."""
    (root / "weights").mkdir()
    env = {"WEIGHTS_DIR": str(root / "weights"), "PPSPEECH_HOME": str(root / "ppspeech"),
           "DEFAULT_SOUND_MODEL": MODEL, "DEFAULT_SPEAKER_MODEL": MODEL}
    with running_app(root / "data", env=env) as url:
        yield url


def model_options(page, elem_id: str) -> dict[str, str]:
    """Open the dropdown ``elem_id`` as a person would and read its options: {model: status words}."""
    page.locator(f"#{elem_id} input").click()
    options = page.locator(f"#{elem_id} [data-testid=dropdown-option]")
    options.first.wait_for()
    out = {}
    for label in options.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))"):
        name, rest = label.split(" — ", 1)
        out[name] = rest.split(" kHz, ", 1)[1]
    return out


def close_dropdown(page) -> None:
    page.keyboard.press("Escape")
    page.locator("#page-intro").click()


def test_model_status_is_true_on_load_and_when_the_dropdown_opens(page, root, tmp_path_factory):
    from test_paddle_threads import wheel_weights

    weights = root / "weights"
    st = model_options(page, "search-model")
    assert st["mfcc_stats"] == "ready"
    assert st["aisfx"] == "downloads on first use (25 MB)"
    assert st["resemblyzer"] == "downloads on first use (17 MB)"
    assert st["panns_cnn14"] == f"needs panns_cnn14.pdparams (or panns_cnn14.tar.gz) in {weights}"
    assert st["ecapa_tdnn"] == f"needs sv0_ecapa_tdnn_voxceleb12_ckpt_0_2_0.tar.gz in {weights}"
    assert st["yamnet"] == "downloads on first use (7 MB) · opt-in: licence not stated"
    screenshot(page, "model-status")
    close_dropdown(page)

    # the weights arrive (as the first use would bring them) while the app runs
    staged = wheel_weights(tmp_path_factory.mktemp("staged-weights"))
    aisfx_file = next(staged.glob("aisfx-*"))
    shutil.copy2(aisfx_file, weights / aisfx_file.name)
    page.reload()
    page.locator("#search-button").wait_for()
    # fresh on page load: the page's load event brings the statuses (the first paint has the start-up ones)
    page.locator("#search-model input").click()
    page.locator("#search-model [data-testid=dropdown-option][aria-label^='aisfx — '][aria-label$=', ready']") \
        .wait_for()
    close_dropdown(page)
    st = model_options(page, "search-model")
    assert st["aisfx"] == "ready", st
    assert st["resemblyzer"] == "downloads on first use (17 MB)"
    close_dropdown(page)

    resemblyzer_file = next(staged.glob("resemblyzer-*"))
    shutil.copy2(resemblyzer_file, weights / resemblyzer_file.name)
    open_tab(page, "Speakers")
    page.locator("#speaker-model input").click()
    page.locator("#speaker-model [data-testid=dropdown-option][aria-label^='resemblyzer — '][aria-label$=', ready']") \
        .wait_for()  # fresh when the dropdown is opened, without a reload
    close_dropdown(page)


def error_pills(page) -> int:
    """How many components show Gradio's red "Error" status."""
    return page.locator("[data-testid=status-tracker] span.error:visible").count()


def test_a_failed_search_shows_one_message_and_keeps_the_results(page, app_url, root):
    from gradio_client import Client, handle_file

    files = [write_wav(root / "hits" / f"pagehit_{i}.wav", sound(i)) for i in range(6)]
    report, _, _ = Client(app_url, verbose=False).predict([handle_file(str(f)) for f in files], MODEL, "", "", "",
                                                          api_name="/ingest")
    assert "6 added" in report
    upload_query(page, files[2])
    titles = search_and_wait(page)
    assert titles[0] == "#1 pagehit_2.wav"

    page.locator("#search-model input").click()
    page.locator("#search-model [data-testid=dropdown-option][aria-label^='panns_cnn14 — ']").click()
    page.locator("#search-button").click()
    toast = page.locator("[data-testid=toast-text]", has_text="panns_cnn14 weights not installed")
    toast.first.wait_for()
    assert "https://bj.bcebos.com/paddleaudio/models/panns_cnn14.pdparams" in toast.first.inner_text()
    page.wait_for_timeout(500)
    assert error_pills(page) <= 1, f"{error_pills(page)} components show 'Error'"
    # the earlier results are still there, readable
    visible = page.locator(".hit-group:visible .hit-title").all_inner_texts()
    assert visible[:1] == ["#1 pagehit_2.wav"]
    assert "hits with" in page.locator("#search-status").inner_text()
    screenshot(page, "search-error")

    # the same for adding files with that model: one message; the counts and the list stay
    for close in page.locator("[data-testid=toast-close]").all():
        close.click()
    open_tab(page, "Library")
    counts = page.locator("#library-counts").inner_text()
    page.locator("#library-model input").click()
    page.locator("#library-model [data-testid=dropdown-option][aria-label^='panns_cnn14 — ']").click()
    choose_files(page, "#library-files", files[0])
    page.locator("#add-button").click()
    page.locator("[data-testid=toast-text]", has_text="panns_cnn14 weights not installed").first.wait_for()
    page.wait_for_timeout(500)
    assert error_pills(page) <= 1, f"{error_pills(page)} components show 'Error'"
    assert page.locator("#library-counts").inner_text() == counts


def test_speakers_and_duplicates_are_fresh_on_load_and_say_what_fills_them(page, app_url, root):
    from gradio_client import Client, handle_file

    open_tab(page, "Speakers")
    page.locator("#speakers-note", has_text="No speaker enrolled").wait_for()
    open_tab(page, "Duplicates")
    page.locator("#duplicates-note", has_text="No near-duplicates").wait_for()

    # changes made elsewhere (another visitor, the API): seen after a reload
    work = root / "dups"
    rng = np.random.default_rng(3)
    y = (0.3 * rng.standard_normal(32000)).astype(np.float32)
    original = write_wav(work / "original_take.wav", y)
    quieter = write_wav(work / "quieter_copy.wav", 0.5 * y)
    client = Client(app_url, verbose=False)
    client.predict([handle_file(str(original))], MODEL, "", "", "", api_name="/ingest")
    client.predict([handle_file(str(quieter))], MODEL, "", "", "", api_name="/ingest")
    client.predict("Ada", [handle_file(str(original))], MODEL, False, api_name="/enrol_speaker")
    page.reload()
    page.locator("#search-button").wait_for()
    open_tab(page, "Speakers")
    page.locator("#speakers-table", has_text="Ada").wait_for()
    assert "No speaker enrolled" not in page.locator("#speakers-note").inner_text()
    open_tab(page, "Duplicates")
    page.locator("#duplicates-table", has_text="quieter_copy.wav").wait_for()
    assert "No near-duplicates" not in page.locator("#duplicates-note").inner_text()

    # a change made on this page refreshes the other tab's table: delete the copy in the Library tab
    copy_id = next(int(r[2]) for r in client.predict(api_name="/duplicates")["data"] if r[3] == "quieter_copy.wav")
    open_tab(page, "Library")
    page.locator("#library-table [role=gridcell]", has_text="quieter_copy.wav").click()
    page.locator("#delete-button").click()
    page.locator("#delete-yes").click()
    page.locator("[data-testid=toast-text]", has_text=f"Deleted clip {copy_id}").first.wait_for()
    open_tab(page, "Duplicates")
    page.locator("#duplicates-note", has_text="No near-duplicates").wait_for()
    assert "quieter_copy.wav" not in page.locator("#duplicates-table").inner_text()
    screenshot(page, "duplicates-empty")
