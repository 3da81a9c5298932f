"""Benchmark-only CUDA backends of the grouped forward, kept to compare against the engine's "triton" and "fused_up".

Legend: T tokens, D hidden size, E experts, K experts per token, A = T * K assignments, N1 padded up width.

    "hybrid"     (CUDA, bf16): counting sort, gather+norm, torch._grouped_mm for the up projection, then the Triton
                 down GEMM that applies bias, activation and gate as it loads, then a combine.
    "grouped_mm" (CUDA, bf16): counting sort, gather+norm, torch._grouped_mm, the activation pass,
                 torch._grouped_mm, combine.

Both lost to "fused_up" (docs/performance.md), so they left the engine's registry; `STRATEGIES` builds their
`cuda_hybrid` / `cuda_grouped_mm` strategies for `PiMoESystem.use_strategy` and the layer benchmark's `unregistered`.
Where they do not apply (no CUDA, not bf16, no Triton or torch._grouped_mm, autograd) a call takes the same fallbacks as
`cuda_fused_up`: the plain-torch mirror on the CPU, the sorted dispatch elsewhere.

    python -m bench.backends --device cuda --tokens 512,65536 --graph --compare cuda_grouped_mm,cuda_hybrid,sorted

runs `python -m pimoe bench` with these strategies known by name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from types import MappingProxyType

import torch
from torch import nn

from pimoe.cuda.fast_path import choose_backend, uses_fast_path
from pimoe.cuda.fused_router import fused_route
from pimoe.cuda.grouped import torch_forward
from pimoe.cuda.packing import PackedExperts, pack_experts
from pimoe.cuda.tuning import GemmConfig, Tuning, active_tuning
from pimoe.layer.dispatch import sorted_dispatch
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.strategies import DispatchStrategy

__all__ = ["HYBRID_DOWN_LARGE", "STRATEGIES", "grouped_mm_forward", "hybrid_forward", "main"]

# the hybrid backend's down GEMM above `small_rows` rows: with the activation in its prologue, 248 registers, no spill
# at 128 x 128 (128 x 256 spills)
HYBRID_DOWN_LARGE = GemmConfig(128, 128, 64, 8, 3)


def hybrid_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts, tuning: Tuning,
                   residual: bool = False, down_large: GemmConfig = HYBRID_DOWN_LARGE) -> torch.Tensor:
    """x: (T, D) bf16 -> (T, D): torch._grouped_mm for the up projection (a library GEMM keeps its epilogue off the
    tensor cores' critical path), then the Triton down GEMM with bias, activation and gate applied as it loads."""
    from pimoe.cuda.ops.combine import combine
    from pimoe.cuda.ops.down_gemm import down_rows
    from pimoe.cuda.ops.gather import gather_norm
    from pimoe.cuda.ops.sort import sort_by_expert

    layout = sort_by_expert(routing)
    gathered = gather_norm(x, layout, packed)
    pre = torch._grouped_mm(gathered, packed.w1.transpose(1, 2), offs=layout.offsets)  # (A, N1)
    small = routing.expert_indices.numel() <= tuning.small_rows
    cfg = tuning.down_small if small else down_large
    y = down_rows(pre, layout, packed, cfg, prologue_act=True)
    return combine(y, layout, routing, x.dtype, None, x if residual else None)


def grouped_mm_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts, tuning: Tuning,
                       residual: bool = False) -> torch.Tensor:
    """x: (T, D) bf16 -> (T, D) through torch._grouped_mm, with Triton gather+norm, activation and combine."""
    from pimoe.cuda.ops.activate import activate_rows
    from pimoe.cuda.ops.combine import combine
    from pimoe.cuda.ops.gather import gather_norm
    from pimoe.cuda.ops.sort import sort_by_expert

    layout = sort_by_expert(routing)
    gathered = gather_norm(x, layout, packed)
    pre = torch._grouped_mm(gathered, packed.w1.transpose(1, 2), offs=layout.offsets)  # (A, N1)
    hidden_rows = activate_rows(pre, layout, packed, tuning)
    y = torch._grouped_mm(hidden_rows, packed.w2.transpose(1, 2), offs=layout.offsets)  # (A, D), no bias yet
    return combine(y, layout, routing, x.dtype, packed.b2, x if residual else None)


Forward = Callable[..., torch.Tensor]


def _dispatcher(forward: Forward, name: str) -> Callable[..., torch.Tensor]:
    """The dispatcher interface of `pimoe.cuda.fast_dispatch` around one backend forward."""

    def dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module],
                 residual: bool = False) -> torch.Tensor:
        chosen = None
        if routing.num_tokens and uses_fast_path(x, experts):
            # both need what fused_up needs: CUDA, bf16, Triton and torch._grouped_mm ("torch" off CUDA)
            chosen = choose_backend(x, "fused_up", routing.expert_indices.numel())
        if chosen is None:
            mixed = sorted_dispatch(x, routing, experts)
            return x + mixed if residual else mixed
        packed = pack_experts(experts, x.dtype, x.device)
        if chosen == "torch":
            mixed = torch_forward(x.contiguous(), routing, packed)
            return x + mixed if residual else mixed
        return forward(x.contiguous(), routing, packed, active_tuning(), residual)

    dispatch.__name__ = f"{name}_dispatch"
    return dispatch


STRATEGIES: MappingProxyType[str, DispatchStrategy] = MappingProxyType({s.name: s for s in (
    DispatchStrategy("cuda_hybrid", _dispatcher(hybrid_forward, "hybrid"),
                     "fast path, torch._grouped_mm up and the Triton down GEMM with the activation in its prologue",
                     route=fused_route, fused_residual=True),
    DispatchStrategy("cuda_grouped_mm", _dispatcher(grouped_mm_forward, "grouped_mm"),
                     "fast path, torch._grouped_mm for both GEMMs and a separate activation pass",
                     route=fused_route, fused_residual=True),
)})


def main(argv: list[str] | None = None) -> int:
    """`python -m pimoe bench` with the strategies above known to --dispatch and --compare."""
    from pimoe.cli.bench import configure_parser
    from pimoe.cli.bench import main as bench_main

    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.splitlines()[0])
    configure_parser(parser)
    return bench_main(parser.parse_args(argv), unregistered=STRATEGIES)


if __name__ == "__main__":
    raise SystemExit(main())
