"""Grouped GEMMs over rows sorted by expert for dtypes torch._grouped_mm does not take on CUDA (float32, float16).

Legend: A rows (sorted by expert, groups given by their ends `offsets`), E experts, EP a power of two >= E, K / M / N
the operands' widths. BM x BN tiles, BK deep.

Why: on CUDA the library kernel takes bf16 only, so the training path's float32 model looped over experts in
Python, reading each group's end on the host: a sync per expert and per GEMM, and no CUDA graph of a float32 step.
These two kernels read the group ends on the device:

rows_matmul_kernel: out[r] = a[r] @ b[e(r)] for every row r of expert e. Row tiles never cross a group boundary
    (cdiv(count_e, BM) per expert, so cdiv(A, BM) + E tiles cover any split); programs past the last tile return.
rows_weight_grad_kernel: out[e] = sum over e's rows r of a[r]^T b[r], one program per (expert, BM x BN block of the
    gradient), walking the expert's rows BK at a time in row order: deterministic, no atomics, an expert with no rows
    gets zeros.

Products accumulate in float32; float32 operands multiply in IEEE float32 unless torch allows TF32 for matmuls
(`launch_options.dot_precision`), so the results match torch's per-expert matmuls to float32 rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.ops.jit import expert_tile_of_counts
from pimoe.cuda.ops.launch_options import dot_precision

__all__ = ["rows_matmul", "rows_weight_grad"]

# Tiles small enough for float32 operands in two stages of shared memory (2 x (64 x 32 + 32 x 64) x 4 bytes = 32 KB)
# on any card Triton runs on. Not tuned: this path exists for graph capture and exactness, not speed.
_BM, _BN, _BK, _WARPS, _STAGES = 64, 64, 32, 4, 2


@triton.jit
def rows_matmul_kernel(a_ptr, b_ptr, offsets_ptr, out_ptr, E, K, N, num_n,
                       stride_am, stride_ak, stride_be, stride_bk, stride_bn,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EP: tl.constexpr,
                       PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    ecols = tl.arange(0, EP)
    ends = tl.load(offsets_ptr + ecols, mask=ecols < E, other=0)
    starts = tl.load(offsets_ptr + ecols - 1, mask=(ecols > 0) & (ecols < E), other=0)
    expert, m0, m_end = expert_tile_of_counts(pid // num_n, ends - starts, BM, EP)
    if expert < E:
        rows = m0 + tl.arange(0, BM)
        row_ok = rows < m_end
        cols = (pid % num_n) * BN + tl.arange(0, BN)
        col_ok = cols < N
        ks = tl.arange(0, BK)
        a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + ks[None, :] * stride_ak
        b_ptrs = b_ptr + expert.to(tl.int64) * stride_be + ks[:, None] * stride_bk + cols[None, :] * stride_bn
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            k_ok = k0 + ks < K
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BK * stride_ak
            b_ptrs += BK * stride_bk
        out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def rows_weight_grad_kernel(a_ptr, b_ptr, offsets_ptr, out_ptr, M, N,
                            stride_ar, stride_am, stride_br, stride_bn,
                            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    expert = tl.program_id(0)
    ms = tl.program_id(1) * BM + tl.arange(0, BM)
    ns = tl.program_id(2) * BN + tl.arange(0, BN)
    m_ok = ms < M
    n_ok = ns < N
    end = tl.load(offsets_ptr + expert)
    start = tl.where(expert > 0, tl.load(offsets_ptr + tl.maximum(expert - 1, 0)), 0)
    ks = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for r0 in range(start, end, BK):
        rows = (r0 + ks).to(tl.int64)
        r_ok = rows < end
        a_t = tl.load(a_ptr + rows[None, :] * stride_ar + ms[:, None] * stride_am,
                      mask=m_ok[:, None] & r_ok[None, :], other=0.0)  # (BM, BK): a's rows, transposed
        b = tl.load(b_ptr + rows[:, None] * stride_br + ns[None, :] * stride_bn,
                    mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a_t, b, acc, input_precision=PRECISION)
    out_ptrs = out_ptr + expert.to(tl.int64) * M * N + ms[:, None] * N + ns[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _check(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, what: str) -> None:
    if a.dtype != b.dtype:
        raise ValueError(f"{what}: operands of one dtype, got {a.dtype} and {b.dtype}")
    if offsets.dim() != 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{what}: offsets must be a 1-D integer tensor of group ends, got {tuple(offsets.shape)} "
                         f"{offsets.dtype}")


def rows_matmul(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(A, K) rows grouped by expert (group ends `offsets`, (E,)) times (E, K, N) -> contiguous (A, N) in a's dtype;
    rows past offsets[-1] are unspecified. Any strides."""
    _check(a, b, offsets, "rows_matmul")
    rows, depth = a.shape
    experts, _, width = b.shape
    out = torch.empty(rows, width, dtype=a.dtype, device=a.device)
    if rows == 0 or width == 0 or experts == 0:
        return out
    num_n = triton.cdiv(width, _BN)
    grid = ((triton.cdiv(rows, _BM) + experts) * num_n,)
    rows_matmul_kernel[grid](a, b, offsets, out, experts, depth, width, num_n, a.stride(0), a.stride(1), b.stride(0),
                             b.stride(1), b.stride(2), BM=_BM, BN=_BN, BK=_BK,
                             EP=triton.next_power_of_2(experts), PRECISION=dot_precision(a.dtype),
                             num_warps=_WARPS, num_stages=_STAGES)
    return out


def rows_weight_grad(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor,
                     out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sum over each expert's rows of a_r^T b_r: (A, M), (A, N) grouped by expert -> (E, M, N) in out_dtype. Rows past
    offsets[-1] are not read; an expert with no rows gets zeros. Any strides."""
    _check(a, b, offsets, "rows_weight_grad")
    experts = offsets.shape[0]
    height, width = a.shape[1], b.shape[1]
    out = torch.empty(experts, height, width, dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    grid = (experts, triton.cdiv(height, _BM), triton.cdiv(width, _BN))
    rows_weight_grad_kernel[grid](a, b, offsets, out, height, width, a.stride(0), a.stride(1), b.stride(0),
                                  b.stride(1), BM=_BM, BN=_BN, BK=_BK, PRECISION=dot_precision(a.dtype),
                                  num_warps=_WARPS, num_stages=_STAGES)
    return out
