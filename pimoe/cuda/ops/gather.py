"""Gather + norm: token rows copied into expert order, each through its own expert's norm.

Legend: D hidden size, E experts, A = T * K sorted rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout, next_pow2
from pimoe.cuda.ops.jit import enter_kernel
from pimoe.cuda.ops.launch_options import pdl_options
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import Tuning, active_tuning

__all__ = ["gather_norm", "gather_norm_kernel"]


@triton.jit
def gather_norm_kernel(x_ptr, sorted_token_ptr, sorted_expert_ptr, norm_ptr, nw_ptr, nb_ptr, eps_ptr,
                       out_ptr, A, D, E, BR: tl.constexpr, DP: tl.constexpr, ANY_NORM: tl.constexpr,
                       PDL: tl.constexpr = False):
    """out[r] = norm_e(x[sorted_token[r]]) for every sorted row r, each row normalised by its own expert's norm."""
    enter_kernel(PDL)
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    # every row below A: dropped rows (past the kept ones) hold real token ids too and are never read, and a mask
    # on the kept count would make every load wait for it
    row_ok = rows < A
    token = tl.load(sorted_token_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    cols = tl.arange(0, DP)
    ok = row_ok[:, None] & (cols < D)[None, :]
    v = tl.load(x_ptr + token[:, None] * D + cols[None, :], mask=ok, other=0.0)
    if ANY_NORM:
        expert = tl.minimum(tl.load(sorted_expert_ptr + rows, mask=row_ok, other=0), E - 1)  # dropped rows: E
        code = tl.load(norm_ptr + expert, mask=row_ok, other=0)
        eps = tl.load(eps_ptr + expert, mask=row_ok, other=1.0)
        v32 = v.to(tl.float32)
        mean = tl.sum(v32, axis=1) / D
        centred = tl.where(ok, v32 - mean[:, None], 0.0)
        var = tl.sum(centred * centred, axis=1) / D
        mean_square = tl.sum(v32 * v32, axis=1) / D
        ln = centred * tl.rsqrt(var + eps)[:, None]
        rms = v32 * tl.rsqrt(mean_square + eps)[:, None]
        normed = tl.where(code[:, None] == 1, ln, tl.where(code[:, None] == 2, rms, v32))
        gamma = tl.load(nw_ptr + expert[:, None] * D + cols[None, :], mask=ok, other=1.0)
        beta = tl.load(nb_ptr + expert[:, None] * D + cols[None, :], mask=ok, other=0.0)
        v = (normed * gamma + beta).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], v, mask=ok)


def gather_norm(x: torch.Tensor, layout: ExpertLayout, packed: PackedExperts,
                tuning: Tuning | None = None) -> torch.Tensor:
    tuning = tuning or active_tuning()
    assignments = layout.sorted_token.shape[0]
    hidden = x.shape[1]
    gathered = torch.empty(assignments, hidden, dtype=x.dtype, device=x.device)
    block_rows = tuning.gather_norm_rows if packed.any_norm else tuning.gather_rows
    gather_norm_kernel[(triton.cdiv(assignments, block_rows),)](
        x, layout.sorted_token, layout.sorted_expert, packed.norm, packed.norm_weight, packed.norm_bias,
        packed.eps, gathered, assignments, hidden, packed.num_experts, BR=block_rows, DP=next_pow2(hidden),
        ANY_NORM=packed.any_norm, num_warps=tuning.gather_warps, **pdl_options(x.device))
    return gathered
