"""The down GEMM with Hopper's tensor-memory accelerator (TMA): y[r] = (h[r, :F_e] @ W2_e^T + b2_e) * weight[r].

Legend: E experts, D hidden size, A sorted rows, F padded hidden width, F_e one expert's width. BM x BN output tiles,
BK deep.

The same function as `down_gemm.down_kernel`, whose A and W tiles come from per-element pointer loads; here each tile is
one TMA copy (h in expert order is a plain (A, F) matrix, W2 a (E * D, F) one). At 512 tokens the pointer-load down GEMM
takes 14 µs and the TMA up GEMM of the same shape 13 (bench/results/small-gemms-512-h100-20261127-run14.json).

Each expert reduces over its own width, rounded up to BK: h is zero past F_e (the up GEMM writes zeros there) and so
is W2's padding. Row tiles reaching into the next expert's rows (or past A, where TMA fills zeros) compute those rows
and never store them. The grid is (ceil(A / BM) + E) x ceil(D / BN) programs; each finds its expert from the
device-side counts (`jit._program_tile`), so nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout, next_pow2
from pimoe.cuda.ops.jit import _program_tile, enter_kernel
from pimoe.cuda.ops.launch_options import expert_buckets, fit_block_k, launch_within_shared_memory, pdl_options
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import GemmConfig

__all__ = ["down_tma_kernel", "down_tma_rows"]


@triton.jit
def down_tma_kernel(h_desc, w2_desc, sorted_weight_ptr, counts_ptr, b2_ptr, widths_ptr, y_ptr, D, E,
                    EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    PDL: tl.constexpr = False):
    """h_desc over (A, F) with block (BM, BK); w2_desc over the (E * D, F) view of W2 with block (BN, BK)."""
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(D, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    n0 = pid_n * BN
    w_row = expert * D + n0
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, width, BK):
        acc = tl.dot(h_desc.load([m0, k]), w2_desc.load([w_row, k]).T, acc)
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    cols = n0 + tl.arange(0, BN)
    col_ok = cols < D
    y = acc + tl.load(b2_ptr + expert * D + cols, mask=col_ok, other=0.0)[None, :]
    y = y * tl.load(sorted_weight_ptr + rows, mask=row_ok, other=0.0)[:, None]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def down_tma_rows(hidden_rows: torch.Tensor, layout: ExpertLayout, packed: PackedExperts,
                  cfg: GemmConfig) -> torch.Tensor:
    """(A, F) hidden rows -> (A, D) weighted expert outputs with bias, like `down_rows`, with TMA loads (Hopper and
    newer, or the interpreter; see `tma_available`). Needs hidden rows zero past each expert's width."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    assignments, width = hidden_rows.shape
    num_experts, hidden = packed.num_experts, packed.hidden_size
    block_k = fit_block_k(width, cfg.bk)
    block_n = min(cfg.bn, max(16, next_pow2(hidden)))  # no tile wider than the output
    y = torch.empty(assignments, hidden, dtype=hidden_rows.dtype, device=hidden_rows.device)
    h_desc = TensorDescriptor.from_tensor(hidden_rows, [cfg.bm, block_k])
    w2_desc = TensorDescriptor.from_tensor(packed.w2.view(num_experts * hidden, width), [block_n, block_k])
    grid = ((triton.cdiv(assignments, cfg.bm) + num_experts) * triton.cdiv(hidden, block_n),)
    launch_within_shared_memory(
        down_tma_kernel, grid, h_desc, w2_desc, layout.sorted_weight, layout.counts, packed.b2, packed.widths, y,
        hidden, num_experts,
        EP=expert_buckets(num_experts), BM=cfg.bm, BN=block_n, BK=block_k, num_warps=cfg.warps,
        num_stages=cfg.stages, **pdl_options(hidden_rows.device))
    return y
