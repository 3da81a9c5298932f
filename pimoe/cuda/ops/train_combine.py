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
from pimoe.cuda.ops.jit import row_address
from pimoe.cuda.ops.launch_options import expert_buckets

__all__ = ["combine_backward", "combine_forward", "sum_token_rows", "two_buffer_combine_backward"]


@triton.jit
def combine_backward_kernel(dy_ptr, y_ptr, y_hi_ptr, position_ptr, offsets_ptr, idx_ptr, weight_ptr, b2_ptr,
                            dy_rows_ptr, dy_hi_ptr, dweight_ptr, T, D, E, split, K: tl.constexpr, BT: tl.constexpr,
                            BD: tl.constexpr, TWO_BUFFERS: tl.constexpr):
    """Backward of out[t] = sum_k w_tk (y[position[t, k]] + b2_e) over kept slots, BT tokens x all D columns:
    dy_rows[position[t, k]] = w_tk dy[t]; dweight[t, k] = <dy[t], y[position[t, k]] + b2_e> (0 for dropped slots).
    With TWO_BUFFERS, rows at or past split live in y_hi and dy_hi (`jit.row_address`)."""
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
        if TWO_BUFFERS:
            y_row = row_address(y_ptr, y_hi_ptr, pos, split, D)
            dy_row = row_address(dy_rows_ptr, dy_hi_ptr, pos, split, D)
        else:
            y_row = y_ptr + pos * D
            dy_row = dy_rows_ptr + pos * D
        y = tl.load(y_row[:, None] + cols[None, :], mask=ok2, other=0.0).to(tl.float32)
        y += tl.load(b2_ptr + expert[:, None] * D + cols[None, :], mask=ok2, other=0.0)
        tl.store(dweight_ptr + rows64 * K + k, tl.sum(dy * y, axis=1), mask=row_ok)
        tl.store(dy_row[:, None] + cols[None, :], (dy * weight[:, None]).to(dy_rows_ptr.dtype.element_ty), mask=ok2)


def combine_forward(y_rows: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                    expert_indices: torch.Tensor, weights: torch.Tensor, b2: torch.Tensor,
                    out_dtype: torch.dtype, y_hi: torch.Tensor | None = None) -> torch.Tensor:
    """(A, D) expert rows -> (T, D): sum_k w_tk (y[position[t, k]] + b2_e) over kept slots (kernels.combine_kernel).
    With y_hi, positions are virtual rows of two buffers (`width_classes.class_layout`): y_rows below A, y_hi from A."""

    num_tokens, top_k = expert_indices.shape
    hidden = y_rows.shape[1]
    num_experts = offsets.shape[0]
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    out = torch.empty(num_tokens, hidden, dtype=out_dtype, device=y_rows.device)
    block_t, block_d = 32, min(128, triton.next_power_of_2(hidden))
    combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_d))](
        y_rows, y_rows if y_hi is None else y_hi, position, counts, expert_indices, weights, b2, out, out, num_tokens,
        hidden, num_experts, y_rows.shape[0], K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(num_experts),
        BIAS_WEIGHT=True, RESIDUAL=False, TWO_BUFFERS=y_hi is not None)
    return out


def combine_backward(dy: torch.Tensor, y_rows: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                     expert_indices: torch.Tensor, weights: torch.Tensor,
                     b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `combine_forward` for dy (T, D): (d y_rows (A, D) in y_rows' dtype, rows no slot references left
    unwritten; d weights (T, K) float32)."""
    dy_rows, _, dweight = _combine_backward(dy, y_rows, None, position, offsets, expert_indices, weights, b2)
    return dy_rows, dweight


def two_buffer_combine_backward(dy: torch.Tensor, y_rows: torch.Tensor, y_hi: torch.Tensor, position: torch.Tensor,
                                offsets: torch.Tensor, expert_indices: torch.Tensor, weights: torch.Tensor,
                                b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`combine_backward` of `combine_forward` with y_hi: (d y_rows, d y_hi, d weights)."""
    return _combine_backward(dy, y_rows, y_hi, position, offsets, expert_indices, weights, b2)


def _combine_backward(dy, y_rows, y_hi, position, offsets, expert_indices, weights, b2):
    num_tokens, top_k = expert_indices.shape
    hidden = y_rows.shape[1]
    dy_rows = torch.empty_like(y_rows)
    dy_hi = None if y_hi is None else torch.empty_like(y_hi)
    dweight = torch.empty(num_tokens, top_k, dtype=torch.float32, device=dy.device)
    block_d = triton.next_power_of_2(hidden)
    block_t = max(1, min(64, 4096 // block_d))
    combine_backward_kernel[(triton.cdiv(num_tokens, block_t),)](
        dy.contiguous(), y_rows, y_rows if y_hi is None else y_hi, position, offsets, expert_indices, weights, b2,
        dy_rows, dy_rows if dy_hi is None else dy_hi, dweight, num_tokens, hidden, offsets.shape[0], y_rows.shape[0],
        K=top_k, BT=block_t, BD=block_d, TWO_BUFFERS=y_hi is not None, num_warps=4)
    return dy_rows, dy_hi, dweight


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
        rows, rows, position, counts, counts, counts, counts, out, out, num_tokens, hidden, num_experts, 0,
        K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(num_experts), BIAS_WEIGHT=False, RESIDUAL=False,
        TWO_BUFFERS=False)
    return out
