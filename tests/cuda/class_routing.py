"""Random routings for the width-class tests: each token's K distinct experts, some assignments dropped."""

from __future__ import annotations

import torch

from pimoe.layer.routing import RoutingInfo


def random_routing(tokens: int, top_k: int, experts: int, drop: float, seed: int) -> RoutingInfo:
    """expert_indices (T, K) distinct per token, a `drop` share of assignments dropped, random weights."""
    gen = torch.Generator().manual_seed(seed)
    ranked = torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)])
    fields = dict.fromkeys(RoutingInfo.__dataclass_fields__)
    fields.update(expert_indices=ranked, dropped=torch.rand(tokens, top_k, generator=gen) < drop,
                  expert_weights=torch.rand(tokens, top_k, generator=gen),
                  probs=torch.rand(tokens, experts, generator=gen), batch_shape=(1, tokens), capacity=None,
                  temperature=1.0, expert_types=["x"] * experts)
    return RoutingInfo(**fields)
