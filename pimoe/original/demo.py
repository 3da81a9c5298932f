"""The original description's demo: its three scenarios run end to end, every number measured in this process.

Legend: B batch, S sequence, D hidden size, E experts.

    basic     create_pimoe_system; one call with routing info, then num_iterations timed calls
    enhanced  create_enhanced_pimoe_integration(optimization_level="advanced", enable_quantization=True) as in the
              description; num_iterations calls with metrics, optimize_for_inference on a calibration batch, then
              num_iterations more calls, and the optimisation report
    adaptive  create_enhanced_pimoe_integration(enable_adaptation=True, adaptation_rate=0.01,
              performance_threshold=0.8); num_iterations calls with adaptation info

All three start from the same seeded weights and see the same fresh random batch on each iteration. Each call is timed
on its own (device synchronised). With `skewed_inputs` the batches share a hidden-state direction that the router
favours expert 0 for, so the balancing features have an imbalance to correct.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pimoe.adaptive.controller import adaptation_series
from pimoe.devices import available_device
from pimoe.layer.system import create_pimoe_system
from pimoe.measure.layer_bench import device_description
from pimoe.measure.metrics import routing_stats
from pimoe.memory_fit import check_fits
from pimoe.original.enhanced import EnhancedPiMoEIntegration, create_enhanced_pimoe_integration
from pimoe.output_paths import writable_destination

__all__ = ["DemoConfig", "DemoResults", "PiMoEDemo", "run_pimoe_demo"]


@dataclass
class DemoConfig:
    """The description's demo settings, plus where to run and where to save.

    enable_visualization: keep per-iteration series (latency, balance, adaptation knobs) in the results for plotting;
        the engine draws nothing itself (studio.figures.routing and the dashboard do).
    save_results: write the results as JSON to results_path (default runs/demo-<time>.json).
    """

    hidden_size: int = 256
    num_experts: int = 8
    sequence_length: int = 128
    batch_size: int = 4
    num_iterations: int = 20
    enable_visualization: bool = False
    save_results: bool = False
    device: str = "cpu"
    results_path: str | Path | None = None
    skewed_inputs: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_experts", "sequence_length", "batch_size", "num_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_experts < 2:
            raise ValueError(f"num_experts must be at least 2 for top-2 routing, got {self.num_experts}")
        available_device(self.device)


@dataclass
class DemoResults:
    """Measured results of the three scenarios; `results['basic']` works as in the description."""

    config: dict[str, Any]
    device: dict[str, Any]
    date: str
    basic: dict[str, Any]
    enhanced: dict[str, Any]
    adaptive: dict[str, Any]
    summary: list[dict[str, Any]]
    wall_seconds: float
    series: dict[str, Any] | None = None
    saved_to: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wrapper_latency(outer_ms: list[float], metrics: list[dict[str, Any]], tokens_per_call: int) -> dict[str, float]:
    """Latency of the wrappers' layer call (their own synchronised `latency_ms`), plus what their per-call monitoring
    (routing statistics, memory probe) added on top, measured from outside."""
    inner = [m["latency_ms"] for m in metrics]
    summary = _latency_summary(inner, tokens_per_call)
    summary["monitoring_overhead_median_ms"] = statistics.median(o - i for o, i in zip(outer_ms, inner, strict=True))
    return summary


def _latency_summary(samples: list[float], tokens_per_call: int) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    median = statistics.median(ordered)
    return {"calls": len(ordered), "latency_median_ms": median, "latency_p95_ms": p95,
            "latency_mean_ms": statistics.fmean(ordered), "latency_min_ms": ordered[0],
            "tokens_per_sec": tokens_per_call / (median / 1e3)}


class PiMoEDemo:
    """Runs the scenarios on one configuration. `run_comprehensive_demo()` runs all three and saves if asked."""

    def __init__(self, config: DemoConfig | None = None) -> None:
        self.config = config if config is not None else DemoConfig()
        self.device = torch.device(self.config.device)
        cfg = self.config
        batch_bytes = 4 * cfg.batch_size * cfg.sequence_length * cfg.hidden_size
        # the layers are built on the CPU, then moved
        check_fits(lambda: create_pimoe_system(cfg.hidden_size, cfg.num_experts), {torch.device("cpu"), self.device},
                   "the demo's PiMoE layer", input_bytes=batch_bytes)
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        direction = torch.randn(self.config.hidden_size, generator=generator)
        self._direction = direction / direction.norm()

    @property
    def tokens_per_call(self) -> int:
        return self.config.batch_size * self.config.sequence_length

    def _batches(self, salt: int = 0):
        """The same sequence of batches for every scenario (fresh generator per scenario)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + 100 + salt)
        offset = 2.0 * self._direction if cfg.skewed_inputs else torch.zeros(cfg.hidden_size)
        while True:
            x = torch.randn(cfg.batch_size, cfg.sequence_length, cfg.hidden_size, generator=generator) + offset
            yield x.to(self.device)

    def _build(self, factory: Callable[[], Any]):
        """factory() with weights drawn from the config's seed (the caller's random state is left alone); with skewed
        inputs the router is made to favour expert 0 along their shared direction."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            system = factory()
        inner = system.system if isinstance(system, EnhancedPiMoEIntegration) else system
        if self.config.skewed_inputs:
            with torch.no_grad():
                inner.router.gate.weight[0] += 3.0 * self._direction.to(inner.router.gate.weight)
        return system.to(self.device)

    def _timed(self, call: Callable[[torch.Tensor], Any], batches, count: int) -> tuple[list[float], list[Any]]:
        samples, results = [], []
        for _ in range(count):
            x = next(batches)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            result = call(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            samples.append((time.perf_counter() - started) * 1e3)
            results.append(result)
        return samples, results

    def run_basic(self) -> dict[str, Any]:
        cfg = self.config
        system = self._build(lambda: create_pimoe_system(cfg.hidden_size, cfg.num_experts).eval())
        batches = self._batches()
        with torch.inference_mode():
            _, routing = system(next(batches), return_routing_info=True)
            samples, _ = self._timed(system, batches, cfg.num_iterations)
            _, last = system(next(batches), return_routing_info=True)
        stats = routing_stats(last)
        return {
            "first_call": {
                "routing_decisions_shape": list(routing["routing_decisions"].shape),
                "load_balance_loss": float(routing["load_balance_loss"]),
                **routing_stats(routing).to_dict(),
            },
            "latency": _latency_summary(samples, self.tokens_per_call),
            "routing": stats.to_dict(),
            "series": {"latency_ms": samples},
        }

    def run_enhanced(self) -> dict[str, Any]:
        cfg = self.config
        system = self._build(lambda: create_enhanced_pimoe_integration(
            cfg.hidden_size, cfg.num_experts, optimization_level="advanced", enable_quantization=True,
            enable_pruning=False))
        batches = self._batches()
        calibration = next(self._batches(salt=1))
        with torch.inference_mode():
            before_samples, before_metrics = self._timed(lambda x: system(x, return_metrics=True)[1], batches,
                                                         cfg.num_iterations)
        before = system.performance_metrics()
        steps = system.optimize_for_inference(calibration)
        with torch.inference_mode():
            after_samples, after_metrics = self._timed(lambda x: system(x, return_metrics=True)[1], batches,
                                                       cfg.num_iterations)
        report = system.get_optimization_report()
        last = after_metrics[-1]
        return {
            "last_call": {k: last[k] for k in ("latency_ms", "throughput_tokens_per_sec", "expert_utilization",
                                               "load_balance_score", "max_violation", "memory_mb", "memory_method")},
            "before_optimization": {"latency": _wrapper_latency(before_samples, before_metrics, self.tokens_per_call),
                                    "performance_metrics": before},
            "optimization_steps": steps,
            "after_optimization": {"latency": _wrapper_latency(after_samples, after_metrics, self.tokens_per_call),
                                   "performance_metrics": report["performance_metrics"]},
            "latency": _wrapper_latency(after_samples, after_metrics, self.tokens_per_call),
            "routing": {k: report["performance_metrics"][k] for k in ("expert_utilization", "load_balance_score",
                                                                       "max_violation", "mean_load_shares")},
            "system_stats": report["system_stats"],
            "recommendations": report["recommendations"],
            "series": {"latency_ms": [m["latency_ms"] for m in before_metrics + after_metrics],
                       "load_balance_score": [m["load_balance_score"] for m in before_metrics + after_metrics],
                       "optimized_at_call": len(before_samples)},
        }

    def run_adaptive(self) -> dict[str, Any]:
        cfg = self.config
        system = self._build(lambda: create_enhanced_pimoe_integration(
            cfg.hidden_size, cfg.num_experts, enable_adaptation=True, adaptation_rate=0.01,
            performance_threshold=0.8)).eval()
        batches = self._batches()
        with torch.inference_mode():
            samples, infos = self._timed(
                lambda x: system(x, return_metrics=True, return_adaptation_info=True)[1], batches, cfg.num_iterations)
        records = [info["adaptation_info"] for info in infos]
        report = system.get_optimization_report()
        return {
            "first": {k: records[0][k] for k in ("performance_score", "adaptation_applied", "max_violation")},
            "last": {k: records[-1][k] for k in ("performance_score", "adaptation_applied", "max_violation",
                                                 "temperature", "load_balance_weight", "selection_bias")},
            "adaptations_applied": sum(r["adaptation_applied"] for r in records),
            "changes": [{"step": r["step"], "changes": r["changes"]} for r in records if r["changes"]][-10:],
            "latency": _wrapper_latency(samples, infos, self.tokens_per_call),
            "routing": {k: report["performance_metrics"][k] for k in ("expert_utilization", "load_balance_score",
                                                                       "max_violation", "mean_load_shares")},
            "recommendations": report["recommendations"],
            "series": {"latency_ms": [info["latency_ms"] for info in infos], **adaptation_series(records)},
        }

    def run_comprehensive_demo(self) -> DemoResults:
        path = None
        if self.config.save_results:  # checked before the scenarios run, so a bad path cannot cost them
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = writable_destination(self.config.results_path or Path("runs") / f"demo-{stamp}.json",
                                        "results file")
        started = time.perf_counter()
        scenarios = {"basic": self.run_basic(), "enhanced": self.run_enhanced(), "adaptive": self.run_adaptive()}
        summary = []
        for name, result in scenarios.items():
            latency, routing = result["latency"], result["routing"]
            summary.append({"system": name, **{k: latency[k] for k in ("latency_median_ms", "latency_p95_ms",
                                                                        "tokens_per_sec")},
                            **{k: routing[k] for k in ("expert_utilization", "load_balance_score", "max_violation")}})
        series = {name: result.pop("series") for name, result in scenarios.items()}
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()}
        results = DemoResults(
            config=config, device=device_description(self.device),
            date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), summary=summary,
            wall_seconds=time.perf_counter() - started,
            series=series if self.config.enable_visualization else None, **scenarios)
        if path is not None:
            results.saved_to = str(path)
            path.write_text(json.dumps(results.to_dict(), indent=2, default=str) + "\n")
        return results


def format_summary(results: DemoResults) -> str:
    """The three scenarios as a small table, with the device named."""
    dev = results.device
    lines = [f"PiMoE demo on {dev['device_name']} ({dev['device']}, torch {dev['torch']}), {results.date}",
             f"{'system':<9} {'median ms':>10} {'p95 ms':>9} {'tokens/s':>10} {'util':>5} {'balance':>8} {'MaxVio':>7}"]
    for row in results.summary:
        lines.append(f"{row['system']:<9} {row['latency_median_ms']:>10.2f} {row['latency_p95_ms']:>9.2f} "
                     f"{row['tokens_per_sec']:>10.0f} {row['expert_utilization']:>5.2f} "
                     f"{row['load_balance_score']:>8.3f} {row['max_violation']:>7.3f}")
    adaptive = results.adaptive
    lines.append(f"adaptive: score {adaptive['first']['performance_score']:.3f} -> "
                 f"{adaptive['last']['performance_score']:.3f}, adaptation applied on "
                 f"{adaptive['adaptations_applied']} of {adaptive['latency']['calls']} calls")
    for rec in results.enhanced["recommendations"]:
        lines.append(f"recommendation [{rec['rule']}]: {rec['message']}")
    if results.saved_to:
        lines.append(f"results written to {results.saved_to}")
    return "\n".join(lines)


def run_pimoe_demo(config: DemoConfig | None = None, **overrides: Any) -> DemoResults:
    """Run the comprehensive demo; keyword overrides build a DemoConfig (`run_pimoe_demo(num_iterations=5)`)."""
    if config is not None and overrides:
        raise ValueError("pass either a DemoConfig or keyword overrides, not both")
    return PiMoEDemo(config if config is not None else DemoConfig(**overrides)).run_comprehensive_demo()
