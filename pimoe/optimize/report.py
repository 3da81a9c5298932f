"""Optimisation recommendations: stated rules over measured statistics, each citing the number that triggered it.

`recommend(stats)` reads the keys below when present (missing or None keys switch their rule off) and returns one
Recommendation per rule that fires:

    count                calls measured                      -> few_calls        when count < min_calls
    mean_load_shares     (E,) share of assignments per expert -> overloaded_expert when share > overload_factor / E
                                                              -> idle_expert       when share < idle_factor / E
    expert_types         (E,) names, used in messages only
    normalized_entropy   mean routing entropy / log E         -> router_collapse  when < low_entropy
                                                              -> router_undecided when > high_entropy
    dropped_fraction     share of assignments over capacity   -> capacity_drops   when > max_dropped_fraction
    capacity_factor      the configured factor, messages only
    latency_median_ms, latency_p95_ms                         -> latency_jitter   when p95 / median > max_p95_ratio
                                                              -> latency_budget   when median > latency_budget_ms
    quantized, pruned    bools, choose what latency_budget suggests
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Recommendation", "RecommendationThresholds", "recommend", "speedup_claim"]


def speedup_claim(speedup: float, relative_error: float, relative_delta_error: float | None = None,
                  top1_changed: int | None = None, tokens: int | None = None) -> str:
    """A speed-up quoted with the output error it costs, never alone: "1.80× faster, output relative error 9.98e-02
    (MoE contribution 6.88e-01), top-1 expert changed for 0 of 1024 tokens". relative_delta_error: the error of the
    MoE contribution (output minus input) of a residual layer, the stricter figure; None when not measured."""
    if not (isinstance(speedup, (int, float)) and math.isfinite(speedup) and speedup > 0):
        raise ValueError(f"speedup must be a positive finite number, got {speedup!r}")
    claim = f"{speedup:.2f}× {'faster' if speedup >= 1 else 'the time (slower)'}, output relative error " \
            f"{relative_error:.2e}"
    if relative_delta_error is not None:
        claim += f" (MoE contribution {relative_delta_error:.2e})"
    if top1_changed is not None and tokens:
        claim += f", top-1 expert changed for {top1_changed} of {tokens} tokens"
    return claim


@dataclass(frozen=True)
class Recommendation:
    """One fired rule: its id, a message quoting the measured value, the value and the threshold it crossed."""

    rule: str
    message: str
    value: float
    threshold: float
    expert: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RecommendationThresholds:
    """Where each rule fires. Shares are relative to the uniform share 1/E."""

    min_calls: int = 5
    overload_factor: float = 1.5
    idle_factor: float = 0.2
    low_entropy: float = 0.3
    high_entropy: float = 0.97
    max_dropped_fraction: float = 0.02
    max_p95_ratio: float = 2.0
    latency_budget_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("overload_factor", "idle_factor", "low_entropy", "high_entropy", "max_dropped_fraction",
                     "max_p95_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.overload_factor <= 1:
            raise ValueError(f"overload_factor must be > 1 (a share above uniform), got {self.overload_factor!r}")
        if self.idle_factor >= 1:
            raise ValueError(f"idle_factor must be < 1 (a share below uniform), got {self.idle_factor!r}")
        if self.low_entropy > self.high_entropy:
            raise ValueError(f"low_entropy {self.low_entropy} must not exceed high_entropy {self.high_entropy}")
        if isinstance(self.min_calls, bool) or not isinstance(self.min_calls, int) or self.min_calls < 0:
            raise ValueError(f"min_calls must be a non-negative integer, got {self.min_calls!r}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be > 0 or None, got {self.latency_budget_ms!r}")


def _present(stats: Mapping[str, Any], key: str) -> bool:
    value = stats.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _expert_name(stats: Mapping[str, Any], index: int) -> str:
    types = stats.get("expert_types")
    return f"expert {index} ({types[index]})" if types and index < len(types) else f"expert {index}"


def _load_rules(stats: Mapping[str, Any], limits: RecommendationThresholds) -> list[Recommendation]:
    shares = [float(s) for s in stats["mean_load_shares"]]
    uniform = 1.0 / len(shares)
    high, low = limits.overload_factor * uniform, limits.idle_factor * uniform
    out = []
    for index, share in enumerate(shares):
        name = _expert_name(stats, index)
        if share > high:
            out.append(Recommendation(
                "overloaded_expert",
                f"{name} takes {share:.1%} of assignments, above {high:.1%} ({limits.overload_factor:g} × the uniform "
                f"{uniform:.1%}): raise load_balance_weight when training, or enable selection-bias balancing "
                f"(optimization_level='advanced' or enable_adaptation=True)",
                share, high, index))
        elif share < low:
            out.append(Recommendation(
                "idle_expert",
                f"{name} receives {share:.1%} of assignments, below {low:.1%} ({limits.idle_factor:g} × the uniform "
                f"{uniform:.1%}): its parameters are nearly unused; balance the routing or remove the expert",
                share, low, index))
    return out


def _latency_rules(stats: Mapping[str, Any], limits: RecommendationThresholds) -> list[Recommendation]:
    out = []
    median = float(stats["latency_median_ms"])
    if _present(stats, "latency_p95_ms") and median > 0:
        ratio = float(stats["latency_p95_ms"]) / median
        if ratio > limits.max_p95_ratio:
            out.append(Recommendation(
                "latency_jitter",
                f"p95 latency {stats['latency_p95_ms']:.2f} ms is {ratio:.1f}× the median {median:.2f} ms (above "
                f"{limits.max_p95_ratio:g}×): timings vary a lot; the machine is busy or calls differ in size",
                ratio, limits.max_p95_ratio))
    budget = limits.latency_budget_ms
    if budget is not None and median > budget:
        if not stats.get("quantized"):
            advice = "enable_quantization=True and call optimize_for_inference()"
        elif not stats.get("pruned"):
            advice = "enable_pruning=True and call optimize_for_inference()"
        else:
            advice = "the model is already quantised and pruned: use smaller batches or a lower top_k"
        out.append(Recommendation(
            "latency_budget", f"median latency {median:.2f} ms exceeds the {budget:g} ms budget: {advice}",
            median, budget))
    return out


def recommend(stats: Mapping[str, Any], thresholds: RecommendationThresholds | None = None) -> list[Recommendation]:
    """The rules of the module docstring applied to measured `stats`; an empty list when nothing fires."""
    limits = thresholds if thresholds is not None else RecommendationThresholds()
    out: list[Recommendation] = []
    if _present(stats, "count") and int(stats["count"]) < limits.min_calls:
        out.append(Recommendation(
            "few_calls",
            f"only {int(stats['count'])} calls measured (fewer than {limits.min_calls}): latency percentiles and load "
            f"shares from so few calls are noisy",
            float(stats["count"]), float(limits.min_calls)))
    if _present(stats, "mean_load_shares") and len(stats["mean_load_shares"]) > 1:
        out += _load_rules(stats, limits)
    if _present(stats, "normalized_entropy"):
        entropy = float(stats["normalized_entropy"])
        if entropy < limits.low_entropy:
            out.append(Recommendation(
                "router_collapse",
                f"routing entropy is {entropy:.2f} of its maximum (below {limits.low_entropy:g}): the router is nearly "
                f"deterministic; raise the temperature so other experts stay reachable",
                entropy, limits.low_entropy))
        elif entropy > limits.high_entropy:
            out.append(Recommendation(
                "router_undecided",
                f"routing entropy is {entropy:.2f} of its maximum (above {limits.high_entropy:g}): the router barely "
                f"prefers any expert (untrained?); train it with token-type labels or lower the temperature",
                entropy, limits.high_entropy))
    if _present(stats, "dropped_fraction") and float(stats["dropped_fraction"]) > limits.max_dropped_fraction:
        dropped = float(stats["dropped_fraction"])
        factor = stats.get("capacity_factor")
        now = f" (now {factor:g})" if factor is not None else ""
        out.append(Recommendation(
            "capacity_drops",
            f"{dropped:.1%} of assignments were dropped over capacity (above {limits.max_dropped_fraction:.1%}): "
            f"raise capacity_factor{now} or balance the routing",
            dropped, limits.max_dropped_fraction))
    if _present(stats, "latency_median_ms"):
        out += _latency_rules(stats, limits)
    return out
