"""The exact computation expert: exact values, the result text rule, every decline reason, and that nothing raises."""

from __future__ import annotations

import decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe.handoff.expert import ComputationExpert, ComputeConfig, ComputeResult, int_to_str, syntax_error

EXPERT = ComputationExpert()
FUZZ = settings(max_examples=300, deadline=None)


def value_of(expression: str, expert: ComputationExpert = EXPERT) -> Fraction | bool:
    result = expert.evaluate(expression)
    assert result.ok, result.reason
    return result.value


def reason_of(expression: str, expert: ComputationExpert = EXPERT) -> str:
    result = expert.evaluate(expression)
    assert not result.ok and result.value is None and result.text is None
    return result.reason


# --- exact values ----------------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(-(10**40), 10**40), st.integers(-(10**40), 10**40))
def test_forty_digit_products_match_python_int(a, b):
    result = EXPERT.evaluate(f"({a})*({b})")
    assert result.value == a * b
    assert result.text == str(a * b)


def test_six_digit_product_a_small_model_cannot_do():
    assert EXPERT.evaluate("123456*654321").text == "80779853376"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1/3 + 1/6", Fraction(1, 2)),
        ("2/3 * 9/4", Fraction(3, 2)),
        ("(1/7 - 1/11) / (2/77)", Fraction(2)),
        ("-5/6 + 1/3", Fraction(-1, 2)),
        ("(2/3)^-3", Fraction(27, 8)),
        ("1/(1 + 1/(1 + 1/(1 + 1/2)))", Fraction(5, 8)),
    ],
)
def test_rational_arithmetic_matches_fraction(expression, expected):
    assert value_of(expression) == expected


def test_decimal_literals_are_read_exactly():
    assert value_of("0.1 + 0.2") == Fraction(3, 10)
    assert EXPERT.evaluate("0.1 + 0.2").text == "0.3"
    assert value_of("3.25 * 4") == 13
    assert value_of(".5 + .25") == Fraction(3, 4)


@pytest.mark.parametrize("fraction", [Fraction(1, 3), Fraction(2, 3), Fraction(-22, 7), Fraction(10**20 + 1, 97)])
def test_rounded_decimal_matches_decimal_module_with_an_explicit_context(fraction):
    context = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_EVEN)
    quotient = context.divide(decimal.Decimal(fraction.numerator), decimal.Decimal(fraction.denominator))
    expected = context.quantize(quotient, decimal.Decimal(1).scaleb(-30))
    result = EXPERT.evaluate(f"{fraction.numerator}/{fraction.denominator}")
    assert decimal.Decimal(result.decimal) == expected
    assert result.decimal_exact is False


def test_evaluate_leaves_the_global_decimal_context_alone():
    before = decimal.getcontext().copy()
    EXPERT.evaluate("1/3 + 2^-40")
    after = decimal.getcontext()
    assert (after.prec, after.rounding, dict(after.flags)) == (before.prec, before.rounding, dict(before.flags))


def test_results_longer_than_the_int_str_limit_format_in_full():
    result = EXPERT.evaluate("(10^1000)^5 - 1")
    assert result.text == "9" * 5000
    big = 7**5000  # 4226 digits; times 7^1000 gives over 5000, past CPython's default limit of 4300
    result = EXPERT.evaluate("(7^1000)^6")
    assert result.text == format(decimal.Decimal(big * 7**1000), "f")
    assert int_to_str(-(big * 7**1000)) == "-" + result.text


def test_two_6000_digit_numbers_multiply_exactly_when_the_limit_allows():
    a, b = 10**5999 + 12345, 3 * 10**5999 + 7
    expert = ComputationExpert(ComputeConfig(max_result_digits=20_000, max_input_chars=20_000))
    result = expert.evaluate(f"{int_to_str(a)}*{int_to_str(b)}")
    assert result.value == a * b
    tight = ComputationExpert(ComputeConfig(max_input_chars=20_000))
    assert reason_of(f"{int_to_str(a)}*{int_to_str(b)}", tight) == "result too large: would exceed 10000 digits"


# --- result text, precedence, spellings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "text"),
    [
        ("17+26", "43"),
        ("3-10", "-7"),
        ("3/4", "0.75"),
        ("-7/2", "-3.5"),
        ("6/3", "2"),
        ("1/3", "1/3"),
        ("2^-40", "1/1099511627776"),  # terminates, but needs 40 places and decimal_places is 30
        ("3 < 5", "true"),
        ("3 = 5", "false"),
    ],
)
def test_result_text_is_digits_then_terminating_decimal_then_fraction(expression, text):
    assert EXPERT.evaluate(expression).text == text


