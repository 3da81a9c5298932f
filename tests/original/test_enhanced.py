"""EnhancedPiMoEIntegration: measured per-call metrics, what each level switches, the optimisation pipeline and the
report built from the calls actually made."""

from __future__ import annotations

import pytest
import torch

from pimoe.measure.metrics import routing_stats
from pimoe.original.enhanced import create_enhanced_pimoe_integration

TYPES = ("reasoning", "computation", "mathematical", "logical")


def _tiny(**kwargs):
    torch.manual_seed(0)
    return create_enhanced_pimoe_integration(32, 4, expert_types=TYPES, **kwargs)


def _skewed_inputs(integration, seed: int = 1):
    """Make expert 0 the router's favourite along a direction the inputs share."""
    direction = torch.randn(32, generator=torch.Generator().manual_seed(7))
    direction /= direction.norm()
    with torch.no_grad():
        integration.system.router.gate.weight[0] += 3.0 * direction
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(4, 32, 32, generator=generator) + 2.0 * direction


def test_latency_is_measured_per_call_and_grows_with_the_input() -> None:
    integration = _tiny(measure_memory=False)
    with torch.inference_mode():
        integration(torch.randn(1, 4, 32))  # warm-up: the first call pays one-off costs
        small = [integration(torch.randn(1, 4, 32), return_metrics=True)[1] for _ in range(5)]
        large = [integration(torch.randn(16, 512, 32), return_metrics=True)[1] for _ in range(3)]
    assert all(m["latency_ms"] > 0 for m in small + large)
    assert min(m["latency_ms"] for m in large) > min(m["latency_ms"] for m in small)
    for metrics in small + large:
        assert metrics["throughput_tokens_per_sec"] == pytest.approx(metrics["tokens"] / (metrics["latency_ms"] / 1e3))
    assert [m["tokens"] for m in (small[0], large[0])] == [4, 16 * 512]


def test_metrics_match_the_routing_of_the_same_call() -> None:
    integration = _tiny()
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    with torch.inference_mode():
        out, info = integration(torch.randn(2, 16, 32), attention_mask=mask, return_metrics=True,
                                return_routing_info=True)
    stats = routing_stats(info["routing_info"])
    assert out.shape == (2, 16, 32)
    assert info["tokens"] == 26 == stats.tokens
    for key in ("expert_utilization", "load_balance_score", "max_violation", "routing_entropy", "normalized_entropy",
                "mean_confidence", "dropped_fraction"):
        assert info[key] == pytest.approx(getattr(stats, key)), key
    assert info["load_shares"] == pytest.approx(list(stats.load_shares))
    assert info["memory_mb"] is None and "not measured" in info["memory_method"]  # CPU default: latency stays clean


def test_memory_is_measured_not_derived() -> None:
    integration = _tiny(measure_memory=True)
    x = torch.randn(16, 512, 32)
    with torch.inference_mode():
        _, metrics = integration(x, return_metrics=True)
    # The layer must at least hold its gathered (T*K, D) tokens and its (T, D) output at once: 3 x the input's size.
    input_mb = x.numel() * x.element_size() / 2**20
    assert metrics["memory_mb"] > 2.5 * input_mb, metrics
    assert "peak" in metrics["memory_method"]


def test_levels_switch_what_the_table_says() -> None:
    basic, advanced, maximum = (_tiny(optimization_level=level) for level in ("basic", "advanced", "maximum"))
    assert basic.system.router.config.capacity_factor is None
    assert basic.system.router.config.use_selection_bias is False
    assert not basic.config.enable_quantization and not basic.config.enable_pruning
    assert advanced.system.router.config.capacity_factor == 1.25
    assert advanced.system.router.config.use_selection_bias is True
    assert maximum.config.enable_quantization and maximum.config.enable_pruning
    overridden = _tiny(optimization_level="maximum", enable_quantization=False,
                       router_config={"capacity_factor": 2.0})
    assert not overridden.config.enable_quantization and overridden.config.enable_pruning
    assert overridden.system.router.config.capacity_factor == 2.0


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="optimization_level"):
        _tiny(optimization_level="ludicrous")
    with pytest.raises(ValueError, match="unknown arguments"):
        _tiny(enable_turbo=True)
    with pytest.raises(ValueError, match="enable_adaptation=True"):
        _tiny()(torch.randn(1, 4, 32), return_adaptation_info=True)


