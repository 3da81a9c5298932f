"""Each expert's weight gradient as the float32 sum of its pieces' partial products, reading non-empty pieces only.

Legend: E experts, G pieces (a static bound), MN one gradient's elements.

`train_ops.grouped_weight_grad` cuts an expert with more rows than `SPLIT_K_ROWS` into pieces, so that its reduction
runs on several SMs (`train_ops.split_groups`). The grouped GEMM writes one (M, N) product per piece; an expert's
pieces are consecutive. One program per (expert, block of MN) adds its pieces in piece order (deterministic, no
atomics), skips pieces with no rows (a K = 0 GEMM, which the library need not write, so they hold garbage) and writes
the result in the weights' dtype. An expert with one piece costs one read and one write: the cast its gradient needed
anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["piece_sums"]

_BLOCK = 2048


@triton.jit
def piece_sums_kernel(pieces_ptr, ends_ptr, first_ptr, count_ptr, out_ptr, MN, BLOCK: tl.constexpr):
    """Program (expert, block): out[expert, block] = sum of its non-empty pieces' [block] (0 with none)."""
    expert = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = idx < MN
    first = tl.load(first_ptr + expert).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(0, tl.load(count_ptr + expert)):
        piece = first + step
        start = tl.where(piece > 0, tl.load(ends_ptr + tl.maximum(piece - 1, 0)), 0)
        if tl.load(ends_ptr + piece) > start:
            acc += tl.load(pieces_ptr + piece * MN + idx, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + expert.to(tl.int64) * MN + idx, acc.to(out_ptr.dtype.element_ty), mask=inside)


def piece_sums(pieces: torch.Tensor, ends: torch.Tensor, first: torch.Tensor, count: torch.Tensor,
               out_dtype: torch.dtype) -> torch.Tensor:
    """(G, M, N) pieces, (G,) int32 piece ends, (E,) first piece and piece count of each expert -> (E, M, N)."""
    num_experts, (_, rows, cols) = first.shape[0], pieces.shape
    out = torch.empty(num_experts, rows, cols, dtype=out_dtype, device=pieces.device)
    if num_experts and rows * cols:
        piece_sums_kernel[(num_experts, triton.cdiv(rows * cols, _BLOCK))](pieces, ends, first, count, out,
                                                                           rows * cols, BLOCK=_BLOCK, num_warps=4)
    return out
