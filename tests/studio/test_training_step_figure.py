"""The training-step sweep figure, checked as data: one line per contender that ran, p95 whiskers, MFU only where known."""

from __future__ import annotations

import pytest

from studio.figures.training_step import MFU_UNKNOWN, build_train_step_figure, format_mfu


def _row(tokens: int, scale: float, mfu: float | None = None, grouped_mm_error: str | None = None) -> dict:
    row = {"tokens": tokens}
    for name, ms in (("fast", 2.0), ("grouped_mm", 3.0), ("dense", 1.0), ("sorted", 5.0)):
        row[f"{name}_median_ms"] = ms * scale
        row[f"{name}_p95_ms"] = ms * scale * 1.5
        row[f"{name}_mfu"] = None if mfu is None else mfu * ms
    if grouped_mm_error:
        row.update({"grouped_mm_median_ms": None, "grouped_mm_p95_ms": None, "grouped_mm_mfu": None,
                    "grouped_mm_error": grouped_mm_error})
    return row


def test_one_line_per_contender_with_medians_by_ascending_tokens_and_p95_whiskers() -> None:
    fig = build_train_step_figure([_row(1024, 4.0), _row(256, 1.0)])
    names = [trace.name for trace in fig.data]
    assert names == ["PiMoE fast path", "argsort + grouped_mm", "dense FFN (equal active)", "PiMoE sorted dispatch"]
    fast = fig.data[0]
    assert list(fast.x) == [256, 1024] and list(fast.y) == [2.0, 8.0]
    assert list(fast.error_y.array) == pytest.approx([1.0, 4.0])  # p95 - median
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_without_a_known_peak_there_is_no_mfu_panel_and_the_title_says_so() -> None:
    fig = build_train_step_figure([_row(256, 1.0)])
    assert all(trace.xaxis in (None, "x") for trace in fig.data)
    assert MFU_UNKNOWN in fig.layout.annotations[0].text
    assert "xaxis2" not in fig.layout.to_plotly_json()


def test_with_a_known_peak_the_mfu_panel_shows_percentages() -> None:
    fig = build_train_step_figure([_row(256, 1.0, mfu=0.1), _row(1024, 1.0, mfu=0.2)])
    mfu = [trace for trace in fig.data if trace.xaxis == "x2"]
    assert [trace.name for trace in mfu][0] == "PiMoE fast path"
    assert list(mfu[0].y) == pytest.approx([20.0, 40.0])  # 100 x mfu, mfu = 0.1 / 0.2 x 2 for fast
    assert [a.text for a in fig.layout.annotations] == ["ms per step", "MFU"]


def test_a_contender_that_did_not_run_is_left_out() -> None:
    fig = build_train_step_figure([_row(256, 1.0, grouped_mm_error="ValueError: typed experts")])
    assert "argsort + grouped_mm" not in [trace.name for trace in fig.data]


def test_no_rows_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="run the training-step sweep"):
        build_train_step_figure([])


def test_mfu_is_a_percentage_or_says_the_peak_is_unknown() -> None:
    assert format_mfu(0.3512) == "35.1%"
    assert format_mfu(None) == MFU_UNKNOWN == "n/a — peak unknown"
