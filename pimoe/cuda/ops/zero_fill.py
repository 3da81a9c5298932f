"""Zero what a training GEMM leaves unwritten, and nothing else.

Legend: A sorted assignment rows, E experts.

torch._grouped_mm need not write the output of a group with no rows (a K = 0 GEMM), and the row-grouped GEMMs leave
rows past the last group (dropped assignments) unspecified. A masked_fill_ with a broadcast mask reads and writes the
whole tensor in PyTorch's generic, unvectorised elementwise kernel: 245 µs per training step at 65,536 tokens on an
H100 for the weight gradients and the input-row gradient (bench/train_step.py's profile, 2026-12-06). These kernels
read the group ends and return at once where there is nothing to zero, which is almost everywhere.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["zero_empty_groups_", "zero_rows_past_groups_"]

_BLOCK = 8192


@triton.jit
def zero_empty_groups_kernel(out_ptr, offsets_ptr, SIZE, BLOCK: tl.constexpr):
    """Program (expert, chunk): zero elements [chunk * BLOCK, +BLOCK) of the expert's (SIZE,) slice if it has no
    rows."""
    expert = tl.program_id(0)
    chunk = tl.program_id(1)
    end = tl.load(offsets_ptr + expert)
    start = tl.load(offsets_ptr + expert - 1, mask=expert > 0, other=0)
    if end == start:
        idx = chunk * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + expert.to(tl.int64) * SIZE + idx, tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty),
                 mask=idx < SIZE)


@triton.jit
def zero_rows_past_groups_kernel(x_ptr, offsets_ptr, E, TOTAL, WIDTH, BLOCK: tl.constexpr):
    """Program chunk: zero the elements of [chunk * BLOCK, +BLOCK) that lie in rows at or past offsets[E - 1]."""
    first = tl.load(offsets_ptr + E - 1).to(tl.int64) * WIDTH
    chunk_start = tl.program_id(0).to(tl.int64) * BLOCK
    if chunk_start + BLOCK > first:
        idx = chunk_start + tl.arange(0, BLOCK)
        tl.store(x_ptr + idx, tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty), mask=(idx >= first) & (idx < TOTAL))


def zero_empty_groups_(out: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(E, ...) contiguous per-expert output, (E,) group ends: zero the slices of experts with no rows, in place."""
    size = out[0].numel()
    zero_empty_groups_kernel[(out.shape[0], triton.cdiv(size, _BLOCK))](out, offsets, size, BLOCK=_BLOCK)
    return out


def zero_rows_past_groups_(rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(A, W) contiguous rows grouped by expert: zero the rows at or past the last group's end, in place."""
    total = rows.numel()
    zero_rows_past_groups_kernel[(triton.cdiv(total, _BLOCK),)](rows, offsets, offsets.shape[0], total, rows.shape[1],
                                                                BLOCK=_BLOCK)
    return rows
