"""Computation hand-off during generation, on the shipped demo checkpoint: the router's '=' triggers the exact expert,
its result is spliced in, and every hand-off is logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pimoe.handoff.decode import (
    DEFAULT_THRESHOLD,
    EQUALS_ID,
    HandoffTrigger,
    declined_marker,
    encode_prompt,
    generate_multi_round,
    generate_with_computation,
    handoff_positions_teacher_forced,
    label_positions,
    route_positions,
)
from pimoe.handoff.expert import ComputationExpert
from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.lm.checkpoint import load_checkpoint
from pimoe.lm.model import LMConfig, PiMoELM

DEMO = Path(__file__).resolve().parents[2] / "assets" / "pimoe-demo.safetensors"
SUM_PROMPT = "Ana has 123456 apples and buys 654321 more, so Ana has 123456+654321="
PROSE_PROMPT = "The old lighthouse keeper watched the storm roll in across the grey, restless sea."
OPEN_PROMPT = "There are 4521 boxes with 387 coins in each, so there are "  # the model writes its own expression


@pytest.fixture(scope="module")
def demo() -> PiMoELM:
    return load_checkpoint(DEMO)


def test_sum_prompt_gets_the_exact_answer_spliced_after_the_equals(demo):
    plain = demo.generate(SUM_PROMPT, max_new_tokens=12)
    result = generate_with_computation(demo, SUM_PROMPT, max_new_tokens=12)

    assert "777777" not in plain.text  # the language model alone cannot add 6-digit numbers
    assert result.text.startswith("777777")
    assert not result.text[len("777777"):][:1].isdigit()
    [handoff] = result.handoffs
    assert handoff.position == result.prompt_length - 1 and result.ids[handoff.position] == EQUALS_ID
    assert handoff.in_prompt and handoff.spliced
    assert (handoff.expression, handoff.result_text, handoff.declined_reason) == ("123456+654321", "777777", None)
    assert DEFAULT_THRESHOLD <= handoff.router_probability <= 1
    assert demo.tokenizer.decode(result.ids[handoff.result_start:handoff.result_end]) == "777777"
    assert set(handoff.as_dict()) == {"position", "expression", "router_probability", "result_text",
                                      "declined_reason", "in_prompt", "result_start", "result_end"}


def test_prose_prompt_hands_off_nothing_and_generates_exactly_like_plain(demo):
    plain = demo.generate(PROSE_PROMPT, max_new_tokens=24)
    result = generate_with_computation(demo, PROSE_PROMPT, max_new_tokens=24)

    assert result.handoffs == []
    assert result.ids == plain.ids and result.text == plain.text


@pytest.mark.parametrize(("prompt", "marker"), [
    ("Ben has 5 coins and 0 friends, so each friend gets 5/0=", "[undefined: division by zero]"),
    ("The number 9^9^9=", "[not computed: "),
])
def test_declined_handoff_splices_a_marker_saying_why_and_no_number(demo, prompt, marker):
    result = generate_with_computation(demo, prompt, max_new_tokens=10)

    [handoff] = result.handoffs
    assert handoff.declined_reason and handoff.result_text is None and not handoff.spliced
    assert result.text.startswith(marker), result.text
    spliced = demo.tokenizer.decode(result.ids[handoff.result_start:handoff.result_end])
    assert spliced == declined_marker(handoff.declined_reason) and spliced.startswith(marker)
    # The token after the marker may not be a digit: no made-up number right after it either.
    assert not result.text[len(spliced):][:1].isdigit()


def test_expression_the_model_writes_itself_is_handed_off_mid_generation(demo):
    result = generate_with_computation(demo, OPEN_PROMPT, max_new_tokens=24)

    handoffs = [h for h in result.handoffs if not h.in_prompt]
    assert handoffs, result.text
    handoff = handoffs[0]
    exact = ComputationExpert().evaluate(handoff.expression).text
    assert handoff.result_text == exact
    assert f"{handoff.expression}={exact}" in result.text
    assert handoff.position >= result.prompt_length and result.ids[handoff.position] == EQUALS_ID


def test_threshold_above_the_routers_probability_disables_the_handoff(demo):
    fired = generate_with_computation(demo, SUM_PROMPT, max_new_tokens=6)
    probability = fired.handoffs[0].router_probability
    assert probability < 1.0

    silent = generate_with_computation(demo, SUM_PROMPT, max_new_tokens=6, threshold=1.0)
    assert silent.handoffs == []
    assert silent.ids == demo.generate(SUM_PROMPT, max_new_tokens=6).ids


def test_multi_round_baseline_gives_the_same_text_with_one_extra_round_per_handoff(demo):
    one_pass = generate_with_computation(demo, OPEN_PROMPT, max_new_tokens=24)
    multi = generate_multi_round(demo, OPEN_PROMPT, max_new_tokens=24)

    assert multi.ids == one_pass.ids and multi.text == one_pass.text
    assert [h.as_dict() for h in multi.handoffs] == [h.as_dict() for h in one_pass.handoffs]
    assert one_pass.rounds == 1 and multi.rounds == 1 + len(multi.handoffs)
    assert [s.position for s in multi.steps] == [s.position for s in one_pass.steps]


def test_teacher_forced_trigger_fires_exactly_on_the_labelled_equals(demo):
    text = ("Ana has 123456 apples and buys 654321 more, so Ana has 123456+654321=777777 apples. "
            "405049==405050 is false. The program sets total=4521 and 4521>=387.")
    labels = label_positions(text)

    assert len(labels) == 1 and text.encode()[labels[0] - 1:labels[0]] == b"="
    assert handoff_positions_teacher_forced(demo, text) == labels
    # a low threshold on layer 0 lets the router alone fire on more '=' signs, but extraction still keeps them out
    assert handoff_positions_teacher_forced(demo, text, threshold=0.05, layer=0) == labels


def test_teacher_forced_routing_is_what_generation_saw_inside_and_beyond_the_window(demo):
    text = "Ana has 17 apples. " * 8 + "so 12+30="  # 161 tokens: past the 128-token window
    ids = encode_prompt(demo, text)
    positions = [5, len(ids) - 1]
    assert positions[-1] >= demo.config.max_seq_len

    probs = route_positions(demo, ids, positions)  # (L, P, E)
    for column, position in enumerate(positions):
        stepped = torch.tensor(demo.step(ids[:position + 1]).routing.probs)  # (L, E)
        torch.testing.assert_close(probs[:, column], stepped, rtol=1e-4, atol=1e-5)
    assert handoff_positions_teacher_forced(demo, text) == label_positions(text) == [len(ids) - 1]


def test_recorded_probability_matches_the_teacher_forced_one(demo):
    result = generate_with_computation(demo, SUM_PROMPT, max_new_tokens=4, layer="mean")
    [handoff] = result.handoffs
    probs = route_positions(demo, result.ids, [handoff.position])  # (L, 1, E)
    trigger = HandoffTrigger(layer="mean")
    expected = float(trigger.computation_probability(probs[:, 0], demo.expert_types))
    assert handoff.router_probability == pytest.approx(expected, abs=1e-5)


def test_bad_trigger_settings_are_rejected_with_the_value_named(demo):
    with pytest.raises(ValueError, match="threshold"):
        HandoffTrigger(threshold=0.0)
    with pytest.raises(ValueError, match="layer"):
        HandoffTrigger(layer="last")
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        generate_with_computation(demo, SUM_PROMPT, layer=5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_with_computation(demo, SUM_PROMPT, max_new_tokens=-1)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate_with_computation(demo, [])


def test_model_without_a_computation_expert_is_rejected():
    moe = PiMoEConfig(hidden_size=32, num_experts=2, expert_types=("language", "logical"),
                      expert=ExpertConfig(intermediate_size=64), router=RouterConfig(top_k=1), residual=False)
    model = PiMoELM(LMConfig(max_seq_len=32, num_layers=1, num_heads=4, moe=moe))
    with pytest.raises(ValueError, match="no 'computation' expert"):
        generate_with_computation(model, "1+2=")


@pytest.mark.parametrize(("prompt", "result"), [
    ("It rained all day. The grid is 12 wide, so the count is 12^3=", "1728"),
    ("approx. The fund keeps 12.5% of 480=", "60"),
    ("One lamp costs $12.50, so three cost 3*$12.50=", "37.5"),
    ("The town had 1,234 people and 566 arrived, so 1,234+566=", "1800"),
])
def test_written_numbers_after_prose_are_handed_off_with_the_exact_result(demo, prompt, result):
    out = generate_with_computation(demo, prompt, max_new_tokens=6)

    [handoff] = [h for h in out.handoffs if h.in_prompt]
    assert handoff.result_text == result and out.text.startswith(result), (out.text, handoff)


@pytest.mark.parametrize("prompt", ["The deadline is 2024-01-15=", "Call me at 555-123-4567=", "Office hours 9:00-17:30="])
def test_dates_phone_numbers_and_times_are_never_handed_off(demo, prompt):
    out = generate_with_computation(demo, prompt, max_new_tokens=6)

    assert not any(h.in_prompt for h in out.handoffs)