def test_non_integers_carry_an_exact_fraction_and_a_flagged_decimal():
    third = EXPERT.evaluate("1/3")
    assert (third.fraction, third.decimal, third.decimal_exact) == ("1/3", "0." + "3" * 30, False)
    quarter = EXPERT.evaluate("-1/4")
    assert (quarter.fraction, quarter.decimal, quarter.decimal_exact) == ("-1/4", "-0.25", True)
    few_places = ComputationExpert(ComputeConfig(decimal_places=4)).evaluate("2/3")
    assert (few_places.decimal, few_places.decimal_exact) == ("0.6667", False)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("10-4-3", 3),
        ("100/10/5", 2),
        ("2*3^2", 18),
        ("2^3^2", 512),  # right-associative: 2^(3^2)
        ("2**3**2", 512),
        ("-2^2", -4),  # unary minus binds looser than ^, as in maths
        ("(-2)^2", 4),
        ("2^-2", Fraction(1, 4)),
        ("2^-1^2", Fraction(1, 2)),  # 2^(-(1^2))
        ("2*-3", -6),
        ("--3", 3),
        ("-+-3", 3),
        ("0^0", 1),
    ],
)
def test_precedence_and_associativity(expression, expected):
    assert value_of(expression) == expected


def test_operator_spellings_are_equivalent():
    assert value_of("6 × 7") == value_of("6 x 7") == value_of("6*7") == 42
    assert value_of("1 − 2 ÷ 4") == value_of("1 - 2 / 4") == Fraction(1, 2)
    assert EXPERT.evaluate(" 3 ×  ( 4 + 5 ) ").expression == "3*(4+5)"
    assert EXPERT.evaluate("2 ** 3 = 8").expression == "2^3==8"


def test_x_is_multiplication_only_between_operands():
    assert value_of("(2) x (3)") == 6
    assert reason_of("2x") == "malformed expression: unexpected character 'x' at position 1"
    assert reason_of("x 2").startswith("malformed expression: unexpected character 'x'")
    assert reason_of("2 x -3").startswith("malformed expression: unexpected character 'x'")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 < 2", True),
        ("2 > 1", True),
        ("2 <= 2", True),
        ("3 >= 4", False),
        ("1/2 == 2/4", True),
        ("0.5 = 1/2", True),
        ("1 != 1", False),
        ("2 ≤ 3", True),
        ("2 ≥ 3", False),
        ("2 ≠ 3", True),
        ("1 < 2 < 3", True),  # chains mean every adjacent pair holds
        ("1 < 3 < 2", False),
    ],
)
def test_comparisons_give_booleans(expression, expected):
    assert value_of(expression) is expected


# --- declines ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1/0", "division by zero"),
        ("1/(2-2)", "division by zero"),
        ("0^-1", "division by zero"),
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("1+2)", "malformed expression: unexpected ')' at position 3"),
        ("(1+2", "malformed expression: '(' at position 0 is never closed"),
        ("1+", "malformed expression: unexpected end of input after '+' at position 1"),
        ("1 2", "malformed expression: unexpected number '2' at position 2"),
        ("2(3)", "malformed expression: unexpected '(' at position 1"),
        ("5.", "malformed expression: unexpected character '.' at position 1"),
        ("two + 2", "malformed expression: unexpected character 't' at position 0"),
        ("(1 < 2) + 1", "malformed expression: unexpected '<' at position 3"),
        ("2^5000", "exponent 5000 exceeds max_exponent 1000"),
        ("2^-5000", "exponent -5000 exceeds max_exponent 1000"),
        ("2^0.5", "non-integer exponent 1/2: only integer exponents give exact results"),
        ("2^(1/3)", "non-integer exponent 1/3: only integer exponents give exact results"),
        ("(10^1000)^1000", "result too large: would exceed 10000 digits"),
        (
            "10^999 * 10^999 * 10^999 * 10^999 * 10^999 * 10^999 * 10^999 * 10^999 * 10^999 * 10^999 * 10^999",
            "result too large: would exceed 10000 digits",
        ),
        (
            "1/10^999/10^999/10^999/10^999/10^999/10^999/10^999/10^999/10^999/10^999/10^999",
            "result too large: would exceed 10000 digits",
        ),
    ],
)
def test_declines_name_the_problem(expression, reason):
    assert reason_of(expression) == reason


