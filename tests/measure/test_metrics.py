"""Metrics: definitions at their extremes, measured (not computed) latency and memory."""

from __future__ import annotations

import math
import time

import pytest
import torch

from pimoe import PiMoEConfig, PiMoESystem
from pimoe.measure.metrics import (
    load_balance_score,
    max_violation,
    measure_back_to_back,
    measure_latency,
    measure_peak_memory,
    routing_accuracy,
    routing_stats,
)


def test_load_balance_score_is_one_when_uniform_and_zero_when_collapsed() -> None:
    assert load_balance_score(torch.tensor([5, 5, 5, 5])) == pytest.approx(1.0)
    assert load_balance_score(torch.tensor([20, 0, 0, 0])) == pytest.approx(0.0)
    assert 0.0 < load_balance_score(torch.tensor([10, 5, 3, 2])) < 1.0


def test_max_violation_measures_the_most_loaded_expert() -> None:
    assert max_violation(torch.tensor([4, 4, 4, 4])) == pytest.approx(0.0)
    assert max_violation(torch.tensor([8, 4, 2, 2])) == pytest.approx(8 / 4 - 1)


def test_latency_reflects_the_work_done() -> None:
    small = measure_latency(lambda: torch.randn(64, 64) @ torch.randn(64, 64), repeats=5)
    large = measure_latency(lambda: torch.randn(768, 768) @ torch.randn(768, 768), repeats=5)
    assert large.median_ms > small.median_ms
    assert small.min_ms <= small.median_ms <= small.p95_ms


def test_peak_memory_sees_a_large_allocation() -> None:
    result = measure_peak_memory(lambda: torch.ones(64 * 2**20 // 4).sum())  # 64 MiB of float32, touched
    assert result["peak_mb"] >= 48, result


def test_routing_accuracy_counts_only_labelled_tokens() -> None:
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig.tiny()).eval()
    _, info = system(torch.randn(1, 10, 32), return_routing_info=True)
    expert_type_ids = torch.arange(4)
    targets = info.top1.clone()
    targets[:4] = (targets[:4] + 1) % 4  # four wrong
    targets[-2:] = -1  # two unlabelled
    assert routing_accuracy(info, targets, expert_type_ids) == pytest.approx(4 / 8)
    assert math.isnan(routing_accuracy(info, torch.full((10,), -1), expert_type_ids))


def test_routing_stats_follow_the_routing_record() -> None:
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig.tiny()).eval()
    _, info = system(torch.randn(2, 20, 32), return_routing_info=True)
    stats = routing_stats(info)
    assert stats.tokens == 40
    assert sum(stats.load_shares) == pytest.approx(1.0)
    assert 0 <= stats.normalized_entropy <= 1
    assert stats.dropped_fraction == 0.0


def test_back_to_back_timing_reports_the_time_per_call() -> None:
    per_call_ms = measure_back_to_back(lambda: time.sleep(0.002), "cpu", calls=5, rounds=3, warmup=1)
    assert 2.0 <= per_call_ms < 20.0
