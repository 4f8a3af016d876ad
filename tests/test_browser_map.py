"""The Map tab in headless Chromium, as a person uses it: the 211 ESC-50 clips (mfcc_stats) drawn as
dots coloured by label, a dot's name under the pointer, a click plays that clip, and *Search from
this clip* lists and rings its neighbours. The screenshot goes to tests/_artifacts/library-map.png
(docs/library-map.png is a copy)."""
from __future__ import annotations

import json

import pytest
from gradio_client import Client

from apphelpers import running_app
from browserhelpers import chromium, new_page, open_tab, screenshot
from conftest import SHARED_DATA, cli_runner

pytest.importorskip("playwright.sync_api")

MODEL = "mfcc_stats"
ESC50 = SHARED_DATA / "esc50.csv"
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not ESC50.is_file(), reason=f"ESC-50 not found at {ESC50}")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    data = tmp_path_factory.mktemp("map-page") / "data"
    cli_runner(data, timeout=600)("ingest", "--manifest", str(ESC50), "--model", MODEL)
    with running_app(data, env={"DEFAULT_SOUND_MODEL": MODEL}) as url:
        yield url


def point_on_screen(page, m: dict, i: int) -> tuple[float, float]:
    """Where the canvas draws point ``i`` of map ``m`` (the canvas' own arithmetic, see map_tab.MAP_JS)."""
    b = page.locator("#library-map canvas").bounding_box()
    pad = 14
    return (b["x"] + pad + m["x"][i] / 10000 * (b["width"] - 2 * pad),
            b["y"] + pad + (1 - m["y"][i] / 10000) * (b["height"] - 2 * pad))


def test_hover_names_a_dot_and_a_click_plays_it_and_searches_from_it(app_url):
    with chromium() as browser:
        page = new_page(browser, app_url, width=1280, height=1000, timeout_ms=60_000)
        open_tab(page, "Map")
        page.locator("#map-button").click()
        page.locator("#map-status").get_by_text("211 clips").wait_for()
        legend = page.locator("#library-map .libmap-legend").inner_text()
        assert "dog (" in legend and "rooster (" in legend
        # the same (cached, unchanged) map the page drew, read through the API to know where a dot is
        m = json.loads(Client(app_url, verbose=False).predict(MODEL, False, api_name="/library_map")[0])
        i = m["name"].index(next(n for n in m["name"] if m["labels"][m["l"][m["name"].index(n)]] == "rooster"))
        x, y = point_on_screen(page, m, i)
        page.mouse.move(x, y)
        tip = page.locator("#library-map .libmap-tip")
        tip.wait_for(state="visible")
        assert tip.inner_text().endswith(" — rooster")
        # painted: many coloured pixels on the canvas
        painted = page.evaluate("""() => { const c = document.querySelector('#library-map canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let k = 3; k < d.length; k += 4) if (d[k] > 0) n++; return n; }""")
        assert painted > 211 * 20
        screenshot(page, "library-map-hover")

        page.mouse.click(x, y)
        info = page.locator("#map-clip-info")
        info.get_by_text(tip.inner_text().split(" — ")[0]).wait_for()
        assert "label rooster" in info.inner_text()
        page.locator("#map-audio [data-testid=download-link][href*='/file=']").wait_for(state="attached")
        assert page.locator("#map-clip input").input_value() == str(m["id"][i])

        page.locator("#map-search-button").click()
        page.locator("#map-hits").get_by_role("gridcell").nth(5 * 10 - 1).wait_for()  # 10 rows of 5
        rows = page.locator("#map-hits").inner_text()
        assert m["name"][i] not in rows
        page.mouse.move(5, 5)  # no tooltip in the picture
        screenshot(page, "library-map")
