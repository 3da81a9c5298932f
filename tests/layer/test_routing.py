"""The routing record: invariants every router call must satisfy, whatever the knobs."""

import pytest
import torch

from pimoe import RouterConfig, TokenLevelRouter


@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("capacity_factor", [None, 0.5, 1.0])
def test_record_invariants_hold(top_k, capacity_factor):
    torch.manual_seed(top_k)
    router = TokenLevelRouter(12, 4, RouterConfig(top_k=top_k, capacity_factor=capacity_factor))
    info = router(torch.randn(37, 12))
    assert info.expert_indices.shape == (37, top_k) and info.probs.shape == (37, 4)
    torch.testing.assert_close(info.probs.sum(-1), torch.ones(37))
    assert all(len(set(row)) == top_k for row in info.expert_indices.tolist()), "an expert chosen twice by one token"
    kept = int((~info.dropped).sum())
    assert int(info.tokens_per_expert.sum()) == kept, "loads must sum to the kept assignments"
    assert int(info.selected_per_expert.sum()) == 37 * top_k
    if capacity_factor is not None:
        assert int(info.tokens_per_expert.max()) <= info.capacity
    if top_k > 1:
        torch.testing.assert_close(info.expert_weights.sum(-1), torch.ones(37))
    assert torch.equal(info.top1, info.expert_indices[:, 0])
    assert info.num_tokens == 37 and info.num_experts == 4 and info.top_k == top_k


def test_seed_dict_keys_still_answer():
    info = TokenLevelRouter(8, 4)(torch.randn(5, 8))
    assert info["load_balance_loss"] is info.load_balance_loss
