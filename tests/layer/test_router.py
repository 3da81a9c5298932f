"""TokenLevelRouter: temperature limits, selection bias, supervised loss, losses' defining values."""

from __future__ import annotations

import math

import pytest
import torch

from pimoe import RouterConfig, TokenLevelRouter
from pimoe.layer.losses import count_per_expert, load_balance_loss, router_z_loss, supervised_routing_loss
from pimoe.layer.router import top_two_by_argmax


def make_router(**kwargs) -> TokenLevelRouter:
    torch.manual_seed(0)
    return TokenLevelRouter(16, 5, RouterConfig(**kwargs))


def test_very_high_temperature_gives_near_uniform_probs() -> None:
    info = make_router()(torch.randn(50, 16) * 5, temperature=1e6)
    torch.testing.assert_close(info.probs, torch.full((50, 5), 0.2), atol=1e-4, rtol=0)
    assert info.entropy.min() > math.log(5) - 1e-3


def test_very_low_temperature_gives_one_hot_probs() -> None:
    info = make_router()(torch.randn(50, 16), temperature=1e-4)
    assert info.confidence.min() > 0.999
    assert torch.equal(info.probs.argmax(-1), info.top1)


def test_load_balance_loss_equals_the_weight_under_uniform_routing() -> None:
    tokens, experts, top_k = 40, 5, 2
    probs = torch.full((tokens, experts), 1 / experts)
    # each expert chosen equally often: token t picks experts t and t+1 (mod E)
    indices = torch.stack([torch.arange(tokens) % experts, (torch.arange(tokens) + 1) % experts], dim=1)
    assert top_k == indices.shape[1]
    assert math.isclose(load_balance_loss(probs, indices, 0.15).item(), 0.15, rel_tol=1e-6)


def test_load_balance_loss_grows_when_routing_collapses_on_one_expert() -> None:
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 10)
    indices = torch.zeros(10, 1, dtype=torch.long)
    assert load_balance_loss(probs, indices, 1.0).item() > 2.0  # 3 * 1 * 0.9


def test_z_loss_is_the_mean_squared_logsumexp() -> None:
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = (math.log(2) ** 2 + math.log(math.e + math.e**2) ** 2) / 2
    assert math.isclose(router_z_loss(logits, 1.0).item(), expected, rel_tol=1e-6)


def test_supervised_loss_is_zero_when_all_mass_sits_on_allowed_experts() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    allowed = torch.tensor([[True, False, False], [False, True, True]])
    assert supervised_routing_loss(probs, allowed, 1.0).item() < 1e-6
    wrong = torch.tensor([[False, True, False], [True, False, False]])
    assert supervised_routing_loss(probs, wrong, 1.0).item() > 10


def test_supervised_loss_pulls_router_towards_labelled_experts() -> None:
    router = make_router(supervised_weight=1.0, top_k=1)
    x = torch.randn(128, 16)
    # a linearly separable labelling: the sign of the first feature decides between experts 3 and 1
    target = torch.where(x[:, 0] > 0, 3, 1)
    allowed = torch.nn.functional.one_hot(target, 5).bool()
    optimizer = torch.optim.SGD(router.parameters(), lr=5.0)
    before = (router(x).top1 == target).float().mean()
    for _ in range(100):
        optimizer.zero_grad()
        router(x, allowed_experts=allowed).supervised_loss.backward()
        optimizer.step()
    after = (router(x).top1 == target).float().mean()
    assert after > 0.95 and after > before


def test_selection_bias_changes_choice_but_not_gate_values() -> None:
    router = make_router(use_selection_bias=True, top_k=1, renormalize=False)
    x = torch.randn(30, 16)
    plain = router(x)
    router.selection_bias[2] = 10.0
    biased = router(x)
    assert torch.all(biased.top1 == 2)
    torch.testing.assert_close(biased.probs, plain.probs)
    torch.testing.assert_close(biased.expert_weights[:, 0], plain.probs[:, 2])


def test_router_logits_and_probs_are_float32_for_bfloat16_input() -> None:
    info = make_router()(torch.randn(8, 16, dtype=torch.bfloat16).float().to(torch.bfloat16))
    assert info.logits.dtype == torch.float32 and info.probs.dtype == torch.float32


@pytest.mark.parametrize("top_k", [1, 2])
def test_top_two_by_argmax_equals_topk(top_k) -> None:
    """The CUDA selection for K <= 2 picks what torch.topk picks (distinct scores), best first; ties go to the lower
    expert id."""
    scores = torch.randn(500, 7, generator=torch.Generator().manual_seed(3)).softmax(-1)
    assert torch.equal(top_two_by_argmax(scores, top_k), torch.topk(scores, top_k, dim=-1).indices)
    tied = torch.tensor([[0.1, 0.4, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]])
    assert top_two_by_argmax(tied, 2).tolist() == [[1, 2], [0, 1]]


@pytest.mark.parametrize("num_experts", [8, 100])  # the comparison count and the scatter_add count
def test_count_per_expert_counts_kept_assignments(num_experts) -> None:
    generator = torch.Generator().manual_seed(4)
    indices = torch.randint(0, num_experts, (300, 2), generator=generator)
    keep = torch.rand(300, 2, generator=generator) > 0.3
    expected = torch.bincount(indices.reshape(-1), minlength=num_experts)
    assert torch.equal(count_per_expert(indices, num_experts), expected)
    assert torch.equal(count_per_expert(indices, num_experts, keep),
                       torch.bincount(indices[keep], minlength=num_experts))
    assert count_per_expert(indices, num_experts).dtype == torch.int64
