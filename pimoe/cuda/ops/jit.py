"""Device-side helpers every kernel of the fast path shares: programmatic dependent launch, the activations, the
expert tile a program works on.

Legend: E experts, EP a power of two >= E + 1, BM rows per tile.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["apply_activation", "enter_kernel", "release_dependents", "row_address", "wait_for_prior"]



@triton.jit
def release_dependents(PDL: tl.constexpr):
    """Programmatic dependent launch (PDL, Hopper and newer): let the next kernel's programs be scheduled now, so
    their launch and prologue overlap this kernel's tail."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wait_for_prior(PDL: tl.constexpr):
    """Under PDL, block until the previous kernel has finished and its writes are visible. A kernel launched with
    PDL must call this before it reads or writes memory another kernel touches."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def enter_kernel(PDL: tl.constexpr):
    """The start of a PDL-launched kernel with nothing to do before its inputs are ready."""
    release_dependents(PDL)
    wait_for_prior(PDL)


@triton.jit
def row_address(base_lo, base_hi, row, split, D):
    """Where a (virtual) row of D columns lives: rows below split in the first buffer, the rest in the second from
    its start (`pimoe.cuda.width_classes`: two class buffers without a copy into one)."""
    high = row >= split
    return tl.where(high, base_hi + (row - split) * D, base_lo + row * D)


@triton.jit
def _tanh(x):
    # tanh through exp: libdevice tanh is not portable to the interpreter. exp(-2|x|) never overflows.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def normal_cdf(x):
    """Phi(x) from erfc(|x| / sqrt 2) by the Chebyshev fit of Numerical Recipes' `erfcc` (W. H. Press et al.;
    fractional error below 1.2e-7 everywhere): one reciprocal, nine FMAs, one exp, instead of libdevice's erff."""
    z = tl.abs(x) * 0.7071067811865476  # 1 / sqrt 2 as a literal: Triton 3.9's interpreter mistypes a tensor times a
    # module-level tl.constexpr
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -0.82215223 + t * 0.17087277
    poly = 1.48851587 + t * poly
    poly = -1.13520398 + t * poly
    poly = 0.27886807 + t * poly
    poly = -0.18628806 + t * poly
    poly = 0.09678418 + t * poly
    poly = 0.37409196 + t * poly
    poly = 1.00002368 + t * poly
    poly = -1.26551223 + t * poly
    erfc = t * tl.exp(poly - z * z)
    return tl.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


@triton.jit
def _gelu_erf(x):
    """0.5 x (1 + erf(x / sqrt 2)) = x Phi(x) (`normal_cdf`). The GELU is a third of the fused up GEMM's time
    (docs/performance.md). Against float64 over [-12, 12] (the same formula in float32 torch ops): max abs error
    3.8e-7, torch's own float32 GELU 1.2e-6; tests/cuda check the compiled kernel's error.
    """
    return x * normal_cdf(x)


@triton.jit
def apply_activation(x, code):
    """x float32, code a scalar from packing.ACT_CODES (gelu 0, gelu_tanh 1, relu 2, silu 3, tanh 4)."""
    y = x
    if code == 0:
        y = _gelu_erf(x)
    elif code == 1:
        # sqrt(2 / pi) as a literal: Triton 3.9's interpreter mistypes a tensor times a module-level tl.constexpr
        y = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif code == 2:
        y = tl.maximum(x, 0.0)
    elif code == 3:
        y = x / (1.0 + tl.exp(-x))
    elif code == 4:
        y = _tanh(x)
    return y


@triton.jit
def _activation_per_element(x, code):
    """The same, with a code per element (rows of several experts in one block): every branch is evaluated."""
    gelu = _gelu_erf(x)
    gelu_tanh = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    y = tl.where(code == 0, gelu, gelu_tanh)
    y = tl.where(code == 2, tl.maximum(x, 0.0), y)
    y = tl.where(code == 3, x / (1.0 + tl.exp(-x)), y)
    return tl.where(code == 4, _tanh(x), y)


@triton.jit
def counts_from_ends(ends_ptr, E, EP: tl.constexpr):
    """(EP,) rows of each expert from its (E,) group ends; 0 past E."""
    ecols = tl.arange(0, EP)
    ends = tl.load(ends_ptr + ecols, mask=ecols < E, other=0)
    return ends - tl.load(ends_ptr + ecols - 1, mask=(ecols > 0) & (ecols < E), other=0)


@triton.jit
def _expert_tile(pid_m, counts_ptr, E, BM: tl.constexpr, EP: tl.constexpr):
    """(expert, first row, end row of the expert) of row tile pid_m; expert == E past the last tile."""
    ecols = tl.arange(0, EP)
    return expert_tile_of_counts(pid_m, tl.load(counts_ptr + ecols, mask=ecols < E, other=0), BM, EP)


@triton.jit
def expert_tile_of_counts(pid_m, counts, BM: tl.constexpr, EP: tl.constexpr):
    """`_expert_tile` from the (EP,) counts themselves. Tiles never cross a group boundary: cdiv(count, BM) per
    expert, so cdiv(A, BM) + E tiles cover any split of A rows."""
    return expert_tile_of_tiles(pid_m, counts, (counts + BM - 1) // BM, BM, EP)


@triton.jit
def expert_tile_of_tiles(pid_m, counts, tiles, BM: tl.constexpr, EP: tl.constexpr):
    """The same with each expert's row tiles given: 0 for an expert left to another launch, whose rows keep their
    place (row starts still follow every expert's count)."""
    ecols = tl.arange(0, EP)
    tile_end = tl.cumsum(tiles, axis=0)
    expert = tl.sum((tile_end <= pid_m).to(tl.int32), axis=0)
    row_end = tl.cumsum(counts, axis=0)
    mine = ecols == expert
    first_tile = tl.sum(tl.where(mine, tile_end - tiles, 0), axis=0)
    row_start = tl.sum(tl.where(mine, row_end - counts, 0), axis=0)
    end = tl.sum(tl.where(mine, row_end, 0), axis=0)
    return expert, row_start + (pid_m - first_tile) * BM, end


@triton.jit
def _class_program_tile(num_n, counts_ptr, gated_ptr, E, BM: tl.constexpr, EP: tl.constexpr, CLASS: tl.constexpr):
    """`_program_tile` over one class of experts: CLASS 1 the plain ones, 2 the gated ones (by the (E,) gated flags);
    the other class's experts get no tiles."""
    pid = tl.program_id(0)
    ecols = tl.arange(0, EP)
    counts = tl.load(counts_ptr + ecols, mask=ecols < E, other=0)
    gated = tl.load(gated_ptr + ecols, mask=ecols < E, other=0)
    if CLASS == 2:
        member = gated != 0
    else:
        member = gated == 0
    tiles = tl.where(member, (counts + BM - 1) // BM, 0)
    expert, m0, m_end = expert_tile_of_tiles(pid // num_n, counts, tiles, BM, EP)
    return expert, m0, m_end, pid % num_n


@triton.jit
def _program_tile(num_n, counts_ptr, E, BM: tl.constexpr, EP: tl.constexpr):
    """(expert, first row, end row of the expert, column tile) of this program; column tiles vary fastest, so
    consecutive programs share a row tile of A. expert == E past the last tile."""
    pid = tl.program_id(0)
    expert, m0, m_end = _expert_tile(pid // num_n, counts_ptr, E, BM, EP)
    return expert, m0, m_end, pid % num_n
