"""The Routing lab's token strip element: a Streamlit v2 component that lays out `studio.strip.token_strip_spec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

__all__ = ["show_token_strip"]

_JS = (Path(__file__).with_name("token_strip.js")).read_text(encoding="utf-8")
# In the page's DOM (no shadow root), as the live charts: the app's fonts apply and browser tests can read the tokens.
_STRIP = st.components.v2.component("pimoe_token_strip", js=_JS, isolate_styles=False)


def show_token_strip(spec: dict[str, Any], *, key: str) -> None:
    """Draw one strip spec in the current container; key: a stable element key (state.py), so reruns reuse it."""
    _STRIP(data=spec, key=key)
