"""EnhancedPiMoEIntegration: a PiMoE layer with measured per-call metrics, inference optimisations and a report.

Legend: B batch, S sequence, D hidden size, T routed tokens, E experts.

Optimisation levels (what `optimization_level` switches; explicit enable_* arguments override the defaults):

    level     router at construction                       optimize_for_inference(calibration) by default
    basic     as configured                                eval
    advanced  capacity_factor 1.25, selection bias on      eval, selection bias fitted to the calibration batch
    maximum   capacity_factor 1.25, selection bias on      eval, bias fit, prune 25% of expert neurons, quantise

Quantisation means int8 dynamic quantisation of the expert Linears on CPU; on CUDA, int8 weight-only, else bf16
experts for a float32 layer. Each candidate is timed against the current layer and kept only if its median latency
is at most `max_quantized_slowdown` times the current one; otherwise the step reports "reverted" with both timings.
Distillation (opt-in at every level) trains the pruned layer towards the unpruned one on the calibration batch.
Pruning, distillation and quantisation replace the layer with a modified copy; they happen in `optimize_for_inference`,
never at construction, because each needs a measurement before and after.

Every call is measured: `latency_ms` is the synchronised wall time of the layer call (the PiMoESystem forward, plus
the controller step when adaptation is on; metric bookkeeping is outside it), `memory_mb` the peak memory during the
call above its start (CUDA allocator; on CPU only with measure_memory=True, from the profiler), and the
routing figures come from the call's own RoutingInfo. Calls are kept (bounded) for `get_optimization_report`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from pimoe.adaptive.controller import AdaptationConfig
from pimoe.adaptive.layer import AdaptivePiMoE, allowed_expert_accuracy, calibrate_selection_bias
from pimoe.layer.config import RouterConfig
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem, create_pimoe_system
from pimoe.measure.metrics import (
    RoutingStats,
    load_balance_score,
    max_violation,
    measure_latency,
    measure_peak_memory,
    routing_stats,
    routing_stats_from_values,
)
from pimoe.optimize.report import RecommendationThresholds, recommend

__all__ = [
    "OPTIMIZATION_LEVELS",
    "EnhancedPiMoEConfig",
    "EnhancedPiMoEIntegration",
    "LevelSettings",
    "OptimizationStep",
    "create_enhanced_pimoe_integration",
]


@dataclass(frozen=True)
class LevelSettings:
    capacity_factor: float | None
    selection_bias: bool
    calibrate_bias: bool
    quantize: bool
    prune: bool


OPTIMIZATION_LEVELS: dict[str, LevelSettings] = {
    "basic": LevelSettings(capacity_factor=None, selection_bias=False, calibrate_bias=False, quantize=False,
                           prune=False),
    "advanced": LevelSettings(capacity_factor=1.25, selection_bias=True, calibrate_bias=True, quantize=False,
                              prune=False),
    "maximum": LevelSettings(capacity_factor=1.25, selection_bias=True, calibrate_bias=True, quantize=True,
                             prune=True),
}


@dataclass
class EnhancedPiMoEConfig:
    """Which optimisations are on. enable_quantization / enable_pruning: None takes the level's default.

    pruning_amount: share of each expert's neurons pruning removes. distill_steps: optimiser steps of distillation.
    max_quantized_slowdown: a quantised layer is kept only if its measured median latency is at most this times the
        float layer's (weight-only int8 on a GPU is smaller but, measured here, several times slower at prefill sizes).
    call_history_size: calls kept for the report (oldest dropped).
    """

    optimization_level: str = "basic"
    enable_quantization: bool | None = None
    enable_pruning: bool | None = None
    enable_distillation: bool = False
    enable_adaptation: bool = False
    # The original description balances a deployed layer at inference, so its controller acts in eval mode too.
    adaptation: AdaptationConfig = field(default_factory=lambda: AdaptationConfig(act_in_eval=True))
    pruning_amount: float = 0.25
    distill_steps: int = 20
    # None: measure per call on CUDA only. On CPU the peak comes from the profiler's allocator events, and profiling
    # the call would put the profiler's own bookkeeping inside the timed latency.
    measure_memory: bool | None = None
    max_quantized_slowdown: float = 1.1
    call_history_size: int = 10_000
    thresholds: RecommendationThresholds = field(default_factory=RecommendationThresholds)

    def __post_init__(self) -> None:
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization_level must be one of {list(OPTIMIZATION_LEVELS)}, "
                             f"got {self.optimization_level!r}")
        level = OPTIMIZATION_LEVELS[self.optimization_level]
        if self.enable_quantization is None:
            self.enable_quantization = level.quantize
        if self.enable_pruning is None:
            self.enable_pruning = level.prune
        if self.measure_memory is not None and not isinstance(self.measure_memory, bool):
            raise ValueError(f"measure_memory must be True, False or None, got {self.measure_memory!r}")
        for name in ("enable_quantization", "enable_pruning", "enable_distillation", "enable_adaptation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.pruning_amount, bool) or not isinstance(self.pruning_amount, (int, float)) \
                or not 0.0 <= self.pruning_amount < 1.0:
            raise ValueError(f"pruning_amount must be a number in [0, 1), got {self.pruning_amount!r}")
        if isinstance(self.max_quantized_slowdown, bool) or not isinstance(self.max_quantized_slowdown, (int, float)) \
                or not self.max_quantized_slowdown >= 1.0:
            raise ValueError(f"max_quantized_slowdown must be a number >= 1, got {self.max_quantized_slowdown!r}")
        for name in ("distill_steps", "call_history_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def level(self) -> LevelSettings:
        return OPTIMIZATION_LEVELS[self.optimization_level]


@dataclass
class OptimizationStep:
    """One thing `optimize_for_inference` did or skipped, with measurements before and after where they apply."""

    name: str
    status: str  # "applied", "skipped" or "failed"
    detail: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _CallRecord:
    model_version: int
    tokens: int
    latency_ms: float
    memory_mb: float | None
    selected_per_expert: tuple[int, ...]
    normalized_entropy: float
    expert_utilization: float
    dropped_fraction: float
    assignments: int


def _count_parameters(system: nn.Module) -> int:
    """Weights and biases, including those a dynamic-quantised Linear keeps packed outside `parameters()`."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    total = sum(p.numel() for p in system.parameters())
    for module in system.modules():
        if isinstance(module, DynamicQuantizedLinear):
            weight, bias = module._weight_bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


