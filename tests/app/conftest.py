"""AppTest fixtures: a fresh session of the app for each test."""

import pytest
from streamlit.testing.v1 import AppTest
from studio_apptest import new_session


@pytest.fixture
def app() -> AppTest:
    """A new session of the app on the fresh untrained model, already run once (the routing lab is the default)."""
    return new_session()
