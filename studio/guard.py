"""Running model work for a page: under the compute lock, with CUDA out-of-memory turned into a message and an offer to
retry on the CPU instead of an exception that takes the page down."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType

from . import state
from .engine import run_locked
from .scheduler import Superseded

__all__ = ["guarded", "in_fragment_rerun", "request_waiting", "switch_to_cpu"]

T = TypeVar("T")


def switch_to_cpu() -> None:
    """Widget callback: make the CPU the selected device (the sidebar picks it up on the rerun)."""
    st.session_state[state.DEVICE] = "cpu"


def _script_requests_probe(count_fragment_reruns: bool) -> Callable[[], bool] | None:
    """A function telling whether this session has a request waiting (a rerun or a stop; with count_fragment_reruns
    also a queued rerun of one fragment); None outside a script run."""
    ctx = get_script_run_ctx()
    requests = getattr(ctx, "script_requests", None)
    if requests is None:
        return None
    # NOTE: ScriptRequests has no public way to peek without consuming the request; `_state` is CONTINUE until
    # one arrives (streamlit 1.67). Missing, it reads as "no request", which is the old behaviour.
    def pending() -> bool:
        kind = getattr(requests, "_state", ScriptRequestType.CONTINUE)
        if kind == ScriptRequestType.RERUN:
            if count_fragment_reruns:
                return True
            data = getattr(requests, "_rerun_data", None)
            return not (getattr(data, "fragment_id_queue", None) and not getattr(data, "is_fragment_scoped_rerun", 0))
        return kind == ScriptRequestType.STOP

    return pending


def _rerun_requested() -> Callable[[], bool] | None:
    """Whether a rerun (or stop) replacing the running script waits. A queued fragment rerun does not replace the
    running script (streamlit lets it finish), so it does not count."""
    return _script_requests_probe(count_fragment_reruns=False)


def in_fragment_rerun() -> bool:
    """Whether the running script is a rerun of fragments only (not the page's full run)."""
    return bool(getattr(get_script_run_ctx(), "fragment_ids_this_run", None))


def request_waiting() -> Callable[[], bool]:
    """Whether the session has anything queued for its script thread, a fragment's rerun included: a page that waits
    on the server (the live metrics waiting for a step) must give the thread back at once."""
    return _script_requests_probe(count_fragment_reruns=True) or (lambda: False)


def guarded(fn: Callable[[], T], *, what: str, key: str) -> T | None:
    """`fn()` through the compute gate. On CUDA out-of-memory: free the cache, explain, offer "Retry on CPU" (a button
    with widget key `key`) and return None. A ValueError from the engine (bad input) is shown as an error, also None.

    While it waits for the gate, a rerun the user asked for meanwhile (a slider moved again, another page opened)
    makes it withdraw: the session's one script thread cannot start that rerun before this call returns, and every
    replaced run used to keep its place in the queue and compute a stale answer (under the 8-session load of
    bench/load_sessions.py, eight requests were seen queued at once behind one routing)."""
    try:
        return run_locked(fn, superseded=_rerun_requested(), label=what)
    except Superseded:
        st.stop()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        st.error(f"The GPU ran out of memory while {what}. Close other jobs or use a smaller input, or run it on the "
                 "CPU instead.")
        st.button("Retry on CPU", key=key, on_click=switch_to_cpu, type="primary")
    except ValueError as error:
        st.error(f"Could not finish {what}: {error}")
    return None
