"""A checkpoint's router as a PiMoE router: its gate weight and selection bias, its ScoringRule, a RoutingInfo out.

Legend: T routed tokens, D hidden size, E experts, K experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pimoe.cuda.fused_router import fused_checkpoint_route, fused_checkpoint_route_applies
from pimoe.layer.losses import count_per_expert, load_balance_loss
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.scoring import ScoringRule, score_experts, select_experts, sparsemixer_gates

__all__ = ["CheckpointRouter", "ScaledRMSNorm"]


class ScaledRMSNorm(nn.Module):
    """x / rms(x) (computed in float32, back in x's dtype, no weight), then times a (D,) `scale` and a constant
    `factor`, in x's dtype: Gemma 4's router input (`Gemma4TextRouter`: norm, `scale`, hidden_size ** -0.5)."""

    def __init__(self, scale: torch.Tensor, factor: float, eps: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale, requires_grad=False)
        self.factor = float(factor)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()
        normed = (wide * torch.pow(wide.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)).type_as(x)
        return normed * self.scale * self.factor


class CheckpointRouter(nn.Module):
    """Linear router (E, D), with GPT-OSS's bias (E,) when given, scored and selected by `rule`; `selection_bias` (E,)
    is DeepSeek-V3's correction bias (it moves the choice, not the weights). input_norm: a module applied to the input
    before the linear (Gemma 4's `ScaledRMSNorm`), or None. expert_scale: (E,) factors of the chosen experts' combine
    weights, after renormalisation and scaling (Gemma 4's per_expert_scale), or None."""

    def __init__(self, weight: torch.Tensor, rule: ScoringRule, selection_bias: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, *, input_norm: nn.Module | None = None,
                 expert_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        num_experts = weight.shape[0]
        if num_experts % rule.num_groups:
            raise ValueError(f"{num_experts} experts do not split into num_groups={rule.num_groups} equal groups")
        if rule.top_k > num_experts:
            raise ValueError(f"top_k={rule.top_k} exceeds the {num_experts} experts")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("selection_bias", selection_bias)
        self.register_buffer("expert_scale", expert_scale)
        self.input_norm = input_norm
        self.rule = rule
        self.num_experts = num_experts
        self.expert_types = [f"expert{i}" for i in range(num_experts)]

    def forward(self, x: torch.Tensor, *, temperature: float | None = None, top_k: int | None = None,
                pinned: torch.Tensor | None = None, blocked: torch.Tensor | None = None,
                batch_shape: tuple[int, int] | None = None) -> RoutingInfo:
        """x: (T, D) -> RoutingInfo. pinned / blocked: (E,) bool edits (see `select_experts`).

        `probs` holds the rule's scores (softmax, or independent sigmoids that need not sum to 1); `entropy` is that
        of the scores normalised to sum to 1, so softmax and sigmoid routers read on one scale.
        """
        temperature = 1.0 if temperature is None else temperature
        top_k = self.rule.top_k if top_k is None else top_k
        if self.input_norm is not None:
            x = self.input_norm(x)
        if self.expert_scale is None and fused_checkpoint_route_applies(self, x, pinned, blocked):
            # two launches instead of some twenty-five: at 4,096 tokens of an OLMoE block the torch ops' host time
            # kept the GPU waiting before the expert GEMMs could start (bench/host_profile.py)
            return fused_checkpoint_route(self, x, temperature, top_k, batch_shape)
        if self.rule.logits_in_float32:
            logits = F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())
        else:  # the checkpoint's own rounding: matmul in the input dtype, then float32
            bias = None if self.bias is None else self.bias.to(x.dtype)
            logits = F.linear(x, self.weight.to(x.dtype), bias).float()
        if self.rule.logit_softcap > 0:
            logits = torch.tanh(logits / self.rule.logit_softcap) * self.rule.logit_softcap
        scores = score_experts(logits, self.rule, temperature)  # (T, E)
        expert_indices, expert_weights = select_experts(scores, self.rule, top_k=top_k,
                                                        selection_bias=self.selection_bias, pinned=pinned,
                                                        blocked=blocked, logits=logits / temperature)
        if self.rule.score == "sparsemixer":
            expert_weights = sparsemixer_gates(logits / temperature, expert_indices, self.rule.jitter_eps, blocked)
        if self.expert_scale is not None:
            expert_weights = expert_weights * self.expert_scale[expert_indices]
        num_tokens = x.shape[0]
        shares = scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        entropy = -(shares * shares.clamp_min(1e-20).log()).sum(dim=-1)
        counts = count_per_expert(expert_indices, self.num_experts)
        zero = logits.new_zeros(())
        return RoutingInfo(
            logits=logits, probs=scores, expert_indices=expert_indices, expert_weights=expert_weights,
            dropped=torch.zeros_like(expert_indices, dtype=torch.bool),
            token_positions=torch.arange(num_tokens, device=x.device),
            batch_shape=batch_shape or (1, num_tokens),
            tokens_per_expert=counts, selected_per_expert=counts, entropy=entropy, confidence=scores.amax(dim=-1),
            load_balance_loss=load_balance_loss(shares, expert_indices, 1.0), z_loss=zero, supervised_loss=zero,
            router_loss=zero, capacity=None, temperature=float(temperature), expert_types=self.expert_types,
        )
