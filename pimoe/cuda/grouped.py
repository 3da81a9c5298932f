"""The grouped expert forward: sort assignments by expert, two grouped GEMMs over padded weights, combine.

Legend: T tokens, D hidden size, E experts, K experts per token, A = T * K assignments, N1 padded up width, F padded
hidden width.

Five backends compute the same function:
    "triton"     (CUDA): counting sort, then two Triton grouped GEMMs with gather, norm, bias, activation and routing
                 weight fused in, then a combine. Five launches, no host sync.
    "hybrid"     (CUDA, bf16): counting sort, gather+norm, torch._grouped_mm for the up projection, then the Triton
                 down GEMM that applies bias, activation and gate as it loads, then a combine.
    "grouped_mm" (CUDA, bf16): counting sort, gather+norm, torch._grouped_mm, activation, torch._grouped_mm, combine.
    "fused_up"   (CUDA, bf16): counting sort, gather+norm, the Triton up GEMM with bias, activation and gate in its
                 epilogue (TMA loads on Hopper and newer), torch._grouped_mm down, combine.
    "torch"      (anywhere): the same arithmetic in plain torch ops, the CPU mirror the tests check against the
                 reference; on CUDA it is sync-free too when torch._grouped_mm takes the dtype.
Rows of dropped assignments sort past the last expert and are never computed; the combine skips them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pimoe.cuda.packing import ACT_CODES, NORM_CODES, PackedExperts
from pimoe.layer.routing import RoutingInfo

__all__ = ["ExpertLayout", "GemmConfig", "TUNING", "grouped_forward", "grouped_matmul", "sort_by_expert_torch"]


@dataclass
class ExpertLayout:
    """Assignments in expert order. Dropped assignments (bucket E) come last.

    sorted_token / sorted_expert / sorted_weight: (A,) token, expert and combine weight of each sorted row.
    position: (A,) the sorted row of assignment t * K + k. counts: (E,) int32 kept rows per expert.
    offsets: (E,) int32 running sums of counts (group ends for torch._grouped_mm).
    """

    sorted_token: torch.Tensor
    sorted_expert: torch.Tensor
    sorted_weight: torch.Tensor
    position: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor


@dataclass(frozen=True)
class GemmConfig:
    """One Triton GEMM launch shape: BM x BN tiles, BK deep, warps, software-pipeline stages."""

    bm: int
    bn: int
    bk: int
    warps: int
    stages: int


# `small` serves up to `small_rows` sorted rows. `up_large_gated` is for packs with a gated expert: its tiles carry two
# accumulators, and at 128 x 128 the compiler spills (ptxas: 255 registers + 152 bytes of stack; 128 x 64: 196, none).
# Timings behind the choices: docs/performance.md.
TUNING: dict[str, GemmConfig | int | str | bool] = {
    # "auto" on bf16: `small_backend` up to `switch_rows` sorted rows (A = T * K), `large_backend` above; both are
    # "fused_up" now, the knobs stay for benchmarks. H100: with the activation in the up GEMM's epilogue the uniform
    # layer takes 1571 µs at 65,536 tokens against 1718 for "grouped_mm" (run 6), the typed one 2664 against 3274
    # (run 7: tiles past a narrow expert's width skip their FLOPs). At 512 tokens (1024 rows), each GEMM alone in a
    # graph (bench/results/small-gemms-*-h100-20261127-run14.json): the up GEMM over pre-gathered rows with TMA loads
    # 13.2 µs against 22.7 for the "triton" backend's, which gathers with pointer loads (2048 tokens: 34.6 against
    # 62.5); the layer 59.7 -> 50.6 µs graphed back to back (runs 13 and 15).
    "switch_rows": 2048,
    "small_backend": "fused_up",
    "large_backend": "fused_up",
    # bf16/fp16 router logits on the tensor cores (exact products, float32 sums) instead of float32 FMA:
    # 204 -> 36 µs at 65,536 tokens and 23 -> 5 µs at 512 on an H100 (bench/kernel_profile.py).
    "router_native_dot": True,
    # the activation pass of the grouped_mm backend: BR x BC elements per program
    "act_rows": 8,
    "act_cols": 256,
    "act_warps": 4,
    # drop the column mask of the up GEMM's weight loads when every width is a multiple of BN
    "up_even_n": True,
    "small_rows": 4096,
    "up_small": GemmConfig(64, 64, 64, 4, 3),
    # BK 128: 21.6 vs 29.3 µs at 512 tokens, 46 vs 44 at 2048 (H100, L2 flushed; bench/results/breakdown-*-h100-*)
    "down_small": GemmConfig(64, 64, 128, 4, 3),
    "up_large": GemmConfig(128, 128, 64, 8, 3),
    "up_large_gated": GemmConfig(128, 64, 64, 8, 3),
    # 128 x 256: 0.55 vs 0.62 ms at 65,536 uniform (H200, run 1); as fused_up's down GEMM for the typed pack 2337 vs
    # 2363 µs per layer (H100, mixed-down-typed-65536-h100-20261127.json)
    "down_large": GemmConfig(128, 256, 64, 8, 3),
    # with the activation in its prologue: 248 registers, no spill at 128 x 128 (128 x 256 spills)
    "hybrid_down_large": GemmConfig(128, 128, 64, 8, 3),
    # the "fused_up" backend's up GEMM (bias and activation in the epilogue); TMA loads where the GPU has them
    # 804 µs at 65,536 uniform on an H100 (H200: 823), 128x64 w4: 835 (814); packs with a gated expert (two
    # accumulators per tile): 128x64 w4 1386 µs, 128x128 w8 1489, the others 1846-5524
    # (bench/results/up-epilogue-*-h100-20261127-run5.json, -run7.json)
    "up_act": GemmConfig(128, 128, 64, 8, 3),
    "up_act_gated": GemmConfig(128, 64, 64, 4, 3),
    "up_act_tma": True,
    # the fused_up backend's down GEMM for packs of mixed widths: "library" (torch._grouped_mm over the padded width)
    # or "triton" (each expert over its own width): typed layer 2619 -> 2337 µs at 65,536 tokens, 672 -> 627 at
    # 16,384, graphed back to back on an H100 (bench/results/mixed-down-typed-*-h100-20261127.json)
    "mixed_width_down": "triton",
    # fused_up's down GEMM is the Triton one up to this many rows: 14.0 µs against torch._grouped_mm's 16.2 at 1024
    # rows, 40.5 against 28.5 at 4096 (small-gemms-*-h100-20261127-run14.json)
    "triton_down_rows": 2048,
    # fused_up's down GEMM with TMA loads where the GPU has them, for every size: 11.8 µs against 13.7 (pointer
    # loads) and 16.2 (torch._grouped_mm) at 1024 rows, 25.2 / 32.5 / 28.6 at 4096, 485 / 640 / 508 at 131,072
    # (uniform, each GEMM alone in a graph; small-gemms-*-h100-20261127-run17.json); `down_tma_small` up to
    # `triton_down_rows` rows
    "down_tma": True,
    "down_tma_small": GemmConfig(128, 64, 128, 8, 3),
    "down_tma_large": GemmConfig(128, 256, 64, 8, 3),
    # programmatic dependent launch between the Triton kernels (Hopper and newer; launch.pdl_options)
    "pdl": True,
}


def _next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _flat_keys(routing: RoutingInfo) -> torch.Tensor:
    """(A,) expert of each assignment, E where capacity dropped it."""
    num_experts = routing.num_experts
    keys = routing.expert_indices.reshape(-1)
    return torch.where(routing.dropped.reshape(-1), torch.full_like(keys, num_experts), keys)


def sort_by_expert_torch(routing: RoutingInfo) -> ExpertLayout:
    """The layout in plain torch ops (stable argsort); the Triton counting sort must give the same arrays."""
    num_tokens, top_k = routing.expert_indices.shape
    keys = _flat_keys(routing)
    order = torch.argsort(keys, stable=True)
    assignments = order.numel()
    position = torch.empty_like(order).scatter_(0, order, torch.arange(assignments, device=order.device))
    counts = torch.zeros(routing.num_experts + 1, dtype=torch.int64, device=keys.device)
    counts = counts.scatter_add_(0, keys, torch.ones_like(keys))[:-1]
    return ExpertLayout(
        sorted_token=order // top_k,
        sorted_expert=keys[order],
        sorted_weight=routing.expert_weights.reshape(-1)[order],
        position=position,
        counts=counts.to(torch.int32),
        offsets=counts.cumsum(0).to(torch.int32),
    )


def _grouped_mm_supports(a: torch.Tensor, weight: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    if a.device.type == "cuda":
        # The CUDA kernels take bf16 with 16-byte aligned rows.
        return a.dtype == torch.bfloat16 and a.shape[1] % 8 == 0 and weight.shape[1] % 8 == 0
    return a.dtype in (torch.float32, torch.bfloat16, torch.float16)


def grouped_matmul(a: torch.Tensor, weight: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """(A, in) rows grouped by expert times (E, out, in) nn.Linear-layout weights -> (A, out).

    Rows past the last group are left as torch._grouped_mm leaves them (unspecified); callers never read them.
    Without a grouped kernel for this device and dtype, one matmul per expert (that reads the counts: a host sync on
    CUDA, so only the fallback of a fallback).
    """
    if _grouped_mm_supports(a, weight):
        return torch._grouped_mm(a, weight.transpose(1, 2), offs=layout.offsets)
    out = a.new_zeros(a.shape[0], weight.shape[1])
    start = 0
    for expert, count in enumerate(layout.counts.tolist()):
        if count:
            out[start : start + count] = a[start : start + count] @ weight[expert].t()
        start += count
    return out


def _norm_rows(xs: torch.Tensor, experts: torch.Tensor, packed: PackedExperts) -> torch.Tensor:
    """Each row through its own expert's norm (LayerNorm, RMSNorm or none), in float32 as the modules compute it."""
    x32 = xs.to(packed.b1.dtype)
    code = packed.norm[experts].unsqueeze(-1)
    eps = packed.eps[experts].unsqueeze(-1)
    centred = x32 - x32.mean(-1, keepdim=True)
    layer = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    rms = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    normed = torch.where(code == NORM_CODES["layernorm"], layer, torch.where(code == NORM_CODES["rmsnorm"], rms, x32))
    return (normed * packed.norm_weight[experts] + packed.norm_bias[experts]).to(xs.dtype)


