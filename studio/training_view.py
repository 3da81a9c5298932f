"""Turns a training snapshot into the live-training page's chart specs (via the pure builders in studio.figures.canvas)."""

from __future__ import annotations

import math

import numpy as np

from pimoe.lm.train import StepRecord
from studio.figures.canvas import (
    build_adaptation_figure,
    build_load_history_figure,
    build_loss_figure,
    build_metric_figure,
    build_routing_heatmap,
)

from .routing_view import routing_view
from .training import TrainingSnapshot

__all__ = ["DETAIL_CHARTS", "MAIN_CHARTS", "MAX_POINTS", "thin", "training_figures"]

MAX_POINTS = 200  # points per line: enough for the eye, and a bounded cost per redraw whatever the run length


def thin(records: list[StepRecord], max_points: int = MAX_POINTS) -> list[StepRecord]:
    """Every n-th record so at most about max_points remain; the latest record is always kept."""
    if len(records) <= max_points:
        return records
    stride = math.ceil(len(records) / max_points)
    kept = records[::stride]
    return kept if kept[-1] is records[-1] else [*kept, records[-1]]


MAIN_CHARTS = ("loss", "accuracy")  # redrawn at the page's chart cadence
DETAIL_CHARTS = ("load", "latency", "adaptation", "probe")  # layer-specific or slow-moving: redrawn less often


def training_figures(snapshot: TrainingSnapshot, layer: int,
                     which: tuple[str, ...] = MAIN_CHARTS + DETAIL_CHARTS) -> dict[str, dict]:
    """Loss, accuracy, step latency, expert load and adaptation over steps, and the probe sentence's heatmap (the
    names in `which`). With no records (or no probe) yet the same charts come back empty (axes and titles), so a page
    can draw them before the first step."""
    records = thin(snapshot.records)
    steps = [r.step for r in records]
    events = snapshot.events
    expert_types = snapshot.expert_types

    def per_layer(values) -> np.ndarray:
        return np.array(values).reshape(len(records), len(expert_types))

    def adaptation() -> dict:
        scores = [r.adaptation["performance_score"] if r.adaptation else math.nan for r in records]
        return build_adaptation_figure(
            steps,
            temperature=[r.temperature for r in records],
            load_balance_weight=[r.load_balance_weight for r in records],
            selection_bias=per_layer([r.selection_bias[layer] for r in records]),
            expert_types=expert_types,
            performance_score=scores if any(not math.isnan(s) for s in scores) else None,
            events=events,
            title=f"Adaptation history, layer {layer}",
        )

    def probe() -> dict:
        if snapshot.probe is None:  # not routed yet: the same chart, empty, so its first data is an update, not a new plot
            return build_routing_heatmap(np.zeros((0, len(expert_types))), [], [], expert_types,
                                         title="Probe sentence: not routed yet")
        view = routing_view(snapshot.probe, layer, 0.0)
        return build_routing_heatmap(view.probs, view.tokens, view.token_types, view.expert_types,
                                     dropped=view.dropped,
                                     title=f"Probe sentence at step {snapshot.probe_step}, layer {layer}")

    builders = {
        "loss": lambda: build_loss_figure(steps, {
            "total": [r.loss for r in records],
            "language model": [r.lm_loss for r in records],
            "load balance": [r.load_balance_loss for r in records],
            "supervised routing": [r.supervised_loss for r in records],
            "z-loss": [r.z_loss for r in records],
        }, events=events, title="Losses", log_y=True),
        "accuracy": lambda: build_metric_figure(steps, [r.routing_accuracy for r in records], name="routing accuracy",
                                                y_title="accuracy", events=events, y_range=(0.0, 1.0),
                                                title="Routing accuracy against token-type labels"),
        "latency": lambda: build_metric_figure(steps, [r.step_ms for r in records], name="step latency", y_title="ms",
                                               events=events, title="Step latency (forward + backward + update)"),
        "load": lambda: build_load_history_figure(steps, per_layer([r.load[layer] for r in records]), expert_types,
                                                 events=events, title=f"Expert load over steps, layer {layer}"),
        "adaptation": adaptation,
        "probe": probe,
    }
    unknown = set(which) - set(builders)
    if unknown:
        raise ValueError(f"unknown training charts {sorted(unknown)}; known: {sorted(builders)}")
    return {name: builders[name]() for name in which}
