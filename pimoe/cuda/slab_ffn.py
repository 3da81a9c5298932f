"""Small batches: both expert GEMMs in one launch, one program per (expert, hidden slab).

Legend: E experts, D hidden size, A sorted rows, N1 padded up width, F padded hidden width, F_e one expert's width,
BM rows per tile, BH hidden columns per slab, BD output columns per down step.

At a few hundred tokens each expert sees a hundred-odd rows, and the two grouped GEMMs are bound by moving weight
and activation tiles, not by arithmetic: the up GEMM's tiles re-read each weight slab once per row tile and each row
tile once per column tile, and h goes to memory and comes back. Here program (e, j) owns hidden columns
[j * BH, (j + 1) * BH) of expert e: it gathers and norms the expert's rows, computes that slab of h in registers
(bias, activation, gate), multiplies it by the matching (BH, D) slice of W2_e and adds the (rows, D) partial product
into a float32 y with atomics. Each weight element is read once per row tile, h never leaves the chip, and one launch
replaces two.

The slabs' partial sums meet in float32 atomics, whose order varies from call to call: results can differ in the
last bits between calls (the bf16 output rarely). Under `torch.use_deterministic_algorithms(True)` the caller takes
the two-GEMM path instead (`launch.slab_forward`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .gemm import hidden_tile
from .kernels import enter_kernel

__all__ = ["slab_ffn_kernel"]


@triton.jit
def _expert_rows(counts_ptr, expert, E, EP: tl.constexpr):
    """[start, end) of the expert's rows in expert order."""
    ecols = tl.arange(0, EP)
    counts = tl.load(counts_ptr + ecols, mask=ecols < E, other=0)
    mine = ecols == expert
    end = tl.sum(tl.where(mine, tl.cumsum(counts, axis=0), 0), axis=0)
    return end - tl.sum(tl.where(mine, counts, 0), axis=0), end


@triton.jit
def slab_ffn_kernel(x_ptr, stats_ptr, sorted_token_ptr, counts_ptr, w1_ptr, b1_ptr, w2_ptr, widths_ptr, gated_ptr,
                    act_ptr, norm_ptr, nw_ptr, nb_ptr, eps_ptr, y_ptr, D, N1, F, E,
                    EP: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
                    ANY_GATED: tl.constexpr, ANY_NORM: tl.constexpr, PRECISION: tl.constexpr, EVEN_N: tl.constexpr,
                    PDL: tl.constexpr = False):
    """y[r] += h_e[r, slab] @ W2_e[:, slab]^T for every sorted row r of expert e; y (A, D) float32, zeroed by the
    caller. Grid: E * ceil(F / BH) programs. Bias b2 and the routing weight are left to the combine."""
    enter_kernel(PDL)
    slabs = tl.cdiv(F, BH)
    expert = tl.program_id(0) // slabs
    h0 = (tl.program_id(0) % slabs) * BH
    width = tl.load(widths_ptr + expert)
    if h0 >= width:
        return
    row_start, row_end = _expert_rows(counts_ptr, expert, E, EP)
    cols = h0 + tl.arange(0, BH)
    col_ok = cols < width
    out_cols = tl.arange(0, BD)
    w2_base = w2_ptr + expert.to(tl.int64) * D * F + out_cols[None, :] * F + cols[:, None]  # (BH, BD) of W2_e^T
    for m0 in range(row_start, row_end, BM):
        rows = m0 + tl.arange(0, BM)
        row_ok = rows < row_end
        h = hidden_tile(x_ptr, stats_ptr, sorted_token_ptr, rows, row_ok, expert, width, cols, w1_ptr, b1_ptr,
                        gated_ptr, act_ptr, norm_ptr, nw_ptr, nb_ptr, eps_ptr, D, N1, BM, BH, BK, ANY_GATED, ANY_NORM,
                        PRECISION, EVEN_N)
        h = tl.where(col_ok[None, :], h, 0.0).to(w2_ptr.dtype.element_ty)
        y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * D + out_cols[None, :]
        w2_ptrs = w2_base
        for _ in range(0, D, BD):
            part = tl.dot(h, tl.load(w2_ptrs, mask=col_ok[:, None], other=0.0), input_precision=PRECISION)
            tl.atomic_add(y_ptrs, part, mask=row_ok[:, None], sem="relaxed")
            y_ptrs += BD
            w2_ptrs += BD * F
