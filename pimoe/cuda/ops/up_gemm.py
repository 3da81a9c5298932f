"""The "triton" backend's up GEMM over token rows: gather, per-expert norm, up GEMM, bias and activation in one
launch.

Legend: T tokens, D hidden size, E experts, EP a power of two >= E + 1, A = T * K assignments (sorted by expert),
N1 padded up width, F padded hidden width, F_e / N1_e one expert's own widths. BM x BN tiles, BK deep.

up_kernel: h[r] = act_e(norm_e(x[token[r]]) @ W1_e^T + b1_e) (gated: act(gate) * up), the gather, the per-expert norm,
    the bias and the activation all inside one GEMM. Tiles past the expert's own width exit at once, so a narrow expert
    costs its own FLOPs, not the widest expert's.

The grid is sized from A, which the host knows, as (ceil(A / BM) + E) row tiles x column tiles; each program finds its
expert and row range from the device-side counts, and programs past the last tile return. No host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout
from pimoe.cuda.ops.jit import _program_tile, apply_activation, enter_kernel
from pimoe.cuda.ops.launch_options import (
    dot_precision,
    expert_buckets,
    fit_block_k,
    launch_within_shared_memory,
    pdl_options,
)
from pimoe.cuda.ops.row_stats import row_stats
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import GemmConfig

__all__ = ["hidden_tile", "up_kernel", "up_rows"]


@triton.jit
def _up_loop(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr, NORMED: tl.constexpr,
             PRECISION: tl.constexpr, EVEN_N: tl.constexpr):
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, D, BK):
        a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        if NORMED:
            gamma = tl.load(nw_ptrs)
            beta = tl.load(nb_ptrs)
            a = ((a.to(tl.float32) - shift[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]).to(a.dtype)
            nw_ptrs += BK
            nb_ptrs += BK
        if EVEN_N:  # every width is a multiple of BN: no mask from a loaded value on the weight loads
            acc = tl.dot(a, tl.load(w_ptrs), acc, input_precision=PRECISION)
            if GATED:
                acc_up = tl.dot(a, tl.load(wu_ptrs), acc_up, input_precision=PRECISION)
        else:
            acc = tl.dot(a, tl.load(w_ptrs, mask=col_mask, other=0.0), acc, input_precision=PRECISION)
            if GATED:
                acc_up = tl.dot(a, tl.load(wu_ptrs, mask=col_mask, other=0.0), acc_up, input_precision=PRECISION)
        a_ptrs += BK
        w_ptrs += BK
        wu_ptrs += BK
    return acc, acc_up


@triton.jit
def _up_norm_switch(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D, normed,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr,
                    ANY_NORM: tl.constexpr, PRECISION: tl.constexpr, EVEN_N: tl.constexpr):
    if ANY_NORM:
        if normed != 0:
            acc, acc_up = _up_loop(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
                                   BM, BN, BK, GATED, True, PRECISION, EVEN_N)
        else:
            acc, acc_up = _up_loop(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
                                   BM, BN, BK, GATED, False, PRECISION, EVEN_N)
    else:
        acc, acc_up = _up_loop(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
                               BM, BN, BK, GATED, False, PRECISION, EVEN_N)
    return acc, acc_up


@triton.jit
def hidden_tile(x_ptr, stats_ptr, sorted_token_ptr, rows, row_ok, expert, width, cols, w1_ptr, b1_ptr, gated_ptr,
                act_ptr, norm_ptr, nw_ptr, nb_ptr, eps_ptr, D, N1, BM: tl.constexpr, BN: tl.constexpr,
                BK: tl.constexpr, ANY_GATED: tl.constexpr, ANY_NORM: tl.constexpr, PRECISION: tl.constexpr,
                EVEN_N: tl.constexpr):
    """(BM, BN) float32 act_e(norm_e(x[token[r]]) @ W1_e^T + b1_e) for sorted rows `rows` of one expert and hidden
    columns `cols` (gated: act(gate) * up): gather, norm, up GEMM, bias and activation. Columns past the expert's
    width hold values no caller may use."""
    token = tl.load(sorted_token_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    col_ok = cols < width
    ks = tl.arange(0, BK)
    w_base = w1_ptr + expert.to(tl.int64) * N1 * D
    a_ptrs = x_ptr + token[:, None] * D + ks[None, :]
    w_ptrs = w_base + cols[None, :] * D + ks[:, None]
    wu_ptrs = w_base + (width + cols)[None, :] * D + ks[:, None]
    col_mask = col_ok[None, :]
    normed = tl.load(norm_ptr + expert)
    shift = tl.zeros((BM,), dtype=tl.float32)
    rstd = tl.zeros((BM,), dtype=tl.float32)
    nw_ptrs = nw_ptr + expert * D + ks
    nb_ptrs = nb_ptr + expert * D + ks
    if ANY_NORM:
        mean = tl.load(stats_ptr + token * 2, mask=row_ok, other=0.0)
        var = tl.load(stats_ptr + token * 2 + 1, mask=row_ok, other=0.0)
        eps = tl.load(eps_ptr + expert)
        layer = normed == 1
        # LayerNorm: (x - mean) / sqrt(var + eps); RMSNorm: x / sqrt(mean(x^2) + eps), mean(x^2) = var + mean^2
        shift = tl.where(layer, mean, 0.0)
        rstd = tl.where(layer, tl.rsqrt(var + eps), tl.rsqrt(var + mean * mean + eps))
    gated = tl.load(gated_ptr + expert)
    if ANY_GATED:
        if gated != 0:
            acc, acc_up = _up_norm_switch(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
                                          normed, BM, BN, BK, True, ANY_NORM, PRECISION, EVEN_N)
        else:
            acc, acc_up = _up_norm_switch(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
                                          normed, BM, BN, BK, False, ANY_NORM, PRECISION, EVEN_N)
    else:
        acc, acc_up = _up_norm_switch(a_ptrs, w_ptrs, wu_ptrs, row_ok, col_mask, shift, rstd, nw_ptrs, nb_ptrs, D,
                                      normed, BM, BN, BK, False, ANY_NORM, PRECISION, EVEN_N)
    bias_base = b1_ptr + expert * N1
    pre = acc + tl.load(bias_base + cols, mask=col_ok, other=0.0)[None, :]
    h = apply_activation(pre, tl.load(act_ptr + expert))
    if ANY_GATED:
        if gated != 0:
            h = h * (acc_up + tl.load(bias_base + width + cols, mask=col_ok, other=0.0)[None, :])
    return h


@triton.jit
def up_kernel(x_ptr, stats_ptr, sorted_token_ptr, counts_ptr, w1_ptr, b1_ptr, widths_ptr, gated_ptr, act_ptr,
              norm_ptr, nw_ptr, nb_ptr, eps_ptr, h_ptr, D, N1, F, E,
              EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              ANY_GATED: tl.constexpr, ANY_NORM: tl.constexpr, PRECISION: tl.constexpr, EVEN_N: tl.constexpr,
              PDL: tl.constexpr = False):
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(F, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    n0 = pid_n * BN
    if n0 >= width:
        return
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    cols = n0 + tl.arange(0, BN)
    col_ok = cols < width
    h = hidden_tile(x_ptr, stats_ptr, sorted_token_ptr, rows, row_ok, expert, width, cols, w1_ptr, b1_ptr, gated_ptr,
                    act_ptr, norm_ptr, nw_ptr, nb_ptr, eps_ptr, D, N1, BM, BN, BK, ANY_GATED, ANY_NORM, PRECISION,
                    EVEN_N)
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def up_rows(x: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
            even_n: bool = True) -> torch.Tensor:
    """(T, D) tokens -> (A, F) hidden rows in expert order: gather, norm, up GEMM, bias and activation in one launch.
    even_n: leave the weight loads unmasked when every expert width is a multiple of cfg.bn."""
    hidden = x.shape[1]
    assignments = layout.sorted_token.shape[0]
    num_experts = packed.num_experts
    stats = row_stats(x) if packed.any_norm else layout.sorted_weight  # unused placeholder when no expert norms
    up_width, width = packed.w1.shape[1], packed.max_width
    hidden_rows = torch.empty(assignments, width, dtype=x.dtype, device=x.device)
    row_tiles = triton.cdiv(assignments, cfg.bm) + num_experts
    launch_within_shared_memory(
        up_kernel, (row_tiles * triton.cdiv(width, cfg.bn),), x, stats, layout.sorted_token, layout.counts, packed.w1,
        packed.b1, packed.widths, packed.gated, packed.act,
        packed.norm, packed.norm_weight, packed.norm_bias, packed.eps, hidden_rows, hidden, up_width, width,
        num_experts, EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=fit_block_k(hidden, cfg.bk),
        ANY_GATED=packed.any_gated, ANY_NORM=packed.any_norm, PRECISION=dot_precision(x.dtype),
        EVEN_N=even_n and all(w % cfg.bn == 0 for w in packed.widths_host),
        num_warps=cfg.warps, num_stages=cfg.stages, **pdl_options(x.device))
    return hidden_rows
