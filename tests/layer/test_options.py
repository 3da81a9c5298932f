"""RoutingOptions: validated once, resolved against the router's config in one place, carried to both routers."""

import math

import pytest
import torch

from pimoe import PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.options import NO_CAPACITY_LIMIT, RoutingOptions


@pytest.mark.parametrize(("fields", "message"), [
    ({"temperature": 0.0}, "temperature must be a finite number > 0"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_k": 0}, "top_k must be between 1"),
    ({"top_k": 1.5}, "top_k"),
    ({"capacity_factor": -1.0}, "capacity_factor must be a number > 0"),
])
def test_bad_options_are_refused_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        RoutingOptions(**fields)


def test_unset_fields_fall_back_to_the_router_config():
    config = RouterConfig(temperature=0.7, top_k=2, capacity_factor=1.5)
    run = RoutingOptions().resolve(config, num_experts=4)
    assert (run.temperature, run.top_k, run.capacity_factor) == (0.7, 2, 1.5)
    run = RoutingOptions(temperature=2.0, top_k=3, capacity_factor=NO_CAPACITY_LIMIT).resolve(config, num_experts=4)
    assert (run.temperature, run.top_k, run.capacity_factor) == (2.0, 3, None)


def test_top_k_above_the_number_of_experts_fails_when_resolved():
    with pytest.raises(ValueError, match="num_experts=4"):
        RoutingOptions(top_k=5).resolve(RouterConfig(), num_experts=4)


def test_loose_knobs_override_a_record_and_a_record_alone_is_reused():
    base = RoutingOptions(temperature=0.5, top_k=1, capacity_factor=2.0)
    assert RoutingOptions.of(base) is base
    merged = RoutingOptions.of(base, top_k=2)
    assert (merged.temperature, merged.top_k, merged.capacity_factor) == (0.5, 2, 2.0)


def test_layer_call_with_options_equals_the_shorthand_and_leaves_the_module_untouched():
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=16, num_experts=4)).eval()
    x = torch.randn(2, 5, 16)
    out_a, routing_a = system(x, return_routing_info=True, options=RoutingOptions(temperature=0.3, top_k=1))
    out_b, routing_b = system(x, return_routing_info=True, temperature=0.3, top_k=1)
    torch.testing.assert_close(out_a, out_b)
    assert routing_a.top_k == 1 and routing_a.temperature == pytest.approx(0.3)
    assert system.router.temperature == 1.0 and system.router.top_k == 2


def test_capacity_travels_per_call_and_no_limit_lifts_the_configs():
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=16, num_experts=4, router=RouterConfig(capacity_factor=0.5))).eval()
    x = torch.randn(1, 40, 16)
    limited = system(x, return_routing_info=True)[1]
    lifted = system(x, return_routing_info=True, options=RoutingOptions(capacity_factor=NO_CAPACITY_LIMIT))[1]
    tighter = system(x, return_routing_info=True, options=RoutingOptions(capacity_factor=0.25))[1]
    assert bool(limited.dropped.any()) and not bool(lifted.dropped.any()) and lifted.capacity is None
    assert int(tighter.dropped.sum()) > int(limited.dropped.sum())
