"""The reproducibility check (bench/repro_check.py) on the CPU: its GPU run cannot fail on the script, and its
comparison tells equal runs from drifted ones."""

from __future__ import annotations

import json

import pytest
import torch

from bench.repro_check import compare, main, setting_context


def test_cpu_training_reproduces_bit_for_bit_under_every_setting(tmp_path) -> None:
    out = tmp_path / "repro.json"
    assert main(["--preset", "tiny", "--device", "cpu", "--steps", "3", "--batch-size", "2", "--seq-len", "16",
                 "--num-train", "20", "--settings", "default,deterministic,sdpa=math", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["default", "deterministic", "sdpa=math"]
    for row in rows:
        assert row["bitwise_equal"] and row["first_differing_step"] is None
        assert row["max_parameter_difference"] == 0.0 and row["parameters_differing"] == 0


def test_compare_reports_where_two_runs_part() -> None:
    params = torch.zeros(5)
    drifted = params.clone()
    drifted[3] = 1e-3
    row = compare(([1.0, 2.0, 3.0], params), ([1.0, 2.5, 3.25], drifted))
    assert not row["bitwise_equal"] and row["first_differing_step"] == 1 and row["steps_differing"] == 2
    assert row["max_loss_difference"] == pytest.approx(0.5) and row["parameters_differing"] == 1
    assert row["max_parameter_difference"] == pytest.approx(1e-3)
    # equal losses but one parameter apart is still not reproducible
    assert not compare(([1.0], params), ([1.0], drifted))["bitwise_equal"]


def test_deterministic_setting_restores_torchs_mode_and_unknown_settings_are_named() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with setting_context("deterministic"):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before
    for bad in ("sdpa=fast", "fastest", "sdpa"):
        with pytest.raises(ValueError, match="unknown setting"):
            setting_context(bad)
