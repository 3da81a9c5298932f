"""Turn points: places where a long computation may let other work in the same process go first.

A server that shares one model-compute gate between page requests and background work (the studio's live training)
needs long page computations — a generation, an evaluation over many problems — to step aside now and then, or the
background work stalls for the whole computation. The engine marks where that is safe (between generated tokens,
between evaluation items) with `turn_point()`; whoever runs the computation decides what a turn does by installing a
hook with `sharing_turns(hook)`. With no hook installed a turn point does nothing and costs one context-variable read.

A hook may also raise to abandon the computation (e.g. the request it serves has been replaced); the exception goes
up through the engine like any other.

Timed regions must not hand their turn away (the other work's time would be counted as theirs): `without_turns()`
suspends the hook inside them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["sharing_turns", "turn_point", "without_turns"]

_HOOK: ContextVar[Callable[[], None] | None] = ContextVar("pimoe_turn_hook", default=None)


def turn_point() -> None:
    """A place where the computation in progress may pause for other work (the installed hook, if any)."""
    hook = _HOOK.get()
    if hook is not None:
        hook()


@contextlib.contextmanager
def sharing_turns(hook: Callable[[], None]) -> Iterator[None]:
    """Call `hook()` at every turn point reached inside this block, in this thread (context variables are per thread,
    so other threads' computations are unaffected)."""
    token = _HOOK.set(hook)
    try:
        yield
    finally:
        _HOOK.reset(token)


@contextlib.contextmanager
def without_turns() -> Iterator[None]:
    """No turns inside this block: for regions whose wall time is measured."""
    token = _HOOK.set(None)
    try:
        yield
    finally:
        _HOOK.reset(token)
