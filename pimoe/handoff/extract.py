"""Text to computation: find the arithmetic the exact expert (`pimoe.handoff.expert`) must evaluate.

In PiMoE/PiERN (arXiv 2509.18169) the router hands a span of generated text to the computation expert; this module
turns that text into the expert's input. `extract_expression` reads the text produced so far and returns the expression
written just before a trailing '=' ("she has 17+26=" -> "17+26"); `find_expressions` finds every "expression = result"
statement in a finished text, with character spans, for evaluation labels.

What counts as an expression (the run of characters that ends at the '='):
- digits, operators (+ - * / ^ ** × ÷ −), parentheses and spaces or tabs; never a line break. 'x' counts as
  multiplication only between two operands ("6 x 7"), as in `pimoe.handoff.expert`. A few things of written numbers
  count too, and `Extraction.computable` rewrites them for the expert:
  - '.' only as a decimal point (a digit follows it, and no letter or '.' comes before it): the full stop of
    "It costs 3. 5+2 =" or of "approx. 3+4 =" ends a sentence or an abbreviation and is not part of the sum;
  - ',' only as a thousands separator ("1,234,567": groups of exactly three digits after a digit), removed;
  - a currency sign ($ € £ ¥ ₹) right before a number ("$12.50 * 3"), removed;
  - '%' right after a number: "12.5% of 480" reads (12.5/100)*480, "480 * 12.5%" reads 480*(12.5/100). A percentage
    added or subtracted ("480 + 15%") is ambiguous (15% of what?) and gives nothing.
- it must parse (`pimoe.compute.syntax_error` is None) and contain at least one binary operator: "26 =" is a number, not
  a computation.
- it must not be the right operand of an operator whose left operand is a word. In "17 apples + 26 =" the run is
  "+ 26", and computing 26 (or anything) would answer a different question, so there is no expression. A leading sign
  counts as unary only when it touches its number ("is -3 + 5 =" gives "-3 + 5"; "apples - 3 + 5 =" gives nothing).
- a number glued to a word ("var2+3 =") or to a time's colon ("12:30-1 =") is part of something the expert does not
  read, so those runs give nothing either.
- nor does a function's argument: a '(' glued to a word or a number ("sqrt(16) + 2 =", "f(2) * 3 =", "log10(100) ="),
  an operand after a radical sign ("√16 + 2 =") or after a known function's name ("sqrt (9) + 1 =", "sin 0 + 1 =";
  names that are also English words only before a parenthesis: "round (3.5) + 1 =" gives nothing, "in round 3 + 4 ="
  gives "3 + 4").
  The expert reads no functions, and the bare argument would answer another question ((16) + 2 = 18, not 6).
- things written with digits and '-' or '/' that are not arithmetic are never handed off (`not_arithmetic` says which):
  dates ("2024-01-15", "12/25/2024"), phone numbers ("555-123-4567", "(555) 123-4567", "555-1234"), version strings
  ("1.2.3"), numbers with a leading zero ("0800", "01"), and unspaced ranges "a-b" with a < b ("pages 10-20"). The cost:
  "3-5=" written without spaces is read as a range and not computed; "3 - 5 =" is computed.
- when the run starts with junk that does not parse ("step 1) 3+4 =", "3. 5+2 ="), the longest suffix that starts after
  a space, parses and is not an operator's right operand is taken ("3+4", "5+2"); only the first few such starts are
  tried, so a long run of junk gives nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pimoe.handoff.expert import ComputeConfig, syntax_error

__all__ = ["FUNCTION_NAMES", "MATH_FUNCTION_NAMES", "Extraction", "computable_form", "extract_expression",
           "find_expressions", "not_arithmetic"]

_OPERATORS = frozenset("+-*/^×÷−")
_SIGNS = frozenset("+-−")
_DIGITS = frozenset("0123456789")
_CURRENCY = frozenset("$€£¥₹")
_EXPRESSION_CHARS = _DIGITS | frozenset("()") | _OPERATORS
_RADICALS = frozenset("√∛∜")
# Function names: before an operand they make it the function's argument, not a term of the sum. Names that are
# only mathematics count before any operand ("sin 0 + 1"); names that are also English words ("round 3 + 4 = 7" is
# prose) only before a parenthesis ("round (3.5) + 1").
MATH_FUNCTION_NAMES = frozenset(
    "sqrt cbrt sin cos tan cot sec csc sinh cosh tanh asin acos atan arcsin arccos arctan log ln lg log2 log10 exp "
    "abs gcd lcm sgn".split())
FUNCTION_NAMES = MATH_FUNCTION_NAMES | frozenset("root floor ceil round trunc max min mod sign fact factorial".split())
_LONGEST_NAME = max(map(len, FUNCTION_NAMES))
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines() splits on
# A binary operator is an operator right after something that ends an operand (a digit, '.', ')', '%').
_BINARY_OPERATOR = re.compile(r"[0-9.)%]\s*(?:[-+*/^×÷−]|x|of\b)")
# The stated result after '=': an optionally signed integer, decimal or fraction ("7", "-3.5", "3/4").
# Each attempt parses the rest of the run, so an unbounded number would make "1 1 1 ... 1 =" quadratic. Real junk
# before an expression is a word or two ("step 1)", "3."); past that the run is not arithmetic anyway.
_MAX_ATTEMPTS = 8
_STATED_RESULT = re.compile(r"[ \t]*([-−]?[0-9]+(?:\.[0-9]+)?(?:/[0-9]+)?)")

# Rewrites for the expert, applied in this order by `computable_form`.
_GROUPING_COMMA = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_CURRENCY_SIGN = re.compile(r"[$€£¥₹](?=[0-9.])")
_PERCENT_OF = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)%[ \t]*of[ \t]*")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)%")

# Shapes that are written with digits and '-', '/' or '.' but are not arithmetic (see the module docstring).
_NOT_ARITHMETIC = (
    ("date", re.compile(r"[0-9]{4}[-/][0-9]{1,2}[-/][0-9]{1,2}")),
    ("date", re.compile(r"[0-9]{1,2}([-/])[0-9]{1,2}\1(?:[0-9]{2}|[0-9]{4})")),
    ("phone number", re.compile(r"\+?(?:[0-9]{1,3}[-. ])?(?:\([0-9]{3}\) ?|[0-9]{3}[-. ])[0-9]{3}[-. ][0-9]{4}")),
    ("phone number", re.compile(r"[0-9]{3}-[0-9]{4}")),
)
_LEADING_ZERO = re.compile(r"(?<![0-9.,])0[0-9]")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]")
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")


@dataclass(frozen=True)
class Extraction:
    """One expression found in a text.

    expression == text[start:end] (as written, not normalised). computable: what the expert is asked to evaluate
    (`computable_form(expression)`: grouping commas and currency signs removed, percentages as /100). equals: offset
    of the '=' after it, or None when `extract_expression(..., require_equals=False)` took a span that ends the text.
    result, result_start, result_end: the number stated after the '=' and its span (`find_expressions` only), None
    when there is none.
    """

    expression: str
    start: int
    end: int
    equals: int | None = None
    result: str | None = None
    result_start: int | None = None
    result_end: int | None = None
    computable: str = ""

    def __post_init__(self) -> None:
        if not self.computable:
            object.__setattr__(self, "computable", computable_form(self.expression) or self.expression)


def computable_form(expression: str) -> str | None:
    """The expression as the expert reads it: "$1,200 * 12.5%" -> "1200 * (12.5/100)", "12.5% of 480" ->
    "(12.5/100)*480". None when a percentage is added or subtracted (ambiguous: "480 + 15%")."""
    text = _GROUPING_COMMA.sub("", expression)
    text = _CURRENCY_SIGN.sub("", text)
    text = _PERCENT_OF.sub(r"(\1/100)*", text)
    for match in _PERCENT.finditer(text):
        # A percentage added or subtracted is ambiguous: "480 + 15%" could mean 480.15 or 552. A leading sign
        # ("-15% of 80") is unary, so only a sign with an operand before it counts.
        left = text[: match.start()].rstrip(" \t")
        binary_before = left[-1:] in _SIGNS and left[:-1].strip(" \t") != ""
        if binary_before or text[match.end() :].lstrip(" \t")[:1] in _SIGNS:
            return None
    return _PERCENT.sub(r"(\1/100)", text)


def not_arithmetic(written: str) -> str | None:
    """What a run of digits and operators is instead of arithmetic ("date", "phone number", "version string",
    "leading zero", "range"), or None when it may be arithmetic. `written` is the text as written, spaces trimmed."""
    for kind, pattern in _NOT_ARITHMETIC:
        if pattern.fullmatch(written):
            return kind
    if _VERSION.search(written):
        return "version string"
    if _LEADING_ZERO.search(written):
        return "leading zero"
    match = _RANGE.fullmatch(written)
    if match and int(match.group(1)) < int(match.group(2)):
        return "range"
    return None


def _is_space(c: str) -> bool:
    return c.isspace() and c not in _LINE_BREAKS


def _is_times_x(text: str, i: int, run_end: int) -> bool:
    """Whether the 'x' at text[i] sits between two operands, looking no further right than run_end."""
    left = i - 1
    while left >= 0 and _is_space(text[left]):
        left -= 1
    right = i + 1
    while right < run_end and _is_space(text[right]):
        right += 1
    return left >= 0 and text[left] in "0123456789)%" and right < run_end and text[right] in "0123456789.($€£¥₹"


def _run_char(text: str, i: int, end: int) -> int:
    """How many characters ending at text[i] belong to the run of expression characters (0 = the run stops here)."""
    c = text[i]
    after = text[i + 1] if i + 1 < end else ""
    before = text[i - 1] if i > 0 else ""
    if c in _EXPRESSION_CHARS or _is_space(c):
        return 1
    if c == ".":
        # A decimal point, never a full stop or an abbreviation's dot ("approx. 3+4", "e.g.3+4").
        return int(after in _DIGITS and not (before.isalpha() or before == "."))
    if c == ",":
        return int(before in _DIGITS and bool(_GROUPING_COMMA.match(text, i)) and i + 4 <= end)
    if c == "%":
        return int(before in _DIGITS)
    if c in _CURRENCY:
        return int(after in _DIGITS or after == ".")
    if c == "x":
        return int(_is_times_x(text, i, end))
    if c == "f" and before == "o" and text[i - 3 : i - 1].rstrip(" \t").endswith("%") and _is_space(after):
        return 2  # the "of" of "12.5% of 480"
    return 0


def _run_start(text: str, end: int) -> int:
    """Start of the maximal run of expression characters ending at text[end - 1]."""
    i = end
    while i > 0:
        step = _run_char(text, i - 1, end)
        if not step:
            break
        i -= step
    return i


def _is_glued(text: str, start: int) -> bool:
    """Whether the number at text[start] continues what is before it: a word ("var2"), digit grouping ("1,000") or a
    time ("12:30")."""
    before = text[start - 1]
    if before.isalnum() or before == "_":
        return True
    return before in ",:." and start >= 2 and text[start - 2].isdigit()


def _is_function_argument(text: str, start: int) -> bool:
    """Whether the operand starting at text[start] is a function's argument (module docstring)."""
    if start == 0:
        return False
    if text[start] == "(" and (text[start - 1].isalnum() or text[start - 1] == "_"):
        return True
    end = start
    while end > 0 and _is_space(text[end - 1]):
        end -= 1
    if end > 0 and text[end - 1] in _RADICALS:
        return True
    word_start = end
    # at most one character past the longest name: a longer word names no function, and the scan stays bounded
    while word_start > max(0, end - _LONGEST_NAME - 1) and (text[word_start - 1].isalnum() or text[word_start - 1] == "_"):
        word_start -= 1
    word = text[word_start:end].lower()
    return word in (FUNCTION_NAMES if text[start] == "(" else MATH_FUNCTION_NAMES)


