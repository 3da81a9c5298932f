"""A device a run asks for, checked against what this machine has before anything is built on it."""

from __future__ import annotations

import torch

__all__ = ["available_device", "parse_device"]


def parse_device(device: torch.device | str) -> torch.device:
    """`device` as a torch.device, or ValueError naming a name torch does not know ("tpu")."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a valid torch device: {error}") from None


def available_device(device: torch.device | str) -> torch.device:
    """`device` as a torch.device, or ValueError naming what is missing: a CUDA device on a machine (or a torch
    build) without one, or a GPU index past the visible ones. Without this the first tensor moved there fails deep in
    torch ("Torch not compiled with CUDA enabled", an AssertionError) after the model has been built."""
    device = parse_device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but no CUDA GPU is visible "
                             f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} was asked for but only {count} CUDA GPU"
                             f"{'s are' if count != 1 else ' is'} visible")
    return device
