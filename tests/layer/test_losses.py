"""Router losses against their papers' definitions."""

import math

import torch

from pimoe.layer.losses import count_per_expert, load_balance_loss, router_z_loss, supervised_routing_loss


def test_load_balance_loss_is_the_weight_when_uniform_and_weight_times_e_when_collapsed():
    uniform_probs = torch.full((8, 4), 0.25)
    round_robin = torch.arange(8).remainder(4).unsqueeze(1)
    assert float(load_balance_loss(uniform_probs, round_robin, 0.1)) == pytest_approx(0.1)
    collapsed_probs = torch.zeros(8, 4)
    collapsed_probs[:, 0] = 1.0
    assert float(load_balance_loss(collapsed_probs, torch.zeros(8, 1, dtype=torch.long), 0.1)) == pytest_approx(0.4)


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-6)


def test_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = (math.log(2) ** 2 + math.log(math.exp(1) + math.exp(2)) ** 2) / 2
    assert float(router_z_loss(logits, 1.0)) == pytest_approx(expected)


def test_supervised_loss_uses_the_total_probability_of_allowed_experts_and_skips_unlabelled_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    allowed = torch.tensor([[True, True, False], [False, False, False]])
    assert float(supervised_routing_loss(probs, allowed, 2.0)) == pytest_approx(-2 * math.log(0.8))


def test_count_per_expert_honours_the_mask():
    indices = torch.tensor([[0, 1], [1, 2]])
    mask = torch.tensor([[True, False], [True, True]])
    assert count_per_expert(indices, 4).tolist() == [1, 2, 1, 0]
    assert count_per_expert(indices, 4, mask).tolist() == [1, 1, 1, 0]
