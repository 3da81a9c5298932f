"""The original description's Basic / Enhanced / Adaptive table, measured.

Legend: B batch, S sequence, D hidden size, E experts.

All three systems start from the same seeded weights and run the same inputs on the same device:

    Basic     create_pimoe_system(...).eval()
    Enhanced  create_enhanced_pimoe_integration(optimization_level="advanced", enable_quantization=True), then
              optimize_for_inference(calibration) on a separate seeded batch from the same input distribution
              (the timed batch is never the one the bias was fitted to)
    Adaptive  create_enhanced_pimoe_integration(enable_adaptation=True): the controller runs after every call

Latency: median and p95 of synchronised wall times of the system's forward as a user calls it (the wrappers' per-call
routing statistics and, for Adaptive, the controller step included; their per-call memory probe is switched off so it
does not distort the timing). Peak memory: `measure_peak_memory` of one call. Model MB: bytes of parameters and buffers
(int8 weights at one byte). Routing figures: one call on the timed batch, after the timed calls.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pimoe.devices import available_device
from pimoe.layer.system import PiMoESystem, create_pimoe_system
from pimoe.measure.layer_bench import DTYPES, device_description
from pimoe.measure.metrics import measure_latency, measure_peak_memory, routing_stats
from pimoe.original.enhanced import EnhancedPiMoEIntegration, create_enhanced_pimoe_integration

__all__ = ["SYSTEMS", "SystemRow", "format_systems_table", "main", "run_systems_benchmark"]

SYSTEMS = ("Basic", "Enhanced", "Adaptive")


@dataclass
class SystemRow:
    system: str
    batch: int
    seq: int
    tokens: int
    latency_median_ms: float
    latency_p95_ms: float
    tokens_per_s: float
    peak_mb: float
    model_mb: float
    expert_utilization: float
    load_balance_score: float
    max_violation: float
    applied: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _skew(system: PiMoESystem, direction: torch.Tensor) -> None:
    """Make expert 0 the router's favourite for inputs sharing `direction` (a common hidden-state component)."""
    with torch.no_grad():
        system.router.gate.weight[0] += 3.0 * direction.to(system.router.gate.weight)


def _build(name: str, kwargs: dict[str, Any], seed: int) -> PiMoESystem | EnhancedPiMoEIntegration:
    """The named system with weights drawn from `seed`, leaving the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "Basic":
            return create_pimoe_system(**kwargs).eval()
        if name == "Enhanced":
            return create_enhanced_pimoe_integration(**kwargs, optimization_level="advanced",
                                                     enable_quantization=True, measure_memory=False)
        return create_enhanced_pimoe_integration(**kwargs, enable_adaptation=True, measure_memory=False)


def _inner(system: PiMoESystem | EnhancedPiMoEIntegration) -> PiMoESystem:
    return system.system if isinstance(system, EnhancedPiMoEIntegration) else system


def _routing(system, x: torch.Tensor):
    if isinstance(system, EnhancedPiMoEIntegration):
        return system(x, return_routing_info=True)[1]["routing_info"]
    return system(x, return_routing_info=True)[1]


def _model_bytes(system: PiMoESystem) -> int:
    from pimoe.optimize.quantize import storage_bytes

    return storage_bytes(system)


def _measure_system(name: str, kwargs: dict[str, Any], seed: int, x: torch.Tensor, calibration: torch.Tensor,
                    skew: torch.Tensor | None, warmup: int, repeats: int) -> tuple[SystemRow, str]:
    device, dtype = x.device, x.dtype
    system = _build(name, kwargs, seed)
    if skew is not None:
        _skew(_inner(system), skew)
    system = system.to(device=device, dtype=dtype)
    applied: list[str] = []
    if name == "Enhanced":
        steps = system.optimize_for_inference(calibration)
        applied = [f"{step['name']} {step['status']}: {step['detail']}" for step in steps
                   if step["status"] != "skipped"]
    elif name == "Adaptive":
        applied = ["adaptation after every call"]
    _inner(system).check_finite = False  # time the layer, not the input check's device sync
    with torch.inference_mode():
        latency = measure_latency(lambda: system(x), device, warmup=warmup, repeats=repeats)
        memory = measure_peak_memory(lambda: system(x), device)
        stats = routing_stats(_routing(system, x))
    extra: dict[str, Any] = {}
    if name == "Adaptive":
        history = system.adaptive.adaptation_history
        extra = {"adaptation_steps": len(history),
                 "adaptations_applied": sum(r.adaptation_applied for r in history),
                 "last_performance_score": history[-1].performance_score if history else None}
    batch, seq = x.shape[:2]
    row = SystemRow(
        system=name, batch=batch, seq=seq, tokens=batch * seq,
        latency_median_ms=latency.median_ms, latency_p95_ms=latency.p95_ms,
        tokens_per_s=latency.tokens_per_second(batch * seq), peak_mb=float(memory["peak_mb"]),
        model_mb=_model_bytes(_inner(system)) / 2**20, expert_utilization=stats.expert_utilization,
        load_balance_score=stats.load_balance_score, max_violation=stats.max_violation,
        applied=applied, extra=extra,
    )
    return row, str(memory["method"])


def run_systems_benchmark(
    device: str = "cpu",
    dtype: str = "float32",
    hidden_size: int = 512,
    num_experts: int = 8,
    intermediate_size: int = 2048,
    top_k: int = 2,
    expert_types: tuple[str, ...] | None = None,
    shapes: tuple[tuple[int, int], ...] = ((4, 128),),
    routing: str = "balanced",
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
    progress=None,
) -> tuple[list[SystemRow], dict[str, Any]]:
    """Measure the three systems on each (batch, seq) shape. routing: "balanced" (standard normal inputs) or
    "skewed" (inputs share a direction the router favours expert 0 for). progress: optional callable(done, total, msg).
    Returns the rows and a metadata dict (device, dtype, date, configuration, how memory was measured).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if routing not in ("balanced", "skewed"):
        raise ValueError(f"routing must be 'balanced' or 'skewed', got {routing!r}")
    if not shapes or any(b < 1 or s < 1 for b, s in shapes):
        raise ValueError(f"shapes must be non-empty (batch, seq) pairs of positive sizes, got {shapes!r}")
    torch_device, torch_dtype = available_device(device), DTYPES[dtype]
    kwargs: dict[str, Any] = {"hidden_size": hidden_size, "num_experts": num_experts, "top_k": top_k,
                              "expert_config": {"intermediate_size": intermediate_size}}
    if expert_types:
        kwargs["expert_types"] = tuple(expert_types)
    generator = torch.Generator().manual_seed(seed + 1)
    direction = torch.randn(hidden_size, generator=generator)
    direction /= direction.norm()
    offset = 2.0 * direction if routing == "skewed" else torch.zeros(hidden_size)
    skew = direction if routing == "skewed" else None

    def batch(b: int, s: int) -> torch.Tensor:
        x = torch.randn(b, s, hidden_size, generator=generator) + offset
        return x.to(device=torch_device, dtype=torch_dtype)

    rows: list[SystemRow] = []
    memory_method = ""
    total = len(shapes) * len(SYSTEMS)
    for shape_index, (b, s) in enumerate(shapes):
        x, calibration = batch(b, s), batch(b, s)
        for system_index, name in enumerate(SYSTEMS):
            if progress:
                progress(shape_index * len(SYSTEMS) + system_index, total, f"{name} {b}x{s}")
            row, memory_method = _measure_system(name, kwargs, seed, x, calibration, skew, warmup, repeats)
            rows.append(row)
    if progress:
        progress(total, total, "done")
    meta = {
        **device_description(torch_device),
        "dtype": dtype,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"hidden_size": hidden_size, "num_experts": num_experts, "intermediate_size": intermediate_size,
                   "top_k": top_k, "expert_types": list(expert_types or ()), "shapes": [list(p) for p in shapes],
                   "routing": routing, "warmup": warmup, "repeats": repeats, "seed": seed},
        "memory_method": memory_method,
    }
    return rows, meta


