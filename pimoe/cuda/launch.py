"""Host-side launchers for the Triton kernels: buffer allocation, grid sizes and block shapes.

Legend: T tokens, D hidden size, E experts, EP a power of two >= E + 1, K experts per token, A = T * K.

Every grid and block size here comes from shapes (T, D, E, K, the padded widths); nothing is read back from the
device, so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import os

import torch
import triton

from pimoe.cuda import act_gemm, down_tma, gemm, kernels
from pimoe.cuda.layout import ExpertLayout, next_pow2
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import TUNING, GemmConfig
from pimoe.layer.routing import RoutingInfo

__all__ = ["activate_rows", "down_rows", "down_tma_rows", "expert_buckets", "fused_up_forward", "grouped_mm_forward",
           "hybrid_forward", "pdl_options", "route_tokens", "row_stats", "sort_by_expert", "tma_available",
           "triton_forward", "up_act_rows", "up_rows"]


def expert_buckets(num_experts: int) -> int:
    """EP: the experts plus the dropped bucket, rounded up to a power of two (at least 16 for tl.dot)."""
    return max(16, next_pow2(num_experts + 1))


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs: honour torch's own switch, as torch.matmul does (tf32 only when the user allowed it).
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def sort_by_expert(routing: RoutingInfo) -> ExpertLayout:
    """Counting sort of the (T, K) assignments into expert order: two launches."""
    idx = routing.expert_indices.contiguous()
    dropped = routing.dropped.contiguous().view(torch.uint8)
    weights = routing.expert_weights.contiguous().float()
    num_experts = routing.num_experts
    assignments = idx.numel()
    buckets = expert_buckets(num_experts)
    # 1024 x EP one-hots spill registers at 4 warps; small batches take small blocks so more SMs share the cumsums
    block = max(16, min(128 if assignments <= 8192 else 512, next_pow2(assignments)))
    num_blocks = triton.cdiv(assignments, block)
    device = idx.device
    hist = torch.empty(num_blocks, buckets, dtype=torch.int32, device=device)
    pdl = pdl_options(device)
    kernels.histogram_kernel[(num_blocks,)](idx, dropped, hist, assignments, num_experts, BLOCK=block, EP=buckets,
                                            HAS_DROP=True, **pdl)
    layout = ExpertLayout(
        sorted_token=torch.empty(assignments, dtype=torch.int32, device=device),
        sorted_expert=torch.empty(assignments, dtype=torch.int32, device=device),
        sorted_weight=torch.empty(assignments, dtype=torch.float32, device=device),
        position=torch.empty(assignments, dtype=torch.int32, device=device),
        counts=torch.empty(num_experts, dtype=torch.int32, device=device),
        offsets=torch.empty(num_experts, dtype=torch.int32, device=device),
    )
    kernels.place_kernel[(num_blocks,)](
        idx, dropped, weights, hist, layout.sorted_token, layout.sorted_expert, layout.sorted_weight, layout.position,
        layout.counts, layout.offsets, assignments, num_experts, idx.shape[1], num_blocks,
        BLOCK=block, EP=buckets, HB=min(128, next_pow2(num_blocks)), HAS_DROP=True, num_warps=8, **pdl)
    return layout


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """(T, D) -> (T, 2) float32 mean and variance per row."""
    num_tokens, hidden = x.shape
    stats = torch.empty(num_tokens, 2, dtype=torch.float32, device=x.device)
    block_rows = 16
    kernels.row_stats_kernel[(triton.cdiv(num_tokens, block_rows),)](
        x, stats, num_tokens, hidden, BT=block_rows, BD=min(256, next_pow2(hidden)), **pdl_options(x.device))
    return stats


def _block_k(hidden: int, wanted: int) -> int:
    block = wanted
    while block > 16 and hidden % block:
        block //= 2
    return block


def _combine(y: torch.Tensor, layout: ExpertLayout, routing: RoutingInfo, out_dtype: torch.dtype,
             b2: torch.Tensor | None, residual: torch.Tensor | None) -> torch.Tensor:
    num_tokens, top_k = routing.expert_indices.shape
    hidden = y.shape[1]
    out = torch.empty(num_tokens, hidden, dtype=out_dtype, device=y.device)
    block_t, block_d = 32, min(128, next_pow2(hidden))
    with_bias = b2 is not None
    kernels.combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_d))](
        y, layout.position, layout.counts,
        routing.expert_indices if with_bias else layout.counts,
        routing.expert_weights.float() if with_bias else layout.sorted_weight,
        b2 if with_bias else layout.sorted_weight, out if residual is None else residual,
        out, num_tokens, hidden, routing.num_experts,
        K=top_k, BT=block_t, BD=block_d, EP=expert_buckets(routing.num_experts), BIAS_WEIGHT=with_bias,
        RESIDUAL=residual is not None, **pdl_options(y.device))
    return out


def triton_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts,
                   tuning: dict[str, GemmConfig | int], residual: bool = False) -> torch.Tensor:
    """x: (T, D) -> (T, D) through the fused Triton grouped GEMMs (plus x itself with `residual`)."""
    assignments = routing.expert_indices.numel()
    layout = sort_by_expert(routing)
    small = assignments <= tuning["small_rows"]
    up_key = "up_small" if small else ("up_large_gated" if packed.any_gated else "up_large")
    up_cfg: GemmConfig = tuning.get(up_key, tuning["up_small" if small else "up_large"])
    down_cfg: GemmConfig = tuning["down_small" if small else "down_large"]
    hidden_rows = up_rows(x, layout, packed, up_cfg, even_n=bool(tuning.get("up_even_n", True)))
    y = down_rows(hidden_rows, layout, packed, down_cfg, prologue_act=False)
    return _combine(y, layout, routing, x.dtype, None, x if residual else None)


def up_rows(x: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
            even_n: bool = True) -> torch.Tensor:
    """(T, D) tokens -> (A, F) hidden rows in expert order: gather, norm, up GEMM, bias and activation in one launch.
    even_n: leave the weight loads unmasked when every expert width is a multiple of cfg.bn."""
    hidden = x.shape[1]
    assignments = layout.sorted_token.shape[0]
    num_experts = packed.num_experts
    stats = row_stats(x) if packed.any_norm else layout.sorted_weight  # unused placeholder when no expert norms
    up_width, width = packed.w1.shape[1], packed.max_width
    hidden_rows = torch.empty(assignments, width, dtype=x.dtype, device=x.device)
    row_tiles = triton.cdiv(assignments, cfg.bm) + num_experts
    gemm.up_kernel[(row_tiles * triton.cdiv(width, cfg.bn),)](
        x, stats, layout.sorted_token, layout.counts, packed.w1, packed.b1, packed.widths, packed.gated, packed.act,
        packed.norm, packed.norm_weight, packed.norm_bias, packed.eps, hidden_rows, hidden, up_width, width,
        num_experts, EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=_block_k(hidden, cfg.bk),
        ANY_GATED=packed.any_gated, ANY_NORM=packed.any_norm, PRECISION=_dot_precision(x.dtype),
        EVEN_N=even_n and all(w % cfg.bn == 0 for w in packed.widths_host),
        num_warps=cfg.warps, num_stages=cfg.stages, **pdl_options(x.device))
    return hidden_rows


def down_rows(a: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
              prologue_act: bool) -> torch.Tensor:
    """(A, F) hidden rows, or (A, N1) raw up projections with prologue_act, -> (A, D) weighted expert outputs."""
    assignments = a.shape[0]
    num_experts = packed.num_experts
    hidden = packed.hidden_size
    y = torch.empty(assignments, hidden, dtype=a.dtype, device=a.device)
    row_tiles = triton.cdiv(assignments, cfg.bm) + num_experts
    gemm.down_kernel[(row_tiles * triton.cdiv(hidden, cfg.bn),)](
        a, layout.sorted_weight, layout.counts, packed.w2, packed.b2, packed.widths, y, packed.b1, packed.gated,
        packed.act, hidden, packed.max_width, num_experts, a.shape[1], packed.w1.shape[1],
        EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=cfg.bk,
        EVEN_K=all(w % cfg.bk == 0 for w in packed.widths_host), PROLOGUE_ACT=prologue_act,
        ANY_GATED=packed.any_gated, PRECISION=_dot_precision(a.dtype), num_warps=cfg.warps, num_stages=cfg.stages,
        **pdl_options(a.device))
    return y


def down_tma_rows(hidden_rows: torch.Tensor, layout: ExpertLayout, packed: PackedExperts,
                  cfg: GemmConfig) -> torch.Tensor:
    """(A, F) hidden rows -> (A, D) weighted expert outputs with bias, like `down_rows`, with TMA loads (Hopper and
    newer, or the interpreter; see `tma_available`). Needs hidden rows zero past each expert's width."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    assignments, width = hidden_rows.shape
    num_experts, hidden = packed.num_experts, packed.hidden_size
    block_k = _block_k(width, cfg.bk)
    block_n = min(cfg.bn, max(16, next_pow2(hidden)))  # no tile wider than the output
    y = torch.empty(assignments, hidden, dtype=hidden_rows.dtype, device=hidden_rows.device)
    h_desc = TensorDescriptor.from_tensor(hidden_rows, [cfg.bm, block_k])
    w2_desc = TensorDescriptor.from_tensor(packed.w2.view(num_experts * hidden, width), [block_n, block_k])
    grid = ((triton.cdiv(assignments, cfg.bm) + num_experts) * triton.cdiv(hidden, block_n),)
    down_tma.down_tma_kernel[grid](
        h_desc, w2_desc, layout.sorted_weight, layout.counts, packed.b2, packed.widths, y, hidden, num_experts,
        EP=expert_buckets(num_experts), BM=cfg.bm, BN=block_n, BK=block_k, num_warps=cfg.warps,
        num_stages=cfg.stages, **pdl_options(hidden_rows.device))
    return y


