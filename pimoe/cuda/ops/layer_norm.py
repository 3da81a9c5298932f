"""LayerNorm with affine over float32 rows, forward and backward in one Triton pass each (the LM's own norms).

Legend: N rows, D hidden size, P programs of the backward.

Under bf16 autocast the LM's residual stream stays float32 and torch runs its LayerNorms in float32: at the GPU preset's
64 x 512 tokens that was 3.8 ms of a 37.8 ms step on an H100, half of it `GammaBetaBackwardCUDAKernelTemplate` summing
dy * xhat and dy over 32,768 rows at ~0.9 TB/s (`python bench/preset_profile.py`). Here the backward's programs take
ROWS rows each, write dx and keep their rows' share of the weight and bias gradients in registers; the (P, D) partial
sums are added by one torch sum. The forward keeps each row's mean and 1/std (two floats) for the backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_HIDDEN", "layer_norm_backward", "layer_norm_forward"]

MAX_HIDDEN = 8192  # a row is held whole in registers
ROWS = 16  # rows per backward program: 128 µs at 32,768 x 512 on an H100 against 169 µs at 64 (bench/layer_norm_rows.py)


@triton.jit
def _ln_fwd_kernel(x_ptr, delta_ptr, h_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, D, eps, BLOCK_D: tl.constexpr,
                   RESIDUAL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    inside = cols < D
    base = row.to(tl.int64) * D
    x = tl.load(x_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
    if RESIDUAL:  # h = x + delta, the residual stream after this branch, normalised in the same pass
        x += tl.load(delta_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(h_ptr + base + cols, x.to(h_ptr.dtype.element_ty), mask=inside)
    mean = tl.sum(x, axis=0) / D
    centred = tl.where(inside, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(y_ptr + base + cols, (centred * rstd * w + b).to(y_ptr.dtype.element_ty), mask=inside)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ln_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dres_ptr, dx_ptr, ddelta_ptr, dw_part_ptr, db_part_ptr,
                   N, D, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, RES_GRAD: tl.constexpr, DELTA_OUT: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    inside = cols < D
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), tl.float32)
    db = tl.zeros((BLOCK_D,), tl.float32)
    for r in range(ROWS):
        row = pid * ROWS + r
        mask = inside & (cols * 0 + row < N)  # past the last row: nothing loaded, stored or summed
        base = row.to(tl.int64) * D
        x = tl.load(x_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + tl.minimum(row, N - 1))
        rstd = tl.load(rstd_ptr + tl.minimum(row, N - 1))
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / D
        c2 = tl.sum(wdy, axis=0) / D
        dx = (wdy - (xhat * c1 + c2)) * rstd
        if RES_GRAD:  # the residual stream's own gradient, which autograd would otherwise add in a pass of its own
            dx += tl.load(dres_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + base + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if DELTA_OUT:  # the branch's gradient in the branch's own dtype: no separate cast pass
            tl.store(ddelta_ptr + base + cols, dx.to(ddelta_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(dw_part_ptr + pid * D + cols, dw, mask=inside)
    tl.store(db_part_ptr + pid * D + cols, db, mask=inside)


def _warps(block: int) -> int:
    return min(16, max(1, block // 256))


def layer_norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       delta: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, D) contiguous float32 rows -> (y (N, D), mean (N,), rstd (N,), h): y = (h - mean) * rstd * weight + bias
    with h = x, or h = x + delta (written, in x's dtype) when a same-shaped contiguous delta is given. y is in out_dtype
    (x's by default): the bf16 an autocast Linear after it would cast it to, without the cast's own pass."""
    rows, hidden = x.shape
    block = triton.next_power_of_2(hidden)
    y = torch.empty(rows, hidden, dtype=out_dtype or x.dtype, device=x.device)
    h = torch.empty_like(x) if delta is not None else x
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows:
        _ln_fwd_kernel[(rows,)](x, x if delta is None else delta, h, weight, bias, y, mean, rstd, hidden, eps,
                                BLOCK_D=block, RESIDUAL=delta is not None, num_warps=_warps(block))
    return y, mean, rstd, h


def layer_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor, dres: torch.Tensor | None = None, delta_dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dx (N, D), dweight (D,), dbias (D,), ddelta) of layer_norm_forward for the upstream gradient dy
    (N, D) of y; x is the normalised rows (h). dres: the gradient h gets from its other uses (the residual stream),
    added into dx. ddelta: dx in delta_dtype (written by the same pass) when that differs from x's dtype, else dx."""
    rows, hidden = x.shape
    block = triton.next_power_of_2(hidden)
    programs = max(1, triton.cdiv(rows, ROWS))
    dx = torch.empty_like(x)
    delta_out = delta_dtype is not None and delta_dtype != x.dtype
    ddelta = torch.empty(rows, hidden, dtype=delta_dtype, device=x.device) if delta_out else dx
    # both gradients' partials in one buffer, added by one reduction: at 2,048 x 512 a sum is launch-bound (~11 µs)
    parts = torch.empty(2, programs, hidden, dtype=torch.float32, device=x.device)
    _ln_bwd_kernel[(programs,)](dy, x, weight, mean, rstd, dx if dres is None else dres, dx, ddelta, parts[0],
                                parts[1], rows, hidden, BLOCK_D=block, ROWS=ROWS, RES_GRAD=dres is not None,
                                DELTA_OUT=delta_out, num_warps=_warps(block))
    dweight, dbias = parts.sum(1).to(weight.dtype)
    return dx, dweight, dbias, ddelta
