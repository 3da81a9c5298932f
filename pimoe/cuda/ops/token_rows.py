"""Tokens to their sorted expert rows, each normalised the way its expert asks, in one Triton pass each way.

Legend: T tokens, K experts per token, A = T * K sorted assignment rows, D hidden size, E experts.

The training path used to gather (A, D) rows in the residual stream's float32 (`train_ops.gather_rows`), normalise
them in a second pass (`ops.row_norm`, writing the GEMM's bf16), and in the backward write the rows' float32
gradient before summing each token's K rows: at the GPU preset's 32,768 tokens that is ~0.8 GB of traffic per layer
for a norm over 512 numbers. A token's K rows all start from the same x[t], so one program per token reads x[t]
once, keeps its mean and variance (both norm kinds follow from them), and writes each of its rows normalised by that
row's expert (LayerNorm, RMSNorm or none; no affine, which `train_norms.fold_norm_affine` moves into the up GEMM):

    n = (x - s * mean) * r,   r = rsqrt(var + eps) for LayerNorm (s = 1), rsqrt(var + mean^2 + eps) for RMSNorm
    (s = 0), 1 for none

Dropped assignments (rows at or past offsets[-1]) get zeros, so every row of the output is written. Backward, per
token: dx = sum over kept rows of r * (g - s * mean(g) - c * n * mean(g * n)), c = 1 for either norm, 0 for none.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.ops.jit import row_address
from pimoe.cuda.packing import NORM_CODES

__all__ = ["MAX_HIDDEN", "token_rows_backward", "token_rows_forward"]

MAX_HIDDEN = 8192  # one token per program, its row held whole in registers


@triton.jit
def _token(x_ptr, D, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    inside = cols < D
    x = tl.load(x_ptr + token * D + cols, mask=inside, other=0.0).to(tl.float32)
    return token, cols, inside, x


@triton.jit
def _slot_norm(slot, expert_ptr, norm_ptr, eps_ptr, mean, var, LAYER: tl.constexpr, NONE: tl.constexpr):
    """The shift and scale of one slot's row: its expert's norm kind applied to the token's statistics."""
    expert = tl.load(expert_ptr + slot).to(tl.int64)  # a dropped slot's expert too: a valid id, its row unused
    code = tl.load(norm_ptr + expert)
    eps = tl.load(eps_ptr + expert).to(tl.float32)
    is_layer = code == LAYER
    second = tl.where(is_layer, var, var + mean * mean)
    scale = tl.where(code != NONE, 1.0 / tl.sqrt(second + eps), 1.0)
    return tl.where(is_layer, mean, 0.0), scale, is_layer, code != NONE


@triton.jit
def token_rows_fwd_kernel(x_ptr, position_ptr, offsets_ptr, expert_ptr, norm_ptr, eps_ptr, out_ptr, out_hi_ptr,
                          stats_ptr, D, E, split, K: tl.constexpr, BLOCK_D: tl.constexpr, ANY_NORM: tl.constexpr,
                          LAYER: tl.constexpr, NONE: tl.constexpr):
    token, cols, inside, x = _token(x_ptr, D, BLOCK_D)
    kept_rows = tl.load(offsets_ptr + E - 1)
    mean = tl.sum(x, axis=0) / D
    centred = tl.where(inside, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=0) / D
    if ANY_NORM:
        tl.store(stats_ptr + token * 2, mean)
        tl.store(stats_ptr + token * 2 + 1, var)
    for k in tl.static_range(K):
        slot = token * K + k
        row = tl.load(position_ptr + slot).to(tl.int64)
        kept = row < kept_rows
        values = x
        if ANY_NORM:
            shift, scale, _, _ = _slot_norm(slot, expert_ptr, norm_ptr, eps_ptr, mean, var, LAYER, NONE)
            values = (x - shift) * scale
        values = tl.where(kept, values, 0.0)  # a dropped assignment's row: zeros, not whatever the memory held
        # a row at or past 2 * split is a dropped assignment of the two-buffer layout: it has no row to write
        tl.store(row_address(out_ptr, out_hi_ptr, row, split, D) + cols, values.to(out_ptr.dtype.element_ty),
                 mask=inside & (cols * 0 + row < 2 * split))


