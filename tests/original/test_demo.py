"""The demo and the systems table: measured numbers for all three systems on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from pimoe.cli.commands import main as cli_main
from pimoe.original.demo import DemoConfig, PiMoEDemo, run_pimoe_demo
from pimoe.original.systems_bench import SYSTEMS, format_systems_table, run_systems_benchmark

TINY = {"hidden_size": 32, "num_experts": 4, "sequence_length": 16, "batch_size": 2, "num_iterations": 3}


def test_demo_returns_measured_numbers_for_all_three_systems(tmp_path) -> None:
    path = tmp_path / "demo.json"
    results = PiMoEDemo(DemoConfig(**TINY, save_results=True, results_path=path, enable_visualization=True,
                                   skewed_inputs=True)).run_comprehensive_demo()
    assert [row["system"] for row in results.summary] == ["basic", "enhanced", "adaptive"]
    for row in results.summary:
        assert row["latency_median_ms"] > 0 and row["tokens_per_sec"] > 0
        assert 0 <= row["load_balance_score"] <= 1 and 0 < row["expert_utilization"] <= 1
    assert results["basic"]["first_call"]["routing_decisions_shape"] == [32, 2]
    assert results.basic["latency"]["calls"] == 3
    # the skewed inputs give the balancing features something to do, and the results show it
    bias = next(s for s in results.enhanced["optimization_steps"] if s["name"] == "selection_bias")
    assert bias["status"] == "applied" and bias["after"]["max_violation"] < bias["before"]["max_violation"]
    assert results.adaptive["adaptations_applied"] >= 1
    assert results.adaptive["first"]["performance_score"] < 0.8
    assert len(results.series["adaptive"]["performance_score"]) == 3
    saved = json.loads(path.read_text())
    assert saved["summary"] == results.summary  # JSON floats round-trip exactly
    assert results.saved_to == str(path)


def test_a_results_path_that_cannot_be_written_fails_before_the_scenarios_run(tmp_path, monkeypatch) -> None:
    demo = PiMoEDemo(DemoConfig(**TINY, save_results=True, results_path=tmp_path / "demo.json" / "inside.json"))
    (tmp_path / "demo.json").write_text("a file where a folder would go")

    def must_not_run():
        raise AssertionError("a scenario ran before the results path was checked")

    monkeypatch.setattr(demo, "run_basic", must_not_run)
    with pytest.raises(ValueError, match="cannot create the results file's folder"):
        demo.run_comprehensive_demo()


def test_demo_without_visualization_keeps_no_series() -> None:
    results = run_pimoe_demo(**TINY)
    assert results.series is None and results.saved_to is None
    assert "series" not in results.basic


def test_demo_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="num_iterations"):
        DemoConfig(num_iterations=0)
    with pytest.raises(ValueError, match="either a DemoConfig or keyword overrides"):
        run_pimoe_demo(DemoConfig(), num_iterations=2)


def test_demo_command_prints_the_table_and_saves(tmp_path, capsys) -> None:
    path = tmp_path / "out.json"
    code = cli_main(["demo", "--hidden-size", "32", "--num-experts", "4", "--sequence-length", "8",
                     "--batch-size", "2", "--num-iterations", "2", "--save", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "PiMoE demo on" in out and "adaptive" in out
    assert json.loads(path.read_text())["config"]["num_iterations"] == 2


def test_systems_benchmark_measures_basic_enhanced_and_adaptive() -> None:
    rows, meta = run_systems_benchmark(hidden_size=32, num_experts=4, intermediate_size=64, shapes=((2, 16),),
                                       routing="skewed", warmup=1, repeats=3)
    assert [r.system for r in rows] == list(SYSTEMS)
    for row in rows:
        assert row.latency_median_ms > 0 and row.latency_p95_ms >= row.latency_median_ms
        assert row.tokens_per_s == pytest.approx(32 / (row.latency_median_ms / 1e3))
        assert row.model_mb > 0 and 0 < row.expert_utilization <= 1
    basic, enhanced, _ = rows
    # int8 experts are kept only when measured no slower, so the model shrinks exactly when quantisation was applied
    quantized = any(step.startswith("quantize applied") for step in enhanced.applied)
    assert (enhanced.model_mb < basic.model_mb) == quantized
    assert enhanced.max_violation < basic.max_violation  # bias fitted on a calibration batch, held-out batch timed
    assert meta["device"] == "cpu" and meta["device_name"]
    table = format_systems_table(rows, meta)
    assert "Basic" in table and "Enhanced: eval applied" in table and meta["device_name"] in table


def test_bench_systems_command_writes_json(tmp_path, capsys) -> None:
    path = tmp_path / "systems.json"
    code = cli_main(["bench", "--systems", "--hidden-size", "32", "--num-experts", "4", "--intermediate-size", "64",
                     "--shapes", "2x8", "--repeats", "2", "--warmup", "1", "--json", str(path)])
    assert code == 0
    saved = json.loads(path.read_text())
    assert [r["system"] for r in saved["rows"]] == list(SYSTEMS)
    assert "PiMoE systems on" in capsys.readouterr().out
