"""Triton grouped GEMMs over expert-sorted rows, with the glue fused into their prologue and epilogue.

Legend: T tokens, D hidden size, E experts, EP a power of two >= E + 1, A = T * K assignments (sorted by expert),
N1 padded up width, F padded hidden width, F_e / N1_e one expert's own widths. BM x BN tiles, BK deep.

up_kernel: h[r] = act_e(norm_e(x[token[r]]) @ W1_e^T + b1_e) (gated: act(gate) * up), the gather, the per-expert norm,
    the bias and the activation all inside one GEMM. Tiles past the expert's own width exit at once, so a narrow expert
    costs its own FLOPs, not the widest expert's.
down_kernel: y[r] = (h[r, :F_e] @ W2_e^T + b2_e) * routing_weight[r]; the reduction runs to F_e only. Given the raw
    up projection instead of h (the "hybrid" backend: torch._grouped_mm for the up GEMM), it applies bias, activation
    and gate to each tile as it loads it.

The grid is sized from A, which the host knows, as (ceil(A / BM) + E) row tiles x column tiles; each program finds its
expert and row range from the device-side counts, and programs past the last tile return. No host sync.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pimoe.cuda.kernels import apply_activation, enter_kernel

__all__ = ["down_kernel", "hidden_tile", "up_kernel"]


@triton.jit
def _expert_tile(pid_m, counts_ptr, E, BM: tl.constexpr, EP: tl.constexpr):
    """(expert, first row, end row of the expert) of row tile pid_m; expert == E past the last tile."""
    ecols = tl.arange(0, EP)
    counts = tl.load(counts_ptr + ecols, mask=ecols < E, other=0)
    tiles = (counts + BM - 1) // BM
    tile_end = tl.cumsum(tiles, axis=0)
    expert = tl.sum((tile_end <= pid_m).to(tl.int32), axis=0)
    row_end = tl.cumsum(counts, axis=0)
    mine = ecols == expert
    first_tile = tl.sum(tl.where(mine, tile_end - tiles, 0), axis=0)
    row_start = tl.sum(tl.where(mine, row_end - counts, 0), axis=0)
    end = tl.sum(tl.where(mine, row_end, 0), axis=0)
    return expert, row_start + (pid_m - first_tile) * BM, end


@triton.jit
def _program_tile(num_n, counts_ptr, E, BM: tl.constexpr, EP: tl.constexpr):
    """(expert, first row, end row of the expert, column tile) of this program; column tiles vary fastest, so
    consecutive programs share a row tile of A. expert == E past the last tile."""
    pid = tl.program_id(0)
    expert, m0, m_end = _expert_tile(pid // num_n, counts_ptr, E, BM, EP)
    return expert, m0, m_end, pid % num_n


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


@triton.jit
def down_kernel(h_ptr, sorted_weight_ptr, counts_ptr, w2_ptr, b2_ptr, widths_ptr, y_ptr, b1_ptr, gated_ptr, act_ptr,
                D, F, E, A_STRIDE, N1,
                EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr,
                PROLOGUE_ACT: tl.constexpr, ANY_GATED: tl.constexpr, PRECISION: tl.constexpr,
                PDL: tl.constexpr = False):
    """y[r] = (a[r, :F_e] @ W2_e^T + b2_e) * weight[r].

    a is h (A, F) from up_kernel, or with PROLOGUE_ACT the raw up projection p (A, N1) of torch._grouped_mm, turned
    into h tile by tile as it is loaded (bias, activation, gate): the (A, F) intermediate never goes to memory.
    """
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(D, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    cols = pid_n * BN + tl.arange(0, BN)
    col_ok = cols < D
    ks = tl.arange(0, BK)
    a_ptrs = h_ptr + rows.to(tl.int64)[:, None] * A_STRIDE + ks[None, :]
    w_ptrs = w2_ptr + expert.to(tl.int64) * D * F + cols[None, :] * F + ks[:, None]
    act = tl.load(act_ptr + expert)
    gated = tl.load(gated_ptr + expert)
    b1_ptrs = b1_ptr + expert * N1 + ks
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, width, BK):
        if EVEN_K:
            # NOTE: every width is a multiple of BK, so no mask on k. A mask that depends on the loaded width stops
            # Triton from software-pipelining the loop (seen in the TTGIR: no async copies, one shared-memory stage).
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + ks) < width  # h past the expert's width was never written
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if PROLOGUE_ACT:
            if EVEN_K:
                h = apply_activation(a.to(tl.float32) + tl.load(b1_ptrs)[None, :], act)
                if ANY_GATED:
                    if gated != 0:
                        up = tl.load(a_ptrs + width, mask=row_ok[:, None], other=0.0).to(tl.float32)
                        h = h * (up + tl.load(b1_ptrs + width)[None, :])
            else:
                k_in = (k0 + ks) < width
                h = apply_activation(a.to(tl.float32) + tl.load(b1_ptrs, mask=k_in, other=0.0)[None, :], act)
                if ANY_GATED:
                    if gated != 0:
                        up_ok = row_ok[:, None] & k_in[None, :]
                        up = tl.load(a_ptrs + width, mask=up_ok, other=0.0).to(tl.float32)
                        h = h * (up + tl.load(b1_ptrs + width, mask=k_in, other=0.0)[None, :])
                h = tl.where(k_in[None, :], h, 0.0)
            a = h.to(w.dtype)
            b1_ptrs += BK
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptrs += BK
        w_ptrs += BK
    y = acc + tl.load(b2_ptr + expert * D + cols, mask=col_ok, other=0.0)[None, :]
    y = y * tl.load(sorted_weight_ptr + rows, mask=row_ok, other=0.0)[:, None]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