def _gather_norm(x: torch.Tensor, layout: ExpertLayout, packed: PackedExperts) -> torch.Tensor:
    assignments = layout.sorted_token.shape[0]
    hidden = x.shape[1]
    gathered = torch.empty(assignments, hidden, dtype=x.dtype, device=x.device)
    block_rows = 4 if packed.any_norm else 8  # the norm's float32 temporaries: half the rows per program
    kernels.gather_norm_kernel[(triton.cdiv(assignments, block_rows),)](
        x, layout.sorted_token, layout.sorted_expert, packed.norm, packed.norm_weight, packed.norm_bias,
        packed.eps, gathered, assignments, hidden, packed.num_experts, BR=block_rows, DP=next_pow2(hidden),
        ANY_NORM=packed.any_norm, **pdl_options(x.device))
    return gathered


def hybrid_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts,
                   tuning: dict[str, GemmConfig | int], residual: bool = False) -> torch.Tensor:
    """x: (T, D) bf16 -> (T, D): torch._grouped_mm for the up projection (a library GEMM keeps its epilogue off the
    tensor cores' critical path), then the Triton down GEMM with bias, activation and gate applied as it loads."""
    layout = sort_by_expert(routing)
    gathered = _gather_norm(x, layout, packed)
    pre = torch._grouped_mm(gathered, packed.w1.transpose(1, 2), offs=layout.offsets)  # (A, N1)
    small = routing.expert_indices.numel() <= tuning["small_rows"]
    cfg: GemmConfig = tuning.get("hybrid_down_small" if small else "hybrid_down_large",
                                 tuning["down_small" if small else "down_large"])
    y = down_rows(pre, layout, packed, cfg, prologue_act=True)
    return _combine(y, layout, routing, x.dtype, None, x if residual else None)


