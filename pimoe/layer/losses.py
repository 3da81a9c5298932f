"""Router losses. Each returns a scalar already multiplied by its weight.

Legend: T routed tokens, E experts, K experts per token.
"""

from __future__ import annotations

import torch

__all__ = ["count_per_expert", "load_balance_loss", "router_z_loss", "supervised_routing_loss"]


# Up to this many experts a count compares every assignment with every expert id; above it, scatter_add.
_COMPARE_MAX_EXPERTS = 64


def count_per_expert(expert_indices: torch.Tensor, num_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(T, K) expert ids -> (E,) int64 number of assignments per expert, counting only where `mask` is True.

    NOTE: not bincount, which on CUDA reads its maximum back to the host (a sync per call). For a few experts, an
    (A, E) comparison summed over A: scatter_add of A ones into E bins makes every atomic of a bin wait for the
    others (about 34 µs per count of 131,072 assignments into 8 bins on an H100, bench/train_step.py's profile).
    """
    flat = expert_indices.reshape(-1)
    if num_experts <= _COMPARE_MAX_EXPERTS:
        hits = flat.unsqueeze(1) == torch.arange(num_experts, device=flat.device)
        if mask is not None:
            hits &= mask.reshape(-1, 1)
        return hits.sum(0)
    ones = torch.ones_like(flat) if mask is None else mask.reshape(-1).to(flat.dtype)
    return torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, ones)


def load_balance_loss(probs: torch.Tensor, expert_indices: torch.Tensor, weight: float,
                      counts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4): weight * E * sum_i f_i * P_i.

    f_i is the share of the T*K assignments that chose expert i (no gradient), P_i the mean router probability of
    expert i (carries the gradient). Under uniform routing f_i = P_i = 1/E and the loss equals `weight`.

    probs: (T, E) float32. expert_indices: (T, K). counts: `count_per_expert(expert_indices, E)` when the caller
    has it already.
    """
    num_tokens, num_experts = probs.shape
    if num_tokens == 0:
        return probs.sum() * 0.0
    assignments = expert_indices.numel()
    if counts is None:
        counts = count_per_expert(expert_indices, num_experts)
    share_of_assignments = counts.to(probs.dtype) / assignments
    mean_probs = probs.mean(dim=0)
    return weight * num_experts * torch.sum(share_of_assignments * mean_probs)


def router_z_loss(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): weight * mean_t logsumexp(logits_t)^2.

    It keeps router logits small so the float32 softmax stays well conditioned. Computed on the raw logits, before
    temperature, because it is the router's own scale that it penalises. logits: (T, E).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return weight * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def supervised_routing_loss(probs: torch.Tensor, allowed_experts: torch.Tensor, weight: float) -> torch.Tensor:
    """Cross-entropy towards the experts of each token's labelled type: weight * mean_t -log sum_{e allowed} p_te.

    As in PiMoE/PiERN (arXiv 2509.18169), the router is taught with token-type labels. When a type maps to several
    experts, any of them is right, so the target is their total probability. Tokens with no allowed expert are skipped.

    probs: (T, E) float32. allowed_experts: (T, E) bool.
    """
    has_target = allowed_experts.any(dim=-1)
    target_mass = (probs * allowed_experts.to(probs.dtype)).sum(dim=-1)
    # clamp: a token whose allowed experts underflow to 0 probability would give -log(0) = inf.
    per_token = -torch.log(target_mass.clamp_min(1e-9))
    count = has_target.sum()
    return weight * torch.where(has_target, per_token, torch.zeros_like(per_token)).sum() / count.clamp_min(1)
