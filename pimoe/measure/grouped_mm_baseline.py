"""The plain-torch MoE a benchmark compares the PiMoE layer against: argsort + torch._grouped_mm, autograd backward.

Legend: T tokens, D hidden size, E experts, K experts per token, F expert width, A = T*K assignments.

This is how MoE layers are commonly written without custom kernels (torchtitan-style): router, stable argsort of the
assignments by expert, gather, one grouped GEMM up, activation, one grouped GEMM down, weight, index_add back. Built
from a PiMoE layer's weights, it computes the same function, so timing both on the same input is a fair comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pimoe.layer.experts import apply_activation
from pimoe.layer.system import PiMoESystem

__all__ = ["GroupedMMBaseline", "grouped_mm_unsupported_reason"]


def grouped_mm_unsupported_reason(system: PiMoESystem) -> str | None:
    """Why `GroupedMMBaseline` cannot mirror `system`, or None when it can.

    The baseline stacks every expert's weights into one (E, D, F) tensor and applies one activation, so the experts
    must share one architecture: same width and activation, biases, no input norm, not gated (SwiGLU)."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    experts = list(system.experts)
    first = experts[0]
    if any(e.gated or not isinstance(e.norm, nn.Identity) for e in experts):
        return "the baseline covers plain experts only (no input norm, not gated)"
    if any(e.up.bias is None or e.down.bias is None for e in experts):
        return "the baseline expects experts with biases"
    if any(e.dropout.p > 0 for e in experts):
        return "the baseline has no dropout"
    if any(e.width != first.width or e.activation != first.activation for e in experts):
        return "the baseline needs experts of one width and activation (a uniform layer, not typed experts)"
    if system.router.config.capacity_factor is not None or not system.router.config.use_gating:
        return "the baseline routes without a capacity limit and with gating"
    return None


class GroupedMMBaseline(nn.Module):
    """argsort + torch._grouped_mm MoE with the router and expert weights copied from a uniform PiMoE layer.

    Routing follows the layer's router: softmax of logits / temperature in float32, top-k, renormalised when the router
    renormalises (top_k > 1 by default). Raises ValueError naming the reason when the layer is not uniform."""

    def __init__(self, system: PiMoESystem) -> None:
        super().__init__()
        reason = grouped_mm_unsupported_reason(system)
        if reason is not None:
            raise ValueError(f"GroupedMMBaseline cannot mirror this layer: {reason}")
        experts = system.experts
        router = system.router.config
        self.top_k = router.top_k
        self.temperature = router.temperature
        self.renormalize = router.renormalize if router.renormalize is not None else router.top_k > 1
        self.activation = experts[0].activation
        self.residual = system.config.residual
        self.gate = nn.Parameter(system.router.gate.weight.detach().clone())  # (E, D)
        # (E, D, F) and (E, F, D) row-major: the layout torch._grouped_mm's backward takes without copies
        self.w1 = nn.Parameter(torch.stack([e.up.weight.detach().t() for e in experts]).contiguous())
        self.b1 = nn.Parameter(torch.stack([e.up.bias.detach() for e in experts]))  # (E, F)
        self.w2 = nn.Parameter(torch.stack([e.down.weight.detach().t() for e in experts]).contiguous())
        self.b2 = nn.Parameter(torch.stack([e.down.bias.detach() for e in experts]))  # (E, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        tokens = x.reshape(-1, x.shape[-1])  # (T, D)
        logits = F.linear(tokens.float(), self.gate.float())  # (T, E), float32 as the layer's router
        probs = torch.softmax(logits / self.temperature, dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # (T, K)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        flat = experts.reshape(-1)  # (A,)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(self.w1.shape[0], dtype=torch.int32, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offsets = counts.cumsum(0, dtype=torch.int32)  # (E,) end of each expert's rows
        token = order // self.top_k  # (A,) source token of each sorted assignment
        sorted_expert = flat[order]
        up = torch._grouped_mm(tokens[token], self.w1, offs=offsets) + self.b1[sorted_expert]  # (A, F)
        out = torch._grouped_mm(apply_activation(self.activation, up), self.w2, offs=offsets) + self.b2[sorted_expert]
        out = out * weights.reshape(-1)[order].unsqueeze(-1).to(out.dtype)
        mixed = torch.zeros_like(tokens).index_add(0, token, out).view_as(x)
        return x + mixed if self.residual else mixed
