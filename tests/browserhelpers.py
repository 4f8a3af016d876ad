"""Drive the app in headless Chromium (Debian's /usr/bin/chromium) with Playwright, as a person would.

Playwright's own browser download is not used: tests point it at the system Chromium. The machine
may have no network, so everything Chromium would fetch from the internet is switched off.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"

BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
             "--mute-audio"]


def chromium_path() -> str:
    """The system Chromium, or a precise error saying how to install it."""
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"Chromium not found at {CHROMIUM}: run `make test-deps` "
                                "(apt-get install chromium chromium-driver) or set CHROMIUM=/path/to/chromium")
    return path


def launch_args(fake_microphone: str | os.PathLike | None = None) -> list[str]:
    """Chromium flags; with ``fake_microphone`` (a 16-bit PCM wav) that file is the microphone, looped."""
    args = list(BASE_ARGS)
    if fake_microphone is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_microphone}"]
    return args


@contextlib.contextmanager
def chromium(fake_microphone: str | os.PathLike | None = None):
    """Headless system Chromium driven by Playwright (:func:`launch_args`), closed on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=launch_args(fake_microphone))
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, url: str, width: int = 1280, height: int = 900, microphone: bool = False,
             timeout_ms: float = 30_000):
    """The app at ``url`` in a fresh browser context, once its Search button is there. What goes wrong
    in it (console messages, failed requests, HTTP errors) is kept in ``page.log`` (:func:`close_page`)."""
    ctx = browser.new_context(viewport={"width": width, "height": height},
                              permissions=["microphone"] if microphone else [])
    page = ctx.new_page()
    page.log = []
    page.on("console", lambda m: page.log.append(f"console {m.type}: {m.text}"))
    page.on("requestfailed", lambda r: page.log.append(f"request failed: {r.method} {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and page.log.append(f"HTTP {r.status}: {r.request.method} {r.url}"))
    page.set_default_timeout(timeout_ms)
    try:
        page.goto(url)
        page.locator("#search-button").wait_for()
    except Exception:
        close_page(page, "last-page-that-did-not-load")
        raise
    return page


def close_page(page, name: str) -> None:
    """Keep what ``page`` looked like at the end, pass or fail (a screenshot, its log beside it), and
    close its context."""
    try:
        shot = screenshot(page, name)
        shot.with_suffix(".log").write_text("\n".join(getattr(page, "log", [])) + "\n")
    finally:
        page.context.close()


@pytest.fixture(scope="module")
def browser():
    """One Chromium for a test module (a module wanting a microphone defines its own)."""
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, app_url, request):
    """The module's ``app_url`` in a fresh page, kept as ``last-<test>.png`` when the test ends."""
    p = new_page(browser, app_url)
    yield p
    close_page(p, f"last-{request.node.name}")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def library_count(page, model: str) -> int:
    """The number of clips the Library tab says ``model`` has (0 for an empty library)."""
    text = page.locator("#library-counts").inner_text()
    m = re.search(rf"\b{re.escape(model)}: (\d+)", text)
    return int(m.group(1)) if m else 0


def choose_files(page, selector: str, *paths: str | os.PathLike) -> None:
    """Click an upload area as a person would, pick ``paths`` in the file chooser, wait until each is
    listed as the server's file (its row, named in its ``aria-label``, and its download link).

    Not by the name's text: the listed row shows it as ``<span>stem</span> <span>.ext</span>`` (a
    space between), which only the upload's progress view, shown while the upload runs, holds as
    one string; an upload done before that view was drawn left the test waiting (2 of 9 local runs).
    """
    with page.expect_file_chooser() as chooser:
        page.locator(selector).get_by_text("Click to Upload").click()
    chooser.value.set_files([str(p) for p in paths])
    for p in paths:
        page.locator(f"{selector} td.filename[aria-label={json.dumps(Path(p).name)}]").wait_for(timeout=60_000)
    page.locator(f"{selector} a[href*='file=']").nth(len(paths) - 1).wait_for(state="attached")


def upload_query(page, path: str | os.PathLike) -> None:
    """Put a file into the Search tab's query box through its upload control."""
    box = page.locator("#query-audio")
    upload = box.get_by_role("button", name="Upload file")
    if upload.count():
        upload.click()
    box.locator("input[type=file]").set_input_files(str(path))
    wait_query_ready(page)


def wait_query_ready(page) -> None:
    """Wait until the query box holds a clip the server has (uploaded, recorded or an example)."""
    page.locator("#query-audio [data-testid=download-link][href*='/file=']").wait_for(state="attached")


def search_and_wait(page, timeout_ms: float = 60_000) -> list[str]:
    """Press Search and wait for the results; returns the hit titles ("#1 name.wav", ...)."""
    dismiss_toasts(page)
    status = page.locator("#search-status")
    before = status.inner_text()
    page.locator("#search-button").click()
    page.wait_for_function(
        "([el, before]) => (el.innerText !== before && /hits with/.test(el.innerText))"
        " || document.querySelector('.toast-body .toast-title.error')",
        arg=[status.element_handle(), before], timeout=timeout_ms)
    errors = page.locator(".toast-body:has(.toast-title.error) [data-testid=toast-text]")
    if errors.count():
        raise AssertionError(f"search failed: {errors.first.inner_text()}")
    n = int(re.match(r"\s*(\d+)", status.inner_text()).group(1))
    titles = page.locator(".hit-group:visible .hit-title")
    page.wait_for_function("([sel, n]) => [...document.querySelectorAll(sel)].filter(e => e.offsetParent).length === n",
                           arg=[".hit-group .hit-title", n], timeout=10_000)
    return [t.inner_text() for t in titles.all()]


def dismiss_toasts(page) -> None:
    """Close the notifications on screen (they otherwise stay for 10 s)."""
    for close in page.locator("[data-testid=toast-close]").all():
        close.click()
    page.locator("[data-testid=toast-close]").first.wait_for(state="detached")


def toasts(page) -> list[str]:
    """The texts of the notification toasts on screen."""
    return [t.inner_text() for t in page.locator("[data-testid=toast-text]").all()]


def images_loaded(page, selector: str) -> list[tuple[int, int]]:
    """(naturalWidth, naturalHeight) of every visible image under ``selector``, after it has loaded
    (each is scrolled to first, as a person scrolling the page does: pictures load lazily)."""
    for img in page.locator(selector).all():
        if img.is_visible():
            img.scroll_into_view_if_needed()
    page.wait_for_function(
        "(sel) => [...document.querySelectorAll(sel)].filter(i => i.offsetParent)"
        ".every(i => i.complete && i.naturalWidth > 0)", arg=selector, timeout=15_000)
    return page.eval_on_selector_all(
        selector, "els => els.filter(i => i.offsetParent).map(i => [i.naturalWidth, i.naturalHeight])")


def screenshot(page, name: str) -> Path:
    """A full-page PNG under tests/_artifacts/ (gitignored); copy current ones to docs/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
