"""Structured pruning removes whole neurons, least important first, and leaves norms and the original alone."""

import copy
import math

import pytest
import torch

from pimoe import PiMoEConfig, PiMoESystem
from pimoe.layer.reference import reference_forward
from pimoe.optimize.prune import neuron_importance, prune_experts

# reasoning: LayerNorm + GELU; computation: ReLU, twice as wide; mathematical: gated SiLU; analytical: RMSNorm.
TYPES = ("reasoning", "computation", "mathematical", "analytical")


@pytest.fixture
def system() -> PiMoESystem:
    torch.manual_seed(0)
    model = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4, expert_types=TYPES)).eval()
    with torch.no_grad():  # non-default norm weights, so a pruner that touched them would be caught
        for expert in model.experts:
            for param in expert.norm.parameters():
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))


def test_pruning_half_shrinks_every_expert_matrix(system, x):
    pruned, report = prune_experts(system, 0.5, calibration=x, repeats=2, warmup=0)
    for before, after in zip(system.experts, pruned.experts, strict=True):
        kept = before.width - math.floor(0.5 * before.width)
        assert after.width == kept
        assert tuple(after.up.weight.shape) == (kept * (2 if before.gated else 1), 32)
        assert tuple(after.down.weight.shape) == (32, kept)
        assert after.up.bias.shape == (after.up.out_features,)
    assert report.widths_before == [e.width for e in system.experts]
    assert report.widths_after == [e.width for e in pruned.experts]
    assert report.parameters_after < report.parameters_before
    assert report.parameters_removed == report.parameters_before - sum(p.numel() for p in pruned.parameters())
    assert 0.0 < report.relative_error


def test_pruning_nothing_gives_identical_output(system, x):
    pruned, report = prune_experts(system, 0.0, repeats=1, warmup=0)
    assert torch.equal(pruned(x), system(x))
    assert report.parameters_removed == 0 and report.relative_error == 0.0


def test_pruned_model_matches_its_own_float64_reference(system, x):
    pruned, _ = prune_experts(system, 0.4, repeats=1, warmup=0)
    torch.testing.assert_close(pruned(x).double(), reference_forward(pruned, x), rtol=1e-5, atol=1e-5)


def test_more_pruning_removes_more_and_costs_more_error(system, x):
    _, light = prune_experts(system, 0.25, calibration=x, repeats=1, warmup=0)
    _, heavy = prune_experts(system, 0.75, calibration=x, repeats=1, warmup=0)
    assert heavy.parameters_after < light.parameters_after
    assert heavy.comparison.relative_delta_error > light.comparison.relative_delta_error


@pytest.mark.parametrize("expert_id", [0, 2], ids=["plain", "gated"])
def test_a_neuron_with_zero_weights_is_removed_first(system, expert_id):
    expert = system.experts[expert_id]
    planted = 5
    with torch.no_grad():
        expert.up.weight[planted].zero_()
        if expert.gated:
            expert.up.weight[expert.width + planted].zero_()
        expert.down.weight[:, planted].zero_()
    assert int(neuron_importance(expert).argmin()) == planted
    amount = 1.5 / expert.width  # floor(amount * width) == 1: exactly one neuron goes
    _, report = prune_experts(system, amount, repeats=1, warmup=0)
    assert report.removed_neurons[expert_id] == [planted]


def test_activation_importance_removes_a_large_neuron_that_never_fires(system, x):
    relu_expert = system.experts[1]  # computation: ReLU, no norm
    silent = 3
    with torch.no_grad():
        relu_expert.up.weight[silent].mul_(10.0)
        relu_expert.down.weight[:, silent].mul_(10.0)
        relu_expert.up.bias[silent] = -1e4  # ReLU(negative) = 0 on every token
    amount = 1.5 / relu_expert.width
    _, by_magnitude = prune_experts(system, amount, repeats=1, warmup=0)
    _, by_activation = prune_experts(system, amount, calibration=x, importance="activation", repeats=1, warmup=0)
    assert by_activation.importance_sources[1] == "activation"
    assert by_activation.removed_neurons[1] == [silent]
    assert by_magnitude.removed_neurons[1] != [silent]


def test_pruning_never_touches_norm_weights_or_the_original(system):
    original = copy.deepcopy(system.state_dict())
    pruned, _ = prune_experts(system, 0.6, repeats=1, warmup=0)
    for before, after in zip(system.experts, pruned.experts, strict=True):
        for (name, p_before), (_, p_after) in zip(before.norm.named_parameters(), after.norm.named_parameters(),
                                                  strict=True):
            assert torch.equal(p_before, p_after), name
    for name, tensor in system.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert torch.equal(pruned.router.gate.weight, system.router.gate.weight)


def test_pruned_experts_still_train(system, x):
    pruned, _ = prune_experts(system, 0.5, repeats=1, warmup=0)
    pruned.train()
    out, routing = pruned(x, return_routing_info=True)
    (out.pow(2).mean() + routing.router_loss).backward()
    counts = routing.tokens_per_expert.tolist()
    assert sum(counts) > 0
    for expert, count in zip(pruned.experts, counts, strict=True):
        if count:
            assert expert.up.weight.grad is not None and expert.up.weight.grad.abs().sum() > 0
            assert expert.down.weight.grad is not None and expert.down.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("amount", [1.0, -0.1, 1.5, True, "0.5", float("nan")])
def test_amount_outside_zero_to_one_is_rejected(system, amount):
    with pytest.raises(ValueError, match="amount"):
        prune_experts(system, amount)


def test_activation_importance_without_calibration_is_rejected(system):
    with pytest.raises(ValueError, match="calibration"):
        prune_experts(system, 0.5, importance="activation")
    with pytest.raises(ValueError, match="importance"):
        prune_experts(system, 0.5, importance="random")
