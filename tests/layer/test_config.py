"""Config dataclasses: validated when built, with a message naming the bad value; dicts round-trip."""

import pytest

from pimoe import ExpertConfig, PiMoEConfig, RouterConfig


@pytest.mark.parametrize(("build", "message"), [
    (lambda: RouterConfig(temperature=0), "temperature"),
    (lambda: RouterConfig(top_k=0), "top_k"),
    (lambda: RouterConfig(load_balance_weight=-0.1), "load_balance_weight"),
    (lambda: RouterConfig(capacity_factor=0), "capacity_factor"),
    (lambda: ExpertConfig(intermediate_size=0), "intermediate_size"),
    (lambda: PiMoEConfig(hidden_size=0), "hidden_size"),
    (lambda: RouterConfig.from_dict({"temprature": 1.0}), "temprature"),
])
def test_bad_values_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_more_experts_than_types_assigns_types_round_robin():
    config = PiMoEConfig(num_experts=5, expert_types=("reasoning", "language"))
    assert config.assigned_expert_types == ["reasoning", "language", "reasoning", "language", "reasoning"]


def test_config_round_trips_through_a_dict():
    config = PiMoEConfig(hidden_size=24, num_experts=3, router=RouterConfig(top_k=1, capacity_factor=1.25),
                         expert=ExpertConfig(intermediate_size=40))
    assert PiMoEConfig.from_dict(config.to_dict()) == config


def test_named_presets_build_valid_configs():
    for preset in (PiMoEConfig.tiny, PiMoEConfig.demo, PiMoEConfig.bench):
        config = preset()
        assert config.router.top_k <= config.num_experts
