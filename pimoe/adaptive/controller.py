"""Adaptive routing: a feedback controller that tunes the router's knobs from measured routing statistics.

Legend: L layers (routers), E experts, K experts per token, T routed tokens.

The controller scores each step from what was measured and, when the score falls below `performance_threshold`,
moves three knobs of every router:

    performance score = sum_i w_i * part_i / sum_i w_i, over the parts measured this step, each in [0, 1]:
        balance       load_balance_score(load) = 1 - TV(load, uniform) / (1 - 1/E)
        max_violation 1 - min(MaxVio / (E/K - 1), 1); E/K - 1 is the MaxVio of a router that sends every token to the
                      same K experts, the worst a top-K router can do
        entropy       1 while the normalised routing entropy H / log E lies in [entropy_low, entropy_high], falling
                      linearly to 0 at the farthest possible distance from that band
        utilization   share of experts that received at least one assignment
        accuracy      routing accuracy against token-type labels, only when labels were given
        latency       min(1, latency_budget_ms / latency_ms), only when a budget is set and a latency was measured
    With several layers each part is the mean over layers.

    knobs (only when score < performance_threshold):
        selection bias   per layer and expert, DeepSeek-V3's loss-free balancing (Wang et al. 2024):
                         bias_e += step_e * sign(mean_load - load_e), then centred (top-k ignores a common
                         shift) and clamped to [-max_bias, max_bias]. step_e starts at adaptation_rate; with
                         adaptive_steps (default) it grows by 1.2 while expert e's sign holds and halves when it
                         flips (Rprop, Riedmiller & Braun 1993), within [min_step_factor, max_step_factor] x rate.
                         A constant step either crawls against a router that is 0.9 sure of one expert or, once the
                         competing probabilities are closer than the step, flips experts in and out every call;
                         adaptive_steps=False gives DeepSeek-V3's constant step.
        load_balance_weight  multiplied by load_balance_factor while the worst layer's MaxVio exceeds
                         max_violation_target, divided by it once MaxVio is under half the target, within bounds.
                         It acts through training gradients only; at inference it changes just the reported loss
        temperature      multiplied by (1 + temperature_step) when the normalised entropy is under the band (a router
                         collapsing onto few experts), divided by it when above (a router that cannot decide),
                         within bounds

`AdaptiveController` is pure bookkeeping over routers you hand it; `pimoe.adaptive.layer.AdaptivePiMoE` wraps a
PiMoESystem and runs the controller after every forward call. The training loop uses `AdaptiveController.update(step_record, routers)`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from pimoe.layer.router import TokenLevelRouter
from pimoe.layer.routing import RoutingInfo
from pimoe.measure.metrics import RoutingStats, load_balance_score, max_violation

__all__ = [
    "AdaptationConfig",
    "AdaptationRecord",
    "AdaptiveController",
    "LayerObservation",
    "adaptation_series",
    "as_layer_observations",
    "layer_balance",
    "layer_max_violation",
    "performance_parts",
    "reference_shares",
]

PART_NAMES = ("balance", "max_violation", "entropy", "utilization", "accuracy", "latency")


def _check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                  low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


@dataclass
class AdaptationConfig:
    """How the controller scores a step and how far it moves each knob. See the module docstring for the formulas.

    adaptation_rate: selection-bias step per adapting step, in router-probability units (the bias is added to the
        softmax probabilities when choosing experts).
    performance_threshold: adapt only while the score is below this, in [0, 1].
    weights: weight of each score part (keys from PART_NAMES); parts with weight 0 are ignored.
    history_size: adaptation records kept (oldest dropped), so a long-running dashboard stays bounded.
    max_accuracy_drop: the accuracy guard. While the smoothed routing accuracy (an exponential moving average with
        weight accuracy_smoothing on the newest step) is more than this below its best, the controller lowers the
        load-balance weight instead of raising it and holds the selection bias: balance must not be bought with
        accuracy. None switches the guard off; it only acts on steps that measured an accuracy.
    act_in_eval: with the routers in eval mode the controller scores and records but changes nothing, unless this is
        True (loss-free balancing of a deployed layer, as the original description's enhanced system does). Even
        then the load-balance weight stays put in eval mode: it acts through gradients only.
    balance_within_types: judge balance among experts of the same type only (needs the layers' expert types). Under
        type-supervised routing the labels themselves ask for uneven load across types (most bytes are prose), so
        balancing across types would fight the labels; what is left to balance is how experts of one type share it.
    """

    adaptation_rate: float = 0.01
    performance_threshold: float = 0.8
    weights: dict[str, float] = field(default_factory=lambda: {
        "balance": 1.0, "max_violation": 1.0, "entropy": 0.5, "utilization": 0.5, "accuracy": 1.0, "latency": 0.5,
    })
    entropy_low: float = 0.4
    entropy_high: float = 0.95
    latency_budget_ms: float | None = None
    max_violation_target: float = 0.3
    adapt_selection_bias: bool = True
    max_bias: float = 1.0
    adaptive_steps: bool = True
    min_step_factor: float = 0.1
    max_step_factor: float = 10.0
    adapt_load_balance_weight: bool = True
    load_balance_factor: float = 1.25
    min_load_balance_weight: float = 1e-4
    max_load_balance_weight: float = 1.0
    adapt_temperature: bool = True
    temperature_step: float = 0.05
    min_temperature: float = 0.25
    max_temperature: float = 4.0
    history_size: int = 1000
    balance_within_types: bool = False
    max_accuracy_drop: float | None = 0.05
    accuracy_smoothing: float = 0.1
    act_in_eval: bool = False

    def __post_init__(self) -> None:
        _check_number("adaptation_rate", self.adaptation_rate, low=0.0)
        _check_number("performance_threshold", self.performance_threshold, low=0.0, high=1.0)
        unknown = sorted(set(self.weights) - set(PART_NAMES))
        if unknown:
            raise ValueError(f"unknown score weights {unknown}; parts are {list(PART_NAMES)}")
        for name, weight in self.weights.items():
            _check_number(f"weights[{name!r}]", weight, low=0.0)
        _check_number("entropy_low", self.entropy_low, low=0.0, high=1.0)
        _check_number("entropy_high", self.entropy_high, low=0.0, high=1.0)
        if self.entropy_low > self.entropy_high:
            raise ValueError(f"entropy_low {self.entropy_low} must not exceed entropy_high {self.entropy_high}")
        if self.latency_budget_ms is not None:
            _check_number("latency_budget_ms", self.latency_budget_ms, low=0.0, low_open=True)
        _check_number("max_violation_target", self.max_violation_target, low=0.0)
        _check_number("max_bias", self.max_bias, low=0.0)
        _check_number("min_step_factor", self.min_step_factor, low=0.0, low_open=True, high=1.0)
        _check_number("max_step_factor", self.max_step_factor, low=1.0)
        _check_number("load_balance_factor", self.load_balance_factor, low=1.0)
        _check_number("min_load_balance_weight", self.min_load_balance_weight, low=0.0)
        _check_number("max_load_balance_weight", self.max_load_balance_weight, low=self.min_load_balance_weight)
        _check_number("temperature_step", self.temperature_step, low=0.0)
        _check_number("min_temperature", self.min_temperature, low=0.0, low_open=True)
        _check_number("max_temperature", self.max_temperature, low=self.min_temperature)
        if self.max_accuracy_drop is not None:
            _check_number("max_accuracy_drop", self.max_accuracy_drop, low=0.0, high=1.0)
        _check_number("accuracy_smoothing", self.accuracy_smoothing, low=0.0, low_open=True, high=1.0)
        if isinstance(self.history_size, bool) or not isinstance(self.history_size, int) or self.history_size < 1:
            raise ValueError(f"history_size must be a positive integer, got {self.history_size!r}")


@dataclass(frozen=True)
class LayerObservation:
    """What one router did in one step.

    loads: (E,) assignments (or shares) per expert as the router chose them, before capacity drops: capacity would
        hide exactly the imbalance the selection bias has to correct.
    normalized_entropy: mean per-token entropy / log E, or None when not measured (the training StepRecord has none).
    """

    loads: torch.Tensor
    top_k: int = 1
    normalized_entropy: float | None = None
    expert_types: tuple[str, ...] | None = None

    @property
    def shares(self) -> torch.Tensor:
        loads = self.loads.double()
        return loads / loads.sum().clamp_min(1e-12)


def as_layer_observations(observed: Any, top_k: int | None = None) -> list[LayerObservation]:
    """Normalise what a caller measured into one LayerObservation per layer.

    observed: a RoutingInfo, RoutingStats or LayerObservation, a sequence of them (one per layer), or a sequence of
    per-layer load lists (counts or shares). top_k: used where the input does not say (stats and load lists).
    """
    if isinstance(observed, (RoutingInfo, RoutingStats, LayerObservation)):
        observed = [observed]
    if isinstance(observed, torch.Tensor):
        observed = [observed] if observed.dim() == 1 else list(observed)
    if not isinstance(observed, Sequence) or len(observed) == 0:
        raise ValueError(f"expected routing infos, routing stats or per-layer loads, got {type(observed).__name__}")
    return [_one_observation(item, top_k) for item in observed]


def _one_observation(item: Any, top_k: int | None) -> LayerObservation:
    if isinstance(item, LayerObservation):
        return item
    if isinstance(item, RoutingInfo):
        entropy = float(item.entropy.detach().float().mean()) if item.num_tokens else None
        normalized = entropy / math.log(item.num_experts) if entropy is not None and item.num_experts > 1 else None
        return LayerObservation(item.selected_per_expert.detach().cpu().double(), item.top_k, normalized,
                                tuple(item.expert_types))
    if isinstance(item, RoutingStats):
        return LayerObservation(torch.tensor(item.load_shares, dtype=torch.float64), top_k or 1,
                                item.normalized_entropy)
    loads = torch.as_tensor(item, dtype=torch.float64).detach().cpu()
    if loads.dim() != 1 or loads.numel() == 0:
        raise ValueError(f"per-layer loads must be a flat list of per-expert values, got shape {tuple(loads.shape)}")
    if not bool(torch.isfinite(loads).all()) or bool((loads < 0).any()):
        raise ValueError(f"per-layer loads must be finite and non-negative, got {loads.tolist()}")
    return LayerObservation(loads, top_k or 1)


def reference_shares(layer: LayerObservation, within_types: bool = False) -> torch.Tensor:
    """(E,) the share each expert would have if balanced: 1/E, or, within types, its type group's mean share."""
    shares = layer.shares
    if not within_types or layer.expert_types is None:
        return torch.full_like(shares, 1.0 / shares.numel())
    reference = torch.empty_like(shares)
    for expert_type in set(layer.expert_types):
        members = torch.tensor([t == expert_type for t in layer.expert_types])
        reference[members] = shares[members].mean()
    return reference


def layer_max_violation(layer: LayerObservation, within_types: bool = False) -> float:
    """MaxVio against the balanced reference: max_e share_e / reference_e - 1 over experts with a reference."""
    if not within_types or layer.expert_types is None:
        return max_violation(layer.loads)
    shares, reference = layer.shares, reference_shares(layer, True)
    has_reference = reference > 0
    if not bool(has_reference.any()):
        return 0.0
    return float((shares[has_reference] / reference[has_reference]).max() - 1.0)


def layer_balance(layer: LayerObservation, within_types: bool = False) -> float:
    """Load-balance score; within types, the mean of each type group's score weighted by the group's share."""
    if not within_types or layer.expert_types is None:
        return load_balance_score(layer.loads)
    shares, total, weighted = layer.shares, 0.0, 0.0
    for expert_type in set(layer.expert_types):
        members = torch.tensor([t == expert_type for t in layer.expert_types])
        mass = float(shares[members].sum())
        if int(members.sum()) > 1 and mass > 0:
            weighted += mass * load_balance_score(shares[members])
            total += mass
    return weighted / total if total > 0 else 1.0


def _entropy_part(normalized: float, low: float, high: float) -> float:
    distance = max(low - normalized, normalized - high, 0.0)
    farthest = max(low, 1.0 - high)
    return 1.0 if farthest == 0 else max(0.0, 1.0 - distance / farthest)


def _max_violation_part(layer: LayerObservation, within_types: bool = False) -> float:
    num_experts = layer.loads.numel()
    worst = num_experts / layer.top_k - 1.0
    return 1.0 if worst <= 0 else 1.0 - min(layer_max_violation(layer, within_types) / worst, 1.0)


def performance_parts(layers: Sequence[LayerObservation], config: AdaptationConfig, latency_ms: float | None = None,
                      accuracy: float | None = None) -> dict[str, float]:
    """The measured score parts, each in [0, 1]; parts that were not measured are absent."""
    within = config.balance_within_types
    parts = {
        "balance": sum(layer_balance(layer, within) for layer in layers) / len(layers),
        "max_violation": sum(_max_violation_part(layer, within) for layer in layers) / len(layers),
        "utilization": sum(float((layer.loads > 0).double().mean()) for layer in layers) / len(layers),
    }
    entropies = [layer.normalized_entropy for layer in layers if layer.normalized_entropy is not None]
    if entropies:
        parts["entropy"] = sum(_entropy_part(h, config.entropy_low, config.entropy_high) for h in entropies) \
            / len(entropies)
    if accuracy is not None and math.isfinite(accuracy):
        parts["accuracy"] = float(accuracy)
    if config.latency_budget_ms is not None and latency_ms is not None and latency_ms > 0:
        parts["latency"] = min(1.0, config.latency_budget_ms / latency_ms)
    return parts


def _weighted_score(parts: dict[str, float], weights: dict[str, float]) -> float:
    total = sum(weights.get(name, 0.0) for name in parts)
    if total == 0:
        return math.nan  # nothing measured carries weight: no score, so no adaptation either
    return sum(weights.get(name, 0.0) * value for name, value in parts.items()) / total


@dataclass
class AdaptationRecord:
    """One controller step: the measured score and its parts, what changed and why, and the knobs afterwards.

    max_violation: the worst layer's MaxVio of the router's choices (before capacity drops).
    load_shares: (L, E) each expert's share of the assignments.
    normalized_entropy: mean over layers, None where not measured.
    temperature / load_balance_weight: per layer; selection_bias: (L, E). They hold the values after this step's
    changes, and stay None when the step was only observed (no `apply`).
    """

    step: int
    performance_score: float
    parts: dict[str, float]
    threshold: float
    adaptation_applied: bool
    max_violation: float
    load_shares: list[list[float]]
    normalized_entropy: float | None
    latency_ms: float | None
    accuracy: float | None
    changes: list[str] = field(default_factory=list)
    temperature: list[float] | None = None
    load_balance_weight: list[float] | None = None
    selection_bias: list[list[float]] | None = None
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    bias_steps: list[torch.Tensor]  # per layer (E,), already scaled by the rate
    temperature_factor: float
    temperature_reason: str
    load_balance_factor: float
    load_balance_reason: str
    hold_bias: bool = False


class AdaptiveController:
    """Feedback controller over measured routing statistics. `observe` scores a step, `apply` moves the knobs.

    Use `step(observed, routers, ...)` for both at once, or `update(step_record, routers)` from the training loop.
    """

    def __init__(self, config: AdaptationConfig | None = None) -> None:
        self.config = config if config is not None else AdaptationConfig()
        self.history: deque[AdaptationRecord] = deque(maxlen=self.config.history_size)
        self.steps_seen = 0
        self._pending: tuple[AdaptationRecord, _Plan, list[LayerObservation]] | None = None
        self._step_sizes: dict[int, torch.Tensor] = {}  # per layer (E,), adaptive_steps only
        self._last_signs: dict[int, torch.Tensor] = {}
        self._accuracy_ema: float | None = None
        self._best_accuracy: float | None = None

    def observe(self, observed: Any, latency_ms: float | None = None, accuracy: float | None = None, *,
                top_k: int | None = None, step: int | None = None) -> AdaptationRecord:
        """Score one step and plan the knob changes (applied by `apply`). The record joins the history at once."""
        cfg = self.config
        layers = as_layer_observations(observed, top_k)
        routed = all(float(layer.loads.sum()) > 0 for layer in layers)
        # A step that routed nothing (all padding) says nothing about the router: record it, score nothing.
        parts = performance_parts(layers, cfg, latency_ms, accuracy) if routed else {}
        score = _weighted_score(parts, cfg.weights) if routed else math.nan
        applied = routed and score < cfg.performance_threshold
        worst = max(layer_max_violation(layer, cfg.balance_within_types) for layer in layers)
        entropies = [layer.normalized_entropy for layer in layers if layer.normalized_entropy is not None]
        entropy = sum(entropies) / len(entropies) if entropies else None
        record = AdaptationRecord(
            step=self.steps_seen if step is None else int(step),
            performance_score=score,
            parts=parts,
            threshold=cfg.performance_threshold,
            adaptation_applied=applied,
            max_violation=worst,
            load_shares=[layer.shares.tolist() for layer in layers],
            normalized_entropy=entropy,
            latency_ms=latency_ms,
            accuracy=None if accuracy is None or not math.isfinite(accuracy) else float(accuracy),
        )
        if not routed:
            record.changes.append("no tokens routed in some layer: nothing to score, no adaptation")
        if applied:
            weakest = sorted(parts.items(), key=lambda item: item[1])[:2]
            record.changes.append(f"score {score:.3f} < threshold {cfg.performance_threshold:.3f}; weakest parts: "
                                  + ", ".join(f"{name} {value:.3f}" for name, value in weakest))
        guard = self._accuracy_guard(record.accuracy)
        self.steps_seen += 1
        self.history.append(record)
        plan = self._plan(layers, worst, entropy) if applied else None
        if plan is not None and guard:
            plan.load_balance_factor, plan.load_balance_reason = 1.0 / cfg.load_balance_factor, guard
            plan.hold_bias = True
        self._pending = (record, plan, layers)
        return record

    def _accuracy_guard(self, accuracy: float | None) -> str:
        """The reason the guard holds balancing back this step, or "" when it does not."""
        cfg = self.config
        if accuracy is None or cfg.max_accuracy_drop is None:
            return ""
        ema = accuracy if self._accuracy_ema is None else \
            (1 - cfg.accuracy_smoothing) * self._accuracy_ema + cfg.accuracy_smoothing * accuracy
        self._accuracy_ema = ema
        self._best_accuracy = ema if self._best_accuracy is None else max(self._best_accuracy, ema)
        if ema < self._best_accuracy - cfg.max_accuracy_drop:
            return (f"accuracy guard: smoothed routing accuracy {ema:.3f} is more than {cfg.max_accuracy_drop:g} "
                    f"below its best {self._best_accuracy:.3f}")
        return ""

    def _plan(self, layers: list[LayerObservation], worst: float, entropy: float | None) -> _Plan:
        cfg = self.config
        bias_steps = []
        for index, layer in enumerate(layers):
            shares = layer.shares
            # sign(reference - load): overloaded experts lose selection score, underloaded ones gain it (the
            # reference is the uniform share, or the type group's mean with balance_within_types).
            sign = torch.sign(reference_shares(layer, cfg.balance_within_types) - shares)
            size = torch.full_like(sign, cfg.adaptation_rate)
            if cfg.adaptive_steps:
                size, last = self._step_sizes.get(index, size), self._last_signs.get(index, torch.zeros_like(sign))
                if size.shape != sign.shape:
                    raise ValueError(f"layer {index} reported {sign.numel()} experts, earlier {size.numel()}")
                agree = sign * last
                size = torch.where(agree > 0, size * 1.2, torch.where(agree < 0, size * 0.5, size))
                size = size.clamp(cfg.adaptation_rate * cfg.min_step_factor, cfg.adaptation_rate * cfg.max_step_factor)
                self._step_sizes[index], self._last_signs[index] = size, sign
            bias_steps.append(size * sign)
        lb_factor, lb_reason = 1.0, ""
        if worst > cfg.max_violation_target:
            lb_factor = cfg.load_balance_factor
            lb_reason = f"worst-layer MaxVio {worst:.2f} > target {cfg.max_violation_target:.2f}"
        elif worst < cfg.max_violation_target / 2:
            lb_factor = 1.0 / cfg.load_balance_factor
            lb_reason = f"worst-layer MaxVio {worst:.2f} < half the target {cfg.max_violation_target:.2f}"
        t_factor, t_reason = 1.0, ""
        band = f"[{cfg.entropy_low}, {cfg.entropy_high}]"
        if entropy is not None and entropy < cfg.entropy_low:
            t_factor = 1.0 + cfg.temperature_step
            t_reason = f"normalised routing entropy {entropy:.2f} below the band {band}"
        elif entropy is not None and entropy > cfg.entropy_high:
            t_factor = 1.0 / (1.0 + cfg.temperature_step)
            t_reason = f"normalised routing entropy {entropy:.2f} above the band {band}"
        return _Plan(bias_steps, t_factor, t_reason, lb_factor, lb_reason)

    def apply(self, routers: Sequence[TokenLevelRouter]) -> AdaptationRecord | None:
        """Apply the last observed step's plan to the routers (one per observed layer); returns the completed record.

        Returns None when nothing was observed since the last apply.
        """
        if self._pending is None:
            return None
        record, plan, layers = self._pending
        self._pending = None
        routers = list(routers)
        if len(routers) != len(layers):
            raise ValueError(f"got {len(routers)} routers for {len(layers)} observed layers")
        for router, layer in zip(routers, layers, strict=True):
            if router.num_experts != layer.loads.numel():
                raise ValueError(f"router has {router.num_experts} experts but its layer reported "
                                 f"{layer.loads.numel()} loads")
        changes = list(record.changes)
        evaluating = not any(router.training for router in routers)
        if plan is not None and evaluating:
            # In eval mode no gradient flows, so the load-balance weight would change only a reported number; moving
            # the bias or temperature would change the model under evaluation, so that needs act_in_eval.
            plan.load_balance_factor = 1.0
            if not self.config.act_in_eval:
                plan = None
                changes.append("eval mode: the controller changes nothing")
        if plan is not None:
            changes += self._apply_plan(plan, routers, layers)
            if len(changes) == len(record.changes):
                changes.append("no knob rule fired (every knob at its bound or the weak part has no knob)")
        completed = replace(
            record,
            changes=changes,
            temperature=[r.temperature for r in routers],
            load_balance_weight=[r.load_balance_weight for r in routers],
            selection_bias=[r.selection_bias.detach().cpu().tolist() for r in routers],
        )
        if self.history and self.history[-1] is record:
            self.history[-1] = completed
        return completed

    def _apply_plan(self, plan: _Plan, routers: list[TokenLevelRouter], layers: list[LayerObservation]) -> list[str]:
        cfg = self.config
        changes: list[str] = []
        for index, (router, layer, steps) in enumerate(zip(routers, layers, plan.bias_steps, strict=True)):
            if cfg.adapt_selection_bias and cfg.adaptation_rate > 0 and not plan.hold_bias:
                changes += _apply_bias(index, router, layer, steps, cfg.max_bias)
            if cfg.adapt_load_balance_weight and plan.load_balance_factor != 1.0:
                old = router.load_balance_weight
                new = min(max(old * plan.load_balance_factor, cfg.min_load_balance_weight),
                          cfg.max_load_balance_weight)
                if new != old:
                    router.load_balance_weight = new
                    changes.append(f"layer {index}: {plan.load_balance_reason} → load_balance_weight "
                                   f"×{new / old:.3g}: {old:.4g} → {new:.4g}")
            if cfg.adapt_temperature and plan.temperature_factor != 1.0:
                old = router.temperature
                new = min(max(old * plan.temperature_factor, cfg.min_temperature), cfg.max_temperature)
                if new != old:
                    router.temperature = new
                    changes.append(f"layer {index}: {plan.temperature_reason} → temperature {old:.4g} → {new:.4g}")
        return changes

    def step(self, observed: Any, routers: Sequence[TokenLevelRouter], latency_ms: float | None = None,
             accuracy: float | None = None) -> AdaptationRecord:
        """observe + apply."""
        self.observe(observed, latency_ms, accuracy)
        return self.apply(routers)

    def update(self, record: Any, routers: Sequence[TokenLevelRouter]) -> dict[str, Any] | None:
        """The training loop's controller hook: read a StepRecord, adjust the routers, return the history entry.

        Uses record.load (per layer, per-expert token shares), record.routing_accuracy (NaN when no labels),
        record.step_ms (kept in the history; scored only when a latency budget is set) and record.step. The StepRecord
        carries no routing entropy, so the temperature rule does not act during training.
        Returns None when the record has no load (nothing routed).
        """
        if not record.load:
            return None
        routers = list(routers)
        if len(routers) != len(record.load):
            raise ValueError(f"got {len(routers)} routers for a StepRecord with {len(record.load)} layers of load")
        layers = [LayerObservation(torch.as_tensor(shares, dtype=torch.float64), router.top_k,
                                   expert_types=tuple(router.expert_types))
                  for shares, router in zip(record.load, routers, strict=True)]
        accuracy = record.routing_accuracy
        accuracy = None if accuracy is None or not math.isfinite(float(accuracy)) else float(accuracy)
        self.observe(layers, latency_ms=record.step_ms, accuracy=accuracy, step=record.step)
        return self.apply(routers).to_dict()

    def reset(self) -> None:
        self.history.clear()
        self.steps_seen = 0
        self._pending = None
        self._step_sizes.clear()
        self._last_signs.clear()
        self._accuracy_ema = self._best_accuracy = None


def adaptation_series(records: Sequence[AdaptationRecord | dict[str, Any]], layer: int = 0) -> dict[str, list]:
    """One layer's knobs and score over a history, as columns for a figure (`figures.build_adaptation_figure`).

    records: AdaptationRecords or their dicts (observed-only records, without knob values, are skipped).
    Returns steps, performance_score, adaptation_applied, max_violation (worst layer), temperature,
    load_balance_weight and selection_bias (S, E).
    """
    columns: dict[str, list] = {name: [] for name in ("steps", "performance_score", "adaptation_applied",
                                                      "max_violation", "temperature", "load_balance_weight",
                                                      "selection_bias")}
    for record in records:
        row = record.to_dict() if isinstance(record, AdaptationRecord) else record
        if row["temperature"] is None:
            continue
        if not 0 <= layer < len(row["temperature"]):
            raise ValueError(f"layer {layer} is out of range for records with {len(row['temperature'])} layers")
        columns["steps"].append(row["step"])
        columns["performance_score"].append(row["performance_score"])
        columns["adaptation_applied"].append(row["adaptation_applied"])
        columns["max_violation"].append(row["max_violation"])
        columns["temperature"].append(row["temperature"][layer])
        columns["load_balance_weight"].append(row["load_balance_weight"][layer])
        columns["selection_bias"].append(row["selection_bias"][layer])
    return columns


def _apply_bias(index: int, router: TokenLevelRouter, layer: LayerObservation, steps: torch.Tensor,
                max_bias: float) -> list[str]:
    changes = []
    if not router.config.use_selection_bias:
        router.config = replace(router.config, use_selection_bias=True)
        changes.append(f"layer {index}: selection bias switched on (it was off) so the balancing rule can act")
    with torch.no_grad():
        bias = router.selection_bias
        new = bias.double().cpu() + steps
        # Top-k over probs + bias ignores a common shift, so centring changes no decision; it only stops the sum of
        # sign steps (one overloaded expert against E-1 underloaded ones) from drifting every bias into the clamp.
        new = (new - new.mean()).clamp(-max_bias, max_bias)
        moved = new - bias.double().cpu()
        bias.copy_(new.to(bias.dtype))
    shares = layer.shares
    names = layer.expert_types or tuple(router.expert_types)
    top = int(torch.argmax(shares))
    if moved[top] != 0:
        changes.append(f"layer {index}: expert {top} ({names[top]}) takes {shares[top]:.1%} of assignments "
                       f"(mean {shares.mean():.1%}) → bias {float(moved[top]):+.4g} (now {float(new[top]):+.4g})")
    raised = ", ".join(f"{e} {float(moved[e]):+.3g}" for e in range(len(shares)) if moved[e] > 0)
    if raised:
        changes.append(f"layer {index}: experts below the mean share raised: {raised}")
    lowered = ", ".join(f"{e} {float(moved[e]):+.3g}" for e in range(len(shares)) if moved[e] < 0 and e != top)
    if lowered:
        changes.append(f"layer {index}: other experts above the mean share lowered: {lowered}")
    return changes
