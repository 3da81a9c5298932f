"""The weighted combine over the two row buffers of a pack split into width classes, read in place.

Legend: T tokens, K experts per token, A = T * K assignment rows per buffer, D hidden size, E experts, k narrow ones.

`pimoe.cuda.width_classes` runs the narrow and the wide experts' MLPs over two (A, D) buffers addressed by virtual
rows (the wide buffer from row A). Concatenating the two outputs into one (2A, D) tensor for the combine was a copy of
both buffers per layer (~0.13 GB at the GPU preset's 32,768 tokens); the combine kernels read each virtual row from
its own buffer instead, and the backward writes each buffer's gradient where its MLP's backward reads it.
"""

from __future__ import annotations

import torch

from pimoe.cuda.train_ops import segment_sums

__all__ = ["combine_two_buffers"]


class _TwoBufferCombine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows_lo, rows_hi, position, offsets, expert_indices, weights, b2, narrow, out_dtype):
        from pimoe.cuda.ops.train_combine import combine_forward

        ctx.save_for_backward(rows_lo, rows_hi, position, offsets, expert_indices, weights, b2)
        ctx.narrow = narrow
        return combine_forward(rows_lo, position, offsets, expert_indices, weights, b2, out_dtype, y_hi=rows_hi)

    @staticmethod
    def backward(ctx, dy):
        from pimoe.cuda.ops.train_combine import two_buffer_combine_backward

        rows_lo, rows_hi, position, offsets, expert_indices, weights, b2 = ctx.saved_tensors
        d_lo, d_hi, dweights = two_buffer_combine_backward(dy, rows_lo, rows_hi, position, offsets, expert_indices,
                                                           weights, b2)
        narrow = ctx.narrow
        # each class's bias gradient from its own buffer; the gap group between them has no rows and no gradient
        wide_offsets = offsets[narrow + 1:] - rows_lo.shape[0]
        db2 = torch.cat([segment_sums(d_lo, offsets[:narrow]), b2.new_zeros(1, b2.shape[1]),
                         segment_sums(d_hi, wide_offsets)]).to(b2.dtype)
        return d_lo, d_hi, None, None, None, dweights, db2, None, None


def combine_two_buffers(rows_lo: torch.Tensor, rows_hi: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                        expert_indices: torch.Tensor, weights: torch.Tensor, b2: torch.Tensor, narrow: int,
                        out_dtype: torch.dtype) -> torch.Tensor:
    """(T, D) in out_dtype: sum_k w_tk (row[position[t, k]] + b2_e) over kept slots, where a virtual position p < A
    is row p of rows_lo and p >= A row p - A of rows_hi (`width_classes.class_layout`'s position and offsets, E + 1
    groups with the gap at index `narrow`; b2 (E + 1, D) float32 in that order). CUDA (or Triton's interpreter)."""
    return _TwoBufferCombine.apply(rows_lo, rows_hi, position, offsets, expert_indices, weights.float().contiguous(),
                                   b2, narrow, out_dtype)
