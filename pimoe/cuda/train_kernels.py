"""Triton kernels of the differentiable fast path: the activation between the grouped GEMMs (forward, and backward
with the activation recomputed) and the weighted combine's backward. Imported only on CUDA with Triton (or under
TRITON_INTERPRET=1 in tests); `train_ops` holds the plain-torch versions the tests compare against.

Legend: A sorted assignment rows, D hidden size, E experts, K experts per token, T tokens, N1 padded up width (F, or 2F
in a pack with a gated expert), F padded intermediate width.

One pass each over the (A, F) intermediate, where plain torch ops take four to six (bias gather, add, activation,
masks, the gated product, casts): at 65,536 tokens one pass over a bf16 (A, F) tensor moves 0.5 GB. Rows past the
last group (dropped assignments) come out as 0, whatever the GEMM left there. Nothing reads back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.kernels import _tanh

__all__ = ["act_backward", "act_forward", "combine_backward", "combine_forward", "sum_token_rows"]

_BLOCK_ROWS, _BLOCK_COLS = 16, 128


@triton.jit
def _normal_cdf(x):
    """Phi(x) from erfc(|x| / sqrt 2) by the Chebyshev fit `kernels._gelu_erf` uses (fractional error < 1.2e-7)."""
    z = tl.abs(x) * 0.7071067811865476  # 1 / sqrt 2 (literals: Triton 3.9's interpreter mistypes
    # products of a tensor and a module-level tl.constexpr)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -0.82215223 + t * 0.17087277
    poly = 1.48851587 + t * poly
    poly = -1.13520398 + t * poly
    poly = 0.27886807 + t * poly
    poly = -0.18628806 + t * poly
    poly = 0.09678418 + t * poly
    poly = 0.37409196 + t * poly
    poly = 1.00002368 + t * poly
    poly = -1.26551223 + t * poly
    erfc = t * tl.exp(poly - z * z)
    return tl.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


@triton.jit
def _act_and_slope(x, code, ACTS: tl.constexpr):
    """act(x) and act'(x) in float32 with a code per element; only the activations in the ACTS bit mask (bit c for
    packing.ACT_CODES code c) are evaluated, so a uniform pack pays for one."""
    y = tl.zeros_like(x)
    s = tl.zeros_like(x)
    if ACTS & 1:  # gelu (erf)
        cdf = _normal_cdf(x)
        y = tl.where(code == 0, x * cdf, y)
        s = tl.where(code == 0, cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327, s)
    if ACTS & 2:  # gelu (tanh approximation)
        th = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        y = tl.where(code == 1, 0.5 * x * (1.0 + th), y)
        s = tl.where(code == 1, 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * 0.7978845608028654
                     * (1.0 + 3.0 * 0.044715 * x * x), s)
    if ACTS & 4:  # relu
        y = tl.where(code == 2, tl.maximum(x, 0.0), y)
        s = tl.where(code == 2, tl.where(x > 0, 1.0, 0.0), s)
    if ACTS & 8:  # silu
        sig = 1.0 / (1.0 + tl.exp(-x))
        y = tl.where(code == 3, x * sig, y)
        s = tl.where(code == 3, sig * (1.0 + x * (1.0 - sig)), s)
    if ACTS & 16:  # tanh
        th = _tanh(x)
        y = tl.where(code == 4, th, y)
        s = tl.where(code == 4, 1.0 - th * th, s)
    return y, s


@triton.jit
def act_kernel(pre_ptr, b1_ptr, dh_ptr, row_expert_ptr, widths_ptr, gated_ptr, act_ptr, offsets_ptr, h_ptr, dpre_ptr,
               A, N1, F, E, BR: tl.constexpr, BC: tl.constexpr, ACTS: tl.constexpr, ANY_GATED: tl.constexpr,
               BACKWARD: tl.constexpr, FULL: tl.constexpr):
    """Rows [BR block] x intermediate columns [BC block] of F.

    Forward: h = act(pre + b1) (times the up half pre[:, F_e + c] + b1 for gated rows), 0 past F_e and on dropped rows.
    BACKWARD: also the gradient of pre from dh: dpre[:, c] = dh * up * act'(gate), dpre[:, F_e + c] = dh * act(gate).
    FULL (every width F = N1, no gating): every dpre element is written here; otherwise dpre comes zeroed and only a
    row's own columns are stored, so the gate and up halves of different column blocks never write the same place.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_c * BC + tl.arange(0, BC)
    kept = tl.load(offsets_ptr + E - 1)
    row_ok = rows < A
    row_kept = rows < kept
    col_ok = cols < F
    rows64 = rows.to(tl.int64)
    expert = tl.load(row_expert_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    width = tl.load(widths_ptr + expert, mask=row_ok, other=0)
    code = tl.load(act_ptr + expert, mask=row_ok, other=0)[:, None]
    inside = row_kept[:, None] & (cols[None, :] < width[:, None])
    pre_rows = pre_ptr + rows64[:, None] * N1
    bias_rows = b1_ptr + expert[:, None] * N1
    gate = tl.load(pre_rows + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    gate += tl.load(bias_rows + cols[None, :], mask=inside, other=0.0)
    activated, slope = _act_and_slope(gate, code, ACTS)
    hidden = activated
    up = tl.full((BR, BC), 1.0, tl.float32)
    up_cols = width[:, None] + cols[None, :]
    up_mask = inside
    if ANY_GATED:
        is_gated = tl.load(gated_ptr + expert, mask=row_ok, other=0) != 0
        up_mask = inside & is_gated[:, None]
        up_loaded = tl.load(pre_rows + up_cols, mask=up_mask, other=0.0).to(tl.float32)
        up_loaded += tl.load(bias_rows + up_cols, mask=up_mask, other=0.0)
        up = tl.where(up_mask, up_loaded, 1.0)
        hidden = activated * up
    out_mask = row_ok[:, None] & col_ok[None, :]
    tl.store(h_ptr + rows64[:, None] * F + cols[None, :], tl.where(inside, hidden, 0.0).to(h_ptr.dtype.element_ty),
             mask=out_mask)
    if BACKWARD:
        dh = tl.load(dh_ptr + rows64[:, None] * F + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        dgate = tl.where(inside, dh * up * slope, 0.0).to(dpre_ptr.dtype.element_ty)
        dpre_rows = dpre_ptr + rows64[:, None] * N1
        if FULL:
            tl.store(dpre_rows + cols[None, :], dgate, mask=out_mask)
        else:
            tl.store(dpre_rows + cols[None, :], dgate, mask=inside)
            if ANY_GATED:
                tl.store(dpre_rows + up_cols, (dh * activated).to(dpre_ptr.dtype.element_ty), mask=up_mask)


def _acts_mask(act_codes: list[int]) -> int:
    return sum(1 << code for code in set(act_codes))


def act_forward(pre: torch.Tensor, b1: torch.Tensor, row_expert: torch.Tensor, widths: torch.Tensor,
                gated: torch.Tensor, act: torch.Tensor, offsets: torch.Tensor, width: int, act_codes: list[int],
                any_gated: bool) -> torch.Tensor:
    """(A, N1) up-GEMM output without bias -> (A, F) activated intermediate in pre's dtype."""
    rows, n1 = pre.shape
    hidden = torch.empty(rows, width, dtype=pre.dtype, device=pre.device)
    grid = (triton.cdiv(rows, _BLOCK_ROWS), triton.cdiv(width, _BLOCK_COLS))
    act_kernel[grid](pre, b1, pre, row_expert, widths, gated, act, offsets, hidden, hidden, rows, n1, width,
                     offsets.shape[0], BR=_BLOCK_ROWS, BC=_BLOCK_COLS, ACTS=_acts_mask(act_codes), ANY_GATED=any_gated,
                     BACKWARD=False, FULL=False, num_warps=4)
    return hidden


def act_backward(pre: torch.Tensor, b1: torch.Tensor, dh: torch.Tensor, row_expert: torch.Tensor, widths: torch.Tensor,
                 gated: torch.Tensor, act: torch.Tensor, offsets: torch.Tensor, act_codes: list[int], any_gated: bool,
                 full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, N1) up-GEMM output and (A, F) upstream gradient -> (dpre (A, N1), recomputed hidden (A, F)), pre's dtype.
    `full`: every expert is F = N1 wide and ungated (then dpre needs no zero fill)."""
    rows, n1 = pre.shape
    width = dh.shape[1]
    hidden = torch.empty(rows, width, dtype=pre.dtype, device=pre.device)
    dpre = (torch.empty if full else torch.zeros)(rows, n1, dtype=pre.dtype, device=pre.device)
    grid = (triton.cdiv(rows, _BLOCK_ROWS), triton.cdiv(width, _BLOCK_COLS))
    act_kernel[grid](pre, b1, dh, row_expert, widths, gated, act, offsets, hidden, dpre, rows, n1, width,
                     offsets.shape[0], BR=_BLOCK_ROWS, BC=_BLOCK_COLS, ACTS=_acts_mask(act_codes), ANY_GATED=any_gated,
                     BACKWARD=True, FULL=full, num_warps=4)
    return dpre, hidden


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
    from pimoe.cuda.kernels import combine_kernel
    from pimoe.cuda.launch import expert_buckets

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
    from pimoe.cuda.kernels import combine_kernel
    from pimoe.cuda.launch import expert_buckets

    hidden = rows.shape[1]
    num_experts = offsets.shape[0]
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    out = torch.empty(num_tokens, hidden, dtype=rows.dtype, device=rows.device)
    block_t, block_d = 32, min(128, triton.next_power_of_2(hidden))
    combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_d))](
        rows, position, counts, counts, counts, counts, out, out, num_tokens, hidden, num_experts,
        K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(num_experts), BIAS_WEIGHT=False, RESIDUAL=False)
    return out