@triton.jit
def token_rows_bwd_kernel(grad_ptr, grad_hi_ptr, x_ptr, position_ptr, offsets_ptr, expert_ptr, norm_ptr, eps_ptr,
                          stats_ptr, dx_ptr, D, E, split, K: tl.constexpr, BLOCK_D: tl.constexpr,
                          ANY_NORM: tl.constexpr, LAYER: tl.constexpr, NONE: tl.constexpr):
    token, cols, inside, x = _token(x_ptr, D, BLOCK_D)
    kept_rows = tl.load(offsets_ptr + E - 1)
    dx = tl.zeros([BLOCK_D], dtype=tl.float32)
    mean = 0.0
    var = 0.0
    if ANY_NORM:
        mean = tl.load(stats_ptr + token * 2)
        var = tl.load(stats_ptr + token * 2 + 1)
    for k in tl.static_range(K):
        slot = token * K + k
        row = tl.load(position_ptr + slot).to(tl.int64)
        # a dropped assignment's row: its gradient is not the token's (and past 2 * split there is no row)
        g = tl.load(row_address(grad_ptr, grad_hi_ptr, row, split, D) + cols,
                    mask=inside & (cols * 0 + row < kept_rows), other=0.0).to(tl.float32)
        if ANY_NORM:
            shift, scale, is_layer, is_norm = _slot_norm(slot, expert_ptr, norm_ptr, eps_ptr, mean, var, LAYER,
                                                         NONE)
            normed = tl.where(inside, (x - shift) * scale, 0.0)
            mean_g = tl.where(is_layer, tl.sum(g, axis=0) / D, 0.0)
            mean_gn = tl.where(is_norm, tl.sum(g * normed, axis=0) / D, 0.0)
            dx += scale * (g - mean_g - normed * mean_gn)
        else:
            dx += g
    tl.store(dx_ptr + token * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _launch_options(hidden: int, any_norm: bool) -> dict:
    block = triton.next_power_of_2(hidden)
    return {"BLOCK_D": block, "ANY_NORM": any_norm, "LAYER": NORM_CODES["layernorm"], "NONE": NORM_CODES["none"],
            "num_warps": max(1, min(8, block // 256))}


def token_rows_forward(x: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor, expert_indices: torch.Tensor,
                       norm: torch.Tensor, eps: torch.Tensor, out_dtype: torch.dtype, any_norm: bool,
                       two_buffers: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (T, D) contiguous; position (T * K,) each slot's sorted row; expert_indices (T, K); norm (E,) int codes and
    eps (E,) float32 of each expert; offsets: group ends, offsets[-1] the kept rows. Returns the (A, D) rows in
    out_dtype, each token's (mean, var) (T, 2) float32 for `token_rows_backward` (empty without any_norm: the rows
    are plain copies then), and None; with two_buffers, positions are virtual rows of `width_classes.class_layout`
    (2A of them, dropped at 2A) and the rows go to two (A, D) buffers, the third value."""
    tokens, hidden = x.shape
    rows = position.shape[0]
    out = torch.empty(rows, hidden, dtype=out_dtype, device=x.device)
    out_hi = torch.empty_like(out) if two_buffers else None
    stats = torch.empty(tokens if any_norm else 0, 2, dtype=torch.float32, device=x.device)
    if tokens:
        token_rows_fwd_kernel[(tokens,)](x, position, offsets, expert_indices, norm, eps, out,
                                         out if out_hi is None else out_hi, stats, hidden, offsets.shape[0], rows,
                                         K=rows // tokens, **_launch_options(hidden, any_norm))
    return out, stats, out_hi


def token_rows_backward(grad: torch.Tensor, x: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                        expert_indices: torch.Tensor, norm: torch.Tensor, eps: torch.Tensor, stats: torch.Tensor,
                        any_norm: bool, grad_hi: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient of x (T, D), in x's dtype, from the gradient of the rows `token_rows_forward` wrote (of both
    buffers with grad_hi)."""
    tokens, hidden = x.shape
    dx = torch.empty_like(x)
    if tokens:
        grad = grad.contiguous()
        token_rows_bwd_kernel[(tokens,)](grad, grad if grad_hi is None else grad_hi.contiguous(), x, position, offsets,
                                         expert_indices, norm, eps, stats, dx, hidden, offsets.shape[0],
                                         position.shape[0], K=position.shape[0] // tokens,
                                         **_launch_options(hidden, any_norm))
    return dx
