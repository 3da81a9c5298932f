"""Text to computation: find the arithmetic the exact expert (`pimoe.handoff.expert`) must evaluate.

In PiMoE/PiERN (arXiv 2509.18169) the router hands a span of generated text to the computation expert; this module
turns that text into the expert's input. `extract_expression` reads the text produced so far and returns the expression
written just before a trailing '=' ("she has 17+26=" -> "17+26"); `find_expressions` finds every "expression = result"
statement in a finished text, with character spans, for evaluation labels.

What counts as an expression (the run of characters that ends at the '='):
- only digits, '.', operators (+ - * / ^ ** × ÷ −), parentheses and spaces or tabs; never a word and never a line break.
  'x' counts as multiplication only between two operands ("6 x 7"), as in `pimoe.handoff.expert`.
- it must parse (`pimoe.compute.syntax_error` is None) and contain at least one binary operator: "26 =" is a number, not
  a computation.
- it must not be the right operand of an operator whose left operand is a word. In "17 apples + 26 =" the run is
  "+ 26", and computing 26 (or anything) would answer a different question, so there is no expression. A leading sign
  counts as unary only when it touches its number ("is -3 + 5 =" gives "-3 + 5"; "apples - 3 + 5 =" gives nothing).
- a number glued to a word ("var2+3 =") is part of the word, and one after a digit-grouping comma ("1,000 + 2 =") is
  part of a number the expert does not read (no thousands separators), so those runs give nothing either.
- when the run starts with junk that does not parse ("step 1) 3+4 =", "3. 5+2 ="), the longest suffix that starts after
  a space, parses and is not an operator's right operand is taken ("3+4", "5+2"); only the first few such starts are
  tried, so a long run of junk gives nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pimoe.handoff.expert import ComputeConfig, syntax_error

__all__ = ["Extraction", "extract_expression", "find_expressions"]

_OPERATORS = frozenset("+-*/^×÷−")
_SIGNS = frozenset("+-−")
_EXPRESSION_CHARS = frozenset("0123456789.()") | _OPERATORS
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines() splits on
# A binary operator is an operator right after something that ends an operand (a digit, '.', ')').
_BINARY_OPERATOR = re.compile(r"[0-9.)]\s*(?:[-+*/^×÷−]|x)")
# The stated result after '=': an optionally signed integer, decimal or fraction ("7", "-3.5", "3/4").
# Each attempt parses the rest of the run, so an unbounded number would make "1 1 1 ... 1 =" quadratic. Real junk
# before an expression is a word or two ("step 1)", "3."); past that the run is not arithmetic anyway.
_MAX_ATTEMPTS = 8
_STATED_RESULT = re.compile(r"[ \t]*([-−]?[0-9]+(?:\.[0-9]+)?(?:/[0-9]+)?)")


@dataclass(frozen=True)
class Extraction:
    """One expression found in a text.

    expression == text[start:end] (as written, not normalised). equals: offset of the '=' after it, or None when
    `extract_expression(..., require_equals=False)` took a span that ends the text. result, result_start, result_end:
    the number stated after the '=' and its span (`find_expressions` only), None when there is none.
    """

    expression: str
    start: int
    end: int
    equals: int | None = None
    result: str | None = None
    result_start: int | None = None
    result_end: int | None = None


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
    return left >= 0 and text[left] in "0123456789)" and right < run_end and text[right] in "0123456789.("


def _run_start(text: str, end: int) -> int:
    """Start of the maximal run of expression characters ending at text[end - 1]."""
    i = end
    while i > 0:
        c = text[i - 1]
        if c in _EXPRESSION_CHARS or _is_space(c) or (c == "x" and _is_times_x(text, i - 1, end)):
            i -= 1
        else:
            break
    return i


def _is_glued(text: str, start: int) -> bool:
    """Whether the number at text[start] continues what is before it: a word ("var2") or digit grouping ("1,000")."""
    before = text[start - 1]
    if before.isalnum() or before == "_":
        return True
    return before == "," and start >= 2 and text[start - 2].isdigit()


def _is_valid_start(text: str, start: int, run_start: int) -> bool:
    first = text[start]
    if first in _OPERATORS and first not in _SIGNS:
        return False
    if first in _SIGNS and start + 1 < len(text) and _is_space(text[start + 1]):
        return False  # "apples + 26": a spaced sign is a binary operator whose left operand is a word
    if first in "0123456789." and start > 0 and _is_glued(text, start):
        return False
    previous = start - 1
    while previous >= run_start and _is_space(text[previous]):
        previous -= 1
    # Dropping the part of the run before an operator would compute only that operator's right operand.
    return not (previous >= run_start and (text[previous] in _OPERATORS or text[previous] == "x"))


def _expression_before(text: str, end: int, max_chars: int) -> tuple[int, int] | None:
    """(start, end) of the expression that ends just before offset `end`, spaces trimmed, or None."""
    run_start = _run_start(text, end)
    while end > run_start and _is_space(text[end - 1]):
        end -= 1
    while run_start < end and _is_space(text[run_start]):
        run_start += 1
    if run_start >= end or end - run_start > max_chars:
        return None  # too long to be sure where it starts: better no computation than a truncated one
    if not _is_valid_start(text, run_start, run_start):
        return None
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
        if syntax_error(candidate, config) is None:
            return (start, end) if _BINARY_OPERATOR.search(candidate) else None
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
    return Extraction(expression=text[span[0] : span[1]], start=span[0], end=span[1], equals=equals)


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
            )
        )
    return found
