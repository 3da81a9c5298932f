"""Checks on user-supplied tensors, so bad input fails with a message that names the problem, not deep in torch."""

from __future__ import annotations

import math

import torch

__all__ = ["check_attention_mask", "check_hidden_states", "check_temperature", "check_top_k", "host_reads_allowed"]


def host_reads_allowed() -> bool:
    """False while `torch.compile` traces or a CUDA graph captures: value checks that read a tensor back to the host
    would break the graph (compile) or the capture (CUDA graphs), so they are skipped there."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_hidden_states(x: torch.Tensor, hidden_size: int, *, check_finite: bool = True) -> None:
    """x must be a floating (B, S, hidden_size) tensor with B*S > 0 and, unless told otherwise, finite values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"input must be a torch.Tensor of shape [batch, seq, hidden], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"input must have 3 dimensions [batch, seq, hidden], got {x.dim()} with shape {tuple(x.shape)}")
    if x.shape[-1] != hidden_size:
        raise ValueError(f"input hidden size {x.shape[-1]} does not match the model's hidden_size {hidden_size}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"input batch is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    # NOTE: this reads one bool back from the device; GPU fast paths that must not sync pass check_finite=False, and
    # compiled or captured calls skip it.
    if check_finite and host_reads_allowed() and not bool(torch.isfinite(x).all()):
        raise ValueError("input contains NaN or Inf values")


def check_attention_mask(mask: torch.Tensor | None, batch: int, seq: int) -> None:
    """mask, if given, must be (B, S) of 0/1 or bool."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of shape [{batch}, {seq}], got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match the input's [batch, seq] = "
                         f"[{batch}, {seq}]")
    if mask.dtype != torch.bool and host_reads_allowed() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must contain only 0 and 1")


def check_temperature(temperature: float | None) -> None:
    if temperature is None:
        return
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def check_top_k(top_k: int | None, num_experts: int) -> None:
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k!r}")
