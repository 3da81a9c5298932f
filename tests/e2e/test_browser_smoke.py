"""Browser smoke test: a user opening the app sees the home page render without an exception."""

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e


def test_opening_app_shows_home_page(page: Page, app_url: str, artifacts_dir: Path):
    page.goto(app_url)

    expect(page.get_by_test_id("stApp")).to_be_visible()
    expect(page.get_by_role("heading", name="PiMoE Studio")).to_be_visible()
    # The info box is the page's last element: once it shows, the script has run to the end.
    expect(page.get_by_test_id("stAlert")).to_contain_text("The PiMoE engine is loading")
    expect(page.get_by_test_id("stException")).to_have_count(0)

    page.screenshot(path=artifacts_dir / "home.png", full_page=True)
