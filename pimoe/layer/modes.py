"""Eval mode for a block of code, each module's own mode restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluating"]


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Put the modules in eval mode for the block, then give each back the mode it had.

    NOTE: a module already in eval mode is never touched, not even to "restore" it: a model shared by several
    sessions (the dashboard's) can be routed from many threads at once, and flipping its flag, even briefly, would
    change what a concurrent caller computes (dropout, the adaptive controller).
    """
    flipped = [module for module in modules if module.training]
    for module in flipped:
        module.eval()
    try:
        yield
    finally:
        for module in flipped:
            module.train(True)
