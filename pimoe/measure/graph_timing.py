"""Benchmark helpers for CUDA: rotating inputs, CUDA-graph timing, and the float32 correctness check.

Legend: B batch, S sequence, D hidden size.

Used by pimoe.measure.layer_bench when the device is CUDA (`python -m pimoe bench --device cuda --graph --check`) and by
the scripts in bench/. Timing goes through pimoe.measure.metrics.measure_latency (CUDA events around each call after
warm-up, median of the repeats).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable

import torch

from pimoe.cuda.graphs import GraphedPiMoE, capture_after_warmup
from pimoe.measure.metrics import LatencyStats, measure_back_to_back, measure_latency

__all__ = ["GraphTiming", "cycle_inputs", "float32_error", "in_graph_ms", "time_graphed_callable", "time_graphed_layer"]


def cycle_inputs(inputs: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """A callable returning the inputs round-robin: each timed call reads an input that is not hot in the cache."""
    it = itertools.cycle(inputs)
    return lambda: next(it)


@dataclasses.dataclass
class GraphTiming:
    """One call timed alone (each starts on an idle GPU: the host's work before the replay counts in full) and
    calls issued back to back (the host runs ahead, as through the layers of a model)."""

    single: LatencyStats
    back_to_back_ms: float


def _time_both(call: Callable[[], object], device: torch.device, timing: dict) -> GraphTiming:
    return GraphTiming(measure_latency(call, device, **timing), measure_back_to_back(call, device))


def time_graphed_layer(system, inputs: list[torch.Tensor], timing: dict) -> GraphTiming:
    """GraphedPiMoE calls (copy into the static input, replay, the weight check), output buffer not cloned."""
    graphed = GraphedPiMoE(system, max_tokens=inputs[0].shape[0] * inputs[0].shape[1], clone_output=False)
    next_input = cycle_inputs(inputs)
    with torch.inference_mode():
        graphed(inputs[0])
        return _time_both(lambda: graphed(next_input()), inputs[0].device, timing)


def time_graphed_callable(fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[torch.Tensor],
                          timing: dict) -> GraphTiming:
    """Capture fn(static_input) in a CUDA graph and time copy + replay, cycling the inputs."""
    device = inputs[0].device
    with torch.inference_mode():
        static_input = inputs[0].clone()
        graph, _ = capture_after_warmup(lambda: fn(static_input), device=device)
        next_input = cycle_inputs(inputs)

        def replay() -> None:
            static_input.copy_(next_input())
            graph.replay()

        return _time_both(replay, device, timing)


def in_graph_ms(fn: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], calls: int = 20) -> float:
    """ms per call of `calls` calls fn(input), inputs round-robin, captured in one CUDA graph replayed back to back.

    A lone replay (`time_graphed_callable`) also pays a copy into its static input and a graph launch per call; inside
    a model's graph a layer pays neither, and its kernels follow the previous layer's with programmatic dependent
    launch where they can. This is that cost."""
    graph, _ = capture_after_warmup(lambda: [fn(inputs[i % len(inputs)]) for i in range(calls)], warmups=1,
                                    device=inputs[0].device)
    return measure_back_to_back(graph.replay, inputs[0].device, calls=5) / calls


def _without_residual(system, dispatch: str | None = None):
    """A shallow copy (same weights) that returns the experts' contribution alone."""
    view = copy.copy(system)
    view.config = dataclasses.replace(system.config, residual=False)
    if dispatch is not None:
        view.dispatch = dispatch
    return view


def float32_error(system, x: torch.Tensor, poison_mb: int = 512) -> dict[str, float]:
    """‖y - y_ref‖ / ‖y_ref‖ of the experts' contribution y (the layer without its residual) against a float32 copy
    on the sorted dispatch; also the same error of the sorted dispatch in the layer's own dtype, for scale.

    The residual is left out on purpose: in bf16, x + y is rounded relative to |x|, several times |y|, and that
    rounding would be charged to y. Freed allocator blocks are filled with NaN first, so an output element the fast
    path never wrote shows up as NaN (and the check fails) instead of as a stale plausible value.
    """
    reference = _without_residual(copy.deepcopy(system).float(), "sorted")
    with torch.inference_mode():
        ref = reference(x.float())
        del reference
        baseline = _without_residual(system, "sorted")(x).float()
        poison = torch.full((poison_mb * 2**20 // 4,), float("nan"), device=x.device)
        del poison
        out = _without_residual(system)(x)
    finite = bool(torch.isfinite(out).all())
    error = float((out.float() - ref).norm() / ref.norm())
    return {"rel_error": error if finite else float("nan"), "all_written": float(finite),
            "sorted_rel_error": float((baseline - ref).norm() / ref.norm())}
