"""Each expert's column sums of its rows (the bias gradients of the grouped expert GEMMs), deterministic, no atomics.

Legend: A rows grouped by expert, N columns, E experts, EP a power of two > E, BM rows per tile.

The bias gradients db1 (sum of dpre over each expert's rows) and db2 (the same over the combine's row gradients) are
otherwise the weight-gradient GEMM against a column of ones (`train_ops.grouped_weight_grad`): a 16-row GEMM that runs
the tensor cores at an eighth of a tile, plus a ones fill, an empty-group zeroing and a float32 slice copy, 1.47 ms
per step of the GPU preset on an H100 for what is one read of the rows.

Two passes. The first sums tiles of at most BM rows that never cross a group boundary (the grouped GEMMs' own tile
map, `jit.expert_tile_of_counts`), one program per (tile, column block): cdiv(A, BM) + E tiles, thousands of short
programs. (A program per (expert, row split) looping over ~1,000 rows each was tried: a few hundred programs, latency
bound, 3.7 ms per step.) The second adds each expert's tile partials in tile order, so the result does not depend on
scheduling: graph replays and eager steps agree bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.ops.jit import counts_from_ends, expert_tile_of_counts

__all__ = ["segment_column_sums"]

TILE_ROWS = 256
BLOCK_ROWS, BLOCK_COLS = 32, 128
PARTIALS_PER_STEP = 16  # tile partials the second pass adds per iteration


@triton.jit
def tile_sums_kernel(rows_ptr, ends_ptr, partial_ptr, N, E, EP: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr,
                     BC: tl.constexpr):
    """Program (tile, column block): partial[tile, cols] = sum of the tile's rows (0 for tiles past the last)."""
    tile = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    expert, first, group_end = expert_tile_of_counts(tile, counts_from_ends(ends_ptr, E, EP), BM, EP)
    last = tl.where(expert < E, tl.minimum(first + BM, group_end), first)
    acc = tl.zeros((BR, BC), dtype=tl.float32)
    for step in tl.static_range(0, BM, BR):
        acc += _block(rows_ptr, first + step + tl.arange(0, BR), last, cols, N)
    tl.store(partial_ptr + tile.to(tl.int64) * N + cols, tl.sum(acc, axis=0), mask=cols < N)


@triton.jit
def expert_sums_kernel(partial_ptr, ends_ptr, out_ptr, N, E, EP: tl.constexpr, BM: tl.constexpr, TB: tl.constexpr,
                       BC: tl.constexpr):
    """Program (expert, column block): out[expert, cols] = its tiles' partials added in tile order (0 with no rows)."""
    expert = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    tiles = (counts_from_ends(ends_ptr, E, EP) + BM - 1) // BM
    mine = tl.arange(0, EP) == expert
    first = tl.sum(tl.where(mine, tl.cumsum(tiles, axis=0) - tiles, 0), axis=0)
    end = first + tl.sum(tl.where(mine, tiles, 0), axis=0)
    acc = tl.zeros((TB, BC), dtype=tl.float32)
    for start in range(first, end, TB):
        acc += _block(partial_ptr, start + tl.arange(0, TB), end, cols, N)
    tl.store(out_ptr + expert * N + cols, tl.sum(acc, axis=0), mask=cols < N)


@triton.jit
def _block(ptr, rows, end, cols, N):
    """The float32 block rows x cols of a row-major (., N) matrix; rows at or past `end` and columns past N read 0."""
    return tl.load(ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=(rows < end)[:, None] & (cols < N)[None, :],
                   other=0.0).to(tl.float32)


def segment_column_sums(rows: torch.Tensor, offsets: torch.Tensor, tile_rows: int = TILE_ROWS,
                        block_rows: int = BLOCK_ROWS, block_cols: int = BLOCK_COLS, num_warps: int = 4
                        ) -> torch.Tensor:
    """(A, N) rows grouped by expert (offsets: (E,) group ends) -> (E, N) float32 sums; rows past offsets[-1] are not
    read, an expert with no rows gets zeros. tile_rows: a multiple of block_rows (tests shrink both; the tile shape is
    timed by `bench/segment_sums_tiles.py`)."""
    rows = rows.contiguous()
    num_experts, width = offsets.shape[0], rows.shape[1]
    out = torch.empty(num_experts, width, dtype=torch.float32, device=rows.device)
    if num_experts == 0 or width == 0:
        return out.zero_()
    padded_experts = triton.next_power_of_2(num_experts + 1)
    tiles = triton.cdiv(rows.shape[0], tile_rows) + num_experts
    partial = torch.empty(tiles, width, dtype=torch.float32, device=rows.device)
    column_blocks = triton.cdiv(width, block_cols)
    tile_sums_kernel[(tiles, column_blocks)](rows, offsets, partial, width, num_experts, EP=padded_experts,
                                             BM=tile_rows, BR=block_rows, BC=block_cols, num_warps=num_warps)
    expert_sums_kernel[(num_experts, column_blocks)](partial, offsets, out, width, num_experts, EP=padded_experts,
                                                     BM=tile_rows, TB=PARTIALS_PER_STEP, BC=block_cols, num_warps=4)
    return out
