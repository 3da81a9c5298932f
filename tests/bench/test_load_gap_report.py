"""bench/load_sessions.py's gap report: each on-screen training gap set against the compute gate's trace."""

from __future__ import annotations

import math

import pytest

from bench.load_sessions import explain_gaps


def test_a_gap_is_explained_by_the_holds_inside_it(tmp_path):
    trace = tmp_path / "gate.tsv"
    t0 = 1_000.0
    trace.write_text("".join(f"{label}\t{t0 + a - 0.01:.4f}\t{t0 + a:.4f}\t{t0 + b:.4f}\n" for label, a, b in [
        ("step r1", 0.0, 0.1),
        ("build r2", 0.2, 1.2),   # inside the gap: the longest hold
        ("routing the text", 1.3, 1.5),
        ("step r1", 2.3, 2.35),   # ends inside the gap
        ("step r2", 3.0, 3.1),    # after it
    ]))
    # the page showed step 1 at t0 + 0.1 and step 2 only at t0 + 2.5; a later 0.5 s interval is no gap
    timeline = [[(t0 + 0.1) * 1e3, "running", 1], [(t0 + 2.5) * 1e3, "running", 2], [(t0 + 3.0) * 1e3, "running", 3]]
    (line,) = explain_gaps(trace, [timeline], ["r1"])
    assert line.startswith("training 0 gap 2.4 s (steps 1->2 shown): server took 1 steps of all runs, 1 of its own run")
    assert "build 1.00 s" in line and "routing 0.20 s" in line and "longest 'build r2' 1.00 s" in line
    assert "gate idle 1.15 s" in line  # 2.4 s less the 1.25 s held


def test_starting_counts_from_the_press_even_when_the_page_never_showed_starting():
    from bench.load_sessions import training_figures

    # page made at 0, idle at 1 s, Start pressed at 10 s, its first render after the press already "running"
    timeline = [[0, None, 0], [1_000, "idle", 0], [10_000, "pressed", 0], [10_400, "running", 0],
                [10_900, "running", 1], [11_500, "running", 2], [12_100, "running", 3]]
    figures = training_figures(timeline, window_end_ms=12_500)
    assert figures["starting_s"] == 0.4 and figures["first_step_s"] == 0.9
    older = [[0, None, 0], [1_000, "idle", 0], [9_800, "starting", 0], [10_400, "running", 1]]
    assert training_figures(older, window_end_ms=11_000)["starting_s"] == 0.6


def test_display_lag_is_measured_from_the_servers_step_to_the_page(tmp_path):
    from bench.load_sessions import display_lags

    trace = tmp_path / "gate.tsv"
    t0 = 1_000.0
    steps = [("step r1", 0.0, 0.1), ("step r2", 0.1, 0.2), ("step r1", 0.3, 0.4), ("step r1", 1.9, 2.0)]
    trace.write_text("".join(f"{label}\t{t0 + a:.4f}\t{t0 + a:.4f}\t{t0 + b:.4f}\n" for label, a, b in steps))
    # r1's steps 1, 2, 3 end at 0.1, 0.4, 2.0 and are shown at 0.3, 0.5, 2.6; r2 shows nothing yet
    timeline = [[(t0 + 0.05) * 1e3, "running", 0], [(t0 + 0.3) * 1e3, "running", 1], [(t0 + 0.5) * 1e3, "running", 2],
                [(t0 + 2.6) * 1e3, "running", 3]]
    r1, r2 = display_lags(trace, [timeline, []], ["r1", "r2"], (t0 * 1e3, (t0 + 3) * 1e3))
    assert r1["lag_p50_s"] == pytest.approx(0.2, abs=1e-3) and r1["lag_max_s"] == pytest.approx(0.6, abs=1e-3)
    assert r1["server_gap_max_s"] == pytest.approx(1.6, abs=1e-3)
    assert math.isnan(r2["lag_p50_s"])