def _is_valid_start(text: str, start: int, run_start: int) -> bool:
    first = text[start]
    if _is_function_argument(text, start):
        return False
    if first in _OPERATORS and first not in _SIGNS:
        return False
    if first in _SIGNS and start + 1 < len(text) and _is_space(text[start + 1]):
        return False  # "apples + 26": a spaced sign is a binary operator whose left operand is a word
    if first in _SIGNS and start > 0 and text[start - 1].isalnum():
        return False  # "apples-3": a sign glued to a word is a hyphen or a binary minus, never a unary one
    if (first in _DIGITS or first in _CURRENCY or first == ".") and start > 0 and _is_glued(text, start):
        return False
    previous = start - 1
    while previous >= run_start and _is_space(text[previous]):
        previous -= 1
    # Dropping the part of the run before an operator would compute only that operator's right operand.
    return not (previous >= run_start and (text[previous] in _OPERATORS or text[previous] == "x"))


def _expression_before(text: str, end: int, max_chars: int) -> tuple[int, int, str] | None:
    """(start, end, computable form) of the expression that ends just before offset `end`, spaces trimmed, or None."""
    run_start = _run_start(text, end)
    while end > run_start and _is_space(text[end - 1]):
        end -= 1
    while run_start < end and _is_space(text[run_start]):
        run_start += 1
    if run_start >= end or end - run_start > max_chars:
        return None  # too long to be sure where it starts: better no computation than a truncated one
    if not _is_valid_start(text, run_start, run_start):
        return None
    if not_arithmetic(text[run_start:end]) is not None:
        return None  # the whole run is a date, a phone number...: no suffix of it is a question either
    config = ComputeConfig(max_input_chars=max_chars)
    attempts = 0
    for start in range(run_start, end):
        if start > run_start and not (_is_space(text[start - 1]) and not _is_space(text[start])):
            continue
        if not _is_valid_start(text, start, run_start):
            continue
        attempts += 1
        if attempts > _MAX_ATTEMPTS:
            return None
        candidate = text[start:end]
        computable = computable_form(candidate)
        if computable is None:
            return None
        if syntax_error(computable, config) is None:
            if not _BINARY_OPERATOR.search(candidate) or not_arithmetic(candidate) is not None:
                return None
            return start, end, computable
    return None