def activate_rows(pre: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, tuning: dict) -> torch.Tensor:
    """(A, N1) raw up projections -> (A, F) hidden rows: bias, activation and gate of each row's expert."""
    assignments, width = pre.shape[0], packed.max_width
    hidden_rows = torch.empty(assignments, width, dtype=pre.dtype, device=pre.device)
    block_r, block_c = int(tuning["act_rows"]), int(tuning["act_cols"])
    kernels.activate_kernel[(triton.cdiv(assignments, block_r) * triton.cdiv(width, block_c),)](
        pre, layout.sorted_expert, packed.b1, packed.widths, packed.gated, packed.act, hidden_rows,
        assignments, pre.shape[1], width, packed.num_experts, BR=block_r, BC=block_c, ANY_GATED=packed.any_gated,
        ONE_ACT=-1 if packed.any_gated else _one_activation(packed),
        num_warps=int(tuning["act_warps"]), **pdl_options(pre.device))
    return hidden_rows


def pdl_options(device: torch.device) -> dict:
    """Launch options for programmatic dependent launch (`kernels.release_dependents`): each kernel's launch and
    prologue overlap the previous kernel's tail. Empty (plain launches) unless TUNING["pdl"] is on and the GPU
    (Hopper and newer) and Triton have it."""
    if not TUNING["pdl"] or device.type != "cuda":
        return {}
    index = torch.cuda.current_device() if device.index is None else device.index
    return {"PDL": True, "launch_pdl": True} if _pdl_on_cuda_device(index) else {}


