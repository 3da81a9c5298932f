"""AppTest smoke test: the app starts from app.py and renders its home page without an exception."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP_PATH = Path(__file__).resolve().parents[2] / "app.py"

pytestmark = pytest.mark.app


def test_home_page_renders_title_without_exception():
    # NOTE: a generous timeout; the default 3 s is tight for a cold torch import on a 2-core CI machine.
    at = AppTest.from_file(str(APP_PATH), default_timeout=60)
    at.run()

    assert not at.exception
    assert [title.value for title in at.title] == ["PiMoE Studio"]
