"""Measured performance and routing-quality metrics.

Nothing here is a constant, a formula of the input size, or an estimate: latencies are timed with the device
synchronised (CUDA events on GPU), memory is read from the CUDA allocator or the process's resident set, and routing
metrics are computed from a RoutingInfo.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from pimoe.layer.routing import RoutingInfo

__all__ = [
    "LatencyStats",
    "RoutingStats",
    "load_balance_score",
    "max_violation",
    "measure_latency",
    "measure_peak_memory",
    "routing_accuracy",
    "routing_stats",
    "routing_stats_from_values",
]


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall times in milliseconds, device synchronised."""

    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    repeats: int

    def tokens_per_second(self, tokens_per_call: int) -> float:
        return tokens_per_call / (self.median_ms / 1e3)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def measure_latency(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 3,
                    repeats: int = 20, min_seconds: float = 0.0) -> LatencyStats:
    """Time `fn()`; warm-up calls first, then `repeats` timed calls (more until `min_seconds` have passed).

    On CUDA each call is bracketed by CUDA events and the elapsed time read after a synchronize; on CPU by
    perf_counter (CPU ops are synchronous).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        while len(samples) < repeats or time.perf_counter() - started < min_seconds:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        while len(samples) < repeats or time.perf_counter() - started < min_seconds:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    ordered = sorted(samples)
    return LatencyStats(
        median_ms=statistics.median(ordered),
        p95_ms=_percentile(ordered, 0.95),
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        repeats=len(ordered),
    )


def measure_back_to_back(fn: Callable[[], object], device: torch.device | str, *, calls: int = 20,
                         rounds: int = 5, warmup: int = 3) -> float:
    """Median ms per call of `calls` calls issued back to back between two CUDA events, no sync between them.

    `measure_latency` starts every call on an idle device, so a call's host work before its first long kernel counts
    in full. Here the host runs ahead, as it does through the layers of a model, and the result is the device's
    time per call, unless the host is the slower side (then it is the host's). CPU: falls back to perf_counter.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(samples)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a moment.

    NOTE: kineto prints a "profiler_start" / "profiler_stop" line from C++ on every start and stop, which no setting
    turns off; only the start and stop are wrapped, so anything `fn` itself writes still reaches stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_tensor_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of CPU tensor memory held at once during `fn()`, above what was held before it.

    Read from the PyTorch profiler's allocator events (every allocation and free, in order). The process's resident
    set would miss most of it: glibc hands freed blocks straight back to the next allocation, so a forward pass that
    reuses memory shows no growth at all.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():
        prof.__enter__()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.__exit__(None, None, None)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> dict[str, float | str]:
    """Run `fn()` once and return the peak memory it used, in MB, and how it was measured.

    CUDA: torch.cuda.max_memory_allocated after resetting the peak, minus what was allocated before.
    CPU: the peak of live tensor bytes allocated during the call, from the profiler's allocator events.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak_mb": peak / 2**20, "method": "cuda allocator peak above the starting allocation"}
    peak = _cpu_tensor_peak_bytes(fn)
    return {"peak_mb": peak / 2**20, "method": "peak live CPU tensor bytes during the call (profiler allocator events)"}


def load_balance_score(load: torch.Tensor) -> float:
    """1 - TV(load, uniform) / max TV, in [0, 1]: 1 when every expert gets the same share, 0 when one gets all.

    load: (E,) counts or shares. TV is the total-variation distance sum_i |l_i - 1/E| / 2, whose maximum, reached
    when one expert takes everything, is 1 - 1/E.
    """
    shares = load.double() / load.double().sum().clamp_min(1e-12)
    num_experts = shares.numel()
    if num_experts == 1:
        return 1.0
    tv = (shares - 1.0 / num_experts).abs().sum() / 2
    return float(1.0 - tv / (1.0 - 1.0 / num_experts))


def max_violation(load: torch.Tensor) -> float:
    """MaxVio (Wang et al. 2024, auxiliary-loss-free balancing): max load / mean load - 1; 0 is perfect balance."""
    load = load.double()
    mean = load.mean()
    return float(load.max() / mean - 1.0) if mean > 0 else 0.0


def routing_accuracy(routing: RoutingInfo, target_type_ids: torch.Tensor, expert_type_ids: torch.Tensor) -> float:
    """The share of routed tokens whose top-1 expert has the type the mapping assigns to the token's label.

    target_type_ids: (T,) expert-type id each token should go to, -1 for tokens without a target (they are not
    counted). expert_type_ids: (E,) the type id of each expert. Returns NaN when no token has a target.
    """
    has_target = target_type_ids >= 0
    counted = int(has_target.sum())
    if counted == 0:
        return float("nan")
    hit = expert_type_ids.to(routing.top1.device)[routing.top1] == target_type_ids
    return float((hit & has_target).sum()) / counted


@dataclass(frozen=True)
class RoutingStats:
    """Routing quality of one call, from its RoutingInfo."""

    tokens: int
    expert_utilization: float  # share of experts that computed at least one assignment
    load_balance_score: float
    max_violation: float
    routing_entropy: float  # mean per-token entropy, nats
    normalized_entropy: float  # routing_entropy / log(E), in [0, 1]
    mean_confidence: float
    dropped_fraction: float  # share of assignments dropped by capacity
    load_shares: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def routing_stats(routing: RoutingInfo) -> RoutingStats:
    """The RoutingStats of one call, read from the device in a single copy (each scalar read alone is a host sync)."""
    if routing.num_tokens == 0:
        return routing_stats_from_values(0, 0.0, 0.0, 0.0, routing.tokens_per_expert.detach().double().cpu())
    scalars = torch.stack([routing.entropy.detach().mean(), routing.confidence.detach().mean(),
                           routing.dropped.float().mean()]).double()
    packed = torch.cat([scalars, routing.tokens_per_expert.detach().double()]).cpu()
    entropy, confidence, dropped = packed[:3].tolist()
    return routing_stats_from_values(routing.num_tokens, entropy, confidence, dropped, packed[3:])


def routing_stats_from_values(tokens: int, entropy: float, confidence: float, dropped_fraction: float,
                              load: torch.Tensor) -> RoutingStats:
    """RoutingStats from values already on the host: mean entropy (nats), mean confidence, dropped share, (E,) load."""
    num_experts = load.numel()
    return RoutingStats(
        tokens=tokens,
        expert_utilization=float((load > 0).double().mean()),
        load_balance_score=load_balance_score(load),
        max_violation=max_violation(load),
        routing_entropy=entropy,
        normalized_entropy=entropy / math.log(num_experts) if num_experts > 1 else 0.0,
        mean_confidence=confidence,
        dropped_fraction=dropped_fraction,
        load_shares=tuple((load.double() / max(float(load.sum()), 1.0)).tolist()),
    )
