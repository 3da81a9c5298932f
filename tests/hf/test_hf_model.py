"""HFMoEModel.trace / .generate: what temperature, top-k, force and ablate do, and that defaults do nothing."""

import pytest
import torch


def _ids(seed=1, batch=2, seq=10):
    return torch.randint(3, 101, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_default_knobs_change_nothing(olmoe):
    ids = _ids()
    plain = olmoe.trace(ids)
    explicit = olmoe.trace(ids, temperature=None, top_k=None, force=None, ablate={})
    assert torch.equal(plain.logits, explicit.logits)
    assert plain.logits.shape == (2, 10, 101)
    assert len(plain.routing) == len(olmoe.moe_layer_ids) == 2


def test_forced_expert_is_every_tokens_first_choice_at_its_layer_only(olmoe):
    ids = _ids()
    base = olmoe.trace(ids)
    edited = olmoe.trace(ids, force={1: 4})
    assert (edited.routing[1].expert_indices[:, 0] == 4).all()
    assert torch.equal(edited.routing[0].expert_indices, base.routing[0].expert_indices)  # before the edit
    assert not torch.equal(edited.logits, base.logits)


def test_ablated_expert_is_never_chosen(olmoe):
    ids = _ids()
    base = olmoe.trace(ids)
    popular = int(base.routing[0].tokens_per_expert.argmax())
    edited = olmoe.trace(ids, ablate=popular)  # every MoE layer
    for info in edited.routing:
        assert not (info.expert_indices == popular).any()
    # tokens that never picked it keep their experts at the first layer
    untouched = ~(base.routing[0].expert_indices == popular).any(-1)
    assert torch.equal(edited.routing[0].expert_indices[untouched], base.routing[0].expert_indices[untouched])


def test_top_k_sets_experts_per_token(olmoe):
    info = olmoe.trace(_ids(), top_k=1).routing[0]
    assert info.expert_indices.shape == (20, 1)
    base = olmoe.trace(_ids()).routing[0]
    assert torch.equal(info.expert_indices[:, 0], base.expert_indices[:, 0])


def test_temperature_keeps_the_softmax_choice_and_changes_the_weights(olmoe):
    base = olmoe.trace(_ids()).routing[0]
    sharp = olmoe.trace(_ids(), temperature=0.3).routing[0]
    assert torch.equal(sharp.expert_indices, base.expert_indices)  # softmax is monotone: same top-k at layer 0
    assert sharp.entropy.mean() < base.entropy.mean()
    assert not torch.allclose(sharp.expert_weights, base.expert_weights)


@pytest.mark.parametrize("knobs", [dict(temperature=0.0), dict(top_k=99), dict(force={0: 99}),
                                   dict(force={5: 1}), dict(force=1, ablate=1), dict(force="1"),
                                   dict(ablate=list(range(7)))])
def test_bad_knobs_name_the_problem(olmoe, knobs):
    with pytest.raises(ValueError):
        olmoe.trace(_ids(), **knobs)


def test_generate_returns_routing_of_every_generated_token(olmoe):
    ids = _ids(batch=1, seq=6)
    out = olmoe.generate(ids, max_new_tokens=4)
    assert out.sequences.shape == (1, 10) and out.new_tokens.shape == (1, 4)
    assert len(out.step_routing) == 4 and all(len(step) == 2 for step in out.step_routing)
    assert out.trace.routing[0].num_tokens == 10
    # the incremental steps route each new token as the one-pass trace does
    for step in range(1, 4):
        for layer in range(2):
            one_pass = out.trace.routing[layer].expert_indices[6 + step - 1]
            assert torch.equal(out.step_routing[step][layer].expert_indices[0], one_pass)
    greedy = out.trace.logits[0, 5:9].argmax(-1)
    assert torch.equal(greedy, out.new_tokens[0])


def test_generate_marks_a_turn_point_per_token_and_keeps_the_callers_stopping_criteria(olmoe):
    from transformers import StoppingCriteria

    from pimoe.turns import sharing_turns

    class StopAfter(StoppingCriteria):
        def __init__(self, length: int) -> None:
            self.length = length

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)

    turns = []
    with sharing_turns(lambda: turns.append(1)):
        out = olmoe.generate(_ids(batch=1, seq=6), max_new_tokens=5)
        assert out.new_tokens.shape == (1, 5) and len(turns) == 5
        stopped = olmoe.generate(_ids(batch=1, seq=6), max_new_tokens=5, stopping_criteria=[StopAfter(8)])
    assert stopped.new_tokens.shape == (1, 2)


def test_generate_under_ablation_never_uses_the_expert(olmoe):
    out = olmoe.generate(_ids(batch=1, seq=6), max_new_tokens=3, ablate=2)
    for step in out.step_routing:
        for info in step:
            assert not (info.expert_indices == 2).any()