def format_systems_table(rows: list[SystemRow], meta: dict[str, Any]) -> str:
    cfg = meta["config"]
    header = (f"PiMoE systems on {meta['device_name']} ({meta['device']}, {meta['dtype']}, torch {meta['torch']}), "
              f"{meta['date']}\nD={cfg['hidden_size']} E={cfg['num_experts']} top-{cfg['top_k']} "
              f"intermediate={cfg['intermediate_size']}, {cfg['routing']} inputs, {cfg['repeats']} timed calls; "
              f"peak MB: {meta['memory_method']}\n")
    cols = (f"{'system':<9} {'tokens':>7} {'median ms':>10} {'p95 ms':>9} {'tokens/s':>10} {'peak MB':>8} "
            f"{'model MB':>9} {'util':>5} {'balance':>8} {'MaxVio':>7}")
    lines = [header + cols]
    for r in rows:
        lines.append(f"{r.system:<9} {r.tokens:>7} {r.latency_median_ms:>10.2f} {r.latency_p95_ms:>9.2f} "
                     f"{r.tokens_per_s:>10.0f} {r.peak_mb:>8.1f} {r.model_mb:>9.2f} {r.expert_utilization:>5.2f} "
                     f"{r.load_balance_score:>8.3f} {r.max_violation:>7.3f}")
    enhanced = next((r for r in rows if r.system == "Enhanced"), None)
    if enhanced is not None and enhanced.applied:
        lines.append("Enhanced: " + "; ".join(enhanced.applied))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`python -m pimoe bench --systems`: reads the bench command's arguments."""
    device = args.device
    dtype = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    expert_types = tuple(t for t in args.expert_types.split(",") if t) or None
    rows, meta = run_systems_benchmark(
        device=device, dtype=dtype, hidden_size=args.hidden_size, num_experts=args.num_experts,
        intermediate_size=args.intermediate_size, top_k=args.top_k, expert_types=expert_types,
        shapes=tuple(args.tokens or args.shapes), routing=args.routing, warmup=args.warmup, repeats=args.repeats,
    )
    print(format_systems_table(rows, meta))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.json or Path("bench/results") / f"systems-{meta['device']}-{meta['config']['routing']}-{stamp}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2, default=str) + "\n")
    print(f"results written to {path}")
    return 0
