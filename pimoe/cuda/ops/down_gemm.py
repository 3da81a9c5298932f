"""The down GEMM with pointer loads: y[r] = (h[r, :F_e] @ W2_e^T + b2_e) * routing_weight[r], each expert reduced
over its own width.

Legend: D hidden size, E experts, EP a power of two >= E + 1, A sorted rows, N1 padded up width, F padded hidden
width, F_e one expert's width. BM x BN tiles, BK deep.

Given the raw up projection instead of h (PROLOGUE_ACT, the "hybrid" backend of bench/backends.py: torch._grouped_mm
for the up GEMM), it applies bias, activation and gate to each tile as it loads it. The grid is (ceil(A / BM) + E) row
tiles x column tiles, each program finds its expert from the device-side counts: no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout
from pimoe.cuda.ops.jit import _program_tile, apply_activation, enter_kernel
from pimoe.cuda.ops.launch_options import dot_precision, expert_buckets, launch_within_shared_memory, pdl_options
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import GemmConfig

__all__ = ["down_kernel", "down_rows"]


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


def down_rows(a: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
              prologue_act: bool) -> torch.Tensor:
    """(A, F) hidden rows, or (A, N1) raw up projections with prologue_act, -> (A, D) weighted expert outputs."""
    assignments = a.shape[0]
    num_experts = packed.num_experts
    hidden = packed.hidden_size
    y = torch.empty(assignments, hidden, dtype=a.dtype, device=a.device)
    row_tiles = triton.cdiv(assignments, cfg.bm) + num_experts
    launch_within_shared_memory(
        down_kernel, (row_tiles * triton.cdiv(hidden, cfg.bn),), a, layout.sorted_weight, layout.counts, packed.w2,
        packed.b2, packed.widths, y, packed.b1, packed.gated,
        packed.act, hidden, packed.max_width, num_experts, a.shape[1], packed.w1.shape[1],
        EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=cfg.bk,
        EVEN_K=all(w % cfg.bk == 0 for w in packed.widths_host), PROLOGUE_ACT=prologue_act,
        ANY_GATED=packed.any_gated, PRECISION=dot_precision(a.dtype), num_warps=cfg.warps, num_stages=cfg.stages,
        **pdl_options(a.device))
    return y
