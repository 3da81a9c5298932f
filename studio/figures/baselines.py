"""Routing accuracy per text beside its baselines: a pure chart-spec builder (studio.figures.canvas) over
`pimoe.lm.routing_eval.routing_report`.

Each text is one bar (its routing accuracy, mean over layers); a diamond marks the text's all-language baseline (every
token to its most common target type); a dashed line marks the chance line k/E. In-template texts (the training
templates) and out-of-template texts (`pimoe.lm.heldout`) are coloured apart, and a bar that does not beat its
baseline is red.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from studio.figures.canvas import chart_spec, json_floats

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
                                   "baselines (red: below the all-language baseline)") -> dict[str, Any]:
    """A canvas chart spec (studio.figures.canvas): horizontal bars of routing accuracy per text, a diamond at each
    text's all-language baseline and a dashed line at the k/E chance line."""
    rows = baseline_rows(report)
    if not rows:
        raise ValueError("the routing report has no texts (expected 'in_template' / 'out_of_template' with 'texts')")
    parts = {name: part for part, name in _PART_NAMES.items()}
    chance = rows[0]["chance k/E"]
    hbars = {"labels": [row["text"] for row in rows],  # the in-template texts are named "in-template N"
             "values": json_floats([row["accuracy"] for row in rows]),
             "colors": [PART_COLORS[parts[row["part"]]] if row["beats all-language"] else _BELOW for row in rows],
             "marks": json_floats([row["all-language"] for row in rows]), "mark_color": "#111827",
             "hover": [f"{row['text']} ({row['part']}): accuracy {row['accuracy']:.3f}, all-language "
                       f"{row['all-language']:.3f}" for row in rows],
             "x_range": [0.0, 1.02], "vlines": [{"x": float(chance), "label": f"chance k/E = {chance:.2f}"}]}
    legend = [*([f"{name} accuracy", PART_COLORS[part], None] for part, name in _PART_NAMES.items()
                if any(row["part"] == name for row in rows)),
              ["below all-language", _BELOW, None], ["all-language baseline", "#111827", "diamond"]]
    return chart_spec(title, max(320, 22 * len(rows) + 150), [{"kind": "hbars", "hbars": hbars}],
                      x_title="share of labelled tokens", legend=True, legend_items=legend)
