"""The live pages' chart element: a Streamlit v2 component that draws a chart spec (studio/figures/canvas.py) on a canvas.

The Routing lab and Live training redraw on every key press or step; there, plotly cost the browser most of its time
under load (see canvas_chart.js). The other pages keep plotly, whose zoom and export matter more than redraw speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

__all__ = ["show_chart"]

_JS = (Path(__file__).with_name("canvas_chart.js")).read_text(encoding="utf-8")
# isolate_styles=False: the chart lives in the page's DOM (no shadow root), so the app's font applies and browser tests
# and the load bench can find its canvas and its redraw counter.
_CHART = st.components.v2.component("pimoe_canvas_chart", js=_JS, isolate_styles=False)


def show_chart(spec: dict[str, Any], *, key: str) -> None:
    """Draw one chart spec in the current container; key: a stable element key (state.py), so redraws reuse it."""
    _CHART(data=spec, key=key)
