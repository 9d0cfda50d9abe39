"""The web page at / in a real browser: Debian's headless Chromium driven by Playwright, against a real server.

Skipped with the reason when no Chromium is installed (`apt-get install chromium`; .ci/run installs it). Set
DND_SCREENSHOT=PATH to keep a screenshot of the page after a sample is classified (README's picture)."""

import os
import shutil
from pathlib import Path

import pytest

from dnd.service.settings import Settings

from .test_server import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_page_classifies_samples_and_shows_api_errors(browser, bundle: Path, tmp_path: Path) -> None:
    with serving(Settings(model_dir=bundle, threads=1)) as port:
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('Model ')")
        assert page.locator("#samples button").count() >= 2
        for kind in ("clean", "attacked"):
            page.locator(f"#samples button[data-kind={kind}]").first.click()
            page.wait_for_selector("#result:not([hidden])")
            page.wait_for_function("document.getElementById('path-img').naturalWidth > 0")
            assert (
                page.locator("#label").inner_text() in Settings().model_dir.name or page.locator("#label").inner_text()
            )
            assert page.locator("#verdict").inner_text() in ("Flagged as adversarial", "Not flagged")
            assert page.locator("#probs li").count() == 10
            assert "attack score" in page.locator("#score-text").inner_text()
        if os.environ.get("DND_SCREENSHOT"):
            page.screenshot(path=os.environ["DND_SCREENSHOT"], full_page=True)
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#error:not([hidden])")
        assert "expected" in page.locator("#error").inner_text()  # the API's own words
        assert all(u.startswith(base) or u.startswith("blob:") for u in requests), requests

        narrow = browser.new_page(viewport={"width": 360, "height": 740})
        narrow.goto(base + "/")
        narrow.locator("#samples button").first.click()
        narrow.wait_for_selector("#result:not([hidden])")
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 360  # the path scrolls in its own box
