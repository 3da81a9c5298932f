"""The "dense_masked" dispatch strategy: every expert on every token, combined through a (T, E) weight matrix.

Legend: T routed tokens, D hidden size, E experts, K experts per token.

It does E/K times the expert work of `sorted`, so it is never the fast path. It exists because it has no
data-dependent shapes: `sorted` slices by how many assignments each expert got (a value read back from the tensors),
which graph exporters such as `torch.export` cannot trace. Exact: an assignment that was not chosen, or was dropped by
capacity, gets combine weight 0, so the result equals `sorted` up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pimoe.layer.routing import RoutingInfo

__all__ = ["combine_weights", "dense_masked_dispatch"]


def combine_weights(routing: RoutingInfo) -> torch.Tensor:
    """(T, E) weight of each expert for each token: the kept top-k weights scattered into place, 0 elsewhere."""
    kept = routing.expert_weights * (~routing.dropped).to(routing.expert_weights.dtype)  # (T, K)
    num_tokens, num_experts = routing.probs.shape
    zeros = torch.zeros(num_tokens, num_experts, dtype=kept.dtype, device=kept.device)
    return zeros.scatter_add(1, routing.expert_indices, kept)


def dense_masked_dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module]) -> torch.Tensor:
    """x: (T, D) -> (T, D): sum over experts e of combine[:, e] * expert_e(x)."""
    combine = combine_weights(routing).to(x.dtype)  # (T, E)
    out = torch.zeros_like(x)
    for expert_id, expert in enumerate(experts):  # a loop over a handful of experts, not over tokens
        out = out + expert(x) * combine[:, expert_id : expert_id + 1]
    return out

