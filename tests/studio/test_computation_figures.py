"""Figures of the computation hand-off, checked as data: segments, escaped HTML, traces and their values."""

from __future__ import annotations

import numpy as np
import pytest

from pimoe.handoff.decode import Handoff, HandoffResult, HandoffTrigger
from pimoe.lm.text import ByteTokenizer
from studio.figures.computation import (
    build_computation_figure,
    build_handoff_html,
    build_result_figure,
    handoff_segments,
    token_labels,
)

TOKENIZER = ByteTokenizer()
EXPERTS = ["language", "computation", "logical"]


def _result(prompt: str, continuation: str, handoffs: list[Handoff]) -> HandoffResult:
    ids = [TOKENIZER.eos_id, *TOKENIZER.encode(prompt + continuation)]
    prompt_length = 1 + len(TOKENIZER.encode(prompt))
    return HandoffResult(text=continuation, ids=ids, prompt_length=prompt_length, handoffs=handoffs,
                         trigger=HandoffTrigger(threshold=0.7))


def _spliced(position: int, expression: str, result: str) -> Handoff:
    return Handoff(position=position, expression=expression, router_probability=0.97, result_text=result,
                   declined_reason=None, in_prompt=False, result_start=position + 1,
                   result_end=position + 1 + len(result))


def test_segments_separate_prompt_model_text_and_the_spliced_result():
    # ids: EOS "Sum: " (5) "12+30=" (6) "42" " ok" -> '=' at position 11
    result = _result("Sum: ", "12+30=42 ok", [_spliced(11, "12+30", "42")])

    segments = handoff_segments(result.ids, result.prompt_length, result.handoffs)

    assert [(s.kind, s.text) for s in segments] == [("prompt", "Sum: "), ("generated", "12+30="), ("result", "42"),
                                                    ("generated", " ok")]
    assert "12+30 = 42" in segments[2].note and "0.970" in segments[2].note


def test_declined_handoff_marks_its_spliced_marker_with_its_reason():
    # EOS 5 / 0 = -> '=' at 4; the marker "[undefined: division by zero]" is spliced at 5..33
    marker = "[undefined: division by zero]"
    declined = Handoff(position=4, expression="5/0", router_probability=0.99, result_text=None,
                       declined_reason="division by zero", in_prompt=True, result_start=5, result_end=5 + len(marker))
    result = _result("5/0=", marker + " ok", [declined])

    segments = handoff_segments(result.ids, result.prompt_length, result.handoffs)

    assert [(s.kind, s.text) for s in segments] == [("prompt", "5/0="), ("declined", marker), ("generated", " ok")]
    assert "division by zero" in segments[1].note


def test_declined_handoff_without_a_marker_marks_the_equals_sign_with_its_reason():
    declined = Handoff(position=4, expression="5/0", router_probability=0.99, result_text=None,
                       declined_reason="division by zero", in_prompt=True, result_start=5, result_end=5)
    result = _result("5/0=", " 7", [declined])

    segments = handoff_segments(result.ids, result.prompt_length, result.handoffs)

    assert [(s.kind, s.text) for s in segments] == [("prompt", "5/0"), ("declined", "="), ("generated", " 7")]
    assert "division by zero" in segments[1].note


def test_html_escapes_text_and_notes():
    result = _result("a<b ", "1+1=2", [_spliced(8, "1+1", "2")])  # EOS a < b ␣ 1 + 1 = -> '=' at 8
    html = build_handoff_html(handoff_segments(result.ids, result.prompt_length, result.handoffs))

    assert "a&lt;b" in html and "<b " not in html
    assert 'class="pimoe-result"' in html and 'title="1+1 = 2' in html


def test_computation_figure_shows_every_expert_and_the_computation_row():
    probs = np.array([[0.8, 0.1, 0.1], [0.05, 0.9, 0.05], [0.1, 0.85, 0.05], [0.7, 0.2, 0.1]])  # (T=4, E=3)

    spec = build_computation_figure(probs, list("12=x"), EXPERTS, threshold=0.5, handoff_positions=[2],
                                    spliced=[False, False, False, True])

    top, bottom = spec["panels"]
    np.testing.assert_allclose(np.array(top["heatmap"]["z"]), probs.T)
    np.testing.assert_allclose(np.array(bottom["bars"]["values"]), probs[:, 1])
    colors = bottom["bars"]["colors"]
    assert colors[3] != colors[0]  # the spliced token is drawn apart
    assert [line["y"] for line in bottom["hlines"]] == [0.5]
    [stars] = bottom["series"]
    assert stars["x"] == [2] and stars["y"] == pytest.approx([0.85]) and stars["marker"] == "star"
    assert bottom["y_title"] == "p(computation)" and spec["x_labels"] == list("12=x")


def test_computation_figure_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="probs must be"):
        build_computation_figure(np.zeros((3, 2)), list("abc"), EXPERTS, threshold=0.5)
    with pytest.raises(ValueError, match="outside the 3 shown tokens"):
        build_computation_figure(np.zeros((3, 3)), list("abc"), EXPERTS, threshold=0.5, handoff_positions=[3])


def test_result_figure_drops_the_leading_eos_and_greys_the_splice():
    result = _result("Sum: ", "12+30=42 ok", [_spliced(11, "12+30", "42")])
    probs = np.full((len(result.ids), 3), 1 / 3)

    spec = build_result_figure(result, probs, EXPERTS)

    bottom = spec["panels"][1]
    assert len(bottom["bars"]["values"]) == len(result.ids) - 1
    colors = bottom["bars"]["colors"]
    assert colors[11] == colors[12] != colors[10]  # result tokens at ids 12 and 13 -> shown 11 and 12
    assert bottom["series"][0]["x"] == [10]
    assert bottom["hlines"][0]["y"] == 0.7  # the result's own trigger threshold
    with pytest.raises(ValueError, match="rows"):
        build_result_figure(result, probs[1:], EXPERTS)


def test_token_labels_show_specials_spaces_and_broken_bytes():
    ids = [TOKENIZER.eos_id, *TOKENIZER.encode("a b"), 0xC3, *TOKENIZER.encode("c")]
    assert token_labels(ids) == ["<eos>", "a", "␣", "b", "\\xc3", "c"]
    assert token_labels(TOKENIZER.encode("×")) == ["×", "·"]
