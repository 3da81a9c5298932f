"""Per-call routing options: the router knobs a caller may change for one call without touching the module.

Validated once, when built; the layer, the LM and both routers (the module's and the fused CUDA one) carry the same
record, and `RoutingOptions.resolve` is the one place where an unset field falls back to the router's own setting.
"Temperature" here is always the router's softmax temperature, never a sampling or distillation temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pimoe.layer.config import RouterConfig

__all__ = ["NO_CAPACITY_LIMIT", "ResolvedRouting", "RoutingOptions"]

# A capacity factor of infinity lifts the router's own limit for this call (None would keep it).
NO_CAPACITY_LIMIT = math.inf


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


@dataclass(frozen=True)
class RoutingOptions:
    """temperature: router softmax temperature (> 0). top_k: experts per token (1..E, checked against E when resolved).
    capacity_factor: per-expert capacity as a multiple of the uniform share T*K/E (> 0; `NO_CAPACITY_LIMIT` lifts any
    limit). A field left None keeps the router's own value."""

    temperature: float | None = None
    top_k: int | None = None
    capacity_factor: float | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if t is not None and not (_is_number(t) and math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be between 1 and num_experts, got {k!r}")
        c = self.capacity_factor
        if c is not None and not (_is_number(c) and not math.isnan(c) and c > 0):
            raise ValueError(f"capacity_factor must be a number > 0 (math.inf for no limit), got {c!r}")

    @classmethod
    def of(cls, options: RoutingOptions | None = None, *, temperature: float | None = None,
           top_k: int | None = None) -> RoutingOptions:
        """The record for a call that may pass a record, loose knobs, or both (loose knobs win); reuses `options`
        itself when no knob is given, so a record built upstream is not validated again."""
        base = options if options is not None else _DEFAULT
        if temperature is None and top_k is None:
            return base
        return cls(temperature if temperature is not None else base.temperature,
                   top_k if top_k is not None else base.top_k, base.capacity_factor)

    def resolve(self, config: RouterConfig, num_experts: int) -> ResolvedRouting:
        """Every knob with a value: this record's where set, the router's own otherwise."""
        top_k = config.top_k if self.top_k is None else self.top_k
        if top_k > num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k!r}")
        capacity = config.capacity_factor if self.capacity_factor is None else self.capacity_factor
        return ResolvedRouting(
            temperature=config.temperature if self.temperature is None else float(self.temperature),
            top_k=top_k,
            capacity_factor=None if capacity is None or math.isinf(capacity) else float(capacity),
        )


@dataclass(frozen=True)
class ResolvedRouting:
    """The knobs one router call runs with. capacity_factor None: no limit."""

    temperature: float
    top_k: int
    capacity_factor: float | None


_DEFAULT = RoutingOptions()
