"""Recommendation rules: each fires on data that crosses its threshold, cites the measured number, and stays silent
otherwise."""

from __future__ import annotations

import pytest

from pimoe.optimize.report import Recommendation, RecommendationThresholds, recommend

BALANCED = {
    "count": 20,
    "mean_load_shares": [0.25, 0.26, 0.24, 0.25],
    "expert_types": ["reasoning", "computation", "mathematical", "logical"],
    "normalized_entropy": 0.8,
    "dropped_fraction": 0.0,
    "capacity_factor": 1.25,
    "latency_median_ms": 4.0,
    "latency_p95_ms": 5.0,
    "quantized": False,
    "pruned": False,
}


def _rules(found: list[Recommendation]) -> list[str]:
    return [r.rule for r in found]


def test_balanced_measurements_trigger_nothing() -> None:
    assert recommend(BALANCED) == []


def test_missing_measurements_switch_their_rules_off() -> None:
    assert recommend({}) == []
    assert recommend({"normalized_entropy": float("nan"), "latency_median_ms": None}) == []


def test_few_calls_fires_below_min_calls() -> None:
    found = recommend({**BALANCED, "count": 2})
    assert _rules(found) == ["few_calls"]
    assert found[0].value == 2 and found[0].threshold == 5 and "only 2 calls" in found[0].message
    assert recommend({**BALANCED, "count": 5}) == []


def test_overloaded_expert_names_the_expert_and_its_share() -> None:
    found = recommend({**BALANCED, "mean_load_shares": [0.61, 0.13, 0.13, 0.13]})
    assert _rules(found) == ["overloaded_expert"]
    rec = found[0]
    assert rec.expert == 0 and rec.value == pytest.approx(0.61) and rec.threshold == pytest.approx(0.375)
    assert "expert 0 (reasoning) takes 61.0% of assignments, above 37.5%" in rec.message
    assert "load_balance_weight" in rec.message
    assert recommend({**BALANCED, "mean_load_shares": [0.37, 0.21, 0.21, 0.21]}) == []


def test_idle_expert_fires_for_a_nearly_unused_expert() -> None:
    found = recommend({**BALANCED, "mean_load_shares": [0.33, 0.33, 0.33, 0.01]})
    assert _rules(found) == ["idle_expert"]
    assert found[0].expert == 3 and "expert 3 (logical) receives 1.0%" in found[0].message
    assert recommend({**BALANCED, "mean_load_shares": [0.3, 0.3, 0.3, 0.1]}) == []


def test_entropy_rules_fire_at_either_end_of_the_band() -> None:
    low = recommend({**BALANCED, "normalized_entropy": 0.12})
    assert _rules(low) == ["router_collapse"] and "0.12 of its maximum" in low[0].message
    high = recommend({**BALANCED, "normalized_entropy": 0.99})
    assert _rules(high) == ["router_undecided"] and "0.99 of its maximum" in high[0].message


def test_capacity_drops_cite_the_dropped_share_and_the_factor() -> None:
    found = recommend({**BALANCED, "dropped_fraction": 0.254})
    assert _rules(found) == ["capacity_drops"]
    assert "25.4% of assignments were dropped" in found[0].message and "(now 1.25)" in found[0].message
    assert recommend({**BALANCED, "dropped_fraction": 0.01}) == []


def test_latency_jitter_compares_p95_with_the_median() -> None:
    found = recommend({**BALANCED, "latency_median_ms": 4.0, "latency_p95_ms": 12.4})
    assert _rules(found) == ["latency_jitter"]
    assert found[0].value == pytest.approx(3.1) and "3.1× the median 4.00 ms" in found[0].message


def test_latency_budget_suggests_what_is_not_yet_applied() -> None:
    budget = RecommendationThresholds(latency_budget_ms=3.0)
    assert recommend(BALANCED, RecommendationThresholds(latency_budget_ms=10.0)) == []
    first = recommend(BALANCED, budget)
    assert _rules(first) == ["latency_budget"] and "enable_quantization" in first[0].message
    assert "4.00 ms exceeds the 3 ms budget" in first[0].message
    assert "enable_pruning" in recommend({**BALANCED, "quantized": True}, budget)[0].message
    assert "already quantised and pruned" in recommend({**BALANCED, "quantized": True, "pruned": True},
                                                       budget)[0].message


@pytest.mark.parametrize(("field", "value"), [("overload_factor", 0.9), ("idle_factor", 1.2),
                                              ("latency_budget_ms", 0.0), ("min_calls", -1)])
def test_thresholds_reject_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RecommendationThresholds(**{field: value})


def test_speedup_claim_never_quotes_a_speedup_without_its_error():
    from pimoe.optimize.report import speedup_claim

    claim = speedup_claim(1.7984, 0.0998, 0.6884, 0, 1024)
    assert claim == ("1.80× faster, output relative error 9.98e-02 (MoE contribution 6.88e-01), top-1 expert changed "
                     "for 0 of 1024 tokens")
    assert speedup_claim(0.5, 0.0).startswith("0.50× the time (slower), output relative error 0.00e+00")
    with pytest.raises(ValueError, match="speedup"):
        speedup_claim(float("nan"), 0.1)
