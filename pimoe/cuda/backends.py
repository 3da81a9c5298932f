"""The Triton backends of the grouped forward, each a chain of ops from `pimoe.cuda.ops`: "triton" (fp16, fp32 and
where torch._grouped_mm is missing) and "fused_up" (bf16). Reached from `grouped.grouped_forward` on a CUDA path only:
importing this module imports Triton.

Legend: T tokens, D hidden size, E experts, K experts per token, A = T * K assignments.
"""

from __future__ import annotations

import torch

from pimoe.cuda.ops.combine import combine
from pimoe.cuda.ops.down_gemm import down_rows
from pimoe.cuda.ops.down_tma_gemm import down_tma_rows
from pimoe.cuda.ops.gather import gather_norm
from pimoe.cuda.ops.launch_options import fit_block_k, tma_available
from pimoe.cuda.ops.sort import sort_by_expert
from pimoe.cuda.ops.up_act_gemm import up_act_gathered_rows, up_act_rows
from pimoe.cuda.ops.up_gemm import up_rows
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import GemmConfig, Tuning
from pimoe.layer.routing import RoutingInfo

__all__ = ["fused_up_forward", "triton_forward"]


def triton_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts,
                   tuning: Tuning, residual: bool = False) -> torch.Tensor:
    """x: (T, D) -> (T, D) through the fused Triton grouped GEMMs (plus x itself with `residual`)."""
    assignments = routing.expert_indices.numel()
    layout = sort_by_expert(routing)
    small = assignments <= tuning.small_rows
    up_cfg = tuning.up_small if small else (tuning.up_large_gated if packed.any_gated else tuning.up_large)
    down_cfg = tuning.down_small if small else tuning.down_large
    hidden_rows = up_rows(x, layout, packed, up_cfg, even_n=tuning.up_even_n)
    y = down_rows(hidden_rows, layout, packed, down_cfg, prologue_act=False)
    return combine(y, layout, routing, x.dtype, None, x if residual else None, tuning)


def _up_act_configs(packed: PackedExperts, tuning: Tuning, use_tma: bool,
                    rows: int) -> tuple[GemmConfig, GemmConfig | None]:
    """The up GEMM's launch shape for `rows` sorted rows, and the gated experts' own where they take a launch of
    their own."""
    # the TMA halves kernel gives a gated expert BN / 2 hidden columns per program; the pointer-load kernel BN, with
    # two (BM, BN) accumulators (so a wider tile there would spill)
    small = rows <= tuning.triton_down_rows
    plain = tuning.up_act_small if small else tuning.up_act
    if not packed.any_gated:
        return plain, None
    if use_tma and packed.all_gated:
        return tuning.up_act_all_gated, None
    if use_tma and rows >= tuning.up_act_split_rows:
        return plain, tuning.up_act_all_gated
    return (tuning.up_act_gated_small if small else tuning.up_act_gated), None


def fused_up_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts, tuning: Tuning,
                     residual: bool = False) -> torch.Tensor:
    """x: (T, D) bf16 -> (T, D): gather+norm, the Triton up GEMM with bias and activation in its epilogue (TMA loads
    where the GPU has them), the down projection, combine with bias and routing weight.

    The down GEMM is the Triton one with TMA loads where the GPU has them (`tuning.down_tma`), else the Triton one
    with pointer loads up to `tuning.triton_down_rows` rows and for packs of mixed widths with
    `tuning.mixed_width_down == "triton"` (both reduce each expert over its own width instead of the widest one's),
    else torch._grouped_mm.
    """
    layout = sort_by_expert(routing)
    tma = tma_available(x.device)
    rows = layout.sorted_token.shape[0]
    small = rows <= tuning.triton_down_rows
    cfg, gated_cfg = _up_act_configs(packed, tuning, tuning.up_act_tma and tma, rows)
    classes = dict(gated_cfg=gated_cfg, tokens=x.shape[0])
    if tma and tuning.down_tma:
        down_cfg = tuning.down_tma_small if small else tuning.down_tma_large
        # the TMA down GEMM reads each expert's hidden columns up to its width rounded up to its BK
        pad_to = fit_block_k(packed.max_width, down_cfg.bk)
        if (rows <= tuning.up_gather_rows and tuning.up_act_tma and not packed.any_gated
                and not packed.any_norm):
            hidden_rows = up_act_gathered_rows(x, layout, packed, cfg, pad_to, x.shape[0])
        else:
            gathered = gather_norm(x, layout, packed, tuning)
            hidden_rows = up_act_rows(gathered, layout, packed, cfg, tuning.up_act_tma, pad_to=pad_to, **classes)
        y = down_tma_rows(hidden_rows, layout, packed, down_cfg)
        return combine(y, layout, routing, x.dtype, None, x if residual else None, tuning)
    gathered = gather_norm(x, layout, packed, tuning)
    if small or (tuning.mixed_width_down == "triton" and len(set(packed.widths_host)) > 1):
        down_cfg = tuning.down_small if small else tuning.down_large
        # the pointer-load down GEMM masks every column past an expert's width
        hidden_rows = up_act_rows(gathered, layout, packed, cfg, tuning.up_act_tma and tma, pad_to=1, **classes)
        y = down_rows(hidden_rows, layout, packed, down_cfg, prologue_act=False)  # bias and routing weight applied
        return combine(y, layout, routing, x.dtype, None, x if residual else None, tuning)
    hidden_rows = up_act_rows(gathered, layout, packed, cfg, tuning.up_act_tma and tma, **classes)  # zero past widths
    y = torch._grouped_mm(hidden_rows, packed.w2.transpose(1, 2), offs=layout.offsets)  # (A, D), no bias yet
    return combine(y, layout, routing, x.dtype, packed.b2, x if residual else None, tuning)
