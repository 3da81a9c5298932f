"""Text to computation: which span of generated text the exact expert is asked to compute."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe.handoff.expert import ComputationExpert, syntax_error
from pimoe.handoff.extract import extract_expression, find_expressions


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("she has 17+26=", "17+26"),
        ("so 3 * (4 + 5) =", "3 * (4 + 5)"),
        ("the total is 123456*654321=", "123456*654321"),
        ("(2^10) =  ", "(2^10)"),
        ("she cut it in half: 3/4 ÷ 2 =", "3/4 ÷ 2"),
        ("a table 6 x 7 =", "6 x 7"),
        ("it is -3 + 5 =", "-3 + 5"),
        ("step 1) 3+4 =", "3+4"),  # the unmatched ')' is a list marker, not part of the sum
        ("It costs 3. 5+2 =", "5+2"),  # a sentence's full stop is not a decimal point
        ("Line one 5\n2*3=", "2*3"),  # expressions never span lines
        ("we add 1.5 + 2.25 =", "1.5 + 2.25"),
        ("compute (2.5 + 3.75) / 1.25 =", "(2.5 + 3.75) / 1.25"),  # a word before '(' that names no function
        ("the logs weigh (3 + 4) * 2 =", "(3 + 4) * 2"),
        ("sqrt(16) is 4, and 4 + 2 =", "4 + 2"),
        ("in round 3 + 4 =", "3 + 4"),  # an English word that also names a function: only before '(' an argument
    ],
)
def test_trailing_expression_is_extracted_without_words(text, expression):
    extraction = extract_expression(text)
    assert extraction is not None
    assert extraction.expression == expression
    assert text[extraction.start : extraction.end] == expression
    assert text[extraction.equals] == "="


@pytest.mark.parametrize(
    "text",
    [
        "Ana has 17 apples and 26",  # no '='
        "Ana has 17 apples and 26 =",  # a lone number: nothing to compute
        "17 apples + 26 =",  # the '+' joins a word to 26
        "apples - 3 + 5 =",  # spaced sign: binary, left operand is a word
        "apples / 2 + 1 =",  # dropping the word would compute only the right operand
        "var2+3 =",  # digits glued to a word
        "1,00 + 2 =",  # not a thousands separator (two digits), so do not compute 00 + 2
        "x1 + x2 =",
        "is 2 == 2",
        "17+26 = ?",  # the '=' is not trailing
        "sqrt(16) + 2 =",  # a function's argument: (16) + 2 = 18 would answer another question
        "abs(-3) + 1 =",
        "f(2) * 3 =",
        "2 + log10(100) =",
        "cos(0)*(2+3) =",
        "the root is sqrt (9)+1 =",  # a known function's name before the operand, spaced
        "so sin 0 + 1 =",
        "Log 100 - 1 =",
        "√16 + 2 =",
        "∛ 27 * 2 =",
        "round (3.5) + 1 =",
        "",
        "=",
    ],
)
def test_text_without_a_self_contained_expression_gives_none(text):
    assert extract_expression(text) is None


def test_router_span_without_equals_is_accepted_on_request():
    assert extract_expression("123456*654321") is None
    extraction = extract_expression("123456*654321", require_equals=False)
    assert extraction is not None and extraction.expression == "123456*654321" and extraction.equals is None


def test_overlong_expression_is_not_truncated():
    text = "1+" * 1500 + "1 ="
    assert extract_expression(text) is None
    assert extract_expression(text, max_chars=5000).expression == "1+" * 1500 + "1"


def test_extracted_expression_feeds_the_expert():
    extraction = extract_expression("the total is 123456*654321=")
    assert ComputationExpert().evaluate(extraction.expression).text == "80779853376"


def test_find_expressions_gives_spans_and_stated_results():
    text = "First 17+26=43, then 2 * (3+4) = 14. Also 5 = 5; 9/3 = -3.5 and 10-1 = ?"
    found = find_expressions(text)
    assert [(e.expression, e.result) for e in found] == [
        ("17+26", "43"),
        ("2 * (3+4)", "14"),
        ("9/3", "-3.5"),
        ("10-1", None),
    ]
    for extraction in found:
        assert text[extraction.start : extraction.end] == extraction.expression
        assert text[extraction.equals] == "="
        if extraction.result is not None:
            assert text[extraction.result_start : extraction.result_end] == extraction.result


def test_find_expressions_reads_each_equals_of_a_chain_on_its_own():
    found = find_expressions("1+2=3+4=7")
    assert [(e.expression, e.result) for e in found] == [("1+2", "3"), ("3+4", "7")]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/^(). x=ab,\n$%:of", max_size=50) | st.text(max_size=50))
def test_extraction_never_raises_and_spans_match_the_text(text):
    extraction = extract_expression(text)
    found = find_expressions(text)
    for item in ([extraction] if extraction else []) + found:
        assert text[item.start : item.end] == item.expression
        assert syntax_error(item.computable) is None


def test_find_expressions_skips_function_arguments_and_keeps_the_sums_beside_them():
    text = "We know sqrt(16) + 2 = 6, f(3) = 9 and 3 + 4 = 7; √9 + 1 = 4 too."
    assert [(e.expression, e.result) for e in find_expressions(text)] == [("3 + 4", "7")]
