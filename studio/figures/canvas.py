"""Chart specs for the pages drawn on canvas (Routing lab, Live training, Computation, Guide): data in, a JSON-able
dict out, drawn in the browser by studio/canvas_chart.js.

Pure functions like the plotly builders beside them, so tests read titles, axes and values as data. A spec is a title,
a height, one shared x axis (numbers, or labels at positions 0..n-1) with optional event markers, and panels stacked
top to bottom, each one of: lines (series of x and y), bars (one value per x label), a heatmap (rows of cells) or
horizontal bars (one labelled row each; studio.figures.baselines). Values
are rounded to 5 significant digits, and NaN or infinity become None (JSON has no NaN; the chart leaves a gap).

Legend: T tokens, E experts, S recorded training steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from studio.figures.routing import MAX_CELL_TEXT, MAX_TOKEN_TICKS, expert_color, expert_labels

__all__ = [
    "SERIES_COLORS",
    "chart_spec",
    "json_floats",
    "heatmap_panel",
    "build_adaptation_figure",
    "build_expert_load_figure",
    "build_load_history_figure",
    "build_loss_figure",
    "build_metric_figure",
    "build_routing_heatmap",
    "build_softmax_figures",
    "build_token_confidence_figure",
    "build_topk_weights_figure",
]

SERIES_COLORS = ("#4f46e5", "#dc2626", "#16a34a", "#ca8a04", "#0891b2", "#c026d3", "#ea580c", "#64748b")
_DROPPED = "dropped (over capacity)"


def json_floats(data: Any) -> list[float | None]:
    """Plain floats for JSON: 5 significant digits (the eye cannot tell more; the payload shrinks), None for NaN."""
    array = np.asarray(data, dtype=np.float64).ravel()
    return [float(f"{v:.5g}") if math.isfinite(v) else None for v in array.tolist()]


def chart_spec(title: str, height: int, panels: list[dict[str, Any]], *, x_title: str, legend: bool = False,
               x_labels: Sequence[str] | None = None, events: Sequence[tuple[int, str]] = (),
               x_integer: bool = False, legend_items: Sequence[Sequence[Any]] | None = None) -> dict[str, Any]:
    """A whole chart: panels stacked over one x axis. legend_items: explicit [name, colour, marker or None] entries
    (otherwise the legend lists the panels' named series)."""
    spec = {"title": title, "height": height, "x_title": x_title, "legend": legend,
            "x_labels": list(x_labels) if x_labels is not None else None, "x_integer": x_integer,
            "events": [[int(step), str(label)] for step, label in events], "panels": panels}
    if legend_items is not None:
        spec["legend_items"] = [list(item) for item in legend_items]
    return spec


def _line(name: str, x: Sequence[float], y: Any, color: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "x": json_floats(x), "y": json_floats(y), "color": color, **extra}


def heatmap_panel(z: Any, *, x: Sequence[float], y_labels: Sequence[str], x_hover: Sequence[str], y_title: str,
                  zmin: float = 0.0, zmax: float | None = 1.0, scale: str = "blues", value_label: str = "p",
                  percent: bool = False, cell_text: bool = False, marks: Sequence[Sequence[int]] = (),
                  mark_name: str = "", colorbar: bool = True, weight: float = 1.0) -> dict[str, Any]:
    """A heatmap panel: z (rows, columns), one row per y label, columns at the x values (hover text per column).
    zmax None: the largest value shown. marks: [column, row] cells crossed in red, named mark_name in a legend."""
    heatmap = {"z": [json_floats(row) for row in np.asarray(z, dtype=np.float64)], "x": list(x),
               "y_labels": list(y_labels), "x_hover": list(x_hover), "zmin": zmin, "zmax": zmax, "scale": scale,
               "value_label": value_label, "value_format": "percent" if percent else "number",
               "cell_text": cell_text, "marks": [list(m) for m in marks], "mark_name": mark_name, "colorbar": colorbar}
    return {"kind": "heatmap", "heatmap": heatmap, "y_title": y_title, "weight": weight}


def build_routing_heatmap(
    probs: Any,
    tokens: Sequence[str],
    token_types: Sequence[str],
    expert_types: Sequence[str],
    *,
    dropped: Any = None,
    title: str = "Router probabilities",
) -> dict[str, Any]:
    """Tokens along x, experts along y, colour = router probability (0 to 1); hover names token, type and expert.

    probs: (T, E). tokens / token_types: T display strings and type names. expert_types: E names. dropped: optional
    (T, E) bool, True where the token chose that expert but the expert was over capacity; those cells get a red cross.
    """
    probs = np.asarray(probs, dtype=np.float64)
    num_tokens, num_experts = probs.shape
    if len(tokens) != num_tokens or len(token_types) != num_tokens or len(expert_types) != num_experts:
        raise ValueError(f"probs is {probs.shape} but got {len(tokens)} tokens, {len(token_types)} token types and "
                         f"{len(expert_types)} expert types")
    marks = []
    if dropped is not None:
        token_idx, expert_idx = np.nonzero(np.asarray(dropped, dtype=bool))
        marks = [[int(t), int(e)] for t, e in zip(token_idx.tolist(), expert_idx.tolist(), strict=True)]
    panel = heatmap_panel(probs.T, x=range(num_tokens), y_labels=expert_labels(expert_types), y_title="expert",
                          x_hover=[f"token {i}: {token!r} ({kind})"
                                   for i, (token, kind) in enumerate(zip(tokens, token_types, strict=True))],
                          cell_text=probs.size <= MAX_CELL_TEXT, marks=marks, mark_name=_DROPPED)
    show_tokens = 0 < num_tokens <= MAX_TOKEN_TICKS
    return chart_spec(title, 120 + 30 * num_experts, [panel], x_title="token" if show_tokens else "token position",
                      legend=bool(marks), x_labels=list(tokens) if show_tokens else None, x_integer=True)


def build_expert_load_figure(
    tokens_per_expert: Any, expert_types: Sequence[str], *, capacity: int | None = None, title: str = "Expert load"
) -> dict[str, Any]:
    """Bars of assignments per expert, coloured by expert type, with the uniform share (and capacity) as lines.

    tokens_per_expert: (E,) assignments each expert computed. capacity: per-expert limit, if any.
    """
    load = np.asarray(tokens_per_expert, dtype=np.float64)
    labels = expert_labels(expert_types)
    total = load.sum()
    shares = load / total if total > 0 else np.zeros_like(load)
    hlines = []
    if load.size and total > 0:
        hlines.append({"y": float(total / load.size), "label": "uniform", "color": "#374151", "dash": "dash"})
    if capacity is not None:
        hlines.append({"y": float(capacity), "label": "capacity", "color": "#dc2626", "dash": "dot", "align": "right"})
    bars = {"values": json_floats(load), "colors": [expert_color(t) for t in expert_types],
            "hover": [f"{label}: {value:.0f} assignments ({share:.1%})"
                      for label, value, share in zip(labels, load.tolist(), shares.tolist(), strict=True)]}
    return chart_spec(title, 320, [{"kind": "bars", "bars": bars, "hlines": hlines, "y_title": "assignments"}],
                      x_title="expert", x_labels=labels)


def build_token_confidence_figure(
    confidence: Any, entropy: Any, tokens: Sequence[str], *, max_entropy: float | None = None,
    dropped_tokens: Any = None, title: str = "Per-token confidence and entropy",
) -> dict[str, Any]:
    """Two stacked line panels over token position: top-1 probability and routing entropy (nats).

    confidence, entropy: (T,). max_entropy: log(E), drawn as a reference line. dropped_tokens: optional (T,) bool,
    marked with red crosses on the confidence panel.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    entropy = np.asarray(entropy, dtype=np.float64)
    positions = np.arange(confidence.size)
    hover = [f"token {i}: {token!r}" for i, token in enumerate(tokens)]
    top: list[dict[str, Any]] = [_line("confidence (top-1 p)", positions, confidence, "#4f46e5", hover=hover)]
    if dropped_tokens is not None:
        mask = np.asarray(dropped_tokens, dtype=bool)
        if mask.any():
            top.append(_line("dropped token", positions[mask], confidence[mask], "#dc2626", marker="x"))
    hlines = [] if max_entropy is None else [{"y": float(max_entropy), "label": "uniform = log E", "color": "#6b7280",
                                              "dash": "dash"}]
    panels = [{"kind": "lines", "series": top, "y_title": "confidence", "y_range": [0.0, 1.05]},
              {"kind": "lines", "series": [_line("entropy (nats)", positions, entropy, "#ea580c", hover=hover)],
               "y_title": "entropy (nats)", "hlines": hlines, "from_zero": True}]
    return chart_spec(title, 380, panels, x_title="token position", legend=True, x_integer=True)


def build_loss_figure(
    steps: Sequence[int], series: Mapping[str, Sequence[float]], *, events: Sequence[tuple[int, str]] = (),
    title: str = "Training losses", log_y: bool = False,
) -> dict[str, Any]:
    """One line per named loss over training steps, with dotted vertical lines at each (step, label) event. With
    log_y and no data yet the axis spans 0.001 to 10, where these losses live."""
    lines = [_line(name, steps, losses, SERIES_COLORS[index % len(SERIES_COLORS)])
             for index, (name, losses) in enumerate(series.items())]
    empty = not any(len(losses) for losses in series.values())
    panel = {"kind": "lines", "series": lines, "y_title": "loss", "log_y": log_y,
             "y_range": [1e-3, 10.0] if log_y and empty else None}
    return chart_spec(title, 340, [panel], x_title="step", legend=True, events=events, x_integer=True)


def build_metric_figure(
    steps: Sequence[int], values: Sequence[float], *, name: str, y_title: str,
    events: Sequence[tuple[int, str]] = (), title: str | None = None, y_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """A single metric over training steps (routing accuracy, step latency, ...), with event markers."""
    panel = {"kind": "lines", "series": [_line(name, steps, values, SERIES_COLORS[0])], "y_title": y_title,
             "y_range": list(y_range) if y_range else None}
    return chart_spec(title or name, 300, [panel], x_title="step", events=events, x_integer=True)


def build_load_history_figure(
    steps: Sequence[int], load_shares: Any, expert_types: Sequence[str], *,
    events: Sequence[tuple[int, str]] = (), title: str = "Expert load over training",
) -> dict[str, Any]:
    """Heatmap of each expert's share of assignments (y) at each recorded step (x). load_shares: (S, E), rows summing
    to 1; the colour runs from 0 to the largest share shown."""
    shares = np.asarray(load_shares, dtype=np.float64).reshape(len(steps), len(expert_types))
    panel = heatmap_panel(shares.T, x=[int(s) for s in steps], y_labels=expert_labels(expert_types), y_title="expert",
                          x_hover=[f"step {s}" for s in steps], zmax=None, scale="viridis", value_label="share",
                          percent=True)
    return chart_spec(title, 140 + 26 * len(expert_types), [panel], x_title="step", events=events, x_integer=True)


def build_adaptation_figure(
    steps: Sequence[int], *, temperature: Sequence[float], load_balance_weight: Sequence[float],
    selection_bias: Any, expert_types: Sequence[str], performance_score: Sequence[float] | None = None,
    events: Sequence[tuple[int, str]] = (), title: str = "Adaptation history",
) -> dict[str, Any]:
    """Stacked panels over steps: router temperature, load-balance weight, per-expert selection bias and, when given,
    the controller's performance score. selection_bias: (S, E)."""
    bias = np.asarray(selection_bias, dtype=np.float64).reshape(len(steps), len(expert_types))
    panels = [
        {"kind": "lines", "subtitle": "temperature", "series": [_line("temperature", steps, temperature, "#4f46e5")]},
        {"kind": "lines", "subtitle": "load-balance weight",
         "series": [_line("load-balance weight", steps, load_balance_weight, "#0891b2")]},
        {"kind": "lines", "subtitle": "selection bias per expert",
         "series": [_line(label, steps, bias[:, index], expert_color(kind), width=1.5)
                    for index, (label, kind) in enumerate(zip(expert_labels(expert_types), expert_types,
                                                              strict=True))]},
    ]
    if performance_score is not None and len(performance_score) > 0:
        panels.append({"kind": "lines", "subtitle": "performance score",
                       "series": [_line("performance score", steps, performance_score, "#16a34a")]})
    return chart_spec(title, 170 * len(panels), panels, x_title="step", legend=True, events=events, x_integer=True)


def build_softmax_figures(
    logits: Sequence[float], probs: Sequence[float], expert_types: Sequence[str], chosen: Sequence[int], *,
    temperature: float, about: str = "One token",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two charts to show side by side: one token's router logits, and its probabilities softmax(logits / T) written
    above the bars; the top-k chosen experts are drawn solid, the rest faded. about: what the titles name first."""
    labels = expert_labels(expert_types)
    chosen_set = {int(c) for c in chosen}
    common = {"colors": [expert_color(t) for t in expert_types],
              "opacity": [1.0 if i in chosen_set else 0.35 for i in range(len(labels))]}
    logit_bars = {**common, "values": json_floats(logits),
                  "hover": [f"{label}: logit {v:.3f}" + (" (chosen)" if i in chosen_set else "")
                            for i, (label, v) in enumerate(zip(labels, logits, strict=True))]}
    prob_bars = {**common, "values": json_floats(probs), "text": [f"{p:.2f}" for p in probs],
                 "hover": [f"{label}: p = {p:.3f}" + (" (chosen)" if i in chosen_set else "")
                           for i, (label, p) in enumerate(zip(labels, probs, strict=True))]}
    return (chart_spec(f"{about}: router logits", 340, [{"kind": "bars", "bars": logit_bars, "y_title": "logit"}],
                       x_title="expert", x_labels=labels),
            chart_spec(f"{about}: probabilities at T = {temperature:g}", 340,
                       [{"kind": "bars", "bars": prob_bars, "y_title": "probability", "y_range": [0.0, 1.1]}],
                       x_title="expert", x_labels=labels))


def build_topk_weights_figure(
    weights: Any, expert_types: Sequence[str], *, row_labels: Sequence[str], title: str = "Routing table"
) -> dict[str, Any]:
    """A small tokens × experts table of combine weights (0 where an expert was not chosen), numbers in the cells.

    weights: (T, E) with T * E small (a teaching example)."""
    weights = np.asarray(weights, dtype=np.float64)
    experts = expert_labels(expert_types)
    panel = heatmap_panel(weights, x=range(len(experts)), y_labels=row_labels, x_hover=experts, y_title="token",
                          value_label="weight", cell_text=weights.size <= MAX_CELL_TEXT, colorbar=False)
    return chart_spec(title, 110 + 34 * weights.shape[0], [panel], x_title="expert", x_labels=experts)