def _call_statistics(routing: RoutingInfo) -> tuple[RoutingStats, tuple[int, ...], tuple[float, float]]:
    """`routing_stats(routing)`, the per-expert selections and the two router losses, with one device-to-host copy.

    NOTE: each scalar read alone is a host sync on CUDA; per call that cost more than the layer itself on an H200 at
    512 tokens, so the monitored path stacks the losses and selections into the same copy as the statistics.
    """
    if routing.num_tokens == 0:
        stats = routing_stats(routing)
        return stats, tuple([0] * routing.num_experts), (0.0, 0.0)
    scalars = torch.stack([
        routing.entropy.detach().mean().double(), routing.confidence.detach().mean().double(),
        routing.dropped.double().mean(), routing.load_balance_loss.detach().double(),
        routing.router_loss.detach().double(),
    ])
    packed = torch.cat([scalars, routing.tokens_per_expert.double(), routing.selected_per_expert.double()]).cpu()
    entropy, confidence, dropped, lb_loss, router_loss = packed[:5].tolist()
    num_experts = routing.num_experts
    load, selected = packed[5:5 + num_experts], packed[5 + num_experts:]
    stats = routing_stats_from_values(routing.num_tokens, entropy, confidence, dropped, load)
    return stats, tuple(int(v) for v in selected.tolist()), (lb_loss, router_loss)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EnhancedPiMoEIntegration(nn.Module):
    """A PiMoESystem plus measured metrics, an optimisation pipeline, a report and (optionally) adaptive routing."""

    def __init__(self, system: PiMoESystem, config: EnhancedPiMoEConfig | None = None) -> None:
        super().__init__()
        if not isinstance(system, PiMoESystem):
            raise ValueError(f"system must be a PiMoESystem, got {type(system).__name__}")
        self.config = config if config is not None else EnhancedPiMoEConfig()
        self.system = system
        self.adaptive = AdaptivePiMoE(system, self.config.adaptation) if self.config.enable_adaptation else None
        self.optimization_log: list[OptimizationStep] = []
        self.model_version = 0
        self.pruned = False
        self.quantization: str | None = None
        self._compiled: nn.Module | None = None
        self._calls: deque[_CallRecord] = deque(maxlen=self.config.call_history_size)
        self._memory_method = ""

    @property
    def hidden_size(self) -> int:
        return self.system.hidden_size

    @property
    def num_experts(self) -> int:
        return self.system.num_experts

    @property
    def router(self):
        return self.system.router

    def _input_dtype(self) -> torch.dtype:
        for param in self.system.experts.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.float32

    def _device(self) -> torch.device:
        return self.system.router.gate.weight.device

    # ---- forward -------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        allowed_experts: torch.Tensor | None = None,
        return_metrics: bool = False,
        return_adaptation_info: bool = False,
        return_routing_info: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """x: (B, S, D) -> (B, S, D) in x's dtype; with any return_* flag also one info dict holding the metrics
        (return_metrics), 'adaptation_info' (return_adaptation_info, needs enable_adaptation) and 'routing_info'.

        allowed_experts: optional (B, S, E) bool token-type labels; they add routing_accuracy to the metrics.
        """
        if return_adaptation_info and self.adaptive is None:
            raise ValueError("return_adaptation_info needs adaptation: create the integration with "
                             "enable_adaptation=True")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a torch.Tensor of shape [batch, seq, hidden], got {type(x).__name__}")
        x_in = x.to(self._input_dtype())
        result: dict[str, Any] = {}

        def timed_call() -> None:
            _synchronize(x_in.device)
            started = time.perf_counter()
            result["out"] = self._call_layer(x_in, attention_mask, allowed_experts)
            _synchronize(x_in.device)
            result["latency_ms"] = (time.perf_counter() - started) * 1e3

        memory_mb = None
        measure_memory = self.config.measure_memory
        if measure_memory is None:
            measure_memory = x_in.device.type == "cuda"
        if measure_memory:
            measured = measure_peak_memory(timed_call, x_in.device)
            memory_mb, self._memory_method = float(measured["peak_mb"]), str(measured["method"])
        else:
            timed_call()
        output, routing, adaptation = result["out"]
        metrics = self._record_call(routing, result["latency_ms"], memory_mb)
        output = output.to(x.dtype)
        if not (return_metrics or return_adaptation_info or return_routing_info):
            return output
        info: dict[str, Any] = {}
        if return_metrics:
            info.update(metrics)
            if allowed_experts is not None:
                info["routing_accuracy"] = allowed_expert_accuracy(routing, allowed_experts)
        if return_adaptation_info:
            info["adaptation_info"] = adaptation
        if return_routing_info:
            info["routing_info"] = routing
        return output, info

    def _call_layer(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
                    allowed_experts: torch.Tensor | None) -> tuple[torch.Tensor, RoutingInfo, dict | None]:
        if self.adaptive is not None:
            output, info = self.adaptive(x, attention_mask, allowed_experts, return_adaptation_info=True,
                                         return_routing_info=True)
            return output, info["routing_info"], info["adaptation_info"]
        layer = self._compiled if self._compiled is not None else self.system
        output, routing = layer(x, attention_mask, return_routing_info=True, allowed_experts=allowed_experts)
        return output, routing, None

    def _record_call(self, routing: RoutingInfo, latency_ms: float, memory_mb: float | None) -> dict[str, Any]:
        stats, selected, losses = _call_statistics(routing)
        tokens = routing.num_tokens
        self._calls.append(_CallRecord(
            model_version=self.model_version, tokens=tokens, latency_ms=latency_ms, memory_mb=memory_mb,
            selected_per_expert=selected,
            normalized_entropy=stats.normalized_entropy, expert_utilization=stats.expert_utilization,
            dropped_fraction=stats.dropped_fraction, assignments=int(routing.expert_indices.numel()),
        ))
        return {
            "latency_ms": latency_ms,
            "throughput_tokens_per_sec": tokens / (latency_ms / 1e3) if latency_ms > 0 else math.inf,
            "tokens": tokens,
            "memory_mb": memory_mb,
            "memory_method": self._memory_method if memory_mb is not None else "not measured per call (measure_memory off; CPU default, see EnhancedPiMoEConfig)",
            "expert_utilization": stats.expert_utilization,
            "load_balance_score": stats.load_balance_score,
            "max_violation": stats.max_violation,
            "routing_entropy": stats.routing_entropy,
            "normalized_entropy": stats.normalized_entropy,
            "mean_confidence": stats.mean_confidence,
            "dropped_fraction": stats.dropped_fraction,
            "load_shares": list(stats.load_shares),
            "load_balance_loss": losses[0],
            "router_loss": losses[1],
            "call_index": len(self._calls) - 1,
            "model_version": self.model_version,
        }

    # ---- optimisation --------------------------------------------------------------------------------------------

    def _replace_system(self, system: PiMoESystem) -> None:
        self.system = system.eval()
        if self.adaptive is not None:
            self.adaptive.system = self.system
        self._compiled = None

    def _time(self, x: torch.Tensor) -> dict[str, float]:
        x = x.to(self._input_dtype())
        with torch.inference_mode():
            stats = measure_latency(lambda: self.system(x), x.device, warmup=1, repeats=5)
        return {"latency_median_ms": stats.median_ms, "latency_p95_ms": stats.p95_ms}

    def optimize_for_inference(self, calibration: torch.Tensor | None = None, *, compile: bool = False,
                               ) -> list[dict[str, Any]]:
        """Apply what the level and the enable_* flags switch on, in order: eval, selection-bias fit, prune, distil,
        quantise, compile. Returns one dict per step (OptimizationStep) with its measurements; they are also kept for
        the report. calibration: (B, S, D) tokens for the bias fit, pruning, distillation and the before/after
        measurements (default: a seeded random (4, 64, D) batch, which the steps that need real data skip).
        compile: try torch.compile (opt-in: on CPU it compiles for tens of seconds per new input shape).
        """
        cfg = self.config
        given = calibration is not None
        if calibration is None:
            generator = torch.Generator().manual_seed(0)
            calibration = torch.randn(4, 64, self.hidden_size, generator=generator)
        calibration = calibration.to(self._device())
        steps: list[OptimizationStep] = []

        before = {"training": self.system.training}
        self._replace_system(self.system)
        steps.append(OptimizationStep("eval", "applied", "dropout off, no autograd state kept", before,
                                      {"training": self.system.training}))
        steps.append(self._bias_step(calibration, given))
        teacher = copy.deepcopy(self.system) if cfg.enable_pruning and cfg.enable_distillation else None
        steps.append(self._prune_step(calibration, given))
        steps.append(self._distill_step(teacher, calibration))
        steps.append(self._quantize_step(calibration))
        steps.append(self._compile_step(calibration, compile))
        self.model_version += 1
        self.optimization_log += steps
        return [s.to_dict() for s in steps]

    def _bias_step(self, calibration: torch.Tensor, given: bool) -> OptimizationStep:
        if not self.config.level.calibrate_bias:
            level = self.config.optimization_level
            return OptimizationStep("selection_bias", "skipped", f"not part of level {level!r}")
        if not given:
            return OptimizationStep("selection_bias", "skipped", "no calibration batch given: a bias fitted to random "
                                    "inputs would balance the wrong distribution")
        result = calibrate_selection_bias(self.system, calibration.to(self._input_dtype()))
        return OptimizationStep(
            "selection_bias", "applied",
            f"loss-free balancing bias fitted on {result['tokens']} calibration tokens in {result['steps']} steps",
            {"max_violation": result["max_violation_before"]}, {"max_violation": result["max_violation_after"]},
            result)

    def _prune_step(self, calibration: torch.Tensor, given: bool) -> OptimizationStep:
        if not self.config.enable_pruning:
            return OptimizationStep("prune", "skipped", "enable_pruning is off")
        if self.pruned:
            return OptimizationStep("prune", "skipped", "already pruned")
        from pimoe.optimize.prune import prune_experts

        pruned, report = prune_experts(self.system, self.config.pruning_amount, calibration if given else None,
                                       importance="activation" if given else "magnitude", repeats=5)
        self._replace_system(pruned)
        self.pruned = True
        data = report.to_dict()
        return OptimizationStep(
            "prune", "applied",
            f"removed {report.parameters_removed} parameters ({self.config.pruning_amount:.0%} of each expert's "
            f"neurons, {report.importance} importance)",
            {"parameters": report.parameters_before, "latency_median_ms": report.latency_before_ms},
            {"parameters": report.parameters_after, "latency_median_ms": report.latency_after_ms,
             "relative_error": report.relative_error},
            data)

    def _distill_step(self, teacher: PiMoESystem | None, calibration: torch.Tensor) -> OptimizationStep:
        if not self.config.enable_distillation:
            return OptimizationStep("distill", "skipped", "enable_distillation is off")
        if teacher is None or not self.pruned:
            return OptimizationStep("distill", "skipped", "nothing to recover: distillation trains a pruned layer "
                                    "towards the unpruned one, and pruning did not run")
        from pimoe.optimize.distill import DistillationTrainer, output_distance

        x = calibration.to(self._input_dtype())
        student = self.system
        before = output_distance(student, teacher, x)
        trainer = DistillationTrainer(teacher, student)
        history = [trainer.step(x) for _ in range(self.config.distill_steps)]
        student.eval()
        after = output_distance(student, teacher, x)
        return OptimizationStep(
            "distill", "applied", f"{self.config.distill_steps} steps towards the unpruned layer on the calibration "
            "batch (distance measured on that same batch)",
            {"distance_to_teacher": before}, {"distance_to_teacher": after}, {"steps": history})

    def _quantize_candidates(self) -> list[tuple[str, Any]]:
        """(method, builder) pairs to try, best first, for this layer's device and dtype."""
        from pimoe.optimize.quantize import (
            cast_system,
            quantize_dynamic_int8,
            quantize_weight_int8,
            weight_int8_supported,
        )

        device, dtype = self._device(), self._input_dtype()
        if device.type == "cpu":
            return [("int8 dynamic (CPU)", quantize_dynamic_int8)] if dtype == torch.float32 else []
        candidates = []
        if weight_int8_supported(device, torch.bfloat16):
            def weight_only(system: PiMoESystem) -> PiMoESystem:
                quantized = quantize_weight_int8(system, torch.bfloat16)
                # NOTE: the CUDA fast path packs the experts' float weights into grouped matrices; int8 Linears have
                # none, so this layer runs the sorted dispatch (one int8 matmul per expert).
                quantized.dispatch = "sorted"
                return quantized

            candidates.append(("int8 weight-only, bf16 activations", weight_only))
        if dtype == torch.float32:
            candidates.append(("bf16 experts", lambda system: cast_system(system, torch.bfloat16)))
        return candidates

    def _quantize_step(self, calibration: torch.Tensor) -> OptimizationStep:
        """Try each candidate; keep the first whose measured median latency is within `max_quantized_slowdown` of
        the current layer's (a smaller layer that runs slower is not an inference optimisation)."""
        if not self.config.enable_quantization:
            return OptimizationStep("quantize", "skipped", "enable_quantization is off")
        if self.quantization is not None:
            return OptimizationStep("quantize", "skipped", f"already quantised ({self.quantization})")
        from pimoe.optimize.quantize import compare_outputs

        candidates = self._quantize_candidates()
        if not candidates:
            return OptimizationStep("quantize", "skipped", f"no quantisation for {self._input_dtype()} on "
                                    f"{self._device().type} (CPU int8 needs float32; CUDA bf16 needs float32 input)")
        rejected = []
        for method, build in candidates:
            candidate = build(self.system)
            report = compare_outputs(self.system, candidate, calibration, repeats=5, warmup=1)
            before = {"latency_median_ms": report.reference_latency.median_ms,
                      "storage_bytes": report.reference_storage_bytes}
            after = {"latency_median_ms": report.candidate_latency.median_ms,
                     "storage_bytes": report.candidate_storage_bytes,
                     "relative_delta_error": report.relative_delta_error, "top1_changed": report.top1_changed}
            if report.speedup * self.config.max_quantized_slowdown >= 1.0:
                self._replace_system(candidate)
                self.quantization = method
                detail = method + "".join(f"; rejected {r}" for r in rejected)
                return OptimizationStep("quantize", "applied", detail, before, after, report.to_dict())
            rejected.append(f"{method} ({report.candidate_latency.median_ms:.3g} ms against "
                            f"{report.reference_latency.median_ms:.3g} ms)")
        return OptimizationStep("quantize", "reverted", "every candidate was measured slower: " + "; ".join(rejected),
                                before, after, report.to_dict())

    def _compile_step(self, calibration: torch.Tensor, requested: bool) -> OptimizationStep:
        if not requested:
            return OptimizationStep("compile", "skipped", "compile=False (opt-in: torch.compile traces for tens of "
                                    "seconds per new input shape on CPU, and the data-dependent expert group sizes "
                                    "break the graph)")
        if self.adaptive is not None:
            return OptimizationStep("compile", "skipped", "adaptation changes router knobs between calls, which would "
                                    "recompile the graph")
        x = calibration.to(self._input_dtype())
        before = self._time(x)
        try:
            compiled = torch.compile(self.system)
            started = time.perf_counter()
            with torch.inference_mode():
                got = compiled(x)
                want = self.system(x)
            compile_s = time.perf_counter() - started
            error = float((got.double() - want.double()).abs().max())
            if not math.isfinite(error) or error > 1e-3 * max(1.0, float(want.abs().max())):
                return OptimizationStep("compile", "failed", f"compiled output differs from eager by {error:.3g}")
            with torch.inference_mode():
                after_stats = measure_latency(lambda: compiled(x), x.device, warmup=1, repeats=5)
        except Exception as error:  # noqa: BLE001 - any compiler failure is reported, the eager layer stays
            return OptimizationStep("compile", "failed", f"{type(error).__name__}: {str(error)[:300]}", before)
        self._compiled = compiled
        return OptimizationStep(
            "compile", "applied", f"torch.compile, first call took {compile_s:.1f} s", before,
            {"latency_median_ms": after_stats.median_ms, "latency_p95_ms": after_stats.p95_ms,
             "max_abs_difference": error})

    # ---- report --------------------------------------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        from pimoe.optimize.quantize import count_int8_linears, storage_bytes

        system = self.system
        router_cfg: RouterConfig = system.router.config
        return {
            "parameters": _count_parameters(system),
            "storage_bytes": storage_bytes(system),
            "hidden_size": system.hidden_size,
            "num_experts": system.num_experts,
            "expert_types": list(system.expert_types),
            "expert_widths": [expert.width for expert in system.experts],
            "top_k": router_cfg.top_k,
            "temperature": router_cfg.temperature,
            "capacity_factor": router_cfg.capacity_factor,
            "use_selection_bias": router_cfg.use_selection_bias,
            "device": str(self._device()),
            "dtype": str(self._input_dtype()).replace("torch.", ""),
            "int8_linears": count_int8_linears(system),
            "quantization": self.quantization,
            "pruned": self.pruned,
            "compiled": self._compiled is not None,
            "optimization_level": self.config.optimization_level,
            "enabled": {
                "quantization": self.config.enable_quantization,
                "pruning": self.config.enable_pruning,
                "distillation": self.config.enable_distillation,
                "adaptation": self.config.enable_adaptation,
            },
            "model_version": self.model_version,
        }

    def performance_metrics(self) -> dict[str, Any]:
        """Aggregates over the calls made since the last optimize_for_inference (the current model)."""
        calls = [c for c in self._calls if c.model_version == self.model_version]
        scope = f"calls since the last optimize_for_inference (model version {self.model_version})"
        if not calls:
            return {"count": 0, "total_calls": len(self._calls), "scope": scope,
                    "explanation": "no forward calls on the current model yet; metrics come only from calls made"}
        latencies = sorted(c.latency_ms for c in calls)
        tokens = sum(c.tokens for c in calls)
        loads = torch.tensor([c.selected_per_expert for c in calls], dtype=torch.float64).sum(dim=0)
        assignments = sum(c.assignments for c in calls)
        assignments_made = float(loads.sum()) > 0
        entropies = [c.normalized_entropy for c in calls if c.tokens]
        memories = [c.memory_mb for c in calls if c.memory_mb is not None]
        p95_index = min(len(latencies) - 1, max(0, math.ceil(0.95 * len(latencies)) - 1))
        return {
            "count": len(calls),
            "total_calls": len(self._calls),
            "scope": scope,
            "tokens_total": tokens,
            "latency_median_ms": statistics.median(latencies),
            "latency_p95_ms": latencies[p95_index],
            "latency_mean_ms": statistics.fmean(latencies),
            "latency_min_ms": latencies[0],
            "tokens_per_sec": tokens / (sum(latencies) / 1e3),
            "peak_memory_mb": max(memories) if memories else None,
            "memory_method": self._memory_method or None,
            # all-padding calls route nothing; with no assignments at all the load figures are undefined
            "mean_load_shares": (loads / loads.sum()).tolist() if assignments_made else None,
            "load_balance_score": load_balance_score(loads) if assignments_made else None,
            "max_violation": max_violation(loads) if assignments_made else None,
            "expert_utilization": float((loads > 0).double().mean()) if assignments_made else None,
            "normalized_entropy": statistics.fmean(entropies) if entropies else None,
            "dropped_fraction": sum(c.dropped_fraction * c.assignments for c in calls) / max(assignments, 1),
        }

    def get_optimization_report(self) -> dict[str, Any]:
        """{'system_stats', 'performance_metrics', 'recommendations', 'optimizations', 'adaptation'}: all measured.

        recommendations come from `pimoe.report.recommend` over the performance metrics (none before any call).
        """
        system = self.system_stats()
        performance = self.performance_metrics()
        if performance["count"]:
            stats = {**performance, "expert_types": system["expert_types"],
                     "capacity_factor": system["capacity_factor"], "quantized": self.quantization is not None,
                     "pruned": self.pruned}
            recommendations = [r.to_dict() for r in recommend(stats, self.config.thresholds)]
        else:
            recommendations = []
        adaptation = None
        if self.adaptive is not None:
            history = self.adaptive.adaptation_history
            adaptation = {
                "steps": len(history),
                "adaptations_applied": sum(r.adaptation_applied for r in history),
                "last": history[-1].to_dict() if history else None,
            }
        return {
            "system_stats": system,
            "performance_metrics": performance,
            "recommendations": recommendations,
            "optimizations": [s.to_dict() for s in self.optimization_log],
            "adaptation": adaptation,
        }


