"""The activation pass over (A, N1) raw up projections: bias, activation and gate of each row's expert.

Legend: E experts, A sorted rows, N1 padded up width, F padded hidden width, F_e one expert's width.

The engine's backends apply the activation inside a GEMM; this separate pass serves the "grouped_mm" backend of
bench/backends.py and the check of the kernels' GELU (`pimoe.cuda.testing.kernel_gelu_error`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout
from pimoe.cuda.ops.jit import apply_activation, enter_kernel
from pimoe.cuda.ops.launch_options import one_activation, pdl_options
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import Tuning

__all__ = ["activate_kernel", "activate_rows"]


@triton.jit
def activate_kernel(p_ptr, sorted_expert_ptr, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, A, N1, F, E,
                    BR: tl.constexpr, BC: tl.constexpr, ANY_GATED: tl.constexpr, ONE_ACT: tl.constexpr,
                    PDL: tl.constexpr = False):
    """h[r, j] = act_e(p[r, j] + b1_e[j]) (times the up half p[r, F_e + j] + b1_e[F_e + j] when gated), 0 for j >= F_e.

    A pass over (A, F) elements that must run at memory bandwidth, which needs many loads in flight, which needs few
    registers per thread. ONE_ACT >= 0 (every expert has that activation and none is gated) compiles one activation
    and nothing else. Otherwise a block of rows takes its experts one at a time with each one's scalar activation
    code, so registers hold one activation's temporaries, never all five: the version that evaluated every
    activation per element ran at 1.6 TB/s (640-760 µs at 65,536 tokens on an H100, torch's GELU over the same
    bytes 375 µs).
    Every row below A is computed (rows past the kept ones come out as garbage no later kernel reads), so nothing
    the loads of p wait for is loaded first; no mask depends on a loaded value except a gated expert's up half.
    Padded units need no mask: their weights and bias are zero, so p + b1 is exactly 0 there and every activation
    maps 0 to 0. Consecutive programs take consecutive column blocks of the same rows: the grid walks memory in order.
    """
    enter_kernel(PDL)
    pid = tl.program_id(0)
    col_blocks = tl.cdiv(F, BC)
    r0 = (pid // col_blocks) * BR
    rows = r0 + tl.arange(0, BR)
    row_ok = rows < A
    rows64 = rows.to(tl.int64)
    cols = (pid % col_blocks) * BC + tl.arange(0, BC)
    col_ok = cols < F
    ok = row_ok[:, None] & col_ok[None, :]
    pre = tl.load(p_ptr + rows64[:, None] * N1 + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    # dropped rows carry expert E: clamp (their output is never read)
    first = tl.minimum(tl.load(sorted_expert_ptr + r0), E - 1)
    last = tl.minimum(tl.load(sorted_expert_ptr + tl.minimum(r0 + BR, A) - 1), E - 1)
    if ONE_ACT >= 0:
        if first == last:  # most blocks: one bias row for the whole block
            pre += tl.load(b1_ptr + first * N1 + cols, mask=col_ok, other=0.0)[None, :]
        else:
            expert = tl.minimum(tl.load(sorted_expert_ptr + rows, mask=row_ok, other=0), E - 1)
            pre += tl.load(b1_ptr + expert[:, None] * N1 + cols[None, :], mask=ok, other=0.0)
        h = apply_activation(pre, ONE_ACT)
    else:
        expert = tl.minimum(tl.load(sorted_expert_ptr + rows, mask=row_ok, other=0), E - 1)
        h = tl.zeros((BR, BC), dtype=tl.float32)
        for e in range(first, last + 1):
            mine = expert == e
            z = pre + tl.load(b1_ptr + e * N1 + cols, mask=col_ok, other=0.0)[None, :]
            he = apply_activation(z, tl.load(act_ptr + e))
            if ANY_GATED:
                if tl.load(gated_ptr + e) != 0:
                    width = tl.load(widths_ptr + e)
                    in_width = cols < width
                    up_cols = width + cols
                    up = tl.load(p_ptr + rows64[:, None] * N1 + up_cols[None, :],
                                 mask=ok & mine[:, None] & in_width[None, :], other=0.0).to(tl.float32)
                    he = he * (up + tl.load(b1_ptr + e * N1 + up_cols, mask=in_width, other=0.0)[None, :])
            h = tl.where(mine[:, None], he, h)
    tl.store(h_ptr + rows64[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=ok)


def activate_rows(pre: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, tuning: Tuning) -> torch.Tensor:
    """(A, N1) raw up projections -> (A, F) hidden rows: bias, activation and gate of each row's expert."""
    assignments, width = pre.shape[0], packed.max_width
    hidden_rows = torch.empty(assignments, width, dtype=pre.dtype, device=pre.device)
    block_r, block_c = tuning.act_rows, tuning.act_cols
    activate_kernel[(triton.cdiv(assignments, block_r) * triton.cdiv(width, block_c),)](
        pre, layout.sorted_expert, packed.b1, packed.widths, packed.gated, packed.act, hidden_rows,
        assignments, pre.shape[1], width, packed.num_experts, BR=block_r, BC=block_c, ANY_GATED=packed.any_gated,
        ONE_ACT=-1 if packed.any_gated else one_activation(packed),
        num_warps=tuning.act_warps, **pdl_options(pre.device))
    return hidden_rows
