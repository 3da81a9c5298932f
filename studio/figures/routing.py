"""Figure builders for the dashboard: data in, `plotly.graph_objects.Figure` out.

The only `pimoe` module that imports plotly. Every builder is a pure function: it takes arrays, lists or records that
the engine produced (routing probabilities, training histories, benchmark rows) and returns a figure, so tests can check
traces, axis titles and values as data, and the same figures work in a notebook.

Legend: T tokens, E experts, S recorded training steps, K experts per token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "EXPERT_TYPE_COLORS",
    "MAX_CELL_TEXT",
    "MAX_TOKEN_TICKS",
    "build_adaptation_figure",
    "build_expert_load_figure",
    "build_latency_figure",
    "build_load_history_figure",
    "build_loss_figure",
    "build_metric_figure",
    "build_routing_heatmap",
    "build_softmax_figure",
    "build_throughput_figure",
    "build_token_confidence_figure",
    "build_topk_weights_figure",
    "expert_color",
    "expert_labels",
]

# Colour per built-in expert type, shared by every figure and the token strip so a type reads the same everywhere.
EXPERT_TYPE_COLORS: Mapping[str, str] = {
    "reasoning": "#4f46e5",
    "computation": "#dc2626",
    "mathematical": "#ea580c",
    "logical": "#0891b2",
    "language": "#16a34a",
    "creative": "#c026d3",
    "analytical": "#ca8a04",
}
_EXTRA_COLORS = ("#64748b", "#0d9488", "#9333ea", "#be123c", "#65a30d", "#0369a1", "#a16207", "#7c3aed")

MAX_CELL_TEXT = 300  # above this many heatmap cells, per-cell numbers are unreadable and slow the browser
MAX_TOKEN_TICKS = 64  # above this many tokens the x axis shows positions instead of the tokens themselves

_FONT = {"size": 13}
_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}


def expert_color(expert_type: str) -> str:
    """A stable colour for an expert type; custom types get a colour derived from their name."""
    if expert_type in EXPERT_TYPE_COLORS:
        return EXPERT_TYPE_COLORS[expert_type]
    # NOTE: a sum of code points rather than hash(): str hashes change between processes (PYTHONHASHSEED).
    return _EXTRA_COLORS[sum(map(ord, expert_type)) % len(_EXTRA_COLORS)]


def expert_labels(expert_types: Sequence[str]) -> list[str]:
    """Axis labels "E0 reasoning", "E1 computation", ... (index first: two experts may share a type)."""
    return [f"E{i} {name}" for i, name in enumerate(expert_types)]


def _layout(fig: go.Figure, title: str, height: int, **extra: Any) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.0, "xanchor": "left"}, height=height, margin=_MARGIN, font=_FONT,
                      **extra)
    return fig


def _add_event_markers(fig: go.Figure, events: Sequence[tuple[int, str]], rows: int = 1) -> None:
    """Dotted vertical lines at each (step, label) event across every row, labelled inside the top of the plot.

    Successive labels step down a little so events a few steps apart do not print over each other, and labels in the
    right half of the chart extend leftwards so they stay inside it.
    """
    xs = [float(x) for trace in fig.data if trace.x is not None for x in trace.x]
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for index, (step, label) in enumerate(events):
        for row in range(1, rows + 1):
            fig.add_vline(x=step, line={"dash": "dot", "color": "#6b7280", "width": 1}, row=row, col=1)
        fig.add_annotation(x=step, y=1.0 - 0.09 * (index % 3), xref="x", yref="paper",
                           xanchor="right" if step > middle else "left",
                           yanchor="top", text=label, showarrow=False, font={"size": 10, "color": "#374151"},
                           bgcolor="rgba(255,255,255,0.75)")


def build_routing_heatmap(
    probs: Any,
    tokens: Sequence[str],
    token_types: Sequence[str],
    expert_types: Sequence[str],
    *,
    dropped: Any = None,
    title: str = "Router probabilities",
) -> go.Figure:
    """Tokens along x, experts along y, colour = router probability.

    probs: (T, E). tokens / token_types: T display strings and type names (shown on hover). expert_types: E names.
    dropped: optional (T, E) bool, True where the token chose that expert but the expert was over capacity; those cells
    get an x marker. Returns a figure with one Heatmap trace (z is (E, T)) and, when anything was dropped, a Scatter.
    """
    probs = np.asarray(probs, dtype=np.float64)
    num_tokens, num_experts = probs.shape
    if len(tokens) != num_tokens or len(token_types) != num_tokens or len(expert_types) != num_experts:
        raise ValueError(f"probs is {probs.shape} but got {len(tokens)} tokens, {len(token_types)} token types and "
                         f"{len(expert_types)} expert types")
    labels = expert_labels(expert_types)
    z = probs.T  # (E, T)
    token_grid = np.broadcast_to(np.asarray(tokens, dtype=object), (num_experts, num_tokens))
    type_grid = np.broadcast_to(np.asarray(token_types, dtype=object), (num_experts, num_tokens))
    heatmap = go.Heatmap(
        z=z,
        x=np.arange(num_tokens),
        y=labels,
        zmin=0.0,
        zmax=1.0,
        colorscale="Blues",
        colorbar={"title": {"text": "p"}, "thickness": 12},
        customdata=np.dstack([token_grid, type_grid]),
        hovertemplate="token %{x}: <b>%{customdata[0]}</b> (%{customdata[1]})<br>%{y}<br>p = %{z:.3f}<extra></extra>",
        name="probability",
    )
    if z.size <= MAX_CELL_TEXT:
        heatmap.update(texttemplate="%{z:.2f}", textfont={"size": 10})
    fig = go.Figure(heatmap)
    if dropped is not None:
        token_idx, expert_idx = np.nonzero(np.asarray(dropped, dtype=bool))
        if token_idx.size:
            fig.add_trace(go.Scatter(
                x=token_idx, y=[labels[e] for e in expert_idx], mode="markers", name="dropped (over capacity)",
                marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "#dc2626"}},
                hovertemplate="token %{x}: dropped by %{y}<extra></extra>",
            ))
    xaxis: dict[str, Any] = {"title": {"text": "token position"}}
    if num_tokens <= MAX_TOKEN_TICKS:
        xaxis.update(tickmode="array", tickvals=list(range(num_tokens)), ticktext=list(tokens), tickangle=0,
                     title={"text": "token"})
    fig.update_xaxes(**xaxis)
    fig.update_yaxes(title={"text": "expert"}, autorange="reversed")
    return _layout(fig, title, height=120 + 30 * num_experts, legend={"orientation": "h", "y": -0.25})


def build_expert_load_figure(
    tokens_per_expert: Any, expert_types: Sequence[str], *, capacity: int | None = None, title: str = "Expert load"
) -> go.Figure:
    """Bars of assignments per expert, coloured by expert type, with the uniform share (and capacity) as lines.

    tokens_per_expert: (E,) assignments each expert computed. capacity: per-expert limit, if any.
    """
    load = np.asarray(tokens_per_expert, dtype=np.float64)
    labels = expert_labels(expert_types)
    total = load.sum()
    shares = load / total if total > 0 else np.zeros_like(load)
    fig = go.Figure(go.Bar(
        x=labels, y=load, marker={"color": [expert_color(t) for t in expert_types]}, name="assignments",
        customdata=shares, hovertemplate="%{x}<br>%{y:.0f} assignments (%{customdata:.1%})<extra></extra>",
    ))
    if load.size and total > 0:
        fig.add_hline(y=total / load.size, line={"dash": "dash", "color": "#374151"}, annotation_text="uniform",
                      annotation_position="top left")
    if capacity is not None:
        fig.add_hline(y=capacity, line={"dash": "dot", "color": "#dc2626"}, annotation_text="capacity",
                      annotation_position="top right")
    fig.update_xaxes(title={"text": "expert"})
    fig.update_yaxes(title={"text": "assignments"})
    return _layout(fig, title, height=320, showlegend=False)


def build_token_confidence_figure(
    confidence: Any, entropy: Any, tokens: Sequence[str], *, max_entropy: float | None = None,
    dropped_tokens: Any = None, title: str = "Per-token confidence and entropy",
) -> go.Figure:
    """Two stacked line charts over token position: top-1 probability and routing entropy (nats).

    confidence, entropy: (T,). max_entropy: log(E), drawn as a reference line. dropped_tokens: optional (T,) bool,
    marked with red crosses on the confidence row.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    entropy = np.asarray(entropy, dtype=np.float64)
    positions = np.arange(confidence.size)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    hover = "token %{x}: <b>%{customdata}</b><br>%{y:.3f}<extra></extra>"
    fig.add_trace(go.Scatter(x=positions, y=confidence, mode="lines", name="confidence (top-1 p)",
                             customdata=list(tokens), hovertemplate=hover, line={"color": "#4f46e5"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=positions, y=entropy, mode="lines", name="entropy (nats)",
                             customdata=list(tokens), hovertemplate=hover, line={"color": "#ea580c"}), row=2, col=1)
    if max_entropy is not None:
        fig.add_hline(y=max_entropy, line={"dash": "dash", "color": "#6b7280"}, annotation_text="uniform = log E",
                      annotation_position="top left", row=2, col=1)
    if dropped_tokens is not None:
        mask = np.asarray(dropped_tokens, dtype=bool)
        if mask.any():
            fig.add_trace(go.Scatter(x=positions[mask], y=confidence[mask], mode="markers", name="dropped token",
                                     marker={"symbol": "x", "color": "#dc2626", "size": 9}), row=1, col=1)
    fig.update_yaxes(title={"text": "confidence"}, range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title={"text": "entropy (nats)"}, rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title={"text": "token position"}, row=2, col=1)
    return _layout(fig, title, height=380, legend={"orientation": "h", "y": 1.12, "x": 1.0, "xanchor": "right"})


def build_loss_figure(
    steps: Sequence[int], series: Mapping[str, Sequence[float]], *, events: Sequence[tuple[int, str]] = (),
    title: str = "Training losses", log_y: bool = False,
) -> go.Figure:
    """One line per named loss over training steps, with dotted vertical lines at each (step, label) event."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Scatter(x=list(steps), y=list(values), mode="lines", name=name))
    _add_event_markers(fig, events)
    fig.update_xaxes(title={"text": "step"})
    if log_y:
        fig.update_yaxes(type="log", dtick=1)  # decade ticks only: the minor 2..9 labels crowd a small chart
        if not any(len(values) for values in series.values()):
            fig.update_yaxes(range=[-3, 1])  # empty (no step yet): 0.001 to 10, where these losses live, not 1 to 10k
    fig.update_yaxes(title={"text": "loss"})
    return _layout(fig, title, height=340)


def build_metric_figure(
    steps: Sequence[int], values: Sequence[float], *, name: str, y_title: str,
    events: Sequence[tuple[int, str]] = (), title: str | None = None, y_range: tuple[float, float] | None = None,
) -> go.Figure:
    """A single metric over training steps (routing accuracy, step latency, ...), with event markers."""
    fig = go.Figure(go.Scatter(x=list(steps), y=list(values), mode="lines", name=name))
    _add_event_markers(fig, events)
    fig.update_xaxes(title={"text": "step"})
    fig.update_yaxes(title={"text": y_title}, range=list(y_range) if y_range else None)
    return _layout(fig, title or name, height=300, showlegend=False)


def build_load_history_figure(
    steps: Sequence[int], load_shares: Any, expert_types: Sequence[str], *,
    events: Sequence[tuple[int, str]] = (), title: str = "Expert load over training",
) -> go.Figure:
    """Heatmap of each expert's share of assignments (y) at each recorded step (x).

    load_shares: (S, E), rows summing to 1.
    """
    shares = np.asarray(load_shares, dtype=np.float64).reshape(len(steps), len(expert_types))
    fig = go.Figure(go.Heatmap(
        z=shares.T, x=list(steps), y=expert_labels(expert_types), zmin=0.0, colorscale="Viridis",
        colorbar={"title": {"text": "share"}, "thickness": 12},
        hovertemplate="step %{x}<br>%{y}<br>share %{z:.1%}<extra></extra>",
    ))
    _add_event_markers(fig, events)
    fig.update_xaxes(title={"text": "step"})
    fig.update_yaxes(title={"text": "expert"}, autorange="reversed")
    return _layout(fig, title, height=140 + 26 * len(expert_types))


def build_adaptation_figure(
    steps: Sequence[int], *, temperature: Sequence[float], load_balance_weight: Sequence[float],
    selection_bias: Any, expert_types: Sequence[str], performance_score: Sequence[float] | None = None,
    events: Sequence[tuple[int, str]] = (), title: str = "Adaptation history",
) -> go.Figure:
    """Stacked rows over steps: router temperature, load-balance weight, per-expert selection bias and, when given,
    the controller's performance score. selection_bias: (S, E)."""
    has_score = performance_score is not None and len(performance_score) > 0
    rows = 4 if has_score else 3
    subtitles = ["temperature", "load-balance weight", "selection bias per expert"]
    if has_score:
        subtitles.append("performance score")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=subtitles)
    fig.add_trace(go.Scatter(x=list(steps), y=list(temperature), name="temperature", mode="lines",
                             line={"color": "#4f46e5"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=list(steps), y=list(load_balance_weight), name="load-balance weight", mode="lines",
                             line={"color": "#0891b2"}), row=2, col=1)
    bias = np.asarray(selection_bias, dtype=np.float64).reshape(len(steps), len(expert_types))
    for index, (label, expert_type) in enumerate(zip(expert_labels(expert_types), expert_types, strict=True)):
        fig.add_trace(go.Scatter(x=list(steps), y=bias[:, index], name=label, mode="lines",
                                 line={"color": expert_color(expert_type), "width": 1.5}), row=3, col=1)
    if has_score:
        fig.add_trace(go.Scatter(x=list(steps), y=list(performance_score), name="performance score", mode="lines",
                                 line={"color": "#16a34a"}), row=4, col=1)
    _add_event_markers(fig, events, rows=rows)
    fig.update_xaxes(title={"text": "step"}, row=rows, col=1)
    return _layout(fig, title, height=170 * rows, legend={"orientation": "h", "y": -0.08})


def build_latency_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Latency per call") -> go.Figure:
    """Grouped bars of median latency (µs) per shape for the PiMoE layer, the loop reference and the dense FFN;
    error bars reach the p95.

    rows: dicts with batch, seq, layer_us, layer_p95_us and optionally loop_us / loop_p95_us / dense_us / dense_p95_us.
    """
    shapes = [f"{r['batch']}×{r['seq']}" for r in rows]
    fig = go.Figure()
    for key, name, color in (("layer", "PiMoE layer", "#4f46e5"), ("loop", "loop over experts", "#9ca3af"),
                             ("dense", "dense FFN", "#16a34a")):
        medians = [r.get(f"{key}_us") for r in rows]
        if all(m is None for m in medians):
            continue
        p95 = [r.get(f"{key}_p95_us") for r in rows]
        upper = [(hi - lo) if hi is not None and lo is not None else 0.0 for lo, hi in zip(medians, p95, strict=True)]
        fig.add_trace(go.Bar(x=shapes, y=medians, name=name, marker={"color": color},
                             error_y={"type": "data", "array": upper, "arrayminus": [0.0] * len(upper)},
                             hovertemplate="%{x}<br>median %{y:.1f} µs<extra>" + name + "</extra>"))
    fig.update_xaxes(title={"text": "batch × sequence"})
    # Log scale: the three series and the shapes span orders of magnitude.
    fig.update_yaxes(title={"text": "µs: median (bar), p95 (whisker)"}, type="log", dtick=1)
    return _layout(fig, title, height=360, barmode="group", legend={"orientation": "h", "y": -0.25})


def build_throughput_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Throughput") -> go.Figure:
    """Tokens per second of the PiMoE layer per shape, shapes ordered by tokens per call."""
    points = sorted(rows, key=lambda r: (r["tokens"], r["batch"]))
    fig = go.Figure(go.Scatter(
        x=[f"{r['batch']}×{r['seq']}" for r in points], y=[r["layer_tokens_per_s"] for r in points],
        mode="lines+markers", name="PiMoE layer", customdata=[r["tokens"] for r in points],
        hovertemplate="%{x} (%{customdata} tokens): %{y:,.0f} tokens/s<extra></extra>",
    ))
    fig.update_xaxes(title={"text": "batch × sequence, by tokens per call"}, type="category")
    fig.update_yaxes(title={"text": "tokens / s"}, rangemode="tozero")
    return _layout(fig, title, height=360, showlegend=False)


def build_softmax_figure(
    logits: Sequence[float], probs: Sequence[float], expert_types: Sequence[str], chosen: Sequence[int], *,
    temperature: float, title: str | None = None,
) -> go.Figure:
    """Side by side: one token's router logits and its probabilities softmax(logits / temperature); the top-k chosen
    experts are drawn solid, the rest faded."""
    labels = expert_labels(expert_types)
    chosen_set = set(int(c) for c in chosen)
    opacity = [1.0 if i in chosen_set else 0.35 for i in range(len(labels))]
    colors = [expert_color(t) for t in expert_types]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["logits", f"probabilities at T = {temperature:g}"])
    fig.add_trace(go.Bar(x=labels, y=list(logits), marker={"color": colors, "opacity": opacity}, name="logit"),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=list(probs), marker={"color": colors, "opacity": opacity}, name="probability",
                         text=[f"{p:.2f}" for p in probs], textposition="outside"), row=1, col=2)
    fig.update_yaxes(title={"text": "logit"}, row=1, col=1)
    fig.update_yaxes(title={"text": "probability"}, range=[0, 1.1], row=1, col=2)
    return _layout(fig, title or "One token through the router", height=340, showlegend=False)


def build_topk_weights_figure(
    weights: Any, expert_types: Sequence[str], *, row_labels: Sequence[str], title: str = "Routing table"
) -> go.Figure:
    """A small tokens × experts table of combine weights (0 where an expert was not chosen), numbers in the cells.

    weights: (T, E) with T * E small (a teaching example)."""
    weights = np.asarray(weights, dtype=np.float64)
    fig = go.Figure(go.Heatmap(
        z=weights, x=expert_labels(expert_types), y=list(row_labels), zmin=0.0, zmax=1.0, colorscale="Blues",
        texttemplate="%{z:.2f}" if weights.size <= MAX_CELL_TEXT else None, showscale=False,
        hovertemplate="%{y} → %{x}: weight %{z:.2f}<extra></extra>",
    ))
    fig.update_xaxes(title={"text": "expert"})
    fig.update_yaxes(title={"text": "token"}, autorange="reversed")
    return _layout(fig, title, height=110 + 34 * weights.shape[0])
