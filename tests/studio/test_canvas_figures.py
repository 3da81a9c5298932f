"""The live pages' chart specs (studio.figures.canvas) as data: panels, axes, values and hover text, without a browser.
The browser side (that canvas_chart.js draws them) is covered by tests/e2e."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studio.figures.canvas import (
    build_adaptation_figure,
    build_expert_load_figure,
    build_load_history_figure,
    build_loss_figure,
    build_metric_figure,
    build_routing_heatmap,
    build_softmax_figures,
    build_token_confidence_figure,
    build_topk_weights_figure,
)
from studio.figures.routing import EXPERT_TYPE_COLORS, MAX_CELL_TEXT, MAX_TOKEN_TICKS, expert_labels

TYPES = ["computation", "logical", "language", "language"]


def probs(num_tokens: int, num_experts: int = 4, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(num_tokens, num_experts))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def only_panel(spec: dict) -> dict:
    [panel] = spec["panels"]
    return panel


def test_heatmap_puts_experts_in_rows_tokens_in_columns_and_probabilities_in_cells():
    p = probs(5)
    spec = build_routing_heatmap(p, list("3+4=7"), ["number", "operator", "number", "operator", "number"], TYPES)

    heatmap = only_panel(spec)["heatmap"]
    np.testing.assert_allclose(np.array(heatmap["z"]), p.T, rtol=1e-4)
    assert heatmap["y_labels"] == expert_labels(TYPES) and (heatmap["zmin"], heatmap["zmax"]) == (0.0, 1.0)
    assert spec["x_title"] == "token" and spec["x_labels"] == list("3+4=7")
    assert only_panel(spec)["y_title"] == "expert"


def test_heatmap_hover_names_each_token_and_its_type():
    spec = build_routing_heatmap(probs(3), ["a", "+", "1"], ["word", "operator", "number"], TYPES)

    assert only_panel(spec)["heatmap"]["x_hover"] == ["token 0: 'a' (word)", "token 1: '+' (operator)",
                                                      "token 2: '1' (number)"]


def test_large_heatmap_has_no_cell_text_and_numeric_positions():
    num_tokens = MAX_CELL_TEXT  # 4 experts x 300 tokens, well above the cell-text limit
    spec = build_routing_heatmap(probs(num_tokens), ["x"] * num_tokens, ["word"] * num_tokens, TYPES)

    assert not only_panel(spec)["heatmap"]["cell_text"]
    assert spec["x_labels"] is None and spec["x_title"] == "token position"
    assert num_tokens > MAX_TOKEN_TICKS
    assert build_routing_heatmap(probs(3), ["a", "b", "c"], ["word"] * 3, TYPES)["panels"][0]["heatmap"]["cell_text"]


def test_dropped_assignments_are_marked_where_they_happened_and_named_in_the_legend():
    dropped = np.zeros((3, 4), dtype=bool)
    dropped[1, 2] = True
    spec = build_routing_heatmap(probs(3), ["a", "b", "c"], ["word"] * 3, TYPES, dropped=dropped)

    heatmap = only_panel(spec)["heatmap"]
    assert heatmap["marks"] == [[1, 2]] and heatmap["mark_name"] == "dropped (over capacity)"
    assert spec["legend"]
    assert not build_routing_heatmap(probs(3), ["a", "b", "c"], ["word"] * 3, TYPES)["legend"]


def test_heatmap_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="tokens"):
        build_routing_heatmap(probs(3), ["a", "b"], ["word"] * 3, TYPES)


def test_load_bars_are_coloured_by_expert_type_with_uniform_and_capacity_lines():
    spec = build_expert_load_figure([6, 2, 0, 4], TYPES, capacity=5)

    panel = only_panel(spec)
    assert panel["bars"]["values"] == [6, 2, 0, 4]
    assert panel["bars"]["colors"] == [EXPERT_TYPE_COLORS[t] for t in TYPES]
    assert {line["label"]: line["y"] for line in panel["hlines"]} == {"uniform": 3.0, "capacity": 5.0}
    assert panel["bars"]["hover"][0] == "E0 computation: 6 assignments (50.0%)"
    assert spec["x_labels"] == expert_labels(TYPES) and panel["y_title"] == "assignments"


def test_confidence_chart_has_two_panels_and_marks_dropped_tokens():
    spec = build_token_confidence_figure([0.9, 0.5, 0.3], [0.2, 0.9, 1.3], ["a", "b", "c"], max_entropy=math.log(4),
                                         dropped_tokens=[False, True, False])

    top, bottom = spec["panels"]
    assert [s["name"] for s in top["series"]] == ["confidence (top-1 p)", "dropped token"]
    assert top["series"][1]["x"] == [1] and top["series"][1]["marker"] == "x"
    assert (top["y_title"], bottom["y_title"]) == ("confidence", "entropy (nats)")
    assert bottom["hlines"][0]["y"] == pytest.approx(math.log(4), rel=1e-4)


def test_loss_chart_draws_one_line_per_loss_and_a_marker_per_event():
    spec = build_loss_figure([1, 2, 3], {"total": [3.0, 2.5, 2.0], "aux": [0.1, 0.1, 0.09]},
                             events=[(2, "temperature 1 → 0.5")], log_y=True)

    panel = only_panel(spec)
    assert [s["name"] for s in panel["series"]] == ["total", "aux"]
    assert panel["series"][1]["y"] == [0.1, 0.1, 0.09] and panel["log_y"] and panel["y_range"] is None
    assert spec["events"] == [[2, "temperature 1 → 0.5"]] and spec["x_title"] == "step"


def test_values_json_cannot_carry_become_gaps():
    spec = build_metric_figure([1, 2, 3], [0.5, math.nan, math.inf], name="accuracy", y_title="accuracy")

    assert only_panel(spec)["series"][0]["y"] == [0.5, None, None]
    json.loads(json.dumps(spec, allow_nan=False))  # strict JSON: what the browser's JSON.parse accepts


def test_training_charts_come_back_empty_before_the_first_step():
    from studio.training import TrainingSnapshot
    from studio.training_view import training_figures

    types = ["language", "logical", "computation"]
    charts = training_figures(TrainingSnapshot("starting", [], [], None, 0, expert_types=types), layer=0)

    assert set(charts) == {"loss", "accuracy", "latency", "load", "adaptation", "probe"}
    probe = only_panel(charts["probe"])["heatmap"]
    assert len(probe["z"]) == len(types) and all(row == [] for row in probe["z"])  # rows named, no cells yet
    assert all(s["x"] == [] for spec in charts.values() for panel in spec["panels"] for s in panel.get("series", []))
    assert only_panel(charts["loss"])["y_range"] == [1e-3, 10.0]  # an empty log axis shows where losses live
    assert only_panel(charts["load"])["heatmap"]["y_labels"] == [f"E{i} {t}" for i, t in enumerate(types)]


def test_metric_chart_keeps_the_values_and_range():
    spec = build_metric_figure([1, 2], [0.2, 0.6], name="routing accuracy", y_title="accuracy", y_range=(0.0, 1.0))

    assert only_panel(spec)["series"][0]["y"] == [0.2, 0.6]
    assert only_panel(spec)["y_range"] == [0.0, 1.0]


def test_load_history_is_an_experts_by_steps_heatmap_in_percent():
    shares = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    heatmap = only_panel(build_load_history_figure([10, 20], shares, TYPES))["heatmap"]

    np.testing.assert_allclose(np.array(heatmap["z"]), shares.T)
    assert heatmap["x"] == [10, 20] and heatmap["x_hover"] == ["step 10", "step 20"]
    assert heatmap["value_format"] == "percent"


def test_adaptation_chart_has_a_panel_per_knob_and_a_line_per_expert_bias():
    bias = np.array([[0.0, 0.0, 0.0, 0.0], [0.01, -0.01, 0.01, -0.01]])
    spec = build_adaptation_figure([1, 2], temperature=[1.0, 1.0], load_balance_weight=[0.01, 0.0125],
                                   selection_bias=bias, expert_types=TYPES, performance_score=[0.4, 0.5])

    assert [p["subtitle"] for p in spec["panels"]] == ["temperature", "load-balance weight",
                                                       "selection bias per expert", "performance score"]
    biases = spec["panels"][2]["series"]
    assert [s["name"] for s in biases] == expert_labels(TYPES)
    assert biases[1]["y"] == [0.0, -0.01]


def test_adaptation_chart_without_scores_has_three_panels():
    spec = build_adaptation_figure([1], temperature=[1.0], load_balance_weight=[0.01], selection_bias=[[0.0] * 4],
                                   expert_types=TYPES, performance_score=None)

    assert [p["subtitle"] for p in spec["panels"]] == ["temperature", "load-balance weight",
                                                       "selection bias per expert"]


def test_softmax_charts_fade_the_experts_not_chosen_and_write_the_probabilities():
    logits, probabilities = build_softmax_figures([2.0, 0.5, -1.0, 0.0], [0.7, 0.15, 0.05, 0.1], TYPES, chosen=[0, 1],
                                                  temperature=1.0, about="Token '7'")

    bars = only_panel(probabilities)["bars"]
    assert bars["values"] == [0.7, 0.15, 0.05, 0.1] and bars["text"] == ["0.70", "0.15", "0.05", "0.10"]
    assert bars["opacity"] == [1.0, 1.0, 0.35, 0.35] == only_panel(logits)["bars"]["opacity"]
    assert only_panel(logits)["bars"]["values"] == [2.0, 0.5, -1.0, 0.0]
    assert probabilities["title"] == "Token '7': probabilities at T = 1"


def test_topk_table_writes_weights_in_cells_without_a_colour_scale():
    heatmap = only_panel(build_topk_weights_figure([[0.6, 0.4, 0.0, 0.0]], TYPES, row_labels=["token 0"]))["heatmap"]

    assert heatmap["cell_text"] and heatmap["colorbar"] is False
    assert heatmap["y_labels"] == ["token 0"] and heatmap["z"] == [[0.6, 0.4, 0.0, 0.0]]


@settings(max_examples=40, deadline=None)
@given(num_tokens=st.integers(0, 90), num_experts=st.integers(1, 10), seed=st.integers(0, 2**16),
       holes=st.booleans())
def test_any_routing_heatmap_is_strict_json_of_the_probabilities(num_tokens, num_experts, seed, holes):
    """Any shape, and non-finite values where a layer produced them: the spec parses as strict JSON (what the
    browser's JSON.parse takes), keeps every cell to 5 significant digits and labels positions only while they fit."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(num_experts), size=num_tokens) if num_tokens else np.zeros((0, num_experts))
    if holes and p.size:
        p[rng.integers(0, num_tokens), rng.integers(0, num_experts)] = np.nan
    tokens = [chr(97 + i % 26) for i in range(num_tokens)]
    dropped = rng.random((num_tokens, num_experts)) < 0.05
    spec = json.loads(json.dumps(build_routing_heatmap(p, tokens, ["word"] * num_tokens, ["language"] * num_experts,
                                                       dropped=dropped), allow_nan=False))

    heatmap = only_panel(spec)["heatmap"]
    z = np.array([[np.nan if v is None else v for v in row] for row in heatmap["z"]], dtype=float).reshape(
        num_experts, num_tokens)
    np.testing.assert_allclose(z, p.T, rtol=1e-4, atol=1e-9, equal_nan=True)
    assert heatmap["marks"] == [[int(t), int(e)] for t, e in zip(*np.nonzero(dropped), strict=True)]
    assert (spec["x_labels"] is not None) == (0 < num_tokens <= MAX_TOKEN_TICKS)
    assert heatmap["cell_text"] == (num_tokens * num_experts <= MAX_CELL_TEXT)
    assert len(heatmap["x_hover"]) == num_tokens and len(heatmap["y_labels"]) == num_experts


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.integers(0, 10_000), min_size=0, max_size=50, unique=True), num_experts=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_any_training_history_gives_aligned_series(steps, num_experts, seed):
    steps = sorted(steps)
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.ones(num_experts), size=len(steps)) if steps else np.zeros((0, num_experts))
    losses = {"total": rng.random(len(steps)).tolist(), "aux": rng.random(len(steps)).tolist()}
    load = json.loads(json.dumps(build_load_history_figure(steps, shares, ["language"] * num_experts),
                                 allow_nan=False))
    loss = json.loads(json.dumps(build_loss_figure(steps, losses, log_y=True), allow_nan=False))

    heatmap = only_panel(load)["heatmap"]
    assert heatmap["x"] == steps and len(heatmap["z"]) == num_experts
    assert all(len(row) == len(steps) for row in heatmap["z"])
    assert all(series["x"] == steps and len(series["y"]) == len(steps) for series in only_panel(loss)["series"])
    assert only_panel(loss)["y_range"] == (None if steps else [1e-3, 10.0])
