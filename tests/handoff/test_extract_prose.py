"""Extraction inside generated prose (hypothesis): the expression is found whatever sentence, abbreviation or language
comes before it, its value is what the written arithmetic means, and dates, times, phone numbers, version strings and
ranges are never handed off."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe.handoff.expert import ComputationExpert
from pimoe.handoff.extract import FUNCTION_NAMES, extract_expression, find_expressions

EXPERT = ComputationExpert()
_LETTERS = st.characters(categories=("Lu", "Ll"), exclude_characters="xX")
# a function's name before a number makes it that function's argument ("sin 0 + 1 ="): deliberately not computed
_WORD = st.text(_LETTERS, min_size=1, max_size=8).filter(lambda word: word.lower() not in FUNCTION_NAMES)
_ABBREVIATIONS = ("approx.", "e.g.", "i.e.", "Dr.", "No.", "etc.", "vs.", "z.B.", "т.е.")
_ENDINGS = (". ", "! ", "? ", ": ", ", ", "; ", " ", ".\n", " — ")


@st.composite
def prose(draw) -> str:
    """A few sentences of letters-only words, ending in a sentence mark, an abbreviation or a line break."""
    sentences = draw(st.lists(st.lists(_WORD, min_size=1, max_size=6), min_size=1, max_size=3))
    text = "".join(" ".join(words) + draw(st.sampled_from(_ENDINGS)) for words in sentences)
    if draw(st.booleans()):
        text += draw(st.sampled_from(_ABBREVIATIONS)) + draw(st.sampled_from(("", " ")))
    return text


@st.composite
def number(draw) -> tuple[str, Fraction]:
    """A written number and its value: an integer, a decimal, thousands groups, or a price with a currency sign."""
    kind = draw(st.sampled_from(("int", "decimal", "grouped", "price")))
    whole = draw(st.integers(0, 10**7))
    if kind == "int":
        return str(whole), Fraction(whole)
    if kind == "decimal":
        fraction = draw(st.text("0123456789", min_size=1, max_size=3))
        return f"{whole}.{fraction}", Fraction(f"{whole}.{fraction}")
    if kind == "grouped":
        whole = draw(st.integers(1000, 10**9))
        return f"{whole:,}", Fraction(whole)
    cents = draw(st.integers(0, 99))
    sign = draw(st.sampled_from("$€£¥₹"))
    return f"{sign}{whole:,}.{cents:02d}", Fraction(whole) + Fraction(cents, 100)


# Binary operators as written and as Python applies them; '-' and '/' are spaced so that no draw is a range or a date.
_BINARY = {"+": "+", " + ": "+", "*": "*", " * ": "*", " × ": "*", " - ": "-", " / ": "/", " ÷ ": "/"}


@st.composite
def expression(draw) -> tuple[str, Fraction | None]:
    """Written arithmetic and its exact value (None when it divides by zero)."""
    written, value = draw(number())
    python = f"Fraction({str(value)!r})"
    if draw(st.booleans()):  # a power of the first operand: 2^3, 2**3
        base, exponent = draw(st.integers(0, 99)), draw(st.integers(0, 3))
        written, python = f"{base}{draw(st.sampled_from(('^', '**', ' ^ ')))}{exponent}", f"(Fraction({base})**{exponent})"
    if draw(st.booleans()):
        written, python = "-" + written, "-" + python
    for _ in range(draw(st.integers(1 if "^" not in written and "**" not in written else 0, 3))):
        op = draw(st.sampled_from(sorted(_BINARY)))
        operand, operand_value = draw(number())
        if draw(st.booleans()):
            other, other_value = draw(number())
            operand, python_operand = f"({operand} + {other})", f"(Fraction({str(operand_value)!r}) + Fraction({str(other_value)!r}))"
        else:
            python_operand = f"Fraction({str(operand_value)!r})"
        written, python = f"{written}{op}{operand}", f"{python} {_BINARY[op]} {python_operand}"
    if not any(op.strip() in written for op in _BINARY) and "^" not in written and "**" not in written:
        written, python = f"{written} + 1", f"{python} + 1"
    try:
        return written, eval(python, {"Fraction": Fraction})  # noqa: S307 - our own generated arithmetic
    except ZeroDivisionError:
        return written, None


@settings(max_examples=400, deadline=None)
@given(prose(), expression(), st.sampled_from(("=", " =", " = ", "=\t")))
def test_expression_after_any_prose_is_extracted_and_computed_exactly(before, arithmetic, equals):
    written, value = arithmetic
    text = before + written + equals
    extraction = extract_expression(text)
    assert extraction is not None, text
    assert extraction.expression == written
    result = EXPERT.evaluate(extraction.computable)
    if value is None:
        assert not result.ok and "division by zero" in result.reason
    else:
        assert result.ok and result.value == value, (text, extraction.computable, result)
    [found] = find_expressions(text + " 7")
    assert found.expression == written and found.result == "7"


@settings(max_examples=200, deadline=None)
@given(prose(), st.decimals(0, 1000, places=1, allow_nan=False, allow_infinity=False), st.integers(0, 10**6))
def test_percent_of_is_the_share(before, percent, whole):
    for written in (f"{percent}% of {whole}", f"{whole} * {percent}%"):
        extraction = extract_expression(f"{before}{written} =")
        assert extraction is not None and extraction.expression == written
        assert EXPERT.evaluate(extraction.computable).value == Fraction(str(percent)) * whole / 100


@st.composite
def not_arithmetic(draw) -> str:
    """Digits and '-', '/', '.', ':' that are a date, a time, a phone number, a version string or a range."""
    year, month, day = draw(st.integers(1900, 2099)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    area, exchange, line = draw(st.integers(200, 999)), draw(st.integers(200, 999)), draw(st.integers(1000, 9999))
    low = draw(st.integers(0, 500))
    high = draw(st.integers(low + 1, 1000))
    major, minor, patch = (draw(st.integers(0, 30)) for _ in range(3))
    return draw(st.sampled_from((
        f"{year}-{month:02d}-{day:02d}", f"{year}-{month}-{day}", f"{month}/{day}/{year}", f"{day}/{month}/{year % 100:02d}",
        f"{day:02d}.{month:02d}.{year}", f"{year}/{month:02d}/{day:02d}",
        f"{hour}:{minute:02d}", f"{hour:02d}:{minute:02d}-{(hour + 1) % 24:02d}:{minute:02d}",
        f"{area}-{exchange}-{line}", f"({area}) {exchange}-{line}", f"+1-{area}-{exchange}-{line}",
        f"+1 {area} {exchange} {line}", f"{exchange}-{line}", f"{area}.{exchange}.{line}",
        f"{major}.{minor}.{patch}", f"v{major}.{minor}", f"{major}.{minor}.{patch}-{minor}",
        f"{low}-{high}",
    )))


@settings(max_examples=400, deadline=None)
@given(prose(), not_arithmetic(), st.sampled_from(("=", " =", " = ")))
def test_dates_times_phones_versions_and_ranges_are_never_handed_off(before, written, equals):
    text = before + written + equals
    assert extract_expression(text) is None, text
    assert find_expressions(text + "5") == []


@settings(max_examples=150, deadline=None)
@given(prose(), st.sampled_from(sorted(FUNCTION_NAMES)), expression(), st.sampled_from(sorted(_BINARY)), number(),
       st.sampled_from(("", " ")))
def test_a_functions_argument_is_never_computed_as_a_term(before, name, inner, op, after, space):
    """"name(inner) op n =" for every known function name and generated arithmetic: the expert reads no functions, so
    nothing is extracted (computing "(inner) op n" would answer another question)."""
    text = f"{before}{name}{space}({inner[0]}){op}{after[0]} ="
    assert extract_expression(text) is None, text
    assert find_expressions(text) == [], text
