"""In a real browser: choosing "Hugging Face model" in the sidebar opens the shipped Qwen3-MoE in the routing lab with
every panel drawn."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from test_studio import save_full_page, wait_until_drawn, wait_until_idle

pytestmark = pytest.mark.e2e

LOAD_TIMEOUT_MS = 120_000  # first transformers import and model load on a shared 2-core machine


def test_choosing_the_hugging_face_model_shows_every_panel(page: Page, screenshot_dir):
    page.goto("/")
    wait_until_idle(page)
    page.get_by_test_id("stSidebar").get_by_text("Hugging Face model", exact=True).click()
    expect(page.get_by_role("heading", name="Counterfactual: the continuation under your routing")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS)
    wait_until_idle(page)
    wait_until_drawn(page)
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(7)
    expect(page.get_by_text("Chosen experts per layer and token")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    save_full_page(page, screenshot_dir / "routing_lab_hf.png")
