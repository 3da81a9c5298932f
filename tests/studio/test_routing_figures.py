"""Figure builders as data: traces, axis titles and values, checked without a browser."""

import math
import os
import subprocess
import sys

import numpy as np
import plotly.graph_objects as go
import pytest

from studio.figures.routing import (
    EXPERT_TYPE_COLORS,
    MAX_CELL_TEXT,
    MAX_TOKEN_TICKS,
    build_adaptation_figure,
    build_expert_load_figure,
    build_latency_figure,
    build_load_history_figure,
    build_loss_figure,
    build_metric_figure,
    build_routing_heatmap,
    build_softmax_figure,
    build_throughput_figure,
    build_token_confidence_figure,
    build_topk_weights_figure,
    expert_color,
    expert_labels,
)

TYPES = ["computation", "logical", "language", "language"]


def probs(num_tokens: int, num_experts: int = 4, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(num_tokens, num_experts))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_heatmap_puts_experts_on_y_tokens_on_x_and_probabilities_in_z():
    p = probs(5)
    fig = build_routing_heatmap(p, list("3+4=7"), ["number", "operator", "number", "operator", "number"], TYPES)

    heatmap = fig.data[0]
    assert isinstance(heatmap, go.Heatmap)
    np.testing.assert_allclose(np.asarray(heatmap.z), p.T)
    assert list(heatmap.y) == expert_labels(TYPES)
    assert fig.layout.xaxis.title.text == "token" and fig.layout.yaxis.title.text == "expert"
    assert list(fig.layout.xaxis.ticktext) == list("3+4=7")


def test_heatmap_hover_names_token_type_expert_and_probability():
    fig = build_routing_heatmap(probs(3), ["a", "+", "1"], ["word", "operator", "number"], TYPES)

    heatmap = fig.data[0]
    assert np.asarray(heatmap.customdata).shape == (4, 3, 2)
    assert heatmap.customdata[2][1].tolist() == ["+", "operator"]  # expert 2, token 1: the token and its type
    for part in ("%{customdata[0]}", "%{customdata[1]}", "%{y}", "%{z"):
        assert part in heatmap.hovertemplate


def test_large_heatmap_has_no_cell_text_and_numeric_positions():
    num_tokens = MAX_CELL_TEXT  # 4 experts x 300 tokens, well above the cell-text limit
    fig = build_routing_heatmap(probs(num_tokens), ["x"] * num_tokens, ["word"] * num_tokens, TYPES)

    assert fig.data[0].texttemplate is None
    assert fig.layout.xaxis.ticktext is None and fig.layout.xaxis.title.text == "token position"
    assert num_tokens > MAX_TOKEN_TICKS


def test_small_heatmap_writes_probabilities_in_the_cells():
    assert build_routing_heatmap(probs(3), ["a", "b", "c"], ["word"] * 3, TYPES).data[0].texttemplate


def test_dropped_assignments_are_marked_where_they_happened():
    dropped = np.zeros((3, 4), dtype=bool)
    dropped[1, 2] = True
    fig = build_routing_heatmap(probs(3), ["a", "b", "c"], ["word"] * 3, TYPES, dropped=dropped)

    marks = fig.data[1]
    assert marks.name == "dropped (over capacity)"
    assert list(marks.x) == [1] and list(marks.y) == [expert_labels(TYPES)[2]]


def test_heatmap_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="tokens"):
        build_routing_heatmap(probs(3), ["a", "b"], ["word"] * 3, TYPES)


def test_load_bars_are_coloured_by_expert_type_with_uniform_and_capacity_lines():
    fig = build_expert_load_figure([6, 2, 0, 4], TYPES, capacity=5)

    bars = fig.data[0]
    assert list(bars.y) == [6, 2, 0, 4]
    assert list(bars.marker.color) == [EXPERT_TYPE_COLORS[t] for t in TYPES]
    lines = sorted(shape.y0 for shape in fig.layout.shapes)
    assert lines == [3.0, 5.0]  # uniform = 12 / 4, capacity = 5
    assert fig.layout.yaxis.title.text == "assignments"


def test_confidence_figure_has_two_rows_and_marks_dropped_tokens():
    fig = build_token_confidence_figure([0.9, 0.5, 0.3], [0.2, 0.9, 1.3], ["a", "b", "c"], max_entropy=math.log(4),
                                        dropped_tokens=[False, True, False])

    names = [trace.name for trace in fig.data]
    assert names == ["confidence (top-1 p)", "entropy (nats)", "dropped token"]
    assert list(fig.data[2].x) == [1]
    assert fig.layout.yaxis.title.text == "confidence" and fig.layout.yaxis2.title.text == "entropy (nats)"