_TORCH_ACTS = {
    ACT_CODES["gelu"]: F.gelu,
    ACT_CODES["gelu_tanh"]: lambda v: F.gelu(v, approximate="tanh"),
    ACT_CODES["relu"]: F.relu,
    ACT_CODES["silu"]: F.silu,
    ACT_CODES["tanh"]: torch.tanh,
}


def _activate_rows(pre: torch.Tensor, experts: torch.Tensor, packed: PackedExperts) -> torch.Tensor:
    """(A, N1) float32 (or float64) pre-activations -> (A, F): act per row's expert, gated halves multiplied, 0 past F_e."""
    width = packed.max_width
    cols = torch.arange(width, device=pre.device)
    row_width = packed.widths[experts].long().unsqueeze(-1)
    gate = pre[:, :width]
    hidden = torch.zeros_like(gate)
    for code in sorted(set(packed.act_host)):
        rows = (packed.act[experts] == code).unsqueeze(-1)
        hidden = torch.where(rows, _TORCH_ACTS[code](gate), hidden)
    if packed.any_gated:
        up_cols = (row_width + cols).clamp(max=pre.shape[1] - 1)
        up = pre.gather(1, up_cols)
        hidden = torch.where(packed.gated[experts].bool().unsqueeze(-1), hidden * up, hidden)
    return torch.where(cols < row_width, hidden, torch.zeros_like(hidden))


def torch_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts) -> torch.Tensor:
    """The grouped forward in plain torch ops. x: (T, D) -> (T, D)."""
    num_tokens, top_k = routing.expert_indices.shape
    layout = sort_by_expert_torch(routing)
    experts = layout.sorted_expert.clamp(max=packed.num_experts - 1)  # dropped rows: any expert, never read
    xs = x[layout.sorted_token]
    if packed.any_norm:
        xs = _norm_rows(xs, experts, packed)
    acc = packed.b1.dtype
    pre = grouped_matmul(xs, packed.w1, layout).to(acc) + packed.b1[experts]
    hidden = _activate_rows(pre, experts, packed).to(x.dtype)
    weight = layout.sorted_weight.to(acc).unsqueeze(-1)
    y = (grouped_matmul(hidden, packed.w2, layout).to(acc) + packed.b2[experts]) * weight
    kept_rows = torch.arange(y.shape[0], device=y.device) < layout.offsets[-1]
    y = torch.where(kept_rows.unsqueeze(-1), y, torch.zeros_like(y))  # rows past the groups hold garbage
    return y[layout.position].view(num_tokens, top_k, -1).sum(1).to(x.dtype)


def grouped_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts, backend: str,
                    residual: bool = False) -> torch.Tensor:
    """Run one backend ("triton", "hybrid", "grouped_mm", "fused_up" or "torch"). x: (T, D) contiguous -> (T, D), the expert
    mixture, or x plus the mixture with `residual` (the kernels add x in their combine pass)."""
    if backend == "torch":
        mixed = torch_forward(x, routing, packed)
        return x + mixed if residual else mixed
    from pimoe.cuda import launch  # Triton: imported only here, on a CUDA path

    if backend == "triton":
        return launch.triton_forward(x, routing, packed, TUNING, residual)
    if backend == "grouped_mm":
        return launch.grouped_mm_forward(x, routing, packed, residual)
    if backend == "hybrid":
        return launch.hybrid_forward(x, routing, packed, TUNING, residual)
    if backend == "fused_up":
        return launch.fused_up_forward(x, routing, packed, TUNING, residual)
    raise ValueError(f"unknown grouped backend {backend!r}; choose 'triton', 'hybrid', 'grouped_mm', "
                     "'fused_up' or 'torch'")
