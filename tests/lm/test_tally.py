"""RoutingTally (pimoe/lm/metrics.py) against a token-by-token count, and a padding-free mask taking the unmasked route."""

from __future__ import annotations

import pytest
import torch

from pimoe.lm.metrics import RoutingTally, expert_type_ids
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.text import IGNORE_TYPE_ID, NUM_TOKEN_TYPES


def brute_force(routings, token_types, model):
    """Per layer: hits, counted, (types x experts) top-1 counts, assignments per expert, one token at a time."""
    targets = model.mapping.target_expert_type_ids(token_types, model.expert_types).reshape(-1).tolist()
    types = token_types.reshape(-1).tolist()
    type_of_expert = expert_type_ids(model.expert_types).tolist()
    num_experts = len(model.expert_types)
    result = []
    for routing in routings:
        hits = counted = 0
        counts = torch.zeros(NUM_TOKEN_TYPES, num_experts, dtype=torch.long)
        for index, position in enumerate(routing.token_positions.tolist()):
            expert = int(routing.top1[index])
            if targets[position] >= 0:
                counted += 1
                hits += type_of_expert[expert] == targets[position]
            if types[position] != IGNORE_TYPE_ID:
                counts[types[position], expert] += 1
        result.append((hits, counted, counts, routing.tokens_per_expert.long()))
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tally_equals_a_token_by_token_count_with_padding_and_unlabelled_tokens(seed) -> None:
    torch.manual_seed(seed)
    model = PiMoELM(LMConfig.tiny()).eval()
    batch, seq = 3, 23
    ids = torch.randint(0, 256, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 15:] = 0
    token_types = torch.randint(0, NUM_TOKEN_TYPES, (batch, seq))
    token_types[torch.rand(batch, seq) < 0.2] = IGNORE_TYPE_ID
    with torch.no_grad():
        routings = model(ids, attention_mask=mask, return_routing_info=True).routing
    tally = RoutingTally(len(routings), model.expert_types, model.mapping)
    tally.update(routings, token_types)
    tally.update(routings, token_types)  # a second batch adds up
    for layer, (hits, counted, counts, load) in enumerate(brute_force(routings, token_types, model)):
        assert (tally.hits[layer], tally.counted[layer]) == (2 * hits, 2 * counted)
        assert torch.equal(tally.counts[layer], 2 * counts)
        assert torch.equal(tally.load[layer], 2 * load)
    assert tally.accuracy_per_layer() == pytest.approx(
        [h / c for h, c, *_ in brute_force(routings, token_types, model)])


def test_a_mask_without_padding_routes_like_no_mask() -> None:
    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny()).eval()
    ids = torch.randint(0, 256, (2, 19))
    with torch.no_grad():
        plain = model(ids, return_routing_info=True)
        ones = model(ids, attention_mask=torch.ones(2, 19, dtype=torch.long), return_routing_info=True)
    torch.testing.assert_close(ones.logits, plain.logits)
    for a, b in zip(ones.routing, plain.routing, strict=True):
        assert torch.equal(a.expert_indices, b.expert_indices) and torch.equal(a.token_positions, b.token_positions)


def test_a_mask_of_other_values_is_still_refused() -> None:
    model = PiMoELM(LMConfig.tiny()).eval()
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(torch.randint(0, 256, (1, 5)), attention_mask=torch.full((1, 5), 2))