def test_loss_figure_draws_one_line_per_loss_and_a_marker_per_event():
    fig = build_loss_figure([1, 2, 3], {"total": [3.0, 2.5, 2.0], "aux": [0.1, 0.1, 0.09]},
                            events=[(2, "temperature 1 → 0.5")])

    assert [trace.name for trace in fig.data] == ["total", "aux"]
    assert [shape.x0 for shape in fig.layout.shapes] == [2]
    assert fig.layout.annotations[0].text == "temperature 1 → 0.5"
    assert fig.layout.xaxis.title.text == "step"


def test_training_charts_come_back_empty_before_the_first_step():
    from studio.training import TrainingSnapshot
    from studio.training_view import training_figures

    types = ["language", "logical", "computation"]
    figures = training_figures(TrainingSnapshot("starting", [], [], None, 0, expert_types=types), layer=0)

    assert set(figures) == {"loss", "accuracy", "latency", "load", "adaptation", "probe"}
    assert figures["probe"].data[0].z.shape == (len(types), 0)  # the probe's heatmap too, before any probe ran
    assert all(len(trace.x) == 0 for fig in figures.values() for trace in fig.data if trace.x is not None)
    assert list(figures["loss"].layout.yaxis.range) == [-3, 1]  # an empty log axis shows where losses live
    assert list(figures["load"].data[0].y) == [f"E{i} {t}" for i, t in enumerate(types)]  # rows named already


def test_event_labels_near_the_right_edge_extend_leftwards():
    fig = build_metric_figure([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], name="accuracy", y_title="accuracy",
                              events=[(1, "early"), (4, "late")])

    anchors = {a.text: a.xanchor for a in fig.layout.annotations}
    assert anchors == {"early": "left", "late": "right"}


def test_metric_figure_keeps_the_values_and_range():
    fig = build_metric_figure([1, 2], [0.2, 0.6], name="routing accuracy", y_title="accuracy", y_range=(0.0, 1.0))

    assert list(fig.data[0].y) == [0.2, 0.6]
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.0)


def test_load_history_is_a_steps_by_experts_heatmap():
    shares = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    fig = build_load_history_figure([10, 20], shares, TYPES)

    np.testing.assert_allclose(np.asarray(fig.data[0].z), shares.T)
    assert list(fig.data[0].x) == [10, 20]


def test_adaptation_figure_has_a_row_per_knob_and_a_line_per_expert_bias():
    bias = np.array([[0.0, 0.0, 0.0, 0.0], [0.01, -0.01, 0.01, -0.01]])
    fig = build_adaptation_figure([1, 2], temperature=[1.0, 1.0], load_balance_weight=[0.01, 0.0125],
                                  selection_bias=bias, expert_types=TYPES, performance_score=[0.4, 0.5])

    names = [trace.name for trace in fig.data]
    assert names[:2] == ["temperature", "load-balance weight"] and names[-1] == "performance score"
    assert names[2:-1] == expert_labels(TYPES)
    assert list(fig.data[3].y) == [0.0, -0.01]
    assert [a.text for a in fig.layout.annotations][:4] == ["temperature", "load-balance weight",
                                                            "selection bias per expert", "performance score"]


def test_adaptation_figure_without_scores_has_three_rows():
    fig = build_adaptation_figure([1], temperature=[1.0], load_balance_weight=[0.01], selection_bias=[[0.0] * 4],
                                  expert_types=TYPES, performance_score=None)

    assert "performance score" not in [trace.name for trace in fig.data]
    assert [a.text for a in fig.layout.annotations][:3] == ["temperature", "load-balance weight",
                                                            "selection bias per expert"]
    axes = {key for key in fig.layout.to_plotly_json() if key.startswith("yaxis")}
    assert axes == {"yaxis", "yaxis2", "yaxis3"}  # three rows, no fourth


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


def test_softmax_figure_fades_the_experts_not_chosen():
    fig = build_softmax_figure([2.0, 0.5, -1.0, 0.0], [0.7, 0.15, 0.05, 0.1], TYPES, chosen=[0, 1], temperature=1.0)

    assert list(fig.data[1].y) == [0.7, 0.15, 0.05, 0.1]
    assert list(fig.data[1].marker.opacity) == [1.0, 1.0, 0.35, 0.35]


def test_topk_table_writes_weights_in_cells():
    fig = build_topk_weights_figure([[0.6, 0.4, 0.0, 0.0]], TYPES, row_labels=["token 0"])

    assert fig.data[0].texttemplate == "%{z:.2f}"
    assert list(fig.data[0].y) == ["token 0"]


def test_custom_types_get_the_same_colour_in_another_process():
    # str hashes differ between processes (PYTHONHASHSEED), so only a fresh interpreter shows the colour is stable
    code = "from studio.figures.routing import expert_color; print(expert_color('scientific'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == expert_color("scientific")
    assert expert_color("scientific").startswith("#") and expert_color("scientific") not in EXPERT_TYPE_COLORS.values()
