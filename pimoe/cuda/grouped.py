"""The grouped expert forward: sort assignments by expert, two grouped GEMMs over padded weights, combine.

Legend: T tokens, D hidden size, E experts, K experts per token, A = T * K assignments, N1 padded up width, F padded
hidden width.

Three backends compute the same function (bench/backends.py adds "hybrid" and "grouped_mm" for comparisons):
    "triton"     (CUDA): counting sort, then two Triton grouped GEMMs with gather, norm, bias, activation and routing
                 weight fused in, then a combine. Five launches, no host sync.
    "fused_up"   (CUDA, bf16): counting sort, gather+norm, the Triton up GEMM with bias, activation and gate in its
                 epilogue (TMA loads on Hopper and newer), torch._grouped_mm down, combine.
    "torch"      (anywhere): the same arithmetic in plain torch ops, the CPU mirror the tests check against the
                 reference; on CUDA it is sync-free too when torch._grouped_mm takes the dtype.
Rows of dropped assignments sort past the last expert and are never computed; the combine skips them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pimoe.cuda.layout import ExpertLayout, sort_by_expert_torch
from pimoe.cuda.packing import ACT_CODES, NORM_CODES, PackedExperts
from pimoe.cuda.tuning import active_tuning
from pimoe.layer.routing import RoutingInfo

__all__ = ["grouped_forward", "grouped_matmul", "torch_forward"]


def _grouped_mm_supports(a: torch.Tensor, weight: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    # torch._grouped_mm asks for strides that are multiples of 16 bytes on the CPU too ("strides should be multiple
    # of 16 bytes"): a float32 expert 450 wide is not
    if any(size * a.element_size() % 16 for size in (a.shape[1], weight.shape[1])):
        return False
    if a.device.type == "cuda":
        return a.dtype == torch.bfloat16  # the CUDA kernels take bf16 only
    return a.dtype in (torch.float32, torch.bfloat16, torch.float16)


def grouped_matmul(a: torch.Tensor, weight: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """(A, in) rows grouped by expert times (E, out, in) nn.Linear-layout weights -> (A, out).

    Rows past the last group are left as torch._grouped_mm leaves them (unspecified); callers never read them.
    Without a grouped kernel for this device and dtype, one matmul per expert (that reads the counts: a host sync on
    CUDA, so only the fallback of a fallback).
    """
    if _grouped_mm_supports(a, weight):
        return torch._grouped_mm(a, weight.transpose(1, 2), offs=layout.offsets)
    out = a.new_zeros(a.shape[0], weight.shape[1])
    start = 0
    for expert, count in enumerate(layout.counts.tolist()):
        if count:
            out[start : start + count] = a[start : start + count] @ weight[expert].t()
        start += count
    return out


def _norm_rows(xs: torch.Tensor, experts: torch.Tensor, packed: PackedExperts) -> torch.Tensor:
    """Each row through its own expert's norm (LayerNorm, RMSNorm or none), in float32 as the modules compute it."""
    x32 = xs.to(packed.b1.dtype)
    code = packed.norm[experts].unsqueeze(-1)
    eps = packed.eps[experts].unsqueeze(-1)
    centred = x32 - x32.mean(-1, keepdim=True)
    layer = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    rms = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    normed = torch.where(code == NORM_CODES["layernorm"], layer, torch.where(code == NORM_CODES["rmsnorm"], rms, x32))
    # index_select, not `weight[experts]`: under autograd the backward of advanced indexing is a deterministic
    # sort-based index_put that serialises the A rows falling on E parameter rows (24.8 of 40 ms of a training step at
    # 65,536 tokens, H100, bench/host_profile.py); index_select's backward is an index_add.
    weight = packed.norm_weight.index_select(0, experts)
    bias = packed.norm_bias.index_select(0, experts)
    return (normed * weight + bias).to(xs.dtype)


