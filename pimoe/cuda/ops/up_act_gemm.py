"""The up GEMM of the large-batch path with bias and activation in its epilogue, over rows already in expert order.

Legend: E experts, D hidden size, A sorted rows, N1 padded up width, F padded hidden width, F_e one expert's width.
BM x BN output tiles, BK deep.

h[r] = act_e(xs[r] @ W1_e^T + b1_e) (gated: act(gate) * up), 0 for columns j >= F_e, written straight to (A, F): the
(A, N1) pre-activation never goes to memory. Tiles wholly past an expert's own width only write their zeros, so a
narrow expert of a typed pack costs its own FLOPs, not the widest expert's. The fused gather of `up_gemm.up_kernel` is
left out on purpose: per-row pointer loads cannot use Hopper's tensor-memory accelerator (TMA), which moves a whole
tile per instruction (pointer loads of the same tiles measured 10% slower on an H100, docs/performance.md); the
gather is a separate bandwidth-bound pass.

Two loaders compute the same tiles: TMA descriptors (Hopper and newer) and plain pointer loads (any GPU, and the
Triton interpreter). The grid is (ceil(A / BM) + E) row tiles x ceil(F / BN) column tiles, each program finds its
expert from the device-side counts (`jit._program_tile`), so nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout
from pimoe.cuda.ops.jit import _program_tile, apply_activation, enter_kernel
from pimoe.cuda.ops.launch_options import dot_precision, expert_buckets, fit_block_k, one_activation, pdl_options
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import GemmConfig

__all__ = ["up_act_kernel", "up_act_rows", "up_act_tma_kernel"]


@triton.jit
def _epilogue(acc, acc_up, b1_ptr, act_ptr, gated, expert, width, rows, row_ok, cols, h_ptr, N1, F,
              ONE_ACT: tl.constexpr, ANY_GATED: tl.constexpr):
    col_ok = cols < width
    bias_base = b1_ptr + expert * N1
    pre = acc + tl.load(bias_base + cols, mask=col_ok, other=0.0)[None, :]
    if ONE_ACT >= 0:
        h = apply_activation(pre, ONE_ACT)
    else:
        h = apply_activation(pre, tl.load(act_ptr + expert))
    if ANY_GATED:
        if gated != 0:
            h = h * (acc_up + tl.load(bias_base + width + cols, mask=col_ok, other=0.0)[None, :])
        # a gated expert's rows past its width are its up half, not zero padding: blank those columns
        h = tl.where(col_ok[None, :], h, 0.0)
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols < F)[None, :])


@triton.jit
def _store_zeros(h_ptr, rows, row_ok, cols, F, BM: tl.constexpr, BN: tl.constexpr):
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :],
             tl.zeros((BM, BN), dtype=h_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < F)[None, :])


@triton.jit
def _plain_loop(a_ptrs, w_ptrs, acc, D, BK: tl.constexpr, PRECISION: tl.constexpr):
    for _ in range(0, D, BK):
        acc = tl.dot(tl.load(a_ptrs), tl.load(w_ptrs), acc, input_precision=PRECISION)
        a_ptrs += BK
        w_ptrs += BK
    return acc


@triton.jit
def _gated_loop(a_ptrs, w_ptrs, wu_ptrs, acc, acc_up, D, BK: tl.constexpr, PRECISION: tl.constexpr):
    for _ in range(0, D, BK):
        a = tl.load(a_ptrs)
        acc = tl.dot(a, tl.load(w_ptrs), acc, input_precision=PRECISION)
        acc_up = tl.dot(a, tl.load(wu_ptrs), acc_up, input_precision=PRECISION)
        a_ptrs += BK
        w_ptrs += BK
        wu_ptrs += BK
    return acc, acc_up


@triton.jit
def _tma_plain_loop(xs_desc, w1_desc, m0, w_row, acc, D, BK: tl.constexpr):
    for k in range(0, D, BK):
        acc = tl.dot(xs_desc.load([m0, k]), w1_desc.load([w_row, k]).T, acc)
    return acc


@triton.jit
def _tma_gated_loop(xs_desc, w1_desc, m0, w_row, width, acc, acc_up, D, BK: tl.constexpr):
    for k in range(0, D, BK):
        a = xs_desc.load([m0, k])
        acc = tl.dot(a, w1_desc.load([w_row, k]).T, acc)
        acc_up = tl.dot(a, w1_desc.load([w_row + width, k]).T, acc_up)
    return acc, acc_up


@triton.jit
def up_act_kernel(xs_ptr, counts_ptr, w1_ptr, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, D, N1, F, E,
                  EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  ONE_ACT: tl.constexpr, ANY_GATED: tl.constexpr, PRECISION: tl.constexpr,
                  PDL: tl.constexpr = False):
    """Pointer loads. xs (A, D) contiguous in expert order; D a multiple of BK."""
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(F, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    gated = tl.load(gated_ptr + expert)
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    cols = pid_n * BN + tl.arange(0, BN)
    if pid_n * BN >= width:  # wholly past a narrow expert's width: zero padding, which the down GEMM reads
        _store_zeros(h_ptr, rows, row_ok, cols, F, BM, BN)
        return
    ks = tl.arange(0, BK)
    # rows past the expert's end are the next expert's (or past A: clamped); computed, never stored
    a_ptrs = xs_ptr + tl.minimum(rows, m_end - 1).to(tl.int64)[:, None] * D + ks[None, :]
    w_base = w1_ptr + expert.to(tl.int64) * N1 * D
    w_ptrs = w_base + tl.minimum(cols, N1 - 1)[None, :] * D + ks[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    if ANY_GATED:
        if gated != 0:
            wu_ptrs = w_base + tl.minimum(width + cols, N1 - 1)[None, :] * D + ks[:, None]
            acc, acc_up = _gated_loop(a_ptrs, w_ptrs, wu_ptrs, acc, acc_up, D, BK, PRECISION)
        else:
            acc = _plain_loop(a_ptrs, w_ptrs, acc, D, BK, PRECISION)
    else:
        acc = _plain_loop(a_ptrs, w_ptrs, acc, D, BK, PRECISION)
    _epilogue(acc, acc_up, b1_ptr, act_ptr, gated, expert, width, rows, row_ok, cols, h_ptr, N1, F,
              ONE_ACT, ANY_GATED)


@triton.jit
def up_act_tma_kernel(xs_desc, counts_ptr, w1_desc, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, D, N1, F, E,
                      EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      ONE_ACT: tl.constexpr, ANY_GATED: tl.constexpr,
                      PDL: tl.constexpr = False):
    """TMA loads: xs_desc over (A, D) with block (BM, BK), w1_desc over the (E * N1, D) view with block (BN, BK).
    Tiles reaching past A come back zero-filled; rows of the next expert are computed and never stored."""
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(F, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    gated = tl.load(gated_ptr + expert)
    n0 = pid_n * BN
    rows = m0 + tl.arange(0, BM)
    cols = n0 + tl.arange(0, BN)
    if n0 >= width:  # wholly past a narrow expert's width: zero padding, which the down GEMM reads
        _store_zeros(h_ptr, rows, rows < m_end, cols, F, BM, BN)
        return
    w_row = expert * N1 + n0
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    if ANY_GATED:
        if gated != 0:
            acc, acc_up = _tma_gated_loop(xs_desc, w1_desc, m0, w_row, width, acc, acc_up, D, BK)
        else:
            acc = _tma_plain_loop(xs_desc, w1_desc, m0, w_row, acc, D, BK)
    else:
        acc = _tma_plain_loop(xs_desc, w1_desc, m0, w_row, acc, D, BK)
    _epilogue(acc, acc_up, b1_ptr, act_ptr, gated, expert, width, rows, rows < m_end, cols, h_ptr, N1, F,
              ONE_ACT, ANY_GATED)


def up_act_rows(gathered: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
                use_tma: bool) -> torch.Tensor:
    """(A, D) rows in expert order (already gathered and normed) -> (A, F) hidden rows: up GEMM with bias and
    activation (and gate) in its epilogue, TMA loads with `use_tma` (see `tma_available`)."""
    assignments, hidden = gathered.shape
    num_experts = packed.num_experts
    up_width, width = packed.w1.shape[1], packed.max_width
    block_k = fit_block_k(hidden, cfg.bk)
    hidden_rows = torch.empty(assignments, width, dtype=gathered.dtype, device=gathered.device)
    grid = ((triton.cdiv(assignments, cfg.bm) + num_experts) * triton.cdiv(width, cfg.bn),)
    common = dict(EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=block_k, ONE_ACT=one_activation(packed),
                  ANY_GATED=packed.any_gated, num_warps=cfg.warps, num_stages=cfg.stages,
                  **pdl_options(gathered.device))
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        xs_desc = TensorDescriptor.from_tensor(gathered, [cfg.bm, block_k])
        w1_desc = TensorDescriptor.from_tensor(packed.w1.view(num_experts * up_width, hidden), [cfg.bn, block_k])
        up_act_tma_kernel[grid](
            xs_desc, layout.counts, w1_desc, packed.b1, packed.widths, packed.gated, packed.act, hidden_rows,
            hidden, up_width, width, num_experts, **common)
    else:
        up_act_kernel[grid](
            gathered, layout.counts, packed.w1, packed.b1, packed.widths, packed.gated, packed.act, hidden_rows,
            hidden, up_width, width, num_experts, PRECISION=dot_precision(gathered.dtype), **common)
    return hidden_rows
