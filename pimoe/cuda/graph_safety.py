"""What the layer's automatic CUDA graphs must find before a capture: host syncs a capture would meet, hooks a replay
would skip."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules import module as nn_module

__all__ = ["has_forward_hooks", "random_state_kept_on_failure", "submodules_of", "syncs_reported"]


def syncs_reported(system: nn.Module, call: Callable[[], object]) -> str | None:
    """Run call() eagerly under torch's sync debug mode; the first host sync it reports, or None.

    CUDA aborts a capture that meets a sync, and an aborted capture leaves torch's CUDA random generator unusable for
    the rest of the process ("Offset increment outside graph capture encountered unexpectedly", H100, torch 2.11), so
    syncs must be found before a capture, not by one. "warn", not "error": the mode is process-wide, and another
    thread's sync in this window must not raise there. The layer's own input check (a sync, run outside the graph) is
    off for the probe."""
    check_finite = getattr(system, "check_finite", None)
    if check_finite is not None:
        system.check_finite = False
    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
    finally:
        if check_finite is not None:
            system.check_finite = check_finite
    # torch's own "sync debug mode is a prototype" notice comes through here too: only reports of a sync count
    syncs = [str(item.message) for item in caught if "called a synchronizing CUDA operation" in str(item.message)]
    return syncs[0][:200] if syncs else None


def submodules_of(system: nn.Module) -> tuple[nn.Module, ...]:
    return tuple(child for child in system.modules() if child is not system)


def has_forward_hooks(submodules: tuple[nn.Module, ...]) -> bool:
    """Forward hooks a replay would skip: the layer's own run around forward (outside the graph), its children's not."""
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(child._forward_hooks or child._forward_pre_hooks for child in submodules)


@contextlib.contextmanager
def random_state_kept_on_failure(device: torch.device):
    """Around a CUDA graph capture: if it fails, give the device's default random generator a copy of its state from
    before. A capture registers that generator and an aborted one leaves it in capture mode for good (every later
    torch.randn on the device raises "Offset increment outside graph capture encountered unexpectedly", H100, torch
    2.11); a fresh state object is not in capture mode."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator = torch.cuda.default_generators[index]
    saved = generator.clone_state() if hasattr(generator, "clone_state") else None
    try:
        yield
    except BaseException:
        if saved is not None:
            generator.graphsafe_set_state(saved)
        raise
