"""Plotly figure builders for the Performance page, and the colours and labels every chart shares: data in,
`plotly.graph_objects.Figure` out. The other pages draw canvas chart specs (studio.figures.canvas) instead.

Every builder is a pure function: it takes arrays, lists or records that the engine produced (routing probabilities,
benchmark rows) and returns a figure, so tests can check traces, axis titles and values as data, and the same figures
work in a notebook.

Legend: T tokens, E experts, S recorded training steps, K experts per token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

__all__ = [
    "EXPERT_TYPE_COLORS",
    "MAX_CELL_TEXT",
    "MAX_TOKEN_TICKS",
    "build_latency_figure",
    "build_throughput_figure",
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