def _is_lone_equals(text: str, i: int) -> bool:
    """Whether text[i] == '=' stands alone, not inside '==', '<=', '>=', '!='."""
    return text[i] == "=" and (i == 0 or text[i - 1] not in "=<>!") and (i + 1 >= len(text) or text[i + 1] != "=")


def extract_expression(text: str, *, require_equals: bool = True, max_chars: int = 2000) -> Extraction | None:
    """The expression the text asks to compute: the arithmetic right before a trailing '=' ("she has 17+26=" -> "17+26").

    require_equals=False also accepts a span that simply ends the text ("123456*654321"), for when the router has
    already cut out the span to compute. max_chars: longest expression considered. None when there is no expression.
    """
    if not isinstance(text, str):
        return None
    end = len(text)
    while end > 0 and text[end - 1].isspace():
        end -= 1
    equals: int | None = None
    if end > 0 and _is_lone_equals(text, end - 1):
        equals = end - 1
        end -= 1
    elif require_equals:
        return None
    span = _expression_before(text, end, max_chars)
    if span is None:
        return None
    return Extraction(expression=text[span[0] : span[1]], start=span[0], end=span[1], equals=equals,
                      computable=span[2])


def find_expressions(text: str, *, max_chars: int = 2000) -> list[Extraction]:
    """Every "expression = result" statement in `text`, in order, with spans.

    The result is the number written right after the '=' (an integer, decimal or "a/b", optionally signed), or None
    when none follows ("17+26 = ?"). In a chain "1+2=3+4=7" each '=' is read on its own: "1+2" states 3, "3+4" states 7.
    """
    found: list[Extraction] = []
    if not isinstance(text, str):
        return found
    for i, c in enumerate(text):
        if c != "=" or not _is_lone_equals(text, i):
            continue
        span = _expression_before(text, i, max_chars)
        if span is None:
            continue
        result = _STATED_RESULT.match(text, i + 1)
        found.append(
            Extraction(
                expression=text[span[0] : span[1]],
                start=span[0],
                end=span[1],
                equals=i,
                result=result.group(1) if result else None,
                result_start=result.start(1) if result else None,
                result_end=result.end(1) if result else None,
                computable=span[2],
            )
        )
    return found
