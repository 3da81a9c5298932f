"""The routing record every router call returns.

Legend: T routed (non-padding) tokens, E experts, K experts per token, B batch, S sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

__all__ = ["RoutingInfo"]

# The seed's dict keys, answered by `RoutingInfo[...]`, mapped to the field that holds that quantity.
_SEED_KEYS = {
    "routing_decisions": "expert_indices",
    "expert_probs": "probs",
    "routing_weights": "expert_weights",
}


@dataclass
class RoutingInfo:
    """What the router decided for each routed token, and the losses that came with it.

    Fields (T routed tokens, in `token_positions` order):
        logits: (T, E) float32 router logits, before temperature.
        probs: (T, E) float32 softmax(logits / temperature).
        expert_indices: (T, K) chosen experts, best first.
        expert_weights: (T, K) combine weights of the chosen experts (renormalised probs, see RouterConfig).
        dropped: (T, K) bool, True where the assignment exceeded the expert's capacity and was not computed.
        token_positions: (T,) index of each routed token in the flattened (B * S) input.
        batch_shape: (B, S) of the input.
        tokens_per_expert: (E,) assignments each expert computed (after capacity).
        selected_per_expert: (E,) assignments each expert was chosen for (before capacity).
        entropy: (T,) entropy of probs in nats. confidence: (T,) largest probability.
        load_balance_loss, z_loss, supervised_loss: scalar tensors, already multiplied by their weights.
        router_loss: their sum (the auxiliary loss only when use_auxiliary_loss).
        capacity: per-expert capacity, or None. temperature: the temperature used.
        expert_types: type name of each expert.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_indices: torch.Tensor
    expert_weights: torch.Tensor
    dropped: torch.Tensor
    token_positions: torch.Tensor
    batch_shape: tuple[int, int]
    tokens_per_expert: torch.Tensor
    selected_per_expert: torch.Tensor
    entropy: torch.Tensor
    confidence: torch.Tensor
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    supervised_loss: torch.Tensor
    router_loss: torch.Tensor
    capacity: int | None
    temperature: float
    expert_types: list[str]

    @property
    def num_tokens(self) -> int:
        return self.probs.shape[0]

    @property
    def num_experts(self) -> int:
        return self.probs.shape[1]

    @property
    def top_k(self) -> int:
        return self.expert_indices.shape[1]

    @property
    def top1(self) -> torch.Tensor:
        """(T,) the best expert of each token."""
        return self.expert_indices[:, 0]

    @property
    def dropped_tokens(self) -> torch.Tensor:
        """(T,) True where every assignment of the token was dropped (it passes through unchanged)."""
        return self.dropped.all(dim=-1)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)] + list(_SEED_KEYS)

    def __getitem__(self, key: str):
        """Dict-style access for code written against the original description (`info['load_balance_loss']`)."""
        name = _SEED_KEYS.get(key, key)
        if name not in {f.name for f in fields(self)}:
            raise KeyError(f"{key!r} is not a routing-info field; fields are {self.keys()}")
        return getattr(self, name)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def detach(self) -> RoutingInfo:
        """A copy whose tensors hold no autograd history, for storing in histories and dashboards."""
        return replace(self, **{n: v.detach() for n, v in self._tensors().items()})

    def to(self, device: torch.device | str) -> RoutingInfo:
        return replace(self, **{n: v.to(device) for n, v in self._tensors().items()})

    def to_grid(self, per_token: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
        """Scatter a per-token quantity (T, ...) back to the input grid (B, S, ...); padding gets `fill`."""
        batch, seq = self.batch_shape
        grid = per_token.new_full((batch * seq, *per_token.shape[1:]), fill)
        grid[self.token_positions] = per_token
        return grid.view(batch, seq, *per_token.shape[1:])

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
