"""Plotly figure builders as data: traces, axis titles and values, checked without a browser."""

import os
import subprocess
import sys

from studio.figures.routing import (
    EXPERT_TYPE_COLORS,
    build_latency_figure,
    build_throughput_figure,
    expert_color,
)

TYPES = ["computation", "logical", "language", "language"]


ROWS = [
    {"batch": 1, "seq": 64, "tokens": 64, "layer_us": 100.0, "layer_p95_us": 130.0, "layer_tokens_per_s": 640000.0,
     "loop_us": 300.0, "loop_p95_us": 320.0, "dense_us": None, "dense_p95_us": None},
    {"batch": 4, "seq": 64, "tokens": 256, "layer_us": 250.0, "layer_p95_us": 260.0, "layer_tokens_per_s": 1024000.0,
     "loop_us": 900.0, "loop_p95_us": 1000.0, "dense_us": None, "dense_p95_us": None},
]


def test_latency_figure_groups_measured_series_with_p95_whiskers():
    fig = build_latency_figure(ROWS)

    assert [trace.name for trace in fig.data] == ["PiMoE layer", "loop over experts"]  # no dense was measured
    assert list(fig.data[0].x) == ["1×64", "4×64"]
    assert list(fig.data[0].error_y.array) == [30.0, 10.0]


def test_throughput_figure_orders_shapes_by_tokens_per_call():
    rows = [ROWS[1], ROWS[0], {**ROWS[0], "batch": 2, "seq": 64, "tokens": 128, "layer_tokens_per_s": 900000.0}]

    fig = build_throughput_figure(rows)

    assert list(fig.data[0].x) == ["1×64", "2×64", "4×64"]
    assert list(fig.data[0].y) == [640000.0, 900000.0, 1024000.0]
    assert fig.layout.yaxis.title.text == "tokens / s"


def test_custom_types_get_the_same_colour_in_another_process():
    # str hashes differ between processes (PYTHONHASHSEED), so only a fresh interpreter shows the colour is stable
    code = "from studio.figures.routing import expert_color; print(expert_color('scientific'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == expert_color("scientific")
    assert expert_color("scientific").startswith("#") and expert_color("scientific") not in EXPERT_TYPE_COLORS.values()
