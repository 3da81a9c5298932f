"""The combine: each token's K expert rows summed back in token order, with bias and routing weight when the down
GEMM left them out, and the layer's residual in the same pass.

Legend: T tokens, D hidden size, E experts, EP = E + 1 rounded up to a power of two, K experts per token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout, next_pow2
from pimoe.cuda.ops.jit import enter_kernel, row_address
from pimoe.cuda.ops.launch_options import expert_buckets, pdl_options
from pimoe.cuda.tuning import Tuning, active_tuning
from pimoe.layer.routing import RoutingInfo

__all__ = ["combine", "combine_kernel"]


@triton.jit
def _kept_total(counts_ptr, E, EP: tl.constexpr):
    ecols = tl.arange(0, EP)
    return tl.sum(tl.load(counts_ptr + ecols, mask=ecols < E, other=0), axis=0)


@triton.jit
def combine_kernel(y_ptr, y_hi_ptr, position_ptr, counts_ptr, idx_ptr, weight_ptr, b2_ptr, res_ptr, out_ptr, T, D,
                   E, split, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, EP: tl.constexpr,
                   BIAS_WEIGHT: tl.constexpr, RESIDUAL: tl.constexpr, TWO_BUFFERS: tl.constexpr,
                   PDL: tl.constexpr = False):
    """out[t] = sum_k y[position[t, k]] over kept slots; with BIAS_WEIGHT, sum_k w_tk * (y + b2_e); with RESIDUAL,
    res[t] + that sum (the layer's residual in the same pass: one read of x instead of a separate add kernel). With
    TWO_BUFFERS, rows at or past split are read from y_hi (`jit.row_address`)."""
    enter_kernel(PDL)
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    kept = _kept_total(counts_ptr, E, EP)
    rows = pid_t * BT + tl.arange(0, BT)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    col_ok = cols < D
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for k in tl.static_range(K):
        pos = tl.load(position_ptr + rows64 * K + k, mask=row_ok, other=0)
        ok = row_ok & (pos < kept)
        ok2 = ok[:, None] & col_ok[None, :]
        pos64 = pos.to(tl.int64)
        if TWO_BUFFERS:
            row_ptr = row_address(y_ptr, y_hi_ptr, pos64, split, D)
        else:
            row_ptr = y_ptr + pos64 * D
        y = tl.load(row_ptr[:, None] + cols[None, :], mask=ok2, other=0.0).to(tl.float32)
        if BIAS_WEIGHT:
            expert = tl.load(idx_ptr + rows64 * K + k, mask=ok, other=0)
            weight = tl.load(weight_ptr + rows64 * K + k, mask=ok, other=0.0)
            y = (y + tl.load(b2_ptr + expert[:, None] * D + cols[None, :], mask=ok2, other=0.0)) * weight[:, None]
        acc += y
    if RESIDUAL:
        acc += tl.load(res_ptr + rows64[:, None] * D + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def combine(y: torch.Tensor, layout: ExpertLayout, routing: RoutingInfo, out_dtype: torch.dtype,
            b2: torch.Tensor | None, residual: torch.Tensor | None, tuning: Tuning | None = None) -> torch.Tensor:
    tuning = tuning or active_tuning()
    num_tokens, top_k = routing.expert_indices.shape
    hidden = y.shape[1]
    out = torch.empty(num_tokens, hidden, dtype=out_dtype, device=y.device)
    small = num_tokens * top_k <= tuning.combine_small_rows
    block_t = tuning.combine_small_tokens if small else tuning.combine_tokens
    block_d = min(tuning.combine_cols, next_pow2(hidden))
    with_bias = b2 is not None
    combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_d))](
        y, y, layout.position, layout.counts,
        routing.expert_indices if with_bias else layout.counts,
        routing.expert_weights.float() if with_bias else layout.sorted_weight,
        b2 if with_bias else layout.sorted_weight, out if residual is None else residual,
        out, num_tokens, hidden, routing.num_experts, 0,
        K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(routing.num_experts), BIAS_WEIGHT=with_bias,
        RESIDUAL=residual is not None, TWO_BUFFERS=False, num_warps=tuning.combine_warps, **pdl_options(y.device))
    return out
