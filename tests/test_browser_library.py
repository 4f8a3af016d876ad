"""The Library tab a newcomer meets (issue 16, items 6, 8, 9), in headless Chromium: a clip is deleted
by picking it in the list and confirming, not by typing its id; the list fits a 390 px phone screen;
files added together can each have their own label (typed per file, or from a manifest CSV).
Screenshots go to tests/_artifacts/ (docs/library-phone.png is a copy of one)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from apphelpers import running_app
from browserhelpers import new_page, open_tab, screenshot, search_and_wait, upload_query
from conftest import sound, write_wav

pytest.importorskip("playwright.sync_api")

MODEL = "mfcc_stats"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def app_url(root):
    with running_app(root / "data", env={"DEFAULT_SOUND_MODEL": MODEL, "DEFAULT_SPEAKER_MODEL": MODEL}) as url:
        yield url


def ingest(app_url, *paths, label="", speaker="", tags=""):
    """Add files through the app's /ingest endpoint; returns {name: clip id} of the listed clips."""
    from gradio_client import Client, handle_file

    report, _, table = Client(app_url, verbose=False).predict([handle_file(str(p)) for p in paths], MODEL,
                                                              label, speaker, tags, api_name="/ingest")
    assert f"{len(paths)} added" in report, report
    return {row[1]: int(row[0]) for row in table["data"]}


def clip_count(app_url) -> int:
    from gradio_client import Client

    m = re.search(rf"\*\*{MODEL}\*\*: (\d+)", Client(app_url, verbose=False).predict(api_name="/count"))
    return int(m.group(1)) if m else 0


# -- 6. delete a clip picked in the list, after a confirmation -----------------------------------

def test_a_clip_picked_in_the_list_is_deleted_after_a_confirmation(page, app_url, root):
    ids = ingest(app_url, write_wav(root / "del" / "keep_me.wav", sound(1)),
                 write_wav(root / "del" / "delete_me.wav", sound(2)))
    page.reload()
    page.locator("#search-button").wait_for()
    open_tab(page, "Library")
    table = page.locator("#library-table")
    cell = table.locator("[role=gridcell]", has_text="delete_me.wav")
    cell.wait_for()
    button = page.locator("#delete-button")
    assert button.is_disabled()  # nothing picked yet: no id box that means clip 0
    before = clip_count(app_url)

    cell.click()
    page.locator("#delete-pick", has_text="delete_me.wav").wait_for()
    assert button.is_enabled()
    button.click()
    question = page.locator("#delete-question")
    question.get_by_text(f"delete_me.wav (id {ids['delete_me.wav']})", exact=False).wait_for()
    screenshot(page, "library-delete-confirm")

    page.locator("#delete-cancel").click()  # changed my mind: nothing happens
    question.wait_for(state="hidden")
    assert clip_count(app_url) == before

    button.click()
    page.locator("#delete-yes").click()
    page.locator("[data-testid=toast-text]", has_text=f"Deleted clip {ids['delete_me.wav']}").first.wait_for()
    page.locator("#library-table", has_not_text="delete_me.wav").wait_for()
    assert "keep_me.wav" in table.inner_text()
    assert clip_count(app_url) == before - 1
    assert button.is_disabled()  # the deleted clip is no longer picked



def test_a_search_hit_is_deleted_from_the_results_after_a_confirmation(page, app_url, root):
    ids = ingest(app_url, write_wav(root / "hits" / "wanted_hit.wav", sound(10)),
                 write_wav(root / "hits" / "unwanted_hit.wav", sound(11)))
    before = clip_count(app_url)
    upload_query(page, root / "hits" / "unwanted_hit.wav")
    titles = search_and_wait(page)
    assert titles[0] == "#1 unwanted_hit.wav" and len(titles) > 1
    page.locator(".hit-group:visible .hit-delete").first.click()
    question = page.locator("#hit-delete-question")
    question.get_by_text(f"unwanted_hit.wav (id {ids['unwanted_hit.wav']})", exact=False).wait_for()
    screenshot(page, "search-delete-confirm")
    page.locator("#hit-delete-yes").click()
    page.locator("[data-testid=toast-text]", has_text=f"Deleted clip {ids['unwanted_hit.wav']}").first.wait_for()
    page.locator(".hit-group:visible .hit-title", has_text="unwanted_hit.wav").wait_for(state="detached")
    assert page.locator(".hit-group:visible .hit-title").all_inner_texts() == titles[1:]  # the others stay
    question.wait_for(state="hidden")
    assert clip_count(app_url) == before - 1
    open_tab(page, "Library")  # the Library tab's list and counts know already
    page.locator("#library-table", has_not_text="unwanted_hit.wav").wait_for()