def test_too_long_input_is_declined_before_any_work():
    assert reason_of("1+" * 1000 + "1") == "input too long: 2001 characters exceeds max_input_chars 2000"


def test_ten_thousand_nested_parentheses_decline_without_recursion_error():
    deep = "(" * 10_000 + "1" + ")" * 10_000
    assert reason_of(deep).startswith("input too long")
    roomy = ComputationExpert(ComputeConfig(max_input_chars=50_000))
    assert reason_of(deep, roomy) == "nesting too deep: more than 100 levels of parentheses"
    assert value_of("(" * 100 + "1" + ")" * 100, roomy) == 1


def test_long_operator_chains_need_no_nesting_budget():
    roomy = ComputationExpert(ComputeConfig(max_input_chars=50_000))
    assert value_of("1" + "+1" * 5000, roomy) == 5001
    assert value_of("-" * 5000 + "1", roomy) == 1
    assert value_of("1" + "^1" * 5000, roomy) == 1


def test_huge_exponents_are_described_not_printed():
    assert reason_of("2^(9^999)") == "exponent a 954-digit number exceeds max_exponent 1000"


def test_non_string_input_is_declined():
    result = EXPERT.evaluate(None)  # type: ignore[arg-type]
    assert not result.ok and result.reason == "expression must be a string, got NoneType"


def test_syntax_error_reports_parse_problems_without_computing():
    assert syntax_error("2^5000 / 0") is None
    assert syntax_error("1 +") == "malformed expression: unexpected end of input after '+' at position 2"


@pytest.mark.parametrize(
    "field_value",
    [
        {"max_result_digits": 0},
        {"max_exponent": -1},
        {"max_input_chars": 0},
        {"decimal_places": -1},
        {"max_nesting": 0},
        {"max_nesting": 10_000},
        {"max_exponent": 2.5},
        {"decimal_places": True},
    ],
)
def test_config_rejects_bad_values_naming_them(field_value):
    ((name, value),) = field_value.items()
    with pytest.raises(ValueError, match=rf"{name}.*{value!r}"):
        ComputeConfig(**field_value)


# --- properties ----------------------------------------------------------------------------------------------------


def assert_well_formed(result: ComputeResult) -> None:
    if result.ok:
        assert result.reason is None and result.value is not None and result.text
    else:
        assert result.value is None and result.reason
        assert not result.reason.startswith("internal error"), result.reason


@FUZZ
@given(st.text(max_size=60))
def test_arbitrary_text_never_raises(text):
    assert_well_formed(EXPERT.evaluate(text))


@FUZZ
@given(st.text(alphabet="0123456789+-*/^().<>= x", max_size=60))
def test_arithmetic_looking_text_never_raises(text):
    assert_well_formed(EXPERT.evaluate(text))


def integer_trees():
    return st.recursive(
        st.integers(-1000, 1000),
        lambda children: st.tuples(st.sampled_from("+-*"), children, children),
        max_leaves=25,
    )


def render(tree) -> str:
    if isinstance(tree, int):
        return f"({tree})" if tree < 0 else str(tree)
    op, left, right = tree
    return f"({render(left)} {op} {render(right)})"


def python_value(tree):
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = python_value(left), python_value(right)
    if op == "/":
        return None if b is None or a is None or b == 0 else a / b
    if a is None or b is None:
        return None
    return a + b if op == "+" else a - b if op == "-" else a * b


@settings(max_examples=200, deadline=None)
@given(integer_trees())
def test_integer_trees_match_python_int_arithmetic(tree):
    result = EXPERT.evaluate(render(tree))
    assert result.ok
    assert result.value == python_value(tree)
    assert result.text == str(int(python_value(tree)))


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.integers(-50, 50),
        lambda children: st.tuples(st.sampled_from("+-*/"), children, children),
        max_leaves=15,
    )
)
def test_rational_trees_match_fraction_arithmetic(tree):
    expected = python_value(tree)
    result = EXPERT.evaluate(render(tree))
    if expected is None:
        assert result.reason == "division by zero"
    else:
        assert result.value == expected
        assert Fraction(result.fraction) == expected
