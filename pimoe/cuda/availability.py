"""Whether the Triton kernels can run here, answered without importing Triton on machines that lack it."""

from __future__ import annotations

import functools
import importlib.util

__all__ = ["triton_available"]


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package is installed (the kernels then compile on first use)."""
    return importlib.util.find_spec("triton") is not None
