"""Will a module a command is about to build fit in the device's free memory? Asked before any weight is allocated.

A layer asked for on the command line (`export --hidden-size 1000000`) used to fail inside torch's allocator with
"you tried to allocate 16000000000000 bytes", after the work before it. The module is built on the meta device first
(shapes only, exact for any configuration) and its weights' bytes compared with what the device has free; the weights
are a lower bound on what a run needs, so a refusal is certain and a pass is not a promise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from itertools import chain

import torch

__all__ = ["available_bytes", "check_fits", "check_training_fits", "weight_bytes"]

GIB = 1024**3


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: the GPU's free bytes, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def weight_bytes(build: Callable[[], torch.nn.Module], dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers) of the module `build()` returns, built on the meta device;
    floating-point tensors counted in `dtype` when given (the dtype the run will cast them to)."""
    with torch.device("meta"):
        module = build()
    parameters = sum(p.numel() for p in module.parameters())
    size = sum(t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
               for t in chain(module.parameters(), module.buffers()))
    return parameters, size


def check_fits(build: Callable[[], torch.nn.Module], devices: torch.device | str | Iterable[torch.device | str],
               what: str, dtype: torch.dtype | None = None, *, copies: int = 1, input_bytes: int = 0,
               free: int | None = None) -> None:
    """ValueError naming `what`, its parameter count and the bytes its weights (`copies` of them, plus `input_bytes`,
    the largest input the run will make) need when they exceed the free memory of any of `devices` (one or several:
    a module built on the CPU and then moved must fit both). `free` overrides the query, for tests. The module is
    built once, on the meta device."""
    parameters, size = weight_bytes(build, dtype)
    parameters, needed = copies * parameters, copies * size
    for device in [devices] if isinstance(devices, (str, torch.device)) else devices:
        device = torch.device(device)
        room = available_bytes(device) if free is None else free
        if needed + input_bytes > room:
            inputs = f" and its input {input_bytes / GIB:,.2f} GiB" if input_bytes else ""
            raise ValueError(f"{what}: {parameters / 1e6:,.1f} M parameters, whose weights need "
                             f"{needed / GIB:,.2f} GiB{inputs}; {device} has {room / GIB:,.2f} GiB free. "
                             "Choose smaller sizes")


def check_training_fits(model: torch.nn.Module, batch_size: int, seq_len: int, vocab_size: int, hidden_size: int,
                        num_layers: int, device: torch.device, *, free: int | None = None) -> None:
    """ValueError when one training step cannot fit on `device` by a bound that undercounts: per token, float32 values
    for three vocabulary-wide rows (logits, log-probabilities, their gradient) and 16 hidden-wide rows per layer, plus
    the weights, their gradients and AdamW's two moments (four float32 copies). Measured on the CPU (one step, peak
    resident memory): 11.0-11.7 KB per token for the tiny preset and 24.9-25.7 KB for the demo's, about 4 x (4 vocab
    + 28 hidden x layers) float32 values, so the bound is ~60% of the need. Without it a batch of 100,000 x 64 bytes
    on the tiny model took all 24 GiB of a machine and was killed."""
    if device.type == "cuda" and device.index is None:  # "cuda" names the current GPU; parameters say cuda:N
        device = torch.device("cuda", torch.cuda.current_device())
    resident = sum(p.numel() * 4 for p in model.parameters() if p.device == device)  # already out of `free`
    weights = 4 * sum(p.numel() * 4 for p in model.parameters()) - resident
    activations = batch_size * seq_len * 4 * (3 * vocab_size + 16 * hidden_size * num_layers)
    free = available_bytes(device) if free is None else free
    if weights + activations > free:
        raise ValueError(f"a batch of {batch_size:,} x {seq_len:,} tokens needs at least {activations / GIB:,.2f} GiB "
                         f"of activations, and the model {weights / GIB:,.2f} GiB for weights, gradients and AdamW's "
                         f"state; {device} has {free / GIB:,.2f} GiB free. Lower the batch size or sequence length")
