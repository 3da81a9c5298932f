"""ScoringRule / select_experts against each family's definition, and the pinned / blocked edits."""

import pytest
import torch

from pimoe.layer.scoring import ScoringRule, score_experts, select_experts


def _scores(rule, tokens=64, experts=8, seed=0):
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed)) * 2
    return score_experts(logits, rule)


def test_softmax_renormalised_weights_sum_to_one():
    rule = ScoringRule("softmax", top_k=3, renormalize=True)
    _, weights = select_experts(_scores(rule), rule)
    torch.testing.assert_close(weights.sum(-1), torch.ones(64))


def test_without_renormalisation_weights_are_the_chosen_probabilities():
    rule = ScoringRule("softmax", top_k=2, renormalize=False)
    scores = _scores(rule)
    indices, weights = select_experts(scores, rule)
    torch.testing.assert_close(weights, scores.gather(-1, indices))
    assert torch.equal(indices, scores.topk(2, dim=-1).indices)


def test_sigmoid_scores_are_independent_per_expert():
    logits = torch.tensor([[0.0, 2.0, -2.0]])
    torch.testing.assert_close(score_experts(logits, ScoringRule("sigmoid", top_k=1)), torch.sigmoid(logits))


@pytest.mark.parametrize("group_score, best_of_group", [("top2_sum", 2), ("max", 1)])
def test_group_limited_choice_stays_in_the_best_groups(group_score, best_of_group):
    rule = ScoringRule("sigmoid", top_k=3, num_groups=4, topk_groups=2, group_score=group_score)
    scores = _scores(rule, experts=16)
    bias = torch.linspace(-0.2, 0.2, 16)
    indices, _ = select_experts(scores, rule, selection_bias=bias)
    biased = (scores + bias).view(64, 4, 4)
    best_groups = biased.topk(best_of_group, dim=-1).values.sum(-1).topk(2, dim=-1).indices  # (T, 2): the definition
    for token in range(64):  # a per-token check in the test, the engine has no loop
        assert set((indices[token] // 4).tolist()) <= set(best_groups[token].tolist())
        allowed = [e for g in best_groups[token].tolist() for e in range(4 * g, 4 * g + 4)]
        expected = sorted(allowed, key=lambda e: -float(scores[token, e] + bias[e]))[:3]
        assert sorted(indices[token].tolist()) == sorted(expected)


def test_sqrt_softplus_scores_are_deepseek_v4s_per_expert_scores():
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(4)) * 6
    scores = score_experts(logits, ScoringRule("sqrtsoftplus", top_k=2))
    torch.testing.assert_close(scores, torch.log1p(logits.exp()).sqrt(), rtol=1e-6, atol=1e-6)
    assert (scores > 0).all() and torch.equal(scores.argsort(-1), logits.argsort(-1))  # monotone: same choice order


def test_selection_bias_moves_choice_not_weights():
    rule = ScoringRule("sigmoid", top_k=2, renormalize=False, routed_scaling_factor=2.5)
    scores = _scores(rule)
    bias = torch.zeros(8)
    bias[7] = 10.0
    indices, weights = select_experts(scores, rule, selection_bias=bias)
    assert (indices[:, 0] == 7).all()
    torch.testing.assert_close(weights, 2.5 * scores.gather(-1, indices))


def test_blocked_expert_is_never_chosen_and_its_slot_goes_to_the_next_best():
    rule = ScoringRule("softmax", top_k=2)
    scores = _scores(rule)
    blocked = torch.zeros(8, dtype=torch.bool)
    blocked[scores.argmax(-1)[0]] = True
    indices, _ = select_experts(scores, rule, blocked=blocked)
    assert not blocked[indices].any()
    expected = scores.masked_fill(blocked, -1.0).topk(2, dim=-1).indices
    assert torch.equal(indices, expected)


def test_pinned_expert_is_chosen_first_even_outside_the_best_groups():
    rule = ScoringRule("sigmoid", top_k=2, num_groups=4, topk_groups=1)
    scores = _scores(rule)
    pinned = torch.zeros(8, dtype=torch.bool)
    pinned[5] = True
    indices, weights = select_experts(scores, rule, pinned=pinned)
    assert (indices[:, 0] == 5).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(64))


def test_groups_filled_with_zero_lose_to_kept_experts_only_while_those_score_above_zero():
    """Mistral 4's and A.X-K2's rule: the experts outside a token's best groups take part at a selection score of 0.0,
    so they fill the top-k when the kept groups hold fewer than k experts or kept experts score below zero."""
    rule = ScoringRule("sigmoid", top_k=3, num_groups=4, topk_groups=1, group_fill=0.0)
    scores = _scores(rule, experts=8)  # sigmoids: > 0, so the kept group's two experts come first
    bias = torch.zeros(8)
    indices, _ = select_experts(scores, rule, selection_bias=bias)
    kept_group = (scores.view(64, 4, 2).sum(-1)).argmax(-1)
    assert torch.equal(indices[:, :2] // 2, kept_group.unsqueeze(-1).expand(64, 2))  # the kept group, best first
    assert not torch.equal(indices[:, 2] // 2, kept_group)  # the third from a filled group
    bias[:] = -5.0  # every biased score below zero: the kept group still wins its place in the groups, not the top-k
    indices, _ = select_experts(scores, rule, selection_bias=bias)
    assert (indices // 2 != kept_group.unsqueeze(-1)).all()
    minus_inf, _ = select_experts(scores, ScoringRule("sigmoid", top_k=2, num_groups=4, topk_groups=1),
                                  selection_bias=bias)
    assert (minus_inf // 2 == kept_group.unsqueeze(-1)).all()


def test_a_blocked_expert_stays_out_when_its_group_is_filled_with_zero():
    rule = ScoringRule("sigmoid", top_k=7, num_groups=4, topk_groups=1, group_fill=0.0)
    scores = _scores(rule, experts=8)
    blocked = torch.zeros(8, dtype=torch.bool)
    blocked[3] = True
    indices, _ = select_experts(scores, rule, blocked=blocked)
    assert not (indices == 3).any() and indices.unique(dim=-1).shape[-1] == 7


@pytest.mark.parametrize("kwargs", [dict(score="tanh"), dict(top_k=0), dict(num_groups=2, topk_groups=3),
                                    dict(routed_scaling_factor=0.0), dict(group_score="mean"),
                                    dict(group_fill=float("inf")), dict(group_fill=float("nan")),
                                    dict(logit_softcap=-1.0), dict(logit_softcap=float("inf"))])
def test_bad_rule_names_the_problem(kwargs):
    with pytest.raises(ValueError):
        ScoringRule(**kwargs)
