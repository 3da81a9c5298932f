"""The generation loop: sampling choices, the per-token hook, and its bounds."""

import pytest
import torch

from pimoe.lm.generation import StepOutput, choose_token, generate_tokens
from pimoe.lm.text import ByteTokenizer

TOKENIZER = ByteTokenizer()


def _step_preferring(token_id: int):
    def step(ids):
        logits = torch.full((TOKENIZER.vocab_size,), -10.0)
        logits[token_id] = 10.0
        return StepOutput(logits=logits, routing=None)
    return step


def test_greedy_choice_is_the_argmax_and_never_a_banned_id():
    logits = torch.tensor([0.0, 5.0, 1.0])
    assert choose_token(logits, 0.0, None, None) == 1
    assert choose_token(logits, 0.0, None, None, banned_ids=(1,)) == 2


def test_sampling_top_k_keeps_only_the_k_most_likely():
    logits = torch.tensor([3.0, 2.9, -5.0, -5.0])
    generator = torch.Generator().manual_seed(0)
    picks = {choose_token(logits, 1.0, 2, generator) for _ in range(200)}
    assert picks <= {0, 1} and len(picks) == 2


def test_hook_splices_tokens_and_the_count_is_bounded():
    a, b = TOKENIZER.encode("a")[0], TOKENIZER.encode("b")[0]
    result = generate_tokens(_step_preferring(a), [a], TOKENIZER, max_new_tokens=4, stop_at_eos=False,
                             on_token=lambda position, token, routing: [b, b] if position == 1 else None)
    assert result.ids[:3] == [a, b, b]
    assert len(result.ids) - 1 >= 4


def test_every_generated_token_is_a_turn_point_unless_turns_are_suspended():
    from pimoe.turns import sharing_turns, without_turns

    a = TOKENIZER.encode("a")[0]
    turns = []
    with sharing_turns(lambda: turns.append(1)):
        generate_tokens(_step_preferring(a), [a], TOKENIZER, max_new_tokens=5, stop_at_eos=False)
        assert len(turns) == 5
        with without_turns():
            generate_tokens(_step_preferring(a), [a], TOKENIZER, max_new_tokens=5, stop_at_eos=False)
        assert len(turns) == 5
    generate_tokens(_step_preferring(a), [a], TOKENIZER, max_new_tokens=5, stop_at_eos=False)
    assert len(turns) == 5  # the hook is gone outside its block


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"sampling_temperature": -0.5}, "sampling_temperature"),
    ({"sampling_top_k": 0}, "sampling_top_k"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_tokens(_step_preferring(0), [0], TOKENIZER, **kwargs)
