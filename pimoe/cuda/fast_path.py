"""The `cuda_fast` dispatch strategy: the grouped forward when it applies, the sorted dispatch when it does not.

Legend: T routed tokens, D hidden size.

Calls that record autograd (grad enabled and the input or an expert weight requires grad) and calls traced by
`torch.compile` take the differentiable path (`train_path.train_dispatch`: torch custom ops around torch._grouped_mm,
compile- and graph-safe); experts it does not cover (live dropout, unknown modules) go to `sorted_dispatch`, with the
reason logged once. Inference in eager mode keeps the kernels below, unchanged. On CUDA the backend is chosen by dtype, size and what is installed (`choose_backend`, settings in
`active_tuning()`): for bf16 "fused_up" at every size (gather+norm, the Triton up GEMM with its activation in the
epilogue, the Triton down GEMM, both with TMA loads on Hopper and newer), Triton for fp16 / fp32, torch glue around
torch._grouped_mm without Triton, else the sorted dispatch (float64, or nothing installed). On the CPU the same
strategy runs the plain-torch mirror, so CPU tests exercise the padding, sorting and combine logic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pimoe.cuda.availability import triton_available
from pimoe.cuda.fused_router import finish_route
from pimoe.cuda.grouped import grouped_forward
from pimoe.cuda.packing import pack_experts
from pimoe.cuda.train_path import log_fallback, needs_autograd, train_dispatch, train_path_reason
from pimoe.cuda.tuning import active_tuning
from pimoe.layer.dispatch import sorted_dispatch
from pimoe.layer.routing import RoutingInfo

__all__ = ["BACKENDS", "choose_backend", "fast_dispatch", "make_fast_dispatch", "uses_fast_path"]

BACKENDS = ("auto", "triton", "fused_up", "torch")
_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def uses_fast_path(x: torch.Tensor, experts: Sequence[nn.Module]) -> bool:
    """Whether a call takes a fast path: the differentiable one for autograd and `torch.compile`, the inference
    kernels otherwise. False where the experts need the sorted dispatch (live dropout, modules it cannot pack)."""
    if needs_autograd(x, experts) or torch.compiler.is_compiling():
        return train_path_reason(experts) is None
    return not any(e.training and e.dropout.p > 0 for e in experts)


def choose_backend(x: torch.Tensor, requested: str = "auto", assignments: int = 0) -> str | None:
    """The backend for this input (T * K = `assignments` routed rows), or None for the sorted dispatch.

    "auto" on CUDA: bf16 takes the active tuning's `small_backend` up to `switch_rows` rows and `large_backend`
    above (docs/performance.md has the measurements behind both); fp16 and fp32 take Triton.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown fast-path backend {requested!r}; choose one of {BACKENDS}")
    if x.device.type != "cuda":
        return "torch"
    if x.dtype not in _KERNEL_DTYPES:
        return None
    hidden = x.shape[-1]
    kernels_fit = triton_available() and hidden % 16 == 0
    library_gemm = kernels_fit and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
    if requested == "fused_up":
        return requested if library_gemm else None
    if requested == "auto" and library_gemm:
        tuning = active_tuning()
        return tuning.small_backend if assignments <= tuning.switch_rows else tuning.large_backend
    if requested in ("auto", "triton") and kernels_fit:
        return "triton"
    if requested in ("auto", "torch") and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm"):
        return "torch"
    return None


def fast_dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module],
                  backend: str = "auto", residual: bool = False) -> torch.Tensor:
    """Dispatcher interface (tokens (T, D), routing, experts) -> (T, D), the weighted sum of expert outputs; with
    `residual`, x plus that sum (strategies marked fused_residual in `pimoe.layer.strategies`: the combine kernel adds x)."""
    if routing.num_tokens and (needs_autograd(x, experts) or torch.compiler.is_compiling()):
        reason = train_path_reason(experts)
        if reason is None:
            return train_dispatch(x, routing, experts, residual)
        log_fallback(reason)
    chosen = None
    if routing.num_tokens and uses_fast_path(x, experts):
        chosen = choose_backend(x, backend, routing.expert_indices.numel())
    if chosen is None:
        finish_route(routing)  # the sorted dispatch reads the per-expert counts a deferred reduction writes
        mixed = sorted_dispatch(x, routing, experts)
        return x + mixed if residual else mixed
    packed = pack_experts(experts, x.dtype, x.device)
    return grouped_forward(x.contiguous(), routing, packed, chosen, residual)


def make_fast_dispatch(backend: str):
    """A dispatcher bound to one backend (for benchmarks and tests that compare backends)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown fast-path backend {backend!r}; choose one of {BACKENDS}")

    def dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module],
                 residual: bool = False) -> torch.Tensor:
        return fast_dispatch(x, routing, experts, backend, residual)

    dispatch.__name__ = f"fast_dispatch_{backend}"
    return dispatch