@functools.cache
def _pdl_on_cuda_device(index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability(index) < (9, 0):
        return False
    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        return False
    return True


def tma_available(device: torch.device) -> bool:
    """Whether Triton can build tensor-memory-accelerator descriptors for this device (Hopper and newer)."""
    if device.type != "cuda":
        return False
    return _tma_on_cuda_device(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _tma_on_cuda_device(index: int) -> bool:
    # cached: asked on every large-batch call
    if torch.cuda.get_device_capability(index) < (9, 0):
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def _one_activation(packed: PackedExperts) -> int:
    """The activation code every expert shares, or -1 (then each program reads its expert's code)."""
    return packed.act_host[0] if len(set(packed.act_host)) == 1 else -1


def up_act_rows(gathered: torch.Tensor, layout: ExpertLayout, packed: PackedExperts, cfg: GemmConfig,
                use_tma: bool) -> torch.Tensor:
    """(A, D) rows in expert order (already gathered and normed) -> (A, F) hidden rows: up GEMM with bias and
    activation (and gate) in its epilogue, TMA loads with `use_tma` (see `tma_available`)."""
    assignments, hidden = gathered.shape
    num_experts = packed.num_experts
    up_width, width = packed.w1.shape[1], packed.max_width
    block_k = _block_k(hidden, cfg.bk)
    hidden_rows = torch.empty(assignments, width, dtype=gathered.dtype, device=gathered.device)
    grid = ((triton.cdiv(assignments, cfg.bm) + num_experts) * triton.cdiv(width, cfg.bn),)
    common = dict(EP=expert_buckets(num_experts), BM=cfg.bm, BN=cfg.bn, BK=block_k, ONE_ACT=_one_activation(packed),
                  ANY_GATED=packed.any_gated, num_warps=cfg.warps, num_stages=cfg.stages,
                  **pdl_options(gathered.device))
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        xs_desc = TensorDescriptor.from_tensor(gathered, [cfg.bm, block_k])
        w1_desc = TensorDescriptor.from_tensor(packed.w1.view(num_experts * up_width, hidden), [cfg.bn, block_k])
        act_gemm.up_act_tma_kernel[grid](
            xs_desc, layout.counts, w1_desc, packed.b1, packed.widths, packed.gated, packed.act, hidden_rows,
            hidden, up_width, width, num_experts, **common)
    else:
        act_gemm.up_act_kernel[grid](
            gathered, layout.counts, packed.w1, packed.b1, packed.widths, packed.gated, packed.act, hidden_rows,
            hidden, up_width, width, num_experts, PRECISION=_dot_precision(gathered.dtype), **common)
    return hidden_rows


def fused_up_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts, tuning: dict,
                     residual: bool = False) -> torch.Tensor:
    """x: (T, D) bf16 -> (T, D): gather+norm, the Triton up GEMM with bias and activation in its epilogue (TMA loads
    where the GPU has them), the down projection, combine with bias and routing weight.

    The down GEMM is the Triton one with TMA loads where the GPU has them (`tuning["down_tma"]`), else the Triton one
    with pointer loads up to tuning["triton_down_rows"] rows and for packs of mixed widths with
    tuning["mixed_width_down"] == "triton" (both reduce each expert over its own width instead of the widest one's),
    else torch._grouped_mm.
    """
    layout = sort_by_expert(routing)
    gathered = _gather_norm(x, layout, packed)
    cfg: GemmConfig = tuning["up_act_gated" if packed.any_gated else "up_act"]
    tma = tma_available(x.device)
    hidden_rows = up_act_rows(gathered, layout, packed, cfg, bool(tuning["up_act_tma"]) and tma)
    small = layout.sorted_token.shape[0] <= tuning["triton_down_rows"]
    if tma and tuning["down_tma"]:
        y = down_tma_rows(hidden_rows, layout, packed, tuning["down_tma_small" if small else "down_tma_large"])
        return _combine(y, layout, routing, x.dtype, None, x if residual else None)
    if small or (tuning["mixed_width_down"] == "triton" and len(set(packed.widths_host)) > 1):
        cfg = tuning["down_small" if small else "down_large"]
        y = down_rows(hidden_rows, layout, packed, cfg, prologue_act=False)  # bias and routing weight applied
        return _combine(y, layout, routing, x.dtype, None, x if residual else None)
    y = torch._grouped_mm(hidden_rows, packed.w2.transpose(1, 2), offs=layout.offsets)  # (A, D), no bias yet
    return _combine(y, layout, routing, x.dtype, packed.b2, x if residual else None)


def grouped_mm_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts,
                       residual: bool = False) -> torch.Tensor:
    """x: (T, D) bf16 -> (T, D) through torch._grouped_mm, with Triton gather+norm, activation and combine."""
    layout = sort_by_expert(routing)
    gathered = _gather_norm(x, layout, packed)
    pre = torch._grouped_mm(gathered, packed.w1.transpose(1, 2), offs=layout.offsets)  # (A, N1)
    hidden_rows = activate_rows(pre, layout, packed, TUNING)
    y = torch._grouped_mm(hidden_rows, packed.w2.transpose(1, 2), offs=layout.offsets)  # (A, D), no bias yet
    return _combine(y, layout, routing, x.dtype, packed.b2, x if residual else None)


