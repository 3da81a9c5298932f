"""The training-step sweep as a figure: time per step against tokens for each contender, and MFU where the card's peak
is known. A pure builder over the flat records of `pimoe.measure.train_bench.TrainStepRow.flat()`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pimoe.measure.train_bench import CONTENDERS

__all__ = ["CONTENDER_LABELS", "MFU_UNKNOWN", "build_train_step_figure", "format_mfu"]

CONTENDER_LABELS: Mapping[str, str] = {"fast": "PiMoE fast path", "grouped_mm": "argsort + grouped_mm",
                                       "dense": "dense FFN (equal active)", "sorted": "PiMoE sorted dispatch"}
_STYLES = {"fast": {"color": "#4f46e5"}, "grouped_mm": {"color": "#ea580c"}, "dense": {"color": "#16a34a"},
           "sorted": {"color": "#9ca3af", "dash": "dot"}}
MFU_UNKNOWN = "n/a — peak unknown"


def format_mfu(value: float | None) -> str:
    """MFU as a percentage, or MFU_UNKNOWN where no peak is known (the CPU, an unlisted card): never a made-up number."""
    return MFU_UNKNOWN if value is None else f"{100 * value:.1f}%"


def build_train_step_figure(rows: Sequence[Mapping[str, Any]], *,
                            title: str = "Training step (forward + backward) per token count") -> go.Figure:
    """Median ms per step against tokens, one line per contender that ran (whiskers reach the p95); beside it the MFU
    of each contender when any row has one, else a note that the peak is unknown.

    rows: flat records with tokens and, per contender in CONTENDERS, `<name>_median_ms`, `<name>_p95_ms`, `<name>_mfu`
    (None where it did not run or the peak is unknown).
    """
    if not rows:
        raise ValueError("no rows to plot: run the training-step sweep first")
    points = sorted(rows, key=lambda r: r["tokens"])
    tokens = [r["tokens"] for r in points]
    ran = [n for n in CONTENDERS if any(r.get(f"{n}_median_ms") is not None for r in points)]
    with_mfu = [n for n in ran if any(r.get(f"{n}_mfu") is not None for r in points)]
    fig = make_subplots(rows=1, cols=2 if with_mfu else 1, horizontal_spacing=0.12,
                        subplot_titles=["ms per step", "MFU"] if with_mfu else [f"ms per step · MFU {MFU_UNKNOWN}"])
    for name in ran:
        medians = [r.get(f"{name}_median_ms") for r in points]
        upper = [(r[f"{name}_p95_ms"] - m) if m is not None and r.get(f"{name}_p95_ms") is not None else 0.0
                 for r, m in zip(points, medians, strict=True)]
        label = CONTENDER_LABELS[name]
        fig.add_trace(go.Scatter(x=tokens, y=medians, name=label, mode="lines+markers", line=_STYLES[name],
                                 legendgroup=name, error_y={"type": "data", "array": upper, "arrayminus": [0.0] * len(upper)},
                                 hovertemplate="%{x} tokens: %{y:.3f} ms median<extra>" + label + "</extra>"),
                      row=1, col=1)
    for name in with_mfu:
        label = CONTENDER_LABELS[name]
        mfu = [None if r.get(f"{name}_mfu") is None else 100 * r[f"{name}_mfu"] for r in points]
        fig.add_trace(go.Scatter(x=tokens, y=mfu, name=label, mode="lines+markers", line=_STYLES[name],
                                 legendgroup=name, showlegend=False,
                                 hovertemplate="%{x} tokens: MFU %{y:.1f}%<extra>" + label + "</extra>"), row=1, col=2)
    # log-log: token counts and step times span orders of magnitude
    fig.update_xaxes(title={"text": "tokens per step"}, type="log")
    fig.update_yaxes(title={"text": "ms: median (line), p95 (whisker)"}, type="log", row=1, col=1)
    if with_mfu:
        fig.update_yaxes(title={"text": "% of the card's dense peak"}, rangemode="tozero", row=1, col=2)
    fig.update_layout(title={"text": title, "x": 0.0, "xanchor": "left"}, height=380, font={"size": 13},
                      margin={"l": 10, "r": 10, "t": 70, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig
