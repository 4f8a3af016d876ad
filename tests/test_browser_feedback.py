"""Relevance feedback on a 390 px phone screen, in headless Chromium, as a person does it: search,
press 👍 on a hit far down the list, Search again, then hide what was already seen (issue 14, item 1).
Screenshots go to tests/_artifacts/."""
from __future__ import annotations

import re

import pytest

from apphelpers import running_app
from browserhelpers import chromium, close_page, new_page, screenshot, search_and_wait, upload_query
from conftest import sound, write_wav

pytest.importorskip("playwright.sync_api")

MODEL = "mfcc_stats"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback_page")
    files = [write_wav(root / "lib" / f"sound_{i}.wav", sound(i)) for i in range(10)]
    with running_app(root / "data", env={"DEFAULT_SOUND_MODEL": MODEL}) as url:
        from gradio_client import Client, handle_file

        report, _, _ = Client(url, verbose=False).predict([handle_file(str(f)) for f in files], MODEL, "", "", "",
                                                          api_name="/ingest")
        assert "10 added" in report
        yield url, files


def names(titles: list[str]) -> list[str]:
    return [re.sub(r"^#\d+ ", "", t) for t in titles]


def search_again_and_wait(page) -> list[str]:
    status = page.locator("#search-status")
    before = status.inner_text()
    page.locator("#search-again").click()
    page.wait_for_function("([el, before]) => el.innerText !== before && /^\\s*\\d+ hits with .*searched again/.test(el.innerText)",
                           arg=[status.element_handle(), before], timeout=60_000)
    n = int(re.match(r"\s*(\d+)", status.inner_text()).group(1))
    page.wait_for_function("([sel, n]) => [...document.querySelectorAll(sel)].filter(e => e.offsetParent).length === n",
                           arg=[".hit-group .hit-title", n], timeout=10_000)
    return names([t.inner_text() for t in page.locator(".hit-group:visible .hit-title").all()])


def gap(hit) -> float:
    """How far below the best hit's score this hit is, as its line says."""
    return float(re.search(r"([\d.]+) below the best", hit.locator(".hit .hit-meta").first.inner_text()).group(1))


def test_mark_a_hit_and_search_again_on_a_phone(app_url):
    url, files = app_url
    with chromium() as browser:
        page = new_page(browser, url, width=390, height=844)
        try:
            upload_query(page, files[0])
            first = names(search_and_wait(page))              # the default top 5
            assert first[0] == "sound_0.wav" and len(first) == 5

            last = page.locator(".hit-group:visible").nth(4)
            like = last.locator("button.hit-like")
            box = like.bounding_box()                         # on screen, beside its 👎, inside the phone
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390
            like.click()
            page.wait_for_function("(el) => el.classList.contains('primary')", arg=like.element_handle())
            assert page.locator("#feedback-note").inner_text().startswith("More like: #")

            before = gap(last)
            again = search_again_and_wait(page)               # the liked clip comes closer to the best
            moved = page.locator(".hit-group:visible").nth(again.index(first[4]))
            assert again.index(first[4]) <= 4 and gap(moved) < before / 2, (before, gap(moved), again)
            liked = page.locator(".hit-group:visible").nth(again.index(first[4])).locator("button.hit-like")
            assert "primary" in liked.get_attribute("class")  # its mark follows it to its new place
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            screenshot(page, "feedback-phone")

            page.locator("#hide-seen input").check()          # new clips only: none of the ones shown so far
            fresh = search_again_and_wait(page)
            assert fresh and not set(fresh) & set(first + again)
            assert "clips already shown are hidden" in page.locator("#search-status").inner_text()
        finally:
            close_page(page, "last-feedback-phone")
