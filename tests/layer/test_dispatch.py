"""Dispatch strategies: grouping invariants and agreement between strategies."""

from __future__ import annotations

import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.dispatch import loop_dispatch, sort_assignments, sorted_dispatch


def routed(capacity_factor=None, top_k=2, seed=0):
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=16, num_experts=5, router=RouterConfig(top_k=top_k, capacity_factor=capacity_factor),
                         expert=ExpertConfig(intermediate_size=24))
    system = PiMoESystem(config).eval()
    tokens = torch.randn(37, 16)
    return system, tokens, system.router(tokens)


def test_sorted_assignments_are_grouped_by_expert_in_token_order() -> None:
    _, _, routing = routed(capacity_factor=0.7)
    token_ids, weights, counts = sort_assignments(routing)
    assert int(counts.sum()) == token_ids.numel() == int((~routing.dropped).sum())
    start = 0
    for expert_id, count in enumerate(counts.tolist()):
        group = token_ids[start : start + count]
        assert torch.all(group[1:] >= group[:-1]), "stable sort keeps token order inside an expert"
        for token in group.tolist():
            slots = (routing.expert_indices[token] == expert_id) & ~routing.dropped[token]
            assert slots.sum() == 1
            assert weights[start + group.tolist().index(token)] == routing.expert_weights[token][slots][0]
        start += count


def test_sorted_and_loop_dispatch_agree() -> None:
    for capacity_factor in (None, 0.5):
        system, tokens, routing = routed(capacity_factor=capacity_factor)
        torch.testing.assert_close(sorted_dispatch(tokens, routing, system.experts),
                                   loop_dispatch(tokens, routing, system.experts), rtol=1e-5, atol=1e-6)


def test_dispatch_with_every_assignment_dropped_returns_zeros() -> None:
    system, tokens, routing = routed()
    routing.dropped[:] = True
    routing.tokens_per_expert.zero_()
    assert torch.count_nonzero(sorted_dispatch(tokens, routing, system.experts)) == 0
    assert torch.count_nonzero(loop_dispatch(tokens, routing, system.experts)) == 0


def test_weights_on_the_inputs_run_each_expert_on_its_scaled_rows() -> None:
    """Llama 4's form, expert_e(w x) summed unweighted, against a token-by-token reference, drops included; the
    experts are not linear (GELU and biases), so this differs from w expert_e(x)."""
    for capacity_factor in (None, 0.5):
        system, tokens, routing = routed(capacity_factor=capacity_factor)
        expected = torch.zeros_like(tokens)
        for token in range(tokens.shape[0]):
            for slot in range(routing.expert_indices.shape[1]):
                if not routing.dropped[token, slot]:
                    expert = system.experts[int(routing.expert_indices[token, slot])]
                    expected[token] += expert(tokens[token : token + 1] * routing.expert_weights[token, slot])[0]
        got = sorted_dispatch(tokens, routing, system.experts, weight_inputs=True)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, sorted_dispatch(tokens, routing, system.experts), atol=1e-3)
