"""Typed, validated configuration for the router, the experts and the whole PiMoE layer.

Defaults run on a laptop CPU. Every `__post_init__` raises a ValueError that names the bad value, because these objects
are built from user input (dashboard widgets, CLI flags, JSON checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from pimoe.layer.expert_types import ACTIVATIONS, ExpertType, resolve_expert_type

__all__ = ["ExpertConfig", "PiMoEConfig", "RouterConfig"]


def _check_finite_number(name: str, value: Any, *, low: float | None = None, low_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        relation = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {relation} {low}, got {value!r}")


@dataclass
class RouterConfig:
    """How tokens choose experts.

    temperature: divides the router logits before the softmax; < 1 sharpens, > 1 flattens.
    top_k: experts per token (1..num_experts).
    load_balance_weight: alpha of the Switch-Transformer auxiliary loss alpha * E * sum_i f_i * P_i.
    z_loss_weight: weight of the ST-MoE router z-loss mean(logsumexp(logits)^2).
    use_gating: True weights each selected expert's output by its router weight (the router then learns from the task
        loss); False averages the selected experts equally (the router learns only from the auxiliary losses).
    use_auxiliary_loss: include the load-balancing loss in `router_loss`.
    renormalize: renormalise the top-k probabilities to sum to 1. None means "when top_k > 1": with top_k == 1 a
        renormalised weight is always exactly 1 and the router would get no gradient from the task (Switch, eq. 2).
    capacity_factor: None for no limit; otherwise each expert takes at most ceil(cf * T * k / E) assignments.
    use_selection_bias: add a per-expert bias to the scores used to *choose* experts (not to the gate values), as in
        DeepSeek-V3's auxiliary-loss-free balancing.
    supervised_weight: weight of the routing loss towards the experts of each token's labelled type, when labels are given.
    """

    temperature: float = 1.0
    top_k: int = 2
    load_balance_weight: float = 0.01
    z_loss_weight: float = 1e-3
    use_gating: bool = True
    use_auxiliary_loss: bool = True
    renormalize: bool | None = None
    capacity_factor: float | None = None
    use_selection_bias: bool = False
    supervised_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_finite_number("temperature", self.temperature, low=0.0, low_inclusive=False)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        _check_finite_number("load_balance_weight", self.load_balance_weight, low=0.0)
        _check_finite_number("z_loss_weight", self.z_loss_weight, low=0.0)
        _check_finite_number("supervised_weight", self.supervised_weight, low=0.0)
        if self.capacity_factor is not None:
            _check_finite_number("capacity_factor", self.capacity_factor, low=0.0, low_inclusive=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RouterConfig:
        """Build from the seed's `router_config` dict; unknown keys are an error, not silently dropped."""
        return _from_dict(cls, values, "router_config")


@dataclass
class ExpertConfig:
    """Shared expert settings; each expert type scales `intermediate_size` by its own width multiplier.

    intermediate_size: None means 4 * hidden_size. activation: None keeps each type's own activation; a name from
    ACTIVATIONS forces it on every expert.
    """

    intermediate_size: int | None = None
    dropout: float = 0.0
    activation: str | None = None
    bias: bool = True

    def __post_init__(self) -> None:
        if self.intermediate_size is not None and (
            isinstance(self.intermediate_size, bool)
            or not isinstance(self.intermediate_size, int)
            or self.intermediate_size < 1
        ):
            raise ValueError(f"intermediate_size must be a positive integer, got {self.intermediate_size!r}")
        _check_finite_number("dropout", self.dropout, low=0.0)
        if self.dropout >= 1.0:
            raise ValueError(f"dropout must be < 1, got {self.dropout!r}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExpertConfig:
        return _from_dict(cls, values, "expert_config")


DEFAULT_EXPERT_TYPES: tuple[str, ...] = tuple(t.value for t in ExpertType)


@dataclass
class PiMoEConfig:
    """One PiMoE layer: hidden size, experts and their types, router and expert settings.

    expert_types: the types to use; when num_experts exceeds their number they are assigned round-robin
        (`PiMoEConfig.assigned_expert_types` shows the result).
    residual: the layer returns x + MoE(x), so dropped and padding tokens come out equal to their input. A transformer
        block that adds its own residual sets this to False.
    """

    hidden_size: int = 64
    num_experts: int = 8
    expert_types: tuple[str, ...] = DEFAULT_EXPERT_TYPES
    router: RouterConfig = field(default_factory=RouterConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    residual: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_experts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.router, dict):
            self.router = RouterConfig.from_dict(self.router)
        if isinstance(self.expert, dict):
            self.expert = ExpertConfig.from_dict(self.expert)
        if isinstance(self.expert_types, (str, Enum)):
            self.expert_types = (self.expert_types,)
        if not self.expert_types:
            raise ValueError("expert_types must name at least one expert type")
        self.expert_types = tuple(resolve_expert_type(t) for t in self.expert_types)
        if self.router.top_k > self.num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={self.num_experts}, got {self.router.top_k}")

    @property
    def assigned_expert_types(self) -> list[str]:
        """Type of each expert, index-aligned with the experts: round-robin over `expert_types`."""
        return [self.expert_types[i % len(self.expert_types)] for i in range(self.num_experts)]

    @property
    def intermediate_size(self) -> int:
        return self.expert.intermediate_size or 4 * self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["expert_types"] = list(self.expert_types)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PiMoEConfig:
        values = dict(values)
        router = RouterConfig.from_dict(values.pop("router", {}))
        expert = ExpertConfig.from_dict(values.pop("expert", {}))
        if "expert_types" in values:
            values["expert_types"] = tuple(values["expert_types"])
        config = _from_dict(cls, values, "PiMoEConfig", router=router, expert=expert)
        return config

    @classmethod
    def tiny(cls) -> PiMoEConfig:
        """Test-sized: hidden 32, four experts of four different types."""
        return cls(hidden_size=32, num_experts=4, expert_types=("reasoning", "computation", "mathematical", "logical"))

    @classmethod
    def demo(cls) -> PiMoEConfig:
        """The dashboard's fresh-model preset: all seven types plus one extra expert, top-2."""
        return cls(hidden_size=64, num_experts=8)

    @classmethod
    def bench(cls) -> PiMoEConfig:
        """The benchmark preset: d=512, E=8, intermediate 2048, top-2."""
        return cls(hidden_size=512, num_experts=8, expert=ExpertConfig(intermediate_size=2048))


def _from_dict(cls, values: dict[str, Any], label: str, **extra):
    if not isinstance(values, dict):
        raise ValueError(f"{label} must be a dict, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {label} keys {unknown}; known keys are {sorted(known)}")
    return cls(**values, **extra)
