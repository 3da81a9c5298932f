"""Running model work for a page: under the compute lock, with CUDA out-of-memory turned into a message and an offer to
retry on the CPU instead of an exception that takes the page down."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st
import torch

from . import state
from .engine import run_locked

__all__ = ["guarded", "switch_to_cpu"]

T = TypeVar("T")


def switch_to_cpu() -> None:
    """Widget callback: make the CPU the selected device (the sidebar picks it up on the rerun)."""
    st.session_state[state.DEVICE] = "cpu"


def guarded(fn: Callable[[], T], *, what: str, key: str) -> T | None:
    """`fn()` under the compute lock. On CUDA out-of-memory: free the cache, explain, offer "Retry on CPU" (a button
    with widget key `key`) and return None. A ValueError from the engine (bad input) is shown as an error, also None."""
    try:
        return run_locked(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        st.error(f"The GPU ran out of memory while {what}. Close other jobs or use a smaller input, or run it on the "
                 "CPU instead.")
        st.button("Retry on CPU", key=key, on_click=switch_to_cpu, type="primary")
    except ValueError as error:
        st.error(f"Could not finish {what}: {error}")
    return None