def route_tokens(x: torch.Tensor, gate_weight: torch.Tensor, selection_bias: torch.Tensor | None, temperature: float,
                 top_k: int, gating: bool, renormalize: bool, lb_weight: float, z_weight: float, use_aux: bool,
                 write_tokens: bool, write_positions: bool = False) -> dict[str, torch.Tensor]:
    """The fused router: two launches. Returns the RoutingInfo tensors by field name (losses as 0-dim views), with
    `write_positions` also "token_positions" = arange(T), written by the router kernel (no launch of its own)."""
    num_tokens, hidden = x.shape
    num_experts = gate_weight.shape[0]
    device = x.device
    buckets = expert_buckets(num_experts)
    block_t = 32 if num_tokens <= 4096 else 64
    programs = triton.cdiv(num_tokens, block_t)
    f32 = dict(dtype=torch.float32, device=device)
    out = {
        "logits": torch.empty(num_tokens, num_experts, **f32),
        "probs": torch.empty(num_tokens, num_experts, **f32),
        "expert_indices": torch.empty(num_tokens, top_k, dtype=torch.int64, device=device),
        "expert_weights": torch.empty(num_tokens, top_k, **f32),
        "dropped": torch.empty(num_tokens, top_k, dtype=torch.bool, device=device),
        "entropy": torch.empty(num_tokens, **f32),
        "confidence": torch.empty(num_tokens, **f32),
        "selected_per_expert": torch.empty(num_experts, dtype=torch.int64, device=device),
        "tokens_per_expert": torch.empty(num_experts, dtype=torch.int64, device=device),
    }
    part_count = torch.empty(programs, buckets, dtype=torch.int32, device=device)
    part_prob = torch.empty(programs, buckets, **f32)
    part_z = torch.empty(programs, **f32)
    losses = torch.empty(4, **f32)
    if write_positions:
        out["token_positions"] = torch.empty(num_tokens, dtype=torch.int64, device=device)
    bias = selection_bias if selection_bias is not None else out["confidence"]
    kernels.router_kernel[(programs,)](
        x, gate_weight, bias, out["logits"], out["probs"], out["expert_indices"], out["expert_weights"],
        out["dropped"].view(torch.int8), out["entropy"], out["confidence"], part_count, part_prob, part_z,
        out.get("token_positions", part_z), num_tokens, hidden, num_experts, float(temperature),
        K=top_k, BT=block_t, BD=min(128, max(16, next_pow2(hidden))), EP=buckets,
        USE_BIAS=selection_bias is not None, GATING=gating, RENORM=renormalize, WRITE_POSITIONS=write_positions,
        NATIVE_DOT=bool(TUNING["router_native_dot"]) and x.dtype in (torch.bfloat16, torch.float16)
        and gate_weight.dtype == x.dtype, **pdl_options(device))
    kernels.router_finalize_kernel[(1,)](
        part_count, part_prob, part_z, out["selected_per_expert"], out["tokens_per_expert"], losses, programs,
        num_tokens, num_experts, float(lb_weight), float(z_weight),
        # one program reduces every partial: at 1024 partials a 128-row loop took 12 µs on an H100, one pass fewer
        EP=buckets, PB=min(1024, max(16, next_pow2(programs))), USE_AUX=use_aux, WRITE_TOKENS=write_tokens,
        num_warps=8, **pdl_options(device))
    out.update(load_balance_loss=losses[0], z_loss=losses[1], router_loss=losses[2], supervised_loss=losses[3])
    return out
