"""Routing accuracy per text beside its baselines: a pure figure builder over `pimoe.lm.routing_eval.routing_report`.

Each text is one bar (its routing accuracy, mean over layers); a diamond marks the text's all-language baseline (every
token to its most common target type); a dashed line marks the chance line k/E. In-template texts (the training
templates) and out-of-template texts (`pimoe.lm.heldout`) are coloured apart, and a bar that does not beat its
baseline is red.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

__all__ = ["PART_COLORS", "build_accuracy_baseline_figure", "baseline_rows"]

PART_COLORS: Mapping[str, str] = {"in_template": "#94a3b8", "out_of_template": "#2563eb"}
_BELOW = "#dc2626"
_PART_NAMES = {"in_template": "in-template", "out_of_template": "out-of-template"}


def baseline_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per text: part, text, accuracy, all-language, chance, beats. `report` is `routing_report(...)`."""
    rows = []
    for part in ("in_template", "out_of_template"):
        for text in report.get(part, {}).get("texts", []):
            rows.append({"part": _PART_NAMES[part], "text": text["name"], "accuracy": text["accuracy"],
                         "all-language": text["all_language"], "chance k/E": text["chance"],
                         "beats all-language": bool(text["beats_baseline"])})
    return rows


def build_accuracy_baseline_figure(report: Mapping[str, Any], title: str = "Routing accuracy per text and its "
                                   "baselines (red: below the all-language baseline)") -> go.Figure:
    """Horizontal bars of routing accuracy per text, the all-language baseline per text and the k/E chance line."""
    rows = baseline_rows(report)
    if not rows:
        raise ValueError("the routing report has no texts (expected 'in_template' / 'out_of_template' with 'texts')")
    labels = [row["text"] for row in rows]  # the in-template texts are named "in-template N"
    fig = go.Figure()
    for part, name in _PART_NAMES.items():
        index = [i for i, row in enumerate(rows) if row["part"] == name]
        if not index:
            continue
        fig.add_trace(go.Bar(
            name=f"{name} accuracy", orientation="h", y=[labels[i] for i in index],
            x=[rows[i]["accuracy"] for i in index],
            marker_color=[PART_COLORS[part] if rows[i]["beats all-language"] else _BELOW for i in index],
            hovertemplate="%{y}: accuracy %{x:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        name="all-language baseline", mode="markers", y=labels, x=[row["all-language"] for row in rows],
        marker={"symbol": "diamond", "size": 9, "color": "#111827"},
        hovertemplate="%{y}: all-language %{x:.3f}<extra></extra>"))
    chance = rows[0]["chance k/E"]
    fig.add_vline(x=chance, line_dash="dash", line_color="#6b7280", annotation_text=f"chance k/E = {chance:.2f}",
                  annotation_position="top")
    fig.update_layout(title=title, barmode="overlay", height=max(320, 22 * len(rows) + 140),
                      xaxis={"title": "share of labelled tokens", "range": [0, 1.02]},
                      yaxis={"autorange": "reversed", "title": None}, legend={"orientation": "h", "y": -0.12},
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig
