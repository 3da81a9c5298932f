"""The benchmark-only backends stay out of the engine's registry and still run through `PiMoESystem.use_strategy`."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.backends import STRATEGIES as BENCH_STRATEGIES
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.strategies import STRATEGIES, DispatchStrategy


def make_system(seed: int = 0) -> PiMoESystem:
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=32, num_experts=4, expert_types=("language", "mathematical"),
                         router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=48))
    return PiMoESystem(config).eval()


def test_bench_backends_are_not_engine_strategies() -> None:
    assert set(BENCH_STRATEGIES) == {"cuda_hybrid", "cuda_grouped_mm"}
    assert not set(BENCH_STRATEGIES) & set(STRATEGIES)
    system = make_system()
    with pytest.raises(ValueError, match="cuda_fast"):
        system.dispatch = "cuda_grouped_mm"


@pytest.mark.parametrize("name", sorted(BENCH_STRATEGIES))
def test_unregistered_strategy_runs_and_matches_the_sorted_dispatch(name: str) -> None:
    """On the CPU a bench strategy takes the fast path's plain-torch mirror, which must equal the sorted dispatch."""
    system = make_system()
    x = torch.randn(2, 9, 32)
    with torch.inference_mode():
        expected = system(x)
        system.use_strategy(BENCH_STRATEGIES[name])
        got, routing = system(x, return_routing_info=True)
    assert system.dispatch == name and system.strategy is BENCH_STRATEGIES[name]
    assert system.choose_dispatch(x) == name
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert routing.num_tokens == 18


def test_unregistered_strategy_survives_a_move_and_yields_to_a_name() -> None:
    system = make_system()
    calls = []

    def counting(x, routing, experts):
        calls.append(x.shape[0])
        return STRATEGIES["sorted"].dispatch(x, routing, experts)

    system.use_strategy(DispatchStrategy("counting", counting, "sorted, counted"))
    system = system.to(torch.float64)  # .to() re-resolves strategies: this one must stay
    with torch.inference_mode():
        system(torch.randn(1, 5, 32, dtype=torch.float64))
    assert calls == [5] and system.dispatch == "counting"
    copied = copy.deepcopy(system)
    assert copied.strategy.name == "counting"
    system.dispatch = "sorted"
    assert system.strategy is STRATEGIES["sorted"]
    system.to(torch.float32)
    assert system.strategy is STRATEGIES["sorted"], "a name set later replaces the unregistered strategy for good"


def test_use_strategy_rejects_a_name() -> None:
    with pytest.raises(TypeError, match="DispatchStrategy"):
        make_system().use_strategy("cuda_grouped_mm")