_TORCH_ACTS = {
    ACT_CODES["gelu"]: F.gelu,
    ACT_CODES["gelu_tanh"]: lambda v: F.gelu(v, approximate="tanh"),
    ACT_CODES["relu"]: F.relu,
    ACT_CODES["silu"]: F.silu,
    ACT_CODES["tanh"]: torch.tanh,
}


def _activate_rows(pre: torch.Tensor, experts: torch.Tensor, packed: PackedExperts) -> torch.Tensor:
    """(A, N1) float32 (or float64) pre-activations -> (A, F): act per row's expert, gated halves multiplied, 0 past F_e.
    A pack of one width and one activation (a checkpoint's experts) takes plain slices: no per-row selects."""
    width = packed.max_width
    gate = pre[:, :width]
    codes = set(packed.act_host)
    full = set(packed.widths_host) == {width}
    if len(codes) == 1:
        hidden = _TORCH_ACTS[codes.pop()](gate)
    else:
        hidden = torch.zeros_like(gate)
        for code in sorted(codes):
            rows = (packed.act[experts] == code).unsqueeze(-1)
            hidden = torch.where(rows, _TORCH_ACTS[code](gate), hidden)
    if packed.all_gated and full:
        return hidden * pre[:, width:2 * width]
    cols = torch.arange(width, device=pre.device)
    row_width = packed.widths[experts].long().unsqueeze(-1)
    if packed.any_gated:
        up_cols = (row_width + cols).clamp(max=pre.shape[1] - 1)
        up = pre.gather(1, up_cols)
        hidden = torch.where(packed.gated[experts].bool().unsqueeze(-1), hidden * up, hidden)
    return hidden if full else torch.where(cols < row_width, hidden, torch.zeros_like(hidden))


def torch_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts) -> torch.Tensor:
    """The grouped forward in plain torch ops. x: (T, D) -> (T, D)."""
    num_tokens, top_k = routing.expert_indices.shape
    layout = sort_by_expert_torch(routing)
    experts = layout.sorted_expert.clamp(max=packed.num_experts - 1)  # dropped rows: any expert, never read
    xs = x[layout.sorted_token]
    if packed.any_norm:
        xs = _norm_rows(xs, experts, packed)
    acc = packed.b1.dtype
    pre = grouped_matmul(xs, packed.w1, layout).to(acc)
    if packed.any_bias:
        pre = pre + packed.b1[experts]
    hidden = _activate_rows(pre, experts, packed).to(x.dtype)
    weight = layout.sorted_weight.to(acc).unsqueeze(-1)
    y = grouped_matmul(hidden, packed.w2, layout).to(acc)
    if packed.any_bias:
        y = y + packed.b2[experts]
    y = y * weight
    kept_rows = torch.arange(y.shape[0], device=y.device) < layout.offsets[-1]
    y = torch.where(kept_rows.unsqueeze(-1), y, torch.zeros_like(y))  # rows past the groups hold garbage
    return y[layout.position].view(num_tokens, top_k, -1).sum(1).to(x.dtype)


def grouped_forward(x: torch.Tensor, routing: RoutingInfo, packed: PackedExperts, backend: str,
                    residual: bool = False) -> torch.Tensor:
    """Run one backend ("triton", "fused_up" or "torch"). x: (T, D) contiguous -> (T, D), the expert
    mixture, or x plus the mixture with `residual` (the kernels add x in their combine pass)."""
    if backend == "torch":
        mixed = torch_forward(x, routing, packed)
        return x + mixed if residual else mixed
    from pimoe.cuda import backends  # Triton: imported only here, on a CUDA path

    if backend == "triton":
        return backends.triton_forward(x, routing, packed, active_tuning(), residual)
    if backend == "fused_up":
        return backends.fused_up_forward(x, routing, packed, active_tuning(), residual)
    raise ValueError(f"unknown grouped backend {backend!r}; choose 'triton', 'fused_up' or 'torch'")
