"""The activation between the differentiable path's grouped GEMMs, as one Triton pass each way: forward (bias,
activation, gated product, masks) and backward (the activation recomputed, its slope applied).

Legend: A sorted assignment rows, E experts, N1 padded up width (F, or 2F in a pack with a gated expert), F padded
intermediate width.

One pass over the (A, F) intermediate where plain torch ops take four to six (bias gather, add, activation, masks, the
gated product, casts): at 65,536 tokens one pass over a bf16 (A, F) tensor moves 0.5 GB. Rows past the last group
(dropped assignments, or a width class's unused rows) are unspecified, as the grouped GEMMs leave them: every reader
is grouped by the same offsets. Nothing reads back to the host. `pimoe.cuda.train_ops` holds the plain-torch version
the tests compare against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.ops.jit import _tanh, normal_cdf

__all__ = ["act_backward", "act_forward"]

# (rows, columns, warps) per program; `bench/act_tiles.py` times the alternatives on a card.
TILES = (16, 128, 4)
# The outputs' allocation: every element is written by the kernel, whatever the memory held (tests swap in NaN fills).
uninitialised = torch.empty


@triton.jit
def _act_and_slope(x, code, lo, hi, ACTS: tl.constexpr):
    """act(x) and act'(x) in float32 with a code per element; only the activations in the ACTS bit mask (bit c for
    packing.ACT_CODES code c) are compiled in, and of those only the ones with a code in [lo, hi] (the block's rows)
    run: rows come sorted by expert, so a block of a typed pack usually evaluates one activation instead of all five
    (each an exp, erf or tanh per element)."""
    y = tl.zeros_like(x)
    s = tl.zeros_like(x)
    if ACTS & 1:  # gelu (erf)
        if (lo <= 0) & (hi >= 0):
            cdf = normal_cdf(x)
            y = tl.where(code == 0, x * cdf, y)
            s = tl.where(code == 0, cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327, s)
    if ACTS & 2:  # gelu (tanh approximation)
        if (lo <= 1) & (hi >= 1):
            th = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
            y = tl.where(code == 1, 0.5 * x * (1.0 + th), y)
            s = tl.where(code == 1, 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * 0.7978845608028654
                         * (1.0 + 3.0 * 0.044715 * x * x), s)
    if ACTS & 4:  # relu
        if (lo <= 2) & (hi >= 2):
            y = tl.where(code == 2, tl.maximum(x, 0.0), y)
            s = tl.where(code == 2, tl.where(x > 0, 1.0, 0.0), s)
    if ACTS & 8:  # silu
        if (lo <= 3) & (hi >= 3):
            sig = 1.0 / (1.0 + tl.exp(-x))
            y = tl.where(code == 3, x * sig, y)
            s = tl.where(code == 3, sig * (1.0 + x * (1.0 - sig)), s)
    if ACTS & 16:  # tanh
        if (lo <= 4) & (hi >= 4):
            th = _tanh(x)
            y = tl.where(code == 4, th, y)
            s = tl.where(code == 4, 1.0 - th * th, s)
    return y, s


@triton.jit
def act_kernel(pre_ptr, b1_ptr, dh_ptr, row_expert_ptr, widths_ptr, gated_ptr, act_ptr, offsets_ptr, h_ptr, dpre_ptr,
               A, N1, F, E, BR: tl.constexpr, BC: tl.constexpr, ACTS: tl.constexpr, ANY_GATED: tl.constexpr,
               BACKWARD: tl.constexpr, FULL: tl.constexpr, STORE_H: tl.constexpr = True,
               ROWS_ONLY: tl.constexpr = False, ALIGNED: tl.constexpr = False):
    """Rows [BR block] x intermediate columns [BC block] of F.

    Forward: h = act(pre + b1) (times the up half pre[:, F_e + c] + b1 for gated rows), 0 past F_e.
    BACKWARD: also the gradient of pre from dh: dpre[:, c] = dh * up * act'(gate), dpre[:, F_e + c] = dh * act(gate).
    FULL (every width F = N1, no gating): every dpre element is written here; otherwise the grid spans N1 columns, a
    row's own columns are stored by the block of their gate column (so the gate and up halves of different column
    blocks never write the same place), and each block writes the zeros of its columns past a row's own: dpre comes
    uninitialised, with no (A, N1) zero fill before the kernel.
    STORE_H False (backward with the forward's hidden kept): h is not written, a quarter less memory traffic.
    ROWS_ONLY (FULL, and F a multiple of BC): every mask depends on the row alone, so loads and stores along a row are
    unmasked vectors; a per-element mask (a width per row) makes the compiler issue them one element at a time.
    ALIGNED (every expert's width a multiple of 16): said to the compiler, so a mask at a row's width and the up half
    of a gated row (which starts at the row's width) still load and store in vectors.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    kept = tl.load(offsets_ptr + E - 1)
    # Blocks wholly past the last group hold no assignment and are read by nothing (every consumer is grouped by the
    # same offsets): no zeros written there. In a width class's buffer that is most of its A rows.
    if pid_r * BR < kept:
        _act_block(pre_ptr, b1_ptr, dh_ptr, row_expert_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, dpre_ptr, A, N1,
                   F, kept, pid_r, pid_c, BR, BC, ACTS, ANY_GATED, BACKWARD, FULL, STORE_H, ROWS_ONLY, ALIGNED)


@triton.jit
def _act_block(pre_ptr, b1_ptr, dh_ptr, row_expert_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, dpre_ptr, A, N1, F,
               kept, pid_r, pid_c, BR: tl.constexpr, BC: tl.constexpr, ACTS: tl.constexpr, ANY_GATED: tl.constexpr,
               BACKWARD: tl.constexpr, FULL: tl.constexpr, STORE_H: tl.constexpr, ROWS_ONLY: tl.constexpr,
               ALIGNED: tl.constexpr):
    """act_kernel's block (pid_r, pid_c), which holds at least one kept row."""
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_c * BC + tl.arange(0, BC)
    row_ok = rows < A
    row_kept = rows < kept
    col_ok = cols < F
    rows64 = rows.to(tl.int64)
    expert = tl.load(row_expert_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    width = tl.load(widths_ptr + expert, mask=row_ok, other=0)
    if ALIGNED:
        width = tl.multiple_of(width, 16)
    row_code = tl.load(act_ptr + expert, mask=row_ok, other=0)
    # rows past A would count as code 0; they take the block's first row's code (row 0 of a block is always < A)
    row_code = tl.where(row_ok, row_code, tl.load(act_ptr + tl.load(row_expert_ptr + pid_r * BR).to(tl.int64)))
    code_lo = tl.min(row_code, axis=0)
    code_hi = tl.max(row_code, axis=0)
    code = row_code[:, None]
    pre_rows = pre_ptr + rows64[:, None] * N1
    bias_rows = b1_ptr + expert[:, None] * N1
    args = (pre_rows, bias_rows, gated_ptr, h_ptr, dh_ptr, dpre_ptr, rows64, cols, expert, width, code, code_lo,
            code_hi, row_ok, N1, F)
    if ROWS_ONLY:
        _act_tile(*args, row_kept[:, None], row_ok[:, None], BR, BC, ACTS, ANY_GATED, BACKWARD, FULL, STORE_H)
    else:
        # Rows come sorted by expert, so most blocks lie inside every row's width: those take row-only masks (vector
        # loads and stores), the blocks across a width edge the per-element masks. In a pack of mixed widths many
        # blocks lie past every row's width (rows of width 1024 in a pack 2048 wide): there the forward only writes
        # zeros, which the down GEMM needs (it multiplies them by zero weights; left unset, a NaN would leak), and
        # the backward has nothing to do.
        whole = (tl.min(tl.where(row_ok, width, F), axis=0) >= (pid_c + 1) * BC) & ((pid_c + 1) * BC <= F)
        past = tl.max(tl.where(row_ok, width, 0), axis=0) <= pid_c * BC
        if past:
            if STORE_H:
                tl.store(h_ptr + rows64[:, None] * F + cols[None, :], tl.zeros((BR, BC), h_ptr.dtype.element_ty),
                         mask=row_ok[:, None] & col_ok[None, :])
        elif whole:
            _act_tile(*args, row_kept[:, None], row_ok[:, None], BR, BC, ACTS, ANY_GATED, BACKWARD, FULL, STORE_H)
        else:
            _act_tile(*args, row_kept[:, None] & (cols[None, :] < width[:, None]), row_ok[:, None] & col_ok[None, :],
                      BR, BC, ACTS, ANY_GATED, BACKWARD, FULL, STORE_H)
        if BACKWARD:
            row_end = width
            if ANY_GATED:
                row_end = tl.where(tl.load(gated_ptr + expert, mask=row_ok, other=0) != 0, 2 * width, width)
            zeros_from = tl.where(row_kept, row_end, 0)  # a dropped row is zero from its first column
            if (pid_c + 1) * BC > tl.min(tl.where(row_ok, zeros_from, N1), axis=0):
                zero = row_ok[:, None] & (cols[None, :] < N1) & (cols[None, :] >= zeros_from[:, None])
                tl.store(dpre_ptr + rows64[:, None] * N1 + cols[None, :],
                         tl.zeros((BR, BC), dpre_ptr.dtype.element_ty), mask=zero)


@triton.jit
def _act_tile(pre_rows, bias_rows, gated_ptr, h_ptr, dh_ptr, dpre_ptr, rows64, cols, expert, width, code, code_lo,
              code_hi, row_ok, N1, F, inside, out_mask, BR: tl.constexpr, BC: tl.constexpr, ACTS: tl.constexpr,
              ANY_GATED: tl.constexpr, BACKWARD: tl.constexpr, FULL: tl.constexpr, STORE_H: tl.constexpr):
    """One tile of act_kernel under the given masks (inside: the row's own columns of kept rows; out_mask: what may
    be written). Inlined once per mask shape, so row-only masks compile to vector accesses."""
    gate = tl.load(pre_rows + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    gate += tl.load(bias_rows + cols[None, :], mask=inside, other=0.0)
    activated, slope = _act_and_slope(gate, code, code_lo, code_hi, ACTS)
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
    if STORE_H:
        tl.store(h_ptr + rows64[:, None] * F + cols[None, :],
                 tl.where(inside, hidden, 0.0).to(h_ptr.dtype.element_ty), mask=out_mask)
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
                any_gated: bool, tiles: tuple[int, int, int] | None = None, full: bool = False,
                aligned: bool = False) -> torch.Tensor:
    """(A, N1) up-GEMM output without bias -> (A, F) activated intermediate in pre's dtype. `full`: every expert is
    F = N1 wide and ungated. `aligned`: every width in `widths` is a multiple of 16 (act_kernel's ALIGNED)."""
    rows, n1 = pre.shape
    block_rows, block_cols, warps = tiles or TILES
    hidden = uninitialised(rows, width, dtype=pre.dtype, device=pre.device)
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(width, block_cols))
    act_kernel[grid](pre, b1, pre, row_expert, widths, gated, act, offsets, hidden, hidden, rows, n1, width,
                     offsets.shape[0], BR=block_rows, BC=block_cols, ACTS=_acts_mask(act_codes), ANY_GATED=any_gated,
                     BACKWARD=False, FULL=False, ROWS_ONLY=full and width % block_cols == 0, ALIGNED=aligned,
                     num_warps=warps)
    return hidden


def act_backward(pre: torch.Tensor, b1: torch.Tensor, dh: torch.Tensor, row_expert: torch.Tensor, widths: torch.Tensor,
                 gated: torch.Tensor, act: torch.Tensor, offsets: torch.Tensor, act_codes: list[int], any_gated: bool,
                 full: bool, tiles: tuple[int, int, int] | None = None, hidden: torch.Tensor | None = None,
                 aligned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, N1) up-GEMM output and (A, F) upstream gradient -> (dpre (A, N1), hidden (A, F)), pre's dtype.
    `full`: every expert is F = N1 wide and ungated (then no dpre element is zero by construction). `hidden`: the forward's output,
    when it was kept; otherwise it is recomputed here (one more (A, F) write)."""
    rows, n1 = pre.shape
    width = dh.shape[1]
    block_rows, block_cols, warps = tiles or TILES
    store_hidden = hidden is None
    if store_hidden:
        hidden = uninitialised(rows, width, dtype=pre.dtype, device=pre.device)
    dpre = uninitialised(rows, n1, dtype=pre.dtype, device=pre.device)
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(width if full else n1, block_cols))
    act_kernel[grid](pre, b1, dh, row_expert, widths, gated, act, offsets, hidden, dpre, rows, n1, width,
                     offsets.shape[0], BR=block_rows, BC=block_cols, ACTS=_acts_mask(act_codes), ANY_GATED=any_gated,
                     BACKWARD=True, FULL=full, STORE_H=store_hidden, ROWS_ONLY=full and width % block_cols == 0,
                     ALIGNED=aligned, num_warps=warps)
    return dpre, hidden
