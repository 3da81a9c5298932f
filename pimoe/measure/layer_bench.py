"""Layer benchmark: the PiMoE layer against the loop-over-experts reference and a dense FFN, in one run.

Every number is measured on the chosen device in this process: median and p95 of synchronised wall times after
warm-up, peak memory from the allocator (CUDA) or the process (CPU), FLOPs counted from the routing that happened.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pimoe.devices import available_device
from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.reference import DenseFFN
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.strategies import DispatchStrategy, check_strategy_name
from pimoe.layer.system import PiMoESystem
from pimoe.measure.metrics import max_violation, measure_back_to_back, measure_latency, measure_peak_memory
from pimoe.memory_fit import check_fits

__all__ = ["BenchConfig", "BenchRow", "device_description", "expert_flops", "format_table", "run_layer_benchmark",
           "write_results"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchConfig:
    device: str = "cpu"
    dtype: str = "float32"
    hidden_size: int = 512
    num_experts: int = 8
    intermediate_size: int = 2048
    top_k: int = 2
    expert_types: tuple[str, ...] = PiMoEConfig().expert_types
    shapes: tuple[tuple[int, int], ...] = ((4, 128), (4, 1024))
    routing: str = "balanced"  # or "skewed": expert 0 wins every token's first slot
    warmup: int = 3
    repeats: int = 20
    min_seconds: float = 0.0
    include_loop: bool = True
    include_dense: bool = True
    seed: int = 0
    dispatch: str = "auto"  # the layer's strategy; "auto" is cuda_fast on CUDA, sorted on CPU
    compare: tuple[str, ...] = ()  # further strategies timed on the same inputs (e.g. "sorted", "cuda_triton")
    graph: bool = False  # CUDA: also time CUDA-graph replays of the layer and the dense FFN
    graph_max_tokens: int = 8192
    check: bool = False  # compare the layer with a float32 copy on fresh inputs, NaN-poisoned allocator
    rotate_bytes: int = 0  # cycle distinct inputs until together they exceed this (0: one input)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.routing not in ("balanced", "skewed"):
            raise ValueError(f"routing must be 'balanced' or 'skewed', got {self.routing!r}")
        if self.graph_max_tokens < 1 or self.rotate_bytes < 0:
            raise ValueError(f"graph_max_tokens must be >= 1 and rotate_bytes >= 0, got {self.graph_max_tokens!r} "
                             f"and {self.rotate_bytes!r}")
        if not self.shapes or any(b < 1 or s < 1 for b, s in self.shapes):
            raise ValueError(f"shapes must be non-empty (batch, seq) pairs of positive sizes, got {self.shapes!r}")


@dataclass
class BenchRow:
    batch: int
    seq: int
    tokens: int
    layer_us: float
    layer_p95_us: float
    layer_tokens_per_s: float
    layer_tflops: float
    layer_peak_mb: float
    loop_us: float | None = None
    loop_p95_us: float | None = None
    dense_us: float | None = None
    dense_p95_us: float | None = None
    dense_peak_mb: float | None = None
    speedup_vs_loop: float | None = None
    time_vs_dense: float | None = None
    max_violation: float = 0.0
    layer_graph_us: float | None = None
    dense_graph_us: float | None = None
    rel_error: float | None = None
    extra: dict = field(default_factory=dict)


def device_description(device: torch.device) -> dict[str, str | int]:
    """What the numbers were measured on."""
    info: dict[str, str | int] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda or ""
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def expert_flops(system: PiMoESystem, routing: RoutingInfo) -> float:
    """Floating-point operations of the router and the computed expert assignments (2 per multiply-add)."""
    counts = routing.tokens_per_expert.tolist()
    hidden = system.hidden_size
    total = 2.0 * routing.num_tokens * hidden * system.num_experts
    for expert, count in zip(system.experts, counts, strict=True):
        total += count * 2.0 * hidden * (expert.up.out_features + expert.width)
    return total


def _use_strategy(system: PiMoESystem, name: str, unregistered: Mapping[str, DispatchStrategy]) -> None:
    if name in unregistered:
        system.use_strategy(unregistered[name])
    else:
        system.dispatch = name


def _build_system(cfg: BenchConfig, unregistered: Mapping[str, DispatchStrategy] | None = None) -> PiMoESystem:
    torch.manual_seed(cfg.seed)
    config = PiMoEConfig(
        hidden_size=cfg.hidden_size,
        num_experts=cfg.num_experts,
        expert_types=cfg.expert_types,
        router=RouterConfig(top_k=cfg.top_k, use_selection_bias=cfg.routing == "skewed"),
        expert=ExpertConfig(intermediate_size=cfg.intermediate_size),
    )
    system = PiMoESystem(config).eval()
    _use_strategy(system, cfg.dispatch, unregistered or {})
    if cfg.routing == "skewed":
        system.router.selection_bias[0] = 1.0  # probabilities are <= 1, so expert 0 always wins a slot
    system.check_finite = False  # a benchmark times the layer, not the input check's device sync
    system.auto_cuda_graphs = False  # layer_us times every call eager; the automatic graphs get their own column
    return system


def _inputs(cfg: BenchConfig, x: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """x plus fresh inputs of its shape, enough that cycling them keeps the timed input out of the cache."""
    input_bytes = x.numel() * x.element_size()
    count = 1 if cfg.rotate_bytes <= 0 else max(1, min(256, -(-cfg.rotate_bytes // input_bytes)))
    extra = [torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype) for _ in range(count - 1)]
    return [x, *extra]


def _cycle(items: list[torch.Tensor]):
    it = itertools.cycle(items)
    return lambda: next(it)


def _bench_shape(cfg: BenchConfig, system: PiMoESystem, loop_system: PiMoESystem, dense: DenseFFN,
                 x: torch.Tensor, generator: torch.Generator | None = None,
                 unregistered: Mapping[str, DispatchStrategy] | None = None) -> tuple[BenchRow, str]:
    device = x.device
    timing = {"warmup": cfg.warmup, "repeats": cfg.repeats, "min_seconds": cfg.min_seconds}
    batch, seq, hidden = x.shape
    tokens = batch * seq
    inputs = _inputs(cfg, x, generator or torch.Generator().manual_seed(cfg.seed))
    next_input = _cycle(inputs)
    with torch.inference_mode():
        _, routing = system(x, return_routing_info=True)
        layer = measure_latency(lambda: system(next_input()), device, **timing)
        layer_mem = measure_peak_memory(lambda: system(x), device)
        row = BenchRow(
            batch=batch, seq=seq, tokens=tokens,
            layer_us=layer.median_ms * 1e3, layer_p95_us=layer.p95_ms * 1e3,
            layer_tokens_per_s=layer.tokens_per_second(tokens),
            layer_tflops=expert_flops(system, routing) / (layer.median_ms * 1e-3) / 1e12,
            layer_peak_mb=float(layer_mem["peak_mb"]),
            max_violation=max_violation(routing.tokens_per_expert),
        )
        row.extra["dispatch"] = system.choose_dispatch(x)
        if device.type == "cuda":  # the device's time per call when the host runs ahead, as in a model
            row.extra["layer_back_to_back_us"] = measure_back_to_back(lambda: system(next_input()), device) * 1e3
            system.auto_cuda_graphs = True  # the layer's default: the repeated shape captured once and replayed
            try:
                auto = measure_latency(lambda: system(next_input()), device, **timing)
            finally:
                system.auto_cuda_graphs = False
            row.extra["layer_auto_graph_us"] = auto.median_ms * 1e3
        row.extra["flops"] = expert_flops(system, routing)
        if cfg.include_loop:
            loop = measure_latency(lambda: loop_system(next_input()), device, **timing)
            row.loop_us, row.loop_p95_us = loop.median_ms * 1e3, loop.p95_ms * 1e3
            row.speedup_vs_loop = row.loop_us / row.layer_us
        flats = [item.reshape(tokens, hidden) for item in inputs]
        next_flat = _cycle(flats)
        if cfg.include_dense:
            dense_time = measure_latency(lambda: dense(next_flat()), device, **timing)
            row.dense_us, row.dense_p95_us = dense_time.median_ms * 1e3, dense_time.p95_ms * 1e3
            row.dense_peak_mb = float(measure_peak_memory(lambda: dense(flats[0]), device)["peak_mb"])
            row.time_vs_dense = row.layer_us / row.dense_us
            if device.type == "cuda":
                row.extra["dense_back_to_back_us"] = measure_back_to_back(lambda: dense(next_flat()), device) * 1e3
        others = {}
        for name in cfg.compare:
            other = copy.copy(system)  # shares the weights; only the strategy differs
            _use_strategy(other, name, unregistered or {})
            others[name] = other
            stats = measure_latency(lambda other=other: other(next_input()), device, **timing)
            row.extra[f"{name}_us"] = stats.median_ms * 1e3
    if device.type == "cuda" and cfg.graph and tokens <= cfg.graph_max_tokens:
        from pimoe.measure.graph_timing import time_graphed_callable, time_graphed_layer

        graphed = time_graphed_layer(system, inputs, timing)
        row.layer_graph_us = graphed.single.median_ms * 1e3
        row.extra["layer_graph_back_to_back_us"] = graphed.back_to_back_ms * 1e3
        if cfg.include_dense:
            dense_graphed = time_graphed_callable(dense, flats, timing)
            row.dense_graph_us = dense_graphed.single.median_ms * 1e3
            row.extra["dense_graph_back_to_back_us"] = dense_graphed.back_to_back_ms * 1e3
        for name, other in others.items():
            if name.startswith("cuda_"):  # the others read counts back to the host, which a graph cannot hold
                other_graphed = time_graphed_layer(other, inputs, timing)
                row.extra[f"{name}_graph_us"] = other_graphed.single.median_ms * 1e3
                row.extra[f"{name}_graph_back_to_back_us"] = other_graphed.back_to_back_ms * 1e3
    if cfg.check and device.type == "cuda":
        from pimoe.measure.graph_timing import float32_error

        fresh = torch.randn(x.shape, generator=generator or torch.Generator()).to(device=device, dtype=x.dtype)
        check = float32_error(system, fresh)
        row.rel_error = check["rel_error"]
        row.extra["sorted_rel_error"] = check["sorted_rel_error"]
    return row, str(layer_mem["method"])


def run_layer_benchmark(cfg: BenchConfig, progress=None,
                        unregistered: Mapping[str, DispatchStrategy] | None = None) -> tuple[list[BenchRow], dict]:
    """Time the layer, the loop reference and the dense FFN for each (batch, seq) shape.

    progress: optional callable(done, total, message) for progress bars.
    unregistered: strategies by name that `cfg.dispatch` and `cfg.compare` may name besides the registered ones
    (the benchmark-only backends of bench/backends.py).
    Returns the rows and a metadata dict (device, dtype, date, configuration).
    """
    device = available_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    strategies = (cfg.dispatch, *cfg.compare)
    unregistered = dict(unregistered or {})
    for name in strategies:
        if name not in unregistered:
            check_strategy_name(name)
    largest = max(batch * seq for batch, seq in cfg.shapes) * cfg.hidden_size * dtype.itemsize
    check_fits(lambda: _build_system(cfg, unregistered), {torch.device("cpu"), device},  # built on the CPU, moved
               "the benchmarked layer and its loop-reference copy", dtype, copies=2, input_bytes=largest)
    system = _build_system(cfg, unregistered).to(device=device, dtype=dtype)
    loop_system = copy.deepcopy(system)
    loop_system.dispatch = "loop"
    dense = DenseFFN.matching(system).to(device=device, dtype=dtype).eval()
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows: list[BenchRow] = []
    memory_method = ""
    for index, (batch, seq) in enumerate(cfg.shapes):
        if progress:
            progress(index, len(cfg.shapes), f"{batch}x{seq} tokens")
        x = torch.randn(batch, seq, cfg.hidden_size, generator=generator).to(device=device, dtype=dtype)
        row, memory_method = _bench_shape(cfg, system, loop_system, dense, x, generator, unregistered)
        rows.append(row)
    if progress:
        progress(len(cfg.shapes), len(cfg.shapes), "done")
    meta = {
        **device_description(device),
        "dtype": cfg.dtype,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {**asdict(cfg), "dense_intermediate_size": dense.up.out_features},
        "memory_method": memory_method,
    }
    return rows, meta


def format_table(rows: list[BenchRow], meta: dict) -> str:
    header = (f"PiMoE layer on {meta['device_name']} ({meta['device']}, {meta['dtype']}, torch {meta['torch']}), "
              f"{meta['date']}\n")
    cols = f"{'tokens':>8} {'layer µs':>11} {'p95 µs':>10} {'loop µs':>11} {'dense µs':>10} " \
           f"{'×loop':>7} {'÷dense':>7} {'tok/s':>11} {'TFLOP/s':>8} {'peak MB':>8}"
    graphed = any(r.layer_graph_us is not None for r in rows)
    checked = any(r.rel_error is not None for r in rows)
    back_to_back = any("layer_back_to_back_us" in r.extra for r in rows)
    cols += f" {'graph µs':>9} {'dense g µs':>10} {'graph b2b':>9} {'dense gb2b':>10}" if graphed else ""
    cols += f" {'b2b µs':>9} {'dense b2b':>9}" if back_to_back else ""
    cols += f" {'rel err':>9}" if checked else ""
    lines = [header + cols]
    for r in rows:
        line = (
            f"{r.tokens:>8} {r.layer_us:>11.1f} {r.layer_p95_us:>10.1f} "
            f"{_fmt(r.loop_us, 11, 1)} {_fmt(r.dense_us, 10, 1)} {_fmt(r.speedup_vs_loop, 7, 2)} "
            f"{_fmt(r.time_vs_dense, 7, 2)} {r.layer_tokens_per_s:>11.0f} {r.layer_tflops:>8.3f} {r.layer_peak_mb:>8.1f}"
        )
        if graphed:
            line += (f" {_fmt(r.layer_graph_us, 9, 1)} {_fmt(r.dense_graph_us, 10, 1)}"
                     f" {_fmt(r.extra.get('layer_graph_back_to_back_us'), 9, 1)}"
                     f" {_fmt(r.extra.get('dense_graph_back_to_back_us'), 10, 1)}")
        if back_to_back:
            line += f" {_fmt(r.extra.get('layer_back_to_back_us'), 9, 1)} {_fmt(r.extra.get('dense_back_to_back_us'), 9, 1)}"
        if checked:
            line += f" {r.rel_error:>9.2e}" if r.rel_error is not None else f" {'-':>9}"
        lines.append(line)
    return "\n".join(lines)


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def write_results(rows: list[BenchRow], meta: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
