"""The up GEMM of the large-batch path with bias and activation in its epilogue, over rows already in expert order.

Legend: E experts, D hidden size, A sorted rows, N1 padded up width, F padded hidden width, F_e one expert's width.
BM x BN output tiles, BK deep.

h[r] = act_e(xs[r] @ W1_e^T + b1_e) (gated: act(gate) * up), 0 for columns j >= F_e, written straight to (A, F): the
(A, N1) pre-activation never goes to memory. Tiles wholly past an expert's own width compute nothing and write zeros
only as far as the reader of h reads (`pad_to`: the Triton down GEMMs stop at the width rounded up to their BK), so a
narrow expert of a typed pack costs its own FLOPs and bytes, not the widest expert's. The fused gather of
`up_gemm.up_kernel` is left out on purpose: per-row pointer loads cannot use Hopper's tensor-memory accelerator
(TMA), which moves a whole tile per instruction (pointer loads of the same tiles measured 10% slower on an H100,
docs/performance.md); the gather is a separate bandwidth-bound pass.

Two loaders compute the same tiles: TMA descriptors (Hopper and newer) and plain pointer loads (any GPU, and the
Triton interpreter); with TMA, a pack with a gated expert takes `up_act_halves_tma_kernel`. The grid is
(ceil(A / BM) + E) row tiles x ceil(F / BN) column tiles (N1 for the halves kernel), each program finds its expert
from the device-side counts (`jit._program_tile`), so nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout
from pimoe.cuda.ops.jit import _class_program_tile, _program_tile, apply_activation, enter_kernel
from pimoe.cuda.ops.launch_options import (
    dot_precision,
    expert_buckets,
    fit_block_k,
    launch_within_shared_memory,
    one_activation,
    pdl_options,
)
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import GemmConfig

__all__ = ["up_act_gather_tma_kernel", "up_act_gathered_rows", "up_act_halves_tma_kernel", "up_act_kernel",
           "up_act_rows", "up_act_tma_kernel"]


@triton.jit
def _epilogue(acc, acc_up, b1_ptr, act_ptr, gated, expert, width, rows, row_ok, cols, h_ptr, N1, F,
              ONE_ACT: tl.constexpr, ANY_GATED: tl.constexpr):
    col_ok = cols < width
    bias_base = b1_ptr + expert * N1
    pre = acc + tl.load(bias_base + cols, mask=col_ok, other=0.0)[None, :]
    if ONE_ACT >= 0:
        h = apply_activation(pre, ONE_ACT)
    else:
        h = apply_activation(pre, tl.load(act_ptr + expert))
    if ANY_GATED:
        if gated != 0:
            h = h * (acc_up + tl.load(bias_base + width + cols, mask=col_ok, other=0.0)[None, :])
        # a gated expert's rows past its width are its up half, not zero padding: blank those columns
        h = tl.where(col_ok[None, :], h, 0.0)
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols < F)[None, :])


@triton.jit
def _store_zeros(h_ptr, rows, row_ok, cols, F, BM: tl.constexpr, BN: tl.constexpr):
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * F + cols[None, :],
             tl.zeros((BM, BN), dtype=h_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < F)[None, :])


@triton.jit
def _zeros_end(width, pad_to, F):
    """The end of the columns a reader of h takes for an expert of this width: its width rounded up to pad_to (the
    down GEMM's BK; F for a reader of every column). Tiles past it are neither computed nor written."""
    return tl.minimum(tl.cdiv(width, pad_to) * pad_to, F)


@triton.jit
def _plain_loop(a_ptrs, w_ptrs, acc, D, BK: tl.constexpr, PRECISION: tl.constexpr):
    for _ in range(0, D, BK):
        acc = tl.dot(tl.load(a_ptrs), tl.load(w_ptrs), acc, input_precision=PRECISION)
        a_ptrs += BK
        w_ptrs += BK
    return acc


@triton.jit
def _gated_loop(a_ptrs, w_ptrs, wu_ptrs, acc, acc_up, D, BK: tl.constexpr, PRECISION: tl.constexpr):
    for _ in range(0, D, BK):
        a = tl.load(a_ptrs)
        acc = tl.dot(a, tl.load(w_ptrs), acc, input_precision=PRECISION)
        acc_up = tl.dot(a, tl.load(wu_ptrs), acc_up, input_precision=PRECISION)
        a_ptrs += BK
        w_ptrs += BK
        wu_ptrs += BK
    return acc, acc_up


@triton.jit
def _tma_plain_loop(xs_desc, w1_desc, m0, w_row, acc, D, BK: tl.constexpr):
    for k in range(0, D, BK):
        acc = tl.dot(xs_desc.load([m0, k]), w1_desc.load([w_row, k]).T, acc)
    return acc


@triton.jit
def _tma_two_loop(xs_desc, w1_desc, m0, row0, row1, acc0, acc1, D, BK: tl.constexpr):
    """Two products of the same rows: W1 rows from row0 and from row1 (a gated expert's gate and up halves, or the
    two halves of a plain expert's tile)."""
    for k in range(0, D, BK):
        a = xs_desc.load([m0, k])
        acc0 = tl.dot(a, w1_desc.load([row0, k]).T, acc0)
        acc1 = tl.dot(a, w1_desc.load([row1, k]).T, acc1)
    return acc0, acc1


@triton.jit
def up_act_kernel(xs_ptr, counts_ptr, w1_ptr, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, D, N1, F, E, pad_to,
                  EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  ONE_ACT: tl.constexpr, ANY_GATED: tl.constexpr, PRECISION: tl.constexpr,
                  PDL: tl.constexpr = False):
    """Pointer loads. xs (A, D) contiguous in expert order; D a multiple of BK."""
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(F, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    gated = tl.load(gated_ptr + expert)
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    cols = pid_n * BN + tl.arange(0, BN)
    if pid_n * BN >= width:  # wholly past a narrow expert's width: zero padding where the reader of h takes it
        if pid_n * BN < _zeros_end(width, pad_to, F):
            _store_zeros(h_ptr, rows, row_ok, cols, F, BM, BN)
        return
    ks = tl.arange(0, BK)
    # rows past the expert's end are the next expert's (or past A: clamped); computed, never stored
    a_ptrs = xs_ptr + tl.minimum(rows, m_end - 1).to(tl.int64)[:, None] * D + ks[None, :]
    w_base = w1_ptr + expert.to(tl.int64) * N1 * D
    w_ptrs = w_base + tl.minimum(cols, N1 - 1)[None, :] * D + ks[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    if ANY_GATED:
        if gated != 0:
            wu_ptrs = w_base + tl.minimum(width + cols, N1 - 1)[None, :] * D + ks[:, None]
            acc, acc_up = _gated_loop(a_ptrs, w_ptrs, wu_ptrs, acc, acc_up, D, BK, PRECISION)
        else:
            acc = _plain_loop(a_ptrs, w_ptrs, acc, D, BK, PRECISION)
    else:
        acc = _plain_loop(a_ptrs, w_ptrs, acc, D, BK, PRECISION)
    _epilogue(acc, acc_up, b1_ptr, act_ptr, gated, expert, width, rows, row_ok, cols, h_ptr, N1, F,
              ONE_ACT, ANY_GATED)


@triton.jit
def _tile(num_n, counts_ptr, gated_ptr, E, BM: tl.constexpr, EP: tl.constexpr, CLASS: tl.constexpr):
    if CLASS == 0:
        return _program_tile(num_n, counts_ptr, E, BM, EP)
    return _class_program_tile(num_n, counts_ptr, gated_ptr, E, BM, EP, CLASS)


@triton.jit
def up_act_tma_kernel(xs_desc, counts_ptr, w1_desc, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, D, N1, F, E,
                      pad_to, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      ONE_ACT: tl.constexpr, CLASS: tl.constexpr = 0, PDL: tl.constexpr = False):
    """TMA loads, packs without a gated expert (or, with CLASS 1, the plain experts of a pack with gated ones):
    xs_desc over (A, D) with block (BM, BK), w1_desc over the (E * N1, D) view with block (BN, BK). Tiles reaching
    past A come back zero-filled; rows of the next expert are computed and never stored."""
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _tile(tl.cdiv(F, BN), counts_ptr, gated_ptr, E, BM, EP, CLASS)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    n0 = pid_n * BN
    rows = m0 + tl.arange(0, BM)
    cols = n0 + tl.arange(0, BN)
    if n0 >= width:
        if n0 < _zeros_end(width, pad_to, F):
            _store_zeros(h_ptr, rows, rows < m_end, cols, F, BM, BN)
        return
    acc = _tma_plain_loop(xs_desc, w1_desc, m0, expert * N1 + n0, tl.zeros((BM, BN), dtype=tl.float32), D, BK)
    _epilogue(acc, acc, b1_ptr, act_ptr, 0, expert, width, rows, rows < m_end, cols, h_ptr, N1, F, ONE_ACT, False)


@triton.jit
def up_act_gather_tma_kernel(x_ptr, sorted_token_ptr, counts_ptr, w1_desc, b1_ptr, widths_ptr, act_ptr, h_ptr, D, N1,
                             F, E, pad_to, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                             ONE_ACT: tl.constexpr, PDL: tl.constexpr = False):
    """`up_act_tma_kernel` reading its rows straight from the tokens (x (T, D), row r = x[sorted_token[r]]) with
    pointer loads, W1 with TMA: no gather pass, and rows past the expert's end are masked, never fetched. Packs of
    plain experts without norms."""
    enter_kernel(PDL)
    expert, m0, m_end, pid_n = _program_tile(tl.cdiv(F, BN), counts_ptr, E, BM, EP)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    n0 = pid_n * BN
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    cols = n0 + tl.arange(0, BN)
    if n0 >= width:
        if n0 < _zeros_end(width, pad_to, F):
            _store_zeros(h_ptr, rows, row_ok, cols, F, BM, BN)
        return
    token = tl.load(sorted_token_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    a_ptrs = x_ptr + token[:, None] * D + tl.arange(0, BK)[None, :]
    w_row = expert * N1 + n0
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, D, BK):
        acc = tl.dot(tl.load(a_ptrs + k, mask=row_ok[:, None], other=0.0), w1_desc.load([w_row, k]).T, acc)
    _epilogue(acc, acc, b1_ptr, act_ptr, 0, expert, width, rows, row_ok, cols, h_ptr, N1, F, ONE_ACT, False)


@triton.jit
def up_act_halves_tma_kernel(xs_desc, counts_ptr, w1_desc, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, D, N1, F,
                             E, pad_to, EP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                             ONE_ACT: tl.constexpr, ALL_GATED: tl.constexpr = False, CLASS: tl.constexpr = 0,
                             PDL: tl.constexpr = False):
    """TMA loads, packs with a gated expert: every program accumulates two (BM, BN / 2) products, a gated expert's
    gate and up halves or the two halves of a plain expert's tile, so the gated expert costs no more registers than
    a plain tile (an accumulator for the gate and another for the up half, each BN wide, had made the whole pack run
    tiles half as wide). A plain expert's program writes BN hidden columns, a gated expert's BN / 2, plus the zeros
    (where they are read) of as many columns in the far half of h, where no gated expert has a width. The grid
    covers N1 = max(width, 2 * gated width) in BN-wide column tiles; w1_desc has block (BN / 2, BK).

    One loop serves both kinds of expert: a separate BN-wide loop for the plain ones measured slower on an H100
    (the typed pack's up GEMM at 65,536 tokens 1,532 µs, against 1,355-1,383 for this kernel on other machines of
    the same type; docs/performance.md, fifteenth pass). ALL_GATED (every expert the grid covers is gated: CLASS 2,
    the gated experts of a mixed pack launched apart) compiles the plain experts' branch out."""
    enter_kernel(PDL)
    HALF: tl.constexpr = BN // 2
    num_n = tl.cdiv(N1, BN)
    expert, m0, m_end, pid_n = _tile(num_n, counts_ptr, gated_ptr, E, BM, EP, CLASS)
    if expert >= E:
        return
    width = tl.load(widths_ptr + expert)
    if ALL_GATED:
        gated = 1
    else:
        gated = tl.load(gated_ptr + expert)
    zeros_end = _zeros_end(width, pad_to, F)
    rows = m0 + tl.arange(0, BM)
    row_ok = rows < m_end
    if gated != 0:
        c0 = pid_n * HALF
        row1_offset = width  # the up half's rows follow the gate's
        far = c0 + num_n * HALF  # >= N1 / 2 >= width
        if far < zeros_end:
            _store_zeros(h_ptr, rows, row_ok, far + tl.arange(0, HALF), F, BM, HALF)
    else:
        c0 = pid_n * BN
        row1_offset = HALF
    cols0 = c0 + tl.arange(0, HALF)
    cols1 = cols0 + HALF
    if c0 >= width:
        if c0 < zeros_end:
            _store_zeros(h_ptr, rows, row_ok, cols0, F, BM, HALF)
            if gated == 0:
                _store_zeros(h_ptr, rows, row_ok, cols1, F, BM, HALF)
        return
    row0 = expert * N1 + c0
    zeros = tl.zeros((BM, HALF), dtype=tl.float32)
    acc0, acc1 = _tma_two_loop(xs_desc, w1_desc, m0, row0, row0 + row1_offset, zeros, zeros, D, BK)
    # ANY_GATED on for both: it also blanks columns past the width, whose W1 rows may be the next expert's
    if gated != 0:
        _epilogue(acc0, acc1, b1_ptr, act_ptr, 1, expert, width, rows, row_ok, cols0, h_ptr, N1, F, ONE_ACT, True)
    else:
        _epilogue(acc0, acc0, b1_ptr, act_ptr, 0, expert, width, rows, row_ok, cols0, h_ptr, N1, F, ONE_ACT, True)
        _epilogue(acc1, acc1, b1_ptr, act_ptr, 0, expert, width, rows, row_ok, cols1, h_ptr, N1, F, ONE_ACT, True)


def up_act_rows(gathered: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
                use_tma: bool, pad_to: int | None = None, gated_cfg: GemmConfig | None = None,
                tokens: int | None = None) -> torch.Tensor:
    """(A, D) rows in expert order (already gathered and normed) -> (A, F) hidden rows: up GEMM with bias and
    activation (and gate) in its epilogue, TMA loads with `use_tma` (see `tma_available`).

    Columns past an expert's width are zero up to its width rounded up to `pad_to` (the reader's BK: the Triton down
    GEMMs reduce each expert over its own width in steps of BK) and left unwritten past that; None zeroes every
    column (a reader of the whole (A, F) matrix, torch._grouped_mm).

    `gated_cfg` (with TMA, a pack of plain and gated experts): two launches, the plain experts in the single-product
    kernel at `cfg`, the gated ones in the halves kernel at `gated_cfg`, each over its own class's row tiles, instead
    of one halves launch at `cfg` for all. `tokens` (T) bounds each class's rows (a token picks an expert once: at
    most T rows per expert), so neither grid holds many programs with nothing to do."""
    assignments, hidden = gathered.shape
    num_experts = packed.num_experts
    up_width, width = packed.w1.shape[1], packed.max_width
    pad = width if pad_to is None else max(1, int(pad_to))
    hidden_rows = torch.empty(assignments, width, dtype=gathered.dtype, device=gathered.device)
    common = dict(EP=expert_buckets(num_experts), ONE_ACT=one_activation(packed), **pdl_options(gathered.device))

    def grid(shape: GemmConfig, experts: int, columns: int) -> tuple[int]:
        rows = assignments if tokens is None else min(assignments, tokens * experts)
        return ((triton.cdiv(rows, shape.bm) + experts) * triton.cdiv(columns, shape.bn),)

    def launch_shape(shape: GemmConfig) -> dict:
        return dict(BM=shape.bm, BN=shape.bn, BK=fit_block_k(hidden, shape.bk), num_warps=shape.warps,
                    num_stages=shape.stages, **common)

    def descriptors(shape: GemmConfig, weight_rows: int) -> tuple:
        block_k = fit_block_k(hidden, shape.bk)
        return (TensorDescriptor.from_tensor(gathered, [shape.bm, block_k]), layout.counts,
                TensorDescriptor.from_tensor(w1_view, [weight_rows, block_k]))

    if not use_tma:
        launch_within_shared_memory(
            up_act_kernel, grid(cfg, num_experts, width), gathered, layout.counts, packed.w1, packed.b1,
            packed.widths, packed.gated, packed.act, hidden_rows, hidden, up_width, width, num_experts, pad,
            ANY_GATED=packed.any_gated,
            PRECISION=dot_precision(gathered.dtype), **launch_shape(cfg))
        return hidden_rows
    from triton.tools.tensor_descriptor import TensorDescriptor

    w1_view = packed.w1.view(num_experts * up_width, hidden)
    rest = (packed.b1, packed.widths, packed.gated, packed.act, hidden_rows, hidden, up_width, width, num_experts, pad)

    def plain(shape: GemmConfig, experts: int, cls: int) -> None:
        launch_within_shared_memory(up_act_tma_kernel, grid(shape, experts, width), *descriptors(shape, shape.bn),
                                    *rest, CLASS=cls, **launch_shape(shape))

    def halves(shape: GemmConfig, experts: int, cls: int) -> None:
        launch_within_shared_memory(
            up_act_halves_tma_kernel, grid(shape, experts, up_width),
            *descriptors(shape, shape.bn // 2), *rest, ALL_GATED=cls == 2, CLASS=cls,
            **launch_shape(shape))

    gated_experts = sum(packed.gated_host)
    if not packed.any_gated:
        plain(cfg, num_experts, 0)
    elif packed.all_gated or gated_cfg is None:
        halves(cfg, num_experts, 0)
    else:
        plain(cfg, num_experts - gated_experts, 1)
        halves(gated_cfg, gated_experts, 2)
    return hidden_rows


def up_act_gathered_rows(x: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
                         pad_to: int | None = None, tokens: int | None = None) -> torch.Tensor:
    """`up_act_rows` over the tokens x (T, D) themselves, each sorted row read from x[sorted_token[r]] inside the up
    GEMM (`up_act_gather_tma_kernel`): no gathered copy. TMA for W1 (Hopper and newer, or the interpreter); packs of
    plain experts without norms."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if packed.any_gated or packed.any_norm:
        raise ValueError("up_act_gathered_rows takes packs of plain experts without norms")
    assignments, hidden = layout.sorted_token.shape[0], x.shape[1]
    num_experts = packed.num_experts
    up_width, width = packed.w1.shape[1], packed.max_width
    block_k = fit_block_k(hidden, cfg.bk)
    hidden_rows = torch.empty(assignments, width, dtype=x.dtype, device=x.device)
    rows = assignments if tokens is None else min(assignments, tokens * num_experts)
    w1_desc = TensorDescriptor.from_tensor(packed.w1.view(num_experts * up_width, hidden), [cfg.bn, block_k])
    launch_within_shared_memory(
        up_act_gather_tma_kernel, ((triton.cdiv(rows, cfg.bm) + num_experts) * triton.cdiv(width, cfg.bn),), x,
        layout.sorted_token, layout.counts, w1_desc, packed.b1, packed.widths, packed.act, hidden_rows, hidden,
        up_width, width, num_experts, width if pad_to is None else max(1, int(pad_to)),
        EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=block_k, ONE_ACT=one_activation(packed),
        num_warps=cfg.warps, num_stages=cfg.stages, **pdl_options(x.device))
    return hidden_rows