# -- 9. the list on a phone ------------------------------------------------------------------------

def test_the_library_list_shows_every_column_on_a_phone_without_sideways_scrolling(browser, app_url, root):
    ingest(app_url, *[write_wav(root / "phone" / f"front_door_bell_{i}.wav", sound(3 + i)) for i in range(3)],
           label="doorbell", speaker="Anna")
    page = new_page(browser, app_url, width=390, height=844)
    try:
        open_tab(page, "Library")
        table = page.locator("#library-table")
        table.locator("[role=gridcell]", has_text="front_door_bell_1.wav").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        box = table.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
        # nothing scrolls sideways inside the table's box either
        scroll, client = table.locator(".virtual-table-viewport").evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert scroll <= client, (scroll, client)
        headers = table.locator("[role=columnheader]:visible")
        names = [t.strip() for t in headers.all_inner_texts()]
        assert names == ["id", "name", "duration (s)", "added", "label", "speaker", "models"], names
        for h in headers.all():
            b = h.bounding_box()
            assert b["width"] > 0 and b["x"] >= box["x"] - 1 and b["x"] + b["width"] <= box["x"] + box["width"] + 1
        row = table.locator("[role=row]:visible", has_text="front_door_bell_1.wav")
        for text in ("doorbell", "Anna", "mfcc_stats"):  # the label/speaker/models side of the row is on screen
            b = row.locator("[role=gridcell]", has_text=text).bounding_box()
            assert b["x"] >= box["x"] - 1 and b["x"] + b["width"] <= box["x"] + box["width"] + 1, text
        screenshot(page, "library-phone")
    finally:
        page.context.close()


# -- 8. labels per file in one upload ------------------------------------------------------------

def test_files_added_together_each_get_their_own_label_from_a_manifest_or_typed(page, app_url, root):
    work = root / "per_file"
    cat = write_wav(work / "cat_meow.wav", sound(6))
    dog = write_wav(work / "dog_bark.wav", sound(7))
    bird = write_wav(work / "bird_song.wav", sound(0))
    manifest = work / "labels.csv"
    manifest.write_text("path,label,speaker,source,tags\n"
                        "cat_meow.wav,cat,,garden,pet;indoor\n"
                        "dog_bark.wav,dog,,street,pet\n"
                        "not_chosen.wav,ghost,,,\n")
    open_tab(page, "Library")
    page.locator("#library-model input").wait_for()
    page.locator("#library-files input[type=file]").set_input_files([str(cat), str(dog), str(bird)])
    table = page.locator("#per-file-labels")
    table.locator("[role=gridcell]", has_text="bird_song.wav").wait_for()  # a row per chosen file
    page.locator("#library-manifest input[type=file]").set_input_files(str(manifest))
    table.locator("[role=gridcell]", has_text="garden").wait_for()  # the manifest fills the rows by name

    # a label typed for one file: the bird (not in the manifest); the box above applies to the rest
    bird_row = table.locator("[role=row]:visible", has_text="bird_song.wav")
    bird_row.locator("[role=gridcell]").nth(1).dblclick()
    page.keyboard.type("bird")
    page.keyboard.press("Enter")
    table.locator("[role=gridcell]", has_text="bird").first.wait_for()
    page.locator("#library-files").scroll_into_view_if_needed()
    screenshot(page, "library-per-file-labels")
    page.locator("#add-button").click()
    page.locator("#ingest-report", has_text="3 added").wait_for()

    listed = page.locator("#library-table")
    for name, label in (("cat_meow.wav", "cat"), ("dog_bark.wav", "dog"), ("bird_song.wav", "bird")):
        row = listed.locator("[role=row]:visible", has_text=name)
        row.wait_for()
        assert row.locator("[role=gridcell]").nth(4).inner_text().strip() == label, name
    # the manifest's source and tags were stored too: a search filtered on them finds just the cat
    from gradio_client import Client, handle_file
    out = Client(app_url, verbose=False).predict(handle_file(str(cat)), MODEL, 5, "", "", "garden", "indoor",
                                                 api_name="/search")
    assert [h["name"] for h in out[-1]] == ["cat_meow.wav"]