_SYSTEM_KWARGS = ("expert_types", "top_k", "router_config", "expert_config", "residual")
_CONFIG_KWARGS = ("pruning_amount", "distill_steps", "measure_memory", "max_quantized_slowdown", "call_history_size",
                  "thresholds")


def create_enhanced_pimoe_integration(
    hidden_size: int = 512,
    num_experts: int = 8,
    optimization_level: str = "basic",
    enable_quantization: bool | None = None,
    enable_pruning: bool | None = None,
    enable_distillation: bool = False,
    enable_adaptation: bool = False,
    adaptation_rate: float = 0.01,
    performance_threshold: float = 0.8,
    **kwargs: Any,
) -> EnhancedPiMoEIntegration:
    """Build an EnhancedPiMoEIntegration from the original description's arguments.

    kwargs: create_pimoe_system's (expert_types, top_k, router_config, expert_config, residual), EnhancedPiMoEConfig's
    (pruning_amount, distill_steps, measure_memory, max_quantized_slowdown, call_history_size, thresholds), and
    `adaptation` (an
    AdaptationConfig, whose rate and threshold are then replaced by the arguments). Unknown names are a ValueError.
    """
    unknown = sorted(set(kwargs) - set(_SYSTEM_KWARGS) - set(_CONFIG_KWARGS) - {"adaptation"})
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; known extras are "
                         f"{sorted(_SYSTEM_KWARGS + _CONFIG_KWARGS + ('adaptation',))}")
    adaptation = kwargs.get("adaptation") or AdaptationConfig(act_in_eval=True)
    adaptation = replace(adaptation, adaptation_rate=adaptation_rate, performance_threshold=performance_threshold)
    config = EnhancedPiMoEConfig(
        optimization_level=optimization_level,
        enable_quantization=enable_quantization,
        enable_pruning=enable_pruning,
        enable_distillation=enable_distillation,
        enable_adaptation=enable_adaptation,
        adaptation=adaptation,
        **{k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs},
    )
    system_kwargs = {k: kwargs[k] for k in _SYSTEM_KWARGS if k in kwargs}
    system = create_pimoe_system(hidden_size, num_experts, **system_kwargs)
    level = config.level
    router_cfg = system.router.config
    user_router = system_kwargs.get("router_config")
    user_capacity = (user_router.get("capacity_factor") if isinstance(user_router, dict)
                     else getattr(user_router, "capacity_factor", None))
    system.router.config = replace(
        router_cfg,
        capacity_factor=user_capacity if user_capacity is not None else level.capacity_factor,
        use_selection_bias=router_cfg.use_selection_bias or level.selection_bias,
    )
    system.config = replace(system.config, router=system.router.config)
    return EnhancedPiMoEIntegration(system, config)
