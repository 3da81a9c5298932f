"""The weighted combine of the differentiable path: forward (the inference combine kernel) and its backward, which
writes w_tk * dy_t to each expert row and <dy_t, y + b2> to d w_tk in one pass; and the sum of each token's rows
(the gather's backward), with no atomics.

Legend: A sorted assignment rows, D hidden size, E experts, K experts per token, T tokens.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.ops.combine import combine_kernel
from pimoe.cuda.ops.launch_options import expert_buckets

__all__ = ["combine_backward", "combine_forward", "sum_token_rows"]


@triton.jit
def combine_backward_kernel(dy_ptr, y_ptr, position_ptr, offsets_ptr, idx_ptr, weight_ptr, b2_ptr, dy_rows_ptr,
                            dweight_ptr, T, D, E, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Backward of out[t] = sum_k w_tk (y[position[t, k]] + b2_e) over kept slots, BT tokens x all D columns:
    dy_rows[position[t, k]] = w_tk dy[t]; dweight[t, k] = <dy[t], y[position[t, k]] + b2_e> (0 for dropped slots)."""
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BD)
    col_ok = cols < D
    kept = tl.load(offsets_ptr + E - 1)
    dy = tl.load(dy_ptr + rows64[:, None] * D + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                 other=0.0).to(tl.float32)
    for k in tl.static_range(K):
        pos = tl.load(position_ptr + rows64 * K + k, mask=row_ok, other=0).to(tl.int64)
        ok = row_ok & (pos < kept)
        ok2 = ok[:, None] & col_ok[None, :]
        expert = tl.load(idx_ptr + rows64 * K + k, mask=ok, other=0).to(tl.int64)
        weight = tl.load(weight_ptr + rows64 * K + k, mask=ok, other=0.0)
        y = tl.load(y_ptr + pos[:, None] * D + cols[None, :], mask=ok2, other=0.0).to(tl.float32)
        y += tl.load(b2_ptr + expert[:, None] * D + cols[None, :], mask=ok2, other=0.0)
        tl.store(dweight_ptr + rows64 * K + k, tl.sum(dy * y, axis=1), mask=row_ok)
        tl.store(dy_rows_ptr + pos[:, None] * D + cols[None, :], (dy * weight[:, None]).to(
            dy_rows_ptr.dtype.element_ty), mask=ok2)


def combine_forward(y_rows: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                    expert_indices: torch.Tensor, weights: torch.Tensor, b2: torch.Tensor,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """(A, D) expert rows -> (T, D): sum_k w_tk (y[position[t, k]] + b2_e) over kept slots (kernels.combine_kernel)."""

    num_tokens, top_k = expert_indices.shape
    hidden = y_rows.shape[1]
    num_experts = offsets.shape[0]
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    out = torch.empty(num_tokens, hidden, dtype=out_dtype, device=y_rows.device)
    block_t, block_d = 32, min(128, triton.next_power_of_2(hidden))
    combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_d))](
        y_rows, position, counts, expert_indices, weights, b2, out, out, num_tokens, hidden, num_experts,
        K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(num_experts), BIAS_WEIGHT=True, RESIDUAL=False)
    return out


def combine_backward(dy: torch.Tensor, y_rows: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                     expert_indices: torch.Tensor, weights: torch.Tensor,
                     b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `combine_forward` for dy (T, D): (d y_rows (A, D) in y_rows' dtype, rows no slot references left
    unwritten; d weights (T, K) float32)."""
    num_tokens, top_k = expert_indices.shape
    hidden = y_rows.shape[1]
    dy_rows = torch.empty_like(y_rows)
    dweight = torch.empty(num_tokens, top_k, dtype=torch.float32, device=dy.device)
    block_d = triton.next_power_of_2(hidden)
    block_t = max(1, min(64, 4096 // block_d))
    combine_backward_kernel[(triton.cdiv(num_tokens, block_t),)](
        dy.contiguous(), y_rows, position, offsets, expert_indices, weights, b2, dy_rows, dweight, num_tokens, hidden,
        offsets.shape[0], K=top_k, BT=block_t, BD=block_d, num_warps=4)
    return dy_rows, dweight


def sum_token_rows(rows: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor, num_tokens: int,
                   top_k: int) -> torch.Tensor:
    """(A, D) rows -> (T, D): out[t] = sum_k rows[position[t * K + k]] over kept slots (kernels.combine_kernel
    without weights or bias), in rows' dtype with float32 sums."""

    hidden = rows.shape[1]
    num_experts = offsets.shape[0]
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    out = torch.empty(num_tokens, hidden, dtype=rows.dtype, device=rows.device)
    block_t, block_d = 32, min(128, triton.next_power_of_2(hidden))
    combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_d))](
        rows, position, counts, counts, counts, counts, out, out, num_tokens, hidden, num_experts,
        K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(num_experts), BIAS_WEIGHT=False, RESIDUAL=False)
    return out
