"""The dense_masked dispatch (every expert on every token, masked combine) computes what sorted dispatch computes."""

import copy

import pytest
import torch

from pimoe import PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.dense_dispatch import combine_weights
from pimoe.layer.reference import reference_forward
from pimoe.layer.strategies import STRATEGIES


@pytest.mark.parametrize("router", [RouterConfig(top_k=2), RouterConfig(top_k=1), RouterConfig(capacity_factor=0.5)],
                         ids=["top2", "top1", "capacity"])
@torch.no_grad()
def test_dense_masked_dispatch_matches_sorted_dispatch_and_reference(router):
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4, router=router)).eval()
    dense = copy.deepcopy(system)
    dense.dispatch = "dense_masked"
    assert dense.strategy is STRATEGIES["dense_masked"]
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    torch.testing.assert_close(dense(x, mask), system(x, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense(x, mask).double(), reference_forward(system, x, mask), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_combine_weights_hold_each_tokens_kept_weights_and_zero_elsewhere():
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4, router=RouterConfig(capacity_factor=0.5))).eval()
    _, routing = system(torch.randn(2, 9, 32), return_routing_info=True)
    combine = combine_weights(routing)  # (T, E)
    assert combine.shape == (routing.num_tokens, 4)
    kept = routing.expert_weights * (~routing.dropped)
    torch.testing.assert_close(combine.sum(dim=-1), kept.sum(dim=-1))
    assert int((combine > 0).sum()) == int((kept > 0).sum())  # nothing outside the kept top-k assignments
    assert routing.dropped.any()  # the capacity limit really dropped something in this case
