"""Small worked examples for the guide page, computed with the engine's own functions.

Legend: T tokens, E experts, K experts per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pimoe.layer.losses import count_per_expert, load_balance_loss
from pimoe.layer.router import expert_capacity

__all__ = ["BalanceExample", "SoftmaxExample", "balance_example", "softmax_example", "temperature_sweep"]


@dataclass
class SoftmaxExample:
    """One token's router logits (E,), its probabilities at `temperature`, the top-k experts and their weights."""

    logits: list[float]
    probs: list[float]
    temperature: float
    chosen: list[int]
    weights: list[float]
    entropy: float


def softmax_example(logits: torch.Tensor, temperature: float, top_k: int) -> SoftmaxExample:
    """What the router does to one token: softmax(logits / T), top-k, renormalised combine weights (as in the engine
    when K > 1; with K = 1 the weight is the probability itself, see RouterConfig.renormalize)."""
    logits = logits.float()
    probs = torch.softmax(logits / temperature, dim=-1)
    top = torch.topk(probs, top_k)
    weights = top.values / top.values.sum() if top_k > 1 else top.values
    entropy = float(-(probs * torch.log_softmax(logits / temperature, dim=-1)).sum())
    return SoftmaxExample(logits.tolist(), probs.tolist(), temperature, top.indices.tolist(), weights.tolist(), entropy)


def temperature_sweep(logits: torch.Tensor, temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
                      ) -> list[dict[str, float | None]]:
    """Top-1 probability and entropy (nats, and as a share of log E; None with one expert) of one token at several
    temperatures."""
    rows = []
    for temperature in temperatures:
        example = softmax_example(logits, temperature, 1)
        rows.append({"temperature": temperature, "top-1 probability": max(example.probs),
                     "entropy (nats)": example.entropy,
                     # one expert: log E = 0 and the share is undefined
                     "entropy / log E": example.entropy / math.log(len(example.probs)) if len(example.probs) > 1
                     else None})
    return rows


@dataclass
class BalanceExample:
    """A toy router over T tokens and E experts. probs: (T, E). top1: (T,). shares f_i and mean probabilities P_i:
    (E,). loss: the Switch auxiliary loss at weight alpha. capacity and dropped: with a capacity factor."""

    probs: torch.Tensor
    top1: torch.Tensor
    shares: list[float]
    mean_probs: list[float]
    loss: float
    alpha: float
    capacity: int
    dropped: int


def balance_example(collapse: float, alpha: float = 0.01, num_tokens: int = 8, num_experts: int = 4,
                    capacity_factor: float = 1.25) -> BalanceExample:
    """Token t prefers expert t mod E (probability 0.7); `collapse` in [0, 1] blends every token towards expert 0,
    the way an untrained router drifts onto one favourite. Returns the loss and, for top-1 routing with the given
    capacity factor, how many tokens would be dropped."""
    if not 0.0 <= collapse <= 1.0:
        raise ValueError(f"collapse must be in [0, 1], got {collapse!r}")
    natural = torch.full((num_tokens, num_experts), 0.3 / (num_experts - 1))
    natural[torch.arange(num_tokens), torch.arange(num_tokens) % num_experts] = 0.7
    favourite = torch.zeros(num_tokens, num_experts)
    favourite[:, 0] = 1.0
    probs = (1 - collapse) * natural + collapse * favourite  # (T, E), rows sum to 1
    top1 = probs.argmax(dim=-1, keepdim=True)  # (T, 1)
    counts = count_per_expert(top1, num_experts)
    capacity = expert_capacity(num_tokens, 1, num_experts, capacity_factor)
    return BalanceExample(
        probs=probs,
        top1=top1[:, 0],
        shares=(counts.float() / num_tokens).tolist(),
        mean_probs=probs.mean(dim=0).tolist(),
        loss=float(load_balance_loss(probs, top1, alpha)),
        alpha=alpha,
        capacity=capacity,
        dropped=int((counts - capacity).clamp_min(0).sum()),
    )
