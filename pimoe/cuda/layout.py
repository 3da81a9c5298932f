"""Assignments in expert order: the layout every grouped GEMM of the fast path reads, and its plain-torch sort.

Legend: T tokens, E experts, K experts per token, A = T * K assignments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pimoe.layer.routing import RoutingInfo

__all__ = ["ExpertLayout", "next_pow2", "sort_by_expert_torch"]


@dataclass
class ExpertLayout:
    """Assignments in expert order. Dropped assignments (bucket E) come last.

    sorted_token / sorted_expert / sorted_weight: (A,) token, expert and combine weight of each sorted row.
    position: (A,) the sorted row of assignment t * K + k. counts: (E,) int32 kept rows per expert.
    offsets: (E,) int32 running sums of counts (group ends for torch._grouped_mm).
    """

    sorted_token: torch.Tensor
    sorted_expert: torch.Tensor
    sorted_weight: torch.Tensor
    position: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor


def next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _flat_keys(routing: RoutingInfo) -> torch.Tensor:
    """(A,) expert of each assignment, E where capacity dropped it."""
    num_experts = routing.num_experts
    keys = routing.expert_indices.reshape(-1)
    return torch.where(routing.dropped.reshape(-1), torch.full_like(keys, num_experts), keys)


def sort_by_expert_torch(routing: RoutingInfo) -> ExpertLayout:
    """The layout in plain torch ops (stable argsort); the Triton counting sort must give the same arrays."""
    num_tokens, top_k = routing.expert_indices.shape
    keys = _flat_keys(routing)
    order = torch.argsort(keys, stable=True)
    assignments = order.numel()
    position = torch.empty_like(order).scatter_(0, order, torch.arange(assignments, device=order.device))
    counts = torch.zeros(routing.num_experts + 1, dtype=torch.int64, device=keys.device)
    counts = counts.scatter_add_(0, keys, torch.ones_like(keys))[:-1]
    return ExpertLayout(
        sorted_token=order // top_k,
        sorted_expert=keys[order],
        sorted_weight=routing.expert_weights.reshape(-1)[order],
        position=position,
        counts=counts.to(torch.int32),
        offsets=counts.cumsum(0).to(torch.int32),
    )