def test_maximum_level_prunes_and_quantises_with_measurements() -> None:
    # max_quantized_slowdown: keep the int8 layer whatever a busy test machine's timings say (int8 measured faster
    # on an idle one); this test is about what the pipeline does, not about speed.
    integration = _tiny(optimization_level="maximum", enable_distillation=True, distill_steps=5,
                        max_quantized_slowdown=1e3)
    calibration = torch.randn(4, 32, 32)
    with torch.inference_mode():
        reference = integration(calibration)
    before = integration.system_stats()
    steps = {step["name"]: step for step in integration.optimize_for_inference(calibration)}
    assert list(steps) == ["eval", "selection_bias", "prune", "distill", "quantize", "compile"]
    assert steps["prune"]["status"] == "applied"
    assert steps["prune"]["after"]["parameters"] < steps["prune"]["before"]["parameters"]
    assert steps["distill"]["status"] == "applied"
    assert steps["distill"]["after"]["distance_to_teacher"] < steps["distill"]["before"]["distance_to_teacher"]
    assert steps["quantize"]["status"] == "applied"
    assert steps["quantize"]["after"]["storage_bytes"] < steps["quantize"]["before"]["storage_bytes"]
    assert steps["compile"]["status"] == "skipped" and "compile=False" in steps["compile"]["detail"]
    after = integration.system_stats()
    assert after["int8_linears"] == 8 and after["pruned"] and after["quantization"] == "int8 dynamic (CPU)"
    assert after["storage_bytes"] < before["storage_bytes"]
    assert sum(after["expert_widths"]) < sum(before["expert_widths"])
    with torch.inference_mode():
        optimised = integration(calibration)
    delta = (optimised - calibration).norm() / (reference - calibration).norm()
    assert torch.isfinite(optimised).all() and 0.5 < float(delta) < 1.5  # same layer, approximately


def test_advanced_level_fits_the_selection_bias_to_the_calibration_batch() -> None:
    integration = _tiny(optimization_level="advanced")
    batches = _skewed_inputs(integration)
    step = next(s for s in integration.optimize_for_inference(next(batches)) if s["name"] == "selection_bias")
    assert step["status"] == "applied"
    assert step["before"]["max_violation"] > 0.8 and step["after"]["max_violation"] < 0.2
    with torch.inference_mode():
        _, metrics = integration(next(batches), return_metrics=True)
    assert metrics["max_violation"] < 0.4  # a held-out batch from the same distribution stays balanced


def test_selection_bias_step_is_skipped_without_a_calibration_batch() -> None:
    steps = _tiny(optimization_level="advanced").optimize_for_inference()
    step = next(s for s in steps if s["name"] == "selection_bias")
    assert step["status"] == "skipped" and "no calibration batch" in step["detail"]


def test_adaptation_info_comes_from_the_controller() -> None:
    integration = _tiny(enable_adaptation=True, adaptation_rate=0.05, performance_threshold=0.95)
    batches = _skewed_inputs(integration)
    with torch.inference_mode():
        _, first = integration(next(batches), return_adaptation_info=True, return_metrics=True)
        _, second = integration(next(batches), return_adaptation_info=True)
    info = first["adaptation_info"]
    assert 0.0 <= info["performance_score"] < 0.95 and info["adaptation_applied"] is True
    assert info["max_violation"] == pytest.approx(first["max_violation"])
    assert second["adaptation_info"]["step"] == 1
    assert integration.system.router.selection_bias[0] < 0  # the overloaded expert was pushed down


def test_report_before_any_call_says_so_instead_of_inventing_numbers() -> None:
    report = _tiny().get_optimization_report()
    assert report["performance_metrics"]["count"] == 0
    assert "no forward calls" in report["performance_metrics"]["explanation"]
    assert "latency_median_ms" not in report["performance_metrics"]
    assert report["recommendations"] == []
    assert report["system_stats"]["num_experts"] == 4 and report["system_stats"]["device"] == "cpu"


def test_report_aggregates_the_calls_made_and_cites_measured_numbers() -> None:
    integration = _tiny()
    batches = _skewed_inputs(integration)
    with torch.inference_mode():
        calls = [integration(next(batches), return_metrics=True)[1] for _ in range(6)]
    report = integration.get_optimization_report()
    performance = report["performance_metrics"]
    assert performance["count"] == 6 and performance["tokens_total"] == 6 * 128
    latencies = sorted(c["latency_ms"] for c in calls)
    assert performance["latency_min_ms"] == pytest.approx(latencies[0])
    assert performance["latency_p95_ms"] == pytest.approx(latencies[-1])
    overloaded = [r for r in report["recommendations"] if r["rule"] == "overloaded_expert"]
    assert overloaded and overloaded[0]["expert"] == 0
    share = performance["mean_load_shares"][0]
    assert overloaded[0]["value"] == pytest.approx(share) and f"{share:.1%}" in overloaded[0]["message"]

    integration.optimize_for_inference()
    fresh = integration.get_optimization_report()["performance_metrics"]
    assert fresh["count"] == 0 and fresh["total_calls"] == 6  # the optimised model has no calls of its own yet


def test_all_padding_calls_are_recorded_but_not_scored() -> None:
    integration = _tiny(enable_adaptation=True)
    with torch.inference_mode():
        out, info = integration(torch.randn(2, 8, 32), attention_mask=torch.zeros(2, 8), return_metrics=True,
                                return_adaptation_info=True)
    assert info["tokens"] == 0 and info["adaptation_info"]["adaptation_applied"] is False
    assert "no tokens routed" in info["adaptation_info"]["changes"][0]
    assert integration.system.router.config.use_selection_bias is False  # no knob moved
    performance = integration.get_optimization_report()["performance_metrics"]
    assert performance["count"] == 1 and performance["load_balance_score"] is None
    assert performance["normalized_entropy"] is None
