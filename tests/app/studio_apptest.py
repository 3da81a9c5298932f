"""Helpers shared by the AppTest modules: switching pages, reading figures and metrics as data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

APP_PATH = Path(__file__).resolve().parents[2] / "app.py"
TIMEOUT_S = 180  # a cold torch import and the first model build on a busy 2-core machine
PAGES = ["app_pages/routing_lab.py", "app_pages/training.py", "app_pages/computation.py",
         "app_pages/performance.py", "app_pages/optimisation.py", "app_pages/guide.py"]


def new_session(source: str = "fresh") -> AppTest:
    """A new browser session of the app, run once on the routing lab. source="fresh" gives the same untrained model
    whatever checkpoint happens to be on disk."""
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT_S)
    at.session_state["model.source"] = source
    return at.run()


def on_page(at: AppTest, page: str) -> AppTest:
    """Switch to `page` (a path under app_pages/) and run it."""
    return at.switch_page(page).run()


def figure(at: AppTest, key: str) -> dict:
    """The plotly figure a chart with widget key `key` sent to the browser, as a dict."""
    for chart in at.get("plotly_chart"):
        if chart.proto.id.endswith(key):
            return json.loads(chart.proto.spec)
    raise KeyError(f"no plotly chart with key {key!r}; charts: {[c.proto.id for c in at.get('plotly_chart')]}")


def component(at: AppTest, name: str, key: str) -> dict:
    """The data a v2 component `name` with element key `key` sent to the browser."""
    elements = at.get("bidi_component")
    for element in elements:
        if element.proto.component_name == name and element.proto.id.endswith(key):
            return json.loads(element.proto.json)
    raise KeyError(f"no {name} with key {key!r}; components: {[c.proto.id for c in elements]}")


def chart(at: AppTest, key: str) -> dict:
    """The chart spec a live-page chart (studio.canvas_chart) with element key `key` sent to the browser."""
    return component(at, "pimoe_canvas_chart", key)


def charts_drawn(at: AppTest) -> int:
    return sum(element.proto.component_name == "pimoe_canvas_chart" for element in at.get("bidi_component"))


def array(value) -> np.ndarray:
    """A plotly data array, decoded from the typed-array form ({'dtype', 'bdata', 'shape'}) plotly.py writes."""
    if isinstance(value, dict) and "bdata" in value:
        shape = [int(n) for n in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)
