"""The user's routing knobs for one trace or generation: temperature, top-k, forced and ablated experts.

`force` and `ablate` name experts per decoder layer (the model's own layer numbering, `HFMoEModel.moe_layer_ids`):
    force=3                    expert 3 in every MoE layer
    force=[3, 5]               experts 3 and 5 in every MoE layer
    force={4: 3, 7: [1, 2]}    expert 3 at layer 4, experts 1 and 2 at layer 7, no edit elsewhere
A forced expert is always among the token's top-k (first), weighted by its own score as the family's rule weights any
chosen expert; an ablated expert is never chosen and its slot goes to the token's next-best expert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["ExpertSpec", "RoutingEdits"]

ExpertSpec = int | Iterable[int] | Mapping[int, int | Iterable[int]] | None


@dataclass(frozen=True)
class RoutingEdits:
    """Validated knobs. force / ablate: {decoder layer: experts}. Empty / None fields change nothing."""

    temperature: float | None = None
    top_k: int | None = None
    force: dict[int, tuple[int, ...]] = field(default_factory=dict)
    ablate: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, *, temperature: float | None = None, top_k: int | None = None, force: ExpertSpec = None,
              ablate: ExpertSpec = None, moe_layer_ids: list[int], num_experts: int,
              default_top_k: int, max_top_k: int | None = None) -> RoutingEdits:
        """Check every knob against the model and normalise force / ablate to {layer: experts}.

        max_top_k: the most experts one token can reach (group-limited routing reaches only its chosen groups'
        experts); default num_experts.
        """
        max_top_k = num_experts if max_top_k is None else max_top_k
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or not 1 <= top_k <= max_top_k):
            raise ValueError(f"top_k must be an integer between 1 and {max_top_k} (the experts a token can reach), "
                             f"got {top_k!r}")
        forced = _per_layer("force", force, moe_layer_ids, num_experts)
        ablated = _per_layer("ablate", ablate, moe_layer_ids, num_experts)
        k = default_top_k if top_k is None else top_k
        for layer in moe_layer_ids:
            pinned, blocked = set(forced.get(layer, ())), set(ablated.get(layer, ()))
            if pinned & blocked:
                raise ValueError(f"layer {layer}: experts {sorted(pinned & blocked)} are both forced and ablated")
            if len(pinned) > k:
                raise ValueError(f"layer {layer}: {len(pinned)} forced experts exceed top_k={k}")
            if num_experts - len(blocked) < k:
                raise ValueError(f"layer {layer}: ablating {len(blocked)} of {num_experts} experts leaves fewer "
                                 f"than top_k={k}")
        return cls(None if temperature is None else float(temperature), top_k, forced, ablated)

    @property
    def is_default(self) -> bool:
        return self.temperature is None and self.top_k is None and not self.force and not self.ablate

    def masks(self, layer: int, num_experts: int, device: torch.device) -> tuple[torch.Tensor | None, ...]:
        """(pinned, blocked): (E,) bool masks for one decoder layer, None where that layer has no edit."""
        return (_mask(self.force.get(layer), num_experts, device), _mask(self.ablate.get(layer), num_experts, device))

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k,
                "force": {str(k): list(v) for k, v in self.force.items()},
                "ablate": {str(k): list(v) for k, v in self.ablate.items()}}


def _mask(experts: tuple[int, ...] | None, num_experts: int, device: torch.device) -> torch.Tensor | None:
    if not experts:
        return None
    mask = torch.zeros(num_experts, dtype=torch.bool, device=device)
    mask[list(experts)] = True
    return mask


def _experts(name: str, value, num_experts: int) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else list(value)
    for expert in items:
        if isinstance(expert, bool) or not isinstance(expert, int) or not 0 <= expert < num_experts:
            raise ValueError(f"{name}: expert {expert!r} is not an expert id in [0, {num_experts})")
    return tuple(sorted(set(items)))


def _per_layer(name: str, spec: ExpertSpec, moe_layer_ids: list[int], num_experts: int) -> dict[int, tuple[int, ...]]:
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        out = {}
        for layer, experts in spec.items():
            if layer not in moe_layer_ids:
                raise ValueError(f"{name}: layer {layer!r} is not an MoE layer; MoE layers are {moe_layer_ids}")
            out[int(layer)] = _experts(name, experts, num_experts)
        return {layer: experts for layer, experts in out.items() if experts}
    if isinstance(spec, str):
        raise ValueError(f"{name} must be an expert id, a list of them, or {{layer: experts}}, got {spec!r}")
    experts = _experts(name, spec, num_experts)
    return {layer: experts for layer in moe_layer_ids} if experts else {}
