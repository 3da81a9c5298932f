"""Each sorted row through its expert's input norm (LayerNorm, RMSNorm or none; no affine), forward and backward in
one Triton pass each.

Legend: A sorted assignment rows, D hidden size, E experts.

`pimoe.cuda.train_norms.normalise_rows` in torch runs every row through each norm kind present and picks by the row's
expert with `torch.where`; with its backward (the where's masks, the two norms' backwards, autograd summing the three
branches' gradients) that was ~9 ms of the GPU preset's 52 ms step at 64 x 512 tokens on an H100
(`python bench/preset_profile.py`). Here one program normalises one row the way its expert asks:

    n = (x - s * mean(x)) * r,   r = rsqrt(mean((x - s * mean(x))^2) + eps)  (r = 1 for no norm)

with s = 1 for LayerNorm, 0 otherwise. Backward: dx = r * (g - s * mean(g) - c * n * mean(g * n)), c = 1 for either
norm, 0 for none. The forward keeps the row's shift and r (two floats per row) for the backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.packing import NORM_CODES

__all__ = ["MAX_HIDDEN", "row_norm_backward", "row_norm_forward"]

MAX_HIDDEN = 8192  # one row per program, held whole in registers


@triton.jit
def _row(x_ptr, row_expert_ptr, norm_ptr, eps_ptr, D, BLOCK_D: tl.constexpr, LAYER: tl.constexpr,
         NONE: tl.constexpr):
    """This program's row: its offset, column mask, float32 values, and its expert's norm kind and eps."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    inside = cols < D
    base = row.to(tl.int64) * D
    x = tl.load(x_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
    expert = tl.load(row_expert_ptr + row).to(tl.int64)
    code = tl.load(norm_ptr + expert)
    eps = tl.load(eps_ptr + expert).to(tl.float32)
    return row, cols, inside, base, x, code == LAYER, code != NONE, eps


@triton.jit
def row_norm_fwd_kernel(x_ptr, row_expert_ptr, norm_ptr, eps_ptr, out_ptr, shift_ptr, scale_ptr, D,
                        BLOCK_D: tl.constexpr, LAYER: tl.constexpr, NONE: tl.constexpr):
    row, cols, inside, base, x, is_layer, is_norm, eps = _row(x_ptr, row_expert_ptr, norm_ptr, eps_ptr, D, BLOCK_D,
                                                              LAYER, NONE)
    shift = tl.where(is_layer, tl.sum(x, axis=0) / D, 0.0)
    centred = tl.where(inside, x - shift, 0.0)
    scale = tl.where(is_norm, 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / D + eps), 1.0)
    tl.store(out_ptr + base + cols, (centred * scale).to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(shift_ptr + row, shift)
    tl.store(scale_ptr + row, scale)


@triton.jit
def row_norm_bwd_kernel(grad_ptr, x_ptr, row_expert_ptr, norm_ptr, eps_ptr, shift_ptr, scale_ptr, dx_ptr, D,
                        BLOCK_D: tl.constexpr, LAYER: tl.constexpr, NONE: tl.constexpr):
    row, cols, inside, base, x, is_layer, is_norm, _ = _row(x_ptr, row_expert_ptr, norm_ptr, eps_ptr, D, BLOCK_D,
                                                            LAYER, NONE)
    g = tl.load(grad_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + row)
    scale = tl.load(scale_ptr + row)
    normed = tl.where(inside, (x - shift) * scale, 0.0)
    mean_g = tl.where(is_layer, tl.sum(g, axis=0) / D, 0.0)
    mean_gn = tl.where(is_norm, tl.sum(g * normed, axis=0) / D, 0.0)
    dx = scale * (g - mean_g - normed * mean_gn)
    tl.store(dx_ptr + base + cols, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _launch_options(hidden: int) -> dict:
    block = triton.next_power_of_2(hidden)
    return {"BLOCK_D": block, "LAYER": NORM_CODES["layernorm"], "NONE": NORM_CODES["none"],
            "num_warps": max(1, min(8, block // 256))}


def row_norm_forward(xs: torch.Tensor, row_expert: torch.Tensor, norm: torch.Tensor, eps: torch.Tensor,
                     out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, D) contiguous rows -> (normalised rows in out_dtype, shift (A,), scale (A,)) for row_norm_backward."""
    rows, hidden = xs.shape
    out = torch.empty(rows, hidden, dtype=out_dtype, device=xs.device)
    shift = torch.empty(rows, dtype=torch.float32, device=xs.device)
    scale = torch.empty(rows, dtype=torch.float32, device=xs.device)
    if rows:
        row_norm_fwd_kernel[(rows,)](xs, row_expert, norm, eps, out, shift, scale, hidden, **_launch_options(hidden))
    return out, shift, scale


def row_norm_backward(grad: torch.Tensor, xs: torch.Tensor, row_expert: torch.Tensor, norm: torch.Tensor,
                      eps: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The gradient of the rows (xs' dtype) from the gradient of the normalised rows."""
    rows, hidden = xs.shape
    dx = torch.empty_like(xs)
    if rows:
        row_norm_bwd_kernel[(rows,)](grad.contiguous(), xs, row_expert, norm, eps, shift, scale, dx, hidden,
                                     **_launch_options(hidden))
    return dx
