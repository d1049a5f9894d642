"""The desk page, driven end to end in headless Chromium (Debian's package) against the real service."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PLEDGEVAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("PLEDGEVAL_REQUIRE_BROWSER"):
            pytest.fail(f"Chromium required (PLEDGEVAL_REQUIRE_BROWSER) but not found at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots():
    folder = Path(os.environ.get("PLEDGEVAL_SCREENSHOTS") or tempfile.mkdtemp(prefix="desk-screenshots-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"desk screenshots in {folder}")
    return folder


def _swept(client) -> None:
    sweep_id = client.post("/sweep", json={}).json()["sweep_id"]
    deadline = time.monotonic() + 120
    while client.get(f"/sweeps/{sweep_id}").json().get("status") != "completed":
        assert time.monotonic() < deadline, "sweep did not complete"
        time.sleep(0.5)


def test_price_form_shows_pledge_price_comparables_and_errors(server, browser, screenshots):
    client, tables = server
    spus = tables["spus"].filter(tables["spus"]["images"].list.len() > 0)
    title, image = spus["title"][0], spus["images"][0][0]
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    page.goto(f"{client.base_url}/desk/")
    page.fill("#api-key", client.headers["X-API-Key"])
    page.click("#key-form button")
    assert page.text_content("#key-state") == "key set for this tab"

    page.fill("#title", title)
    page.fill("#quantity", "250")
    page.set_input_files("#photo", image)
    page.wait_for_selector("#preview[src^='data:image']")
    page.click("#submit-price")
    page.wait_for_selector("#price-result", state="visible", timeout=60_000)
    pledge = page.text_content("#r-pledge")
    assert float(pledge.replace(",", "")) > 0
    assert page.text_content("#r-decision") in ("accept", "review", "reject")
    assert "250 units" in page.text_content("#r-total")
    assert page.locator("#r-haircut-parts tbody tr").count() == 4
    comparables = page.locator(".comparable")
    assert comparables.count() >= 1
    assert comparables.first.locator(".title").text_content().strip()
    # the thumbnail of a catalogue SPU is fetched with the key and shown
    page.wait_for_function("document.querySelector('.comparable img').naturalWidth > 0", timeout=10_000)
    page.screenshot(path=screenshots / "desk-price.png", full_page=True)

    page.set_input_files("#photo", files=[{"name": "broken.jpg", "mimeType": "image/jpeg",
                                          "buffer": b"\xff\xd8 this is not a JPEG"}])
    page.wait_for_selector("#preview[src^='data:image']", state="attached")
    page.click("#submit-price")
    page.wait_for_selector("#price-error", state="visible", timeout=60_000)
    error = page.text_content("#price-error")
    assert "photo could not be used" in error and "not a readable image" in error
    assert page.is_hidden("#price-result")
    page.screenshot(path=screenshots / "desk-price-error.png", full_page=True)
    page.close()


def test_without_the_key_the_page_says_so(server, browser):
    client, _ = server
    page = browser.new_page()
    page.goto(f"{client.base_url}/desk/")
    page.fill("#title", "Aurora QQ-1 Gold Watch")
    page.click("#submit-price")
    page.wait_for_selector("#price-error", state="visible", timeout=30_000)
    assert "API key is missing or wrong" in page.text_content("#price-error")
    page.close()


def test_book_view_lists_worst_positions_and_their_health(server, browser, screenshots):
    client, _ = server
    _swept(client)
    page = browser.new_page(viewport={"width": 1100, "height": 1200})
    page.goto(f"{client.base_url}/desk/")
    page.fill("#api-key", client.headers["X-API-Key"])
    page.click("#key-form button")
    page.click("#nav-book")
    page.wait_for_selector("#book", state="visible", timeout=30_000)
    assert "positions" in page.text_content("#b-totals")
    assert page.locator("#b-grades .pill").count() >= 1
    assert page.get_attribute("#b-report", "href").endswith("/report")
    rows = page.locator("#b-worst tbody tr")
    assert rows.count() >= 1
    page.screenshot(path=screenshots / "desk-book.png", full_page=True)

    position = rows.first.locator("a").text_content()
    rows.first.locator("a").click()
    page.wait_for_selector("#detail", state="visible", timeout=30_000)
    assert page.text_content("#d-id") == position
    assert page.locator("#d-price polyline").count() == 1  # the SPU's price trend is drawn
    assert page.locator("#d-alerts li").count() >= 1
    page.screenshot(path=screenshots / "desk-position.png", full_page=True)
    page.close()

    report = client.get("/sweeps/latest/report")
    assert report.status_code == 200 and "Worst positions" in report.text
