"""Mean and variance of each token row, for the up GEMM's fused LayerNorm and RMSNorm.

Legend: T tokens, D hidden size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import next_pow2
from pimoe.cuda.ops.jit import enter_kernel
from pimoe.cuda.ops.launch_options import pdl_options

__all__ = ["row_stats", "row_stats_kernel"]


@triton.jit
def row_stats_kernel(x_ptr, stats_ptr, T, D, BT: tl.constexpr, BD: tl.constexpr,
                     PDL: tl.constexpr = False):
    """(T, 2) float32 mean and variance of each row, for LayerNorm and RMSNorm experts.

    Sums are taken around each row's first element: E[x^2] - E[x]^2 without a shift loses the variance of rows whose
    mean is large against their spread.
    """
    enter_kernel(PDL)
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    shift = tl.load(x_ptr + rows64 * D, mask=row_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros((BT,), dtype=tl.float32)
    s2 = tl.zeros((BT,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        dcols = d0 + tl.arange(0, BD)
        ok = row_ok[:, None] & (dcols < D)[None, :]
        v = tl.load(x_ptr + rows64[:, None] * D + dcols[None, :], mask=ok, other=0.0).to(tl.float32)
        v = tl.where(ok, v - shift[:, None], 0.0)
        s1 += tl.sum(v, axis=1)
        s2 += tl.sum(v * v, axis=1)
    mean_shifted = s1 / D
    var = tl.maximum(s2 / D - mean_shifted * mean_shifted, 0.0)
    tl.store(stats_ptr + rows64 * 2, shift + mean_shifted, mask=row_ok)
    tl.store(stats_ptr + rows64 * 2 + 1, var, mask=row_ok)


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """(T, D) -> (T, 2) float32 mean and variance per row."""
    num_tokens, hidden = x.shape
    stats = torch.empty(num_tokens, 2, dtype=torch.float32, device=x.device)
    block_rows = 16
    row_stats_kernel[(triton.cdiv(num_tokens, block_rows),)](
        x, stats, num_tokens, hidden, BT=block_rows, BD=min(256, next_pow2(hidden)), **pdl_options(x.device))
    return stats
