"""The exact computation expert: arithmetic the language model hands off instead of guessing.

PiMoE/PiERN (arXiv 2509.18169) keeps computation in a physically isolated, exact expert: the router decides at the token
level that the text needs a computation, a text-to-computation module (`pimoe.handoff.extract`) turns the tokens into an
expression, this module computes it exactly, and the result text goes back into the token stream. It is not a neural
network: every value is a `fractions.Fraction`, so 40-digit products and 1/3 + 1/6 are exact.

Grammar (loosest binding first):

    comparison := sum (cmp sum)*          cmp: < > <= >= == = != ≤ ≥ ≠ ; chains mean each adjacent pair holds (1 < 2 < 3)
    sum        := product (('+'|'-') product)*
    product    := unary (('*'|'/') unary)*        also × ÷, and 'x' between two operands ("6 x 7")
    unary      := ('+'|'-')* power                so -2^2 == -(2^2) == -4, as in maths
    power      := atom ('^' ('+'|'-')* atom)*     '**' too; right-associative: 2^3^2 == 2^9 == 512; 2^-1 == 1/2
    atom       := number | '(' sum ')'            numbers: 17, 3.25, .5 (no exponent notation, no thousands commas)

Comparisons only appear at the top level, so a boolean never enters arithmetic. '−' (U+2212) is a minus. 0^0 is 1.

Every input string gets a `ComputeResult` and nothing raises: failures come back as ok=False with a reason naming the
problem. Work is bounded before it is done (input length, parenthesis depth, exponent size, and the size of a power
estimated from bit lengths) and every intermediate value is checked against `max_result_digits`, which applies to the
numerator and the denominator separately.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

__all__ = [
    "ComputationExpert",
    "ComputeConfig",
    "ComputeResult",
    "int_to_str",
    "syntax_error",
]

_LOG10_2 = math.log10(2)
# Nesting is bounded by the parser's recursion: each '(' costs about five Python frames in parsing and three in
# evaluation, so 200 levels stay well inside the default recursion limit of 1000 even when called from a deep stack.
_MAX_NESTING_CAP = 200


@dataclass(frozen=True)
class ComputeConfig:
    """Bounds on the work one evaluation may do, and how results are rendered.

    max_result_digits: decimal digits allowed in any intermediate or final numerator or denominator.
    max_exponent: largest |n| allowed in a power x^n. max_input_chars: longest expression accepted.
    decimal_places: digits after the point in the decimal rendering. max_nesting: deepest parenthesis nesting.
    """

    max_result_digits: int = 10_000
    max_exponent: int = 1000
    max_input_chars: int = 2000
    decimal_places: int = 30
    max_nesting: int = 100

    def __post_init__(self) -> None:
        for name, low in (("max_result_digits", 1), ("max_exponent", 0), ("max_input_chars", 1), ("decimal_places", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.decimal_places > self.max_result_digits:
            raise ValueError(
                f"decimal_places must be <= max_result_digits ({self.max_result_digits}), got {self.decimal_places!r}"
            )
        if isinstance(self.max_nesting, bool) or not isinstance(self.max_nesting, int):
            raise ValueError(f"max_nesting must be an int, got {self.max_nesting!r}")
        if not 1 <= self.max_nesting <= _MAX_NESTING_CAP:
            raise ValueError(f"max_nesting must be in [1, {_MAX_NESTING_CAP}], got {self.max_nesting!r}")


@dataclass(frozen=True)
class ComputeResult:
    """What the expert says about one expression.

    ok: whether a value was computed. value: a Fraction for arithmetic, a bool for a comparison, None on failure.
    text: what to splice into generated text (see `ComputationExpert.evaluate`); None on failure.
    reason: None when ok, else a human-readable reason ("division by zero", "exponent 5000 exceeds max_exponent 1000").
    expression: the normalised expression (ASCII operators, no spaces), or the stripped input if it did not parse.
    fraction: exact "a/b" (or "n" for an integer). decimal: rounded half-even to `decimal_places` places, trailing zeros
    dropped. decimal_exact: whether that decimal equals the value. These three are None for comparisons and failures.
    """

    ok: bool
    value: Fraction | bool | None = None
    text: str | None = None
    reason: str | None = None
    expression: str = ""
    fraction: str | None = None
    decimal: str | None = None
    decimal_exact: bool | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Integers of any size to and from text. CPython refuses int <-> str beyond sys.get_int_max_str_digits() digits (4300 by
# default); raising that limit is process-global and not thread-safe, so big numbers are split by powers of ten instead.


def _str_chunk_digits() -> int:
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
    return min(limit, 2000) if limit > 0 else 2000


def int_to_str(n: int) -> str:
    """Decimal digits of an int of any size, independent of the interpreter's int/str digit limit."""
    return "-" + _nonnegative_to_str(-n, _str_chunk_digits()) if n < 0 else _nonnegative_to_str(n, _str_chunk_digits())


def _nonnegative_to_str(n: int, chunk: int) -> str:
    # A number with b bits has at most floor(b * log10 2) + 1 digits.
    if n.bit_length() * _LOG10_2 + 1 <= chunk:
        return str(n)
    low_digits = max(1, int(n.bit_length() * _LOG10_2) // 2)
    high, low = divmod(n, 10**low_digits)
    if high == 0:
        return _nonnegative_to_str(low, chunk)
    return _nonnegative_to_str(high, chunk) + _nonnegative_to_str(low, chunk).zfill(low_digits)


def _digits_to_int(digits: str, chunk: int) -> int:
    if len(digits) <= chunk:
        return int(digits)
    split = len(digits) // 2
    return _digits_to_int(digits[:-split], chunk) * 10**split + _digits_to_int(digits[-split:], chunk)


def _describe_int(n: int) -> str:
    """The int for a reason string, or its size when printing it would swamp the message."""
    if n.bit_length() <= 64:
        return str(n)
    return f"a {len(int_to_str(abs(n)))}-digit number"


def _describe_fraction(x: Fraction) -> str:
    if x.denominator == 1:
        return _describe_int(x.numerator)
    return f"{_describe_int(x.numerator)}/{_describe_int(x.denominator)}"


# ---------------------------------------------------------------------------------------------------------------------
# Tokens


class _Decline(Exception):
    """Internal: stop evaluating and report `reason`. Never escapes `ComputationExpert.evaluate`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Token(NamedTuple):
    kind: str  # "num", "op" (+ - * / ^), "cmp" (< > <= >= == !=), "(", ")"
    text: str  # canonical ASCII spelling
    raw: str  # as written, for error messages
    pos: int  # character offset in the input
    value: Fraction | None = None


_NUMBER = re.compile(r"([0-9]+)(?:\.([0-9]+))?|\.([0-9]+)")
_SINGLE = {"+": "+", "-": "-", "−": "-", "/": "/", "÷": "/", "×": "*", "^": "^", "≤": "<=", "≥": ">=", "≠": "!="}
_DOUBLE = {"**": "^", "<=": "<=", ">=": ">=", "==": "==", "!=": "!="}
_SINGLE_CMP = {"<": "<", ">": ">", "=": "=="}
_ARITHMETIC = frozenset("+-*/^")


def _tokenize(expression: str, config: ComputeConfig) -> list[_Token]:
    tokens: list[_Token] = []
    chunk = _str_chunk_digits()
    depth, i, n = 0, 0, len(expression)
    while i < n:
        c = expression[i]
        if c.isspace():
            i += 1
            continue
        number = _NUMBER.match(expression, i)
        if number:
            tokens.append(_number_token(number, chunk, config))
            i = number.end()
            continue
        pair = expression[i : i + 2]
        if pair in _DOUBLE:
            kind = "op" if pair == "**" else "cmp"
            tokens.append(_Token(kind, _DOUBLE[pair], pair, i))
            i += 2
            continue
        if c in _SINGLE:
            canonical = _SINGLE[c]
            tokens.append(_Token("op" if canonical in _ARITHMETIC else "cmp", canonical, c, i))
        elif c in _SINGLE_CMP:
            tokens.append(_Token("cmp", _SINGLE_CMP[c], c, i))
        elif c == "*":
            tokens.append(_Token("op", "*", c, i))
        elif c == "x" and _x_is_times(expression, i, tokens):
            tokens.append(_Token("op", "*", c, i))
        elif c == "(":
            depth += 1
            if depth > config.max_nesting:
                raise _Decline(f"nesting too deep: more than {config.max_nesting} levels of parentheses")
            tokens.append(_Token("(", "(", c, i))
        elif c == ")":
            depth = max(0, depth - 1)  # an unmatched ')' is reported by the parser, with its position
            tokens.append(_Token(")", ")", c, i))
        else:
            raise _Decline(f"malformed expression: unexpected character {c!r} at position {i}")
        i += 1
    return tokens


def _x_is_times(expression: str, i: int, tokens: list[_Token]) -> bool:
    # 'x' is multiplication only between two operands ("6 x 7", "(2) x (3)"), so a stray variable name is an error.
    if not tokens or tokens[-1].kind not in ("num", ")"):
        return False
    rest = expression[i + 1 :].lstrip()
    return bool(rest) and (rest[0] in "0123456789.(")


def _number_token(match: re.Match[str], chunk: int, config: ComputeConfig) -> _Token:
    whole, fraction_part, bare_fraction = match.groups()
    if bare_fraction is not None:
        whole, fraction_part = "0", bare_fraction
    fraction_part = fraction_part or ""
    if len(whole.lstrip("0")) > config.max_result_digits or len(fraction_part) > config.max_result_digits:
        raise _Decline(
            f"number too large: the number at position {match.start()} exceeds {config.max_result_digits} digits"
        )
    value = Fraction(_digits_to_int(whole + fraction_part, chunk), 10 ** len(fraction_part))
    return _Token("num", match.group(0), match.group(0), match.start(), value)


# ---------------------------------------------------------------------------------------------------------------------
# Parser: tokens to a tree of n-ary nodes. N-ary sums, products and power towers keep the tree as deep as the
# parenthesis nesting, whatever the number of operators, so evaluating it recursively stays bounded too.
#   ("num", Fraction)  ("neg", node)  ("sum", [(op, node, pos)])  ("prod", [(op, node, pos)])
#   ("pow", [(negate, node, pos)])  ("cmp", [node], [op])


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, after: _Token | None) -> _Token:
        token = self.peek()
        if token is None:
            where = f" after {after.raw!r} at position {after.pos}" if after is not None else ""
            raise _Decline(f"malformed expression: unexpected end of input{where}")
        self.i += 1
        return token

    def parse(self) -> tuple:
        operands, ops = [self.sum()], []
        while (token := self.peek()) is not None and token.kind == "cmp":
            self.i += 1
            ops.append(token.text)
            operands.append(self.sum())
        if (token := self.peek()) is not None:
            raise _unexpected(token)
        return ("cmp", operands, ops) if ops else operands[0]

    def sum(self) -> tuple:
        terms = [("+", self.product(), -1)]
        while (token := self.peek()) is not None and token.text in ("+", "-") and token.kind == "op":
            self.i += 1
            terms.append((token.text, self.product(), token.pos))
        return terms[0][1] if len(terms) == 1 else ("sum", terms)

    def product(self) -> tuple:
        factors = [("*", self.unary(), -1)]
        while (token := self.peek()) is not None and token.text in ("*", "/") and token.kind == "op":
            self.i += 1
            factors.append((token.text, self.unary(), token.pos))
        return factors[0][1] if len(factors) == 1 else ("prod", factors)

    def signs(self) -> bool:
        """Consume a run of unary signs; True when they negate. A loop, not recursion, so '------1' costs no depth."""
        negate = False
        while (token := self.peek()) is not None and token.kind == "op" and token.text in ("+", "-"):
            self.i += 1
            negate ^= token.text == "-"
        return negate

    def unary(self) -> tuple:
        negate = self.signs()
        node = self.power()
        return ("neg", node) if negate else node

    def power(self) -> tuple:
        levels = [(False, self.atom(), -1)]
        while (token := self.peek()) is not None and token.text == "^":
            self.i += 1
            levels.append((self.signs(), self.atom(), token.pos))
        return levels[0][1] if len(levels) == 1 else ("pow", levels)

    def atom(self) -> tuple:
        before = self.tokens[self.i - 1] if self.i > 0 else None
        token = self.take(before)
        if token.kind == "num":
            return ("num", token.value)
        if token.kind == "(":
            node = self.sum()
            closing = self.peek()
            if closing is None:
                raise _Decline(f"malformed expression: '(' at position {token.pos} is never closed")
            if closing.kind != ")":
                raise _unexpected(closing)
            self.i += 1
            return node
        raise _unexpected(token)


def _unexpected(token: _Token) -> _Decline:
    what = f"number {token.raw!r}" if token.kind == "num" else repr(token.raw)
    return _Decline(f"malformed expression: unexpected {what} at position {token.pos}")


def _parse(expression: str, config: ComputeConfig) -> tuple[list[_Token], tuple]:
    if not isinstance(expression, str):
        raise _Decline(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > config.max_input_chars:
        raise _Decline(f"input too long: {len(expression)} characters exceeds max_input_chars {config.max_input_chars}")
    if not expression.strip():
        raise _Decline("empty expression")
    tokens = _tokenize(expression, config)
    return tokens, _Parser(tokens).parse()


def syntax_error(expression: str, config: ComputeConfig | None = None) -> str | None:
    """Why `expression` cannot be parsed (same reasons as `evaluate`), or None when it parses. Computes nothing."""
    try:
        _parse(expression, config or ComputeConfig())
    except _Decline as decline:
        return decline.reason
    except RecursionError:
        return "nesting too deep: the parser ran out of stack"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


class _Evaluator:
    def __init__(self, config: ComputeConfig) -> None:
        self.config = config
        self.bound = 10**config.max_result_digits  # a value has more than max_result_digits digits iff it is >= bound

    def check(self, x: Fraction) -> Fraction:
        if abs(x.numerator) >= self.bound or x.denominator >= self.bound:
            raise _Decline(f"result too large: would exceed {self.config.max_result_digits} digits")
        return x

    def run(self, node: tuple) -> Fraction | bool:
        if node[0] != "cmp":
            return self.value(node)
        values = [self.value(operand) for operand in node[1]]
        return all(_compare(a, op, b) for a, op, b in zip(values, node[2], values[1:], strict=False))

    def value(self, node: tuple) -> Fraction:
        tag = node[0]
        if tag == "num":
            return self.check(node[1])
        if tag == "neg":
            return -self.value(node[1])
        if tag == "sum":
            total = Fraction(0)
            for op, term, _ in node[1]:
                total = self.check(total + self.value(term) if op == "+" else total - self.value(term))
            return total
        if tag == "prod":
            return self.product(node[1])
        return self.tower(node[1])

    def product(self, factors: list) -> Fraction:
        result = self.value(factors[0][1])
        for op, factor, _ in factors[1:]:
            # Operands are already within the bound, so even the unreduced product is at most twice the digit limit:
            # cheap to compute exactly and then check, rather than refusing on an estimate.
            right = self.value(factor)
            if op == "/":
                if right == 0:
                    raise _Decline("division by zero")
                result = self.check(result / right)
            else:
                result = self.check(result * right)
        return result

    def tower(self, levels: list) -> Fraction:
        # a ^ -b ^ c means a ^ (-(b ^ c)): fold from the right, applying each level's unary signs to what is above it.
        exponent: Fraction | None = None
        for index in range(len(levels) - 1, -1, -1):
            negate, node, _ = levels[index]
            base = self.value(node)
            level = base if exponent is None else self.power(base, exponent)
            exponent = -level if negate else level
        assert exponent is not None
        return exponent

    def power(self, base: Fraction, exponent: Fraction) -> Fraction:
        if exponent.denominator != 1:
            raise _Decline(
                f"non-integer exponent {_describe_fraction(exponent)}: only integer exponents give exact results"
            )
        e = exponent.numerator
        if abs(e) > self.config.max_exponent:
            raise _Decline(f"exponent {_describe_int(e)} exceeds max_exponent {self.config.max_exponent}")
        if base == 0 and e < 0:
            raise _Decline("division by zero")
        # Refuse before computing: |p| >= 2^(bits-1), so p^|e| >= 2^((bits-1)|e|); once that is >= 10^max the result
        # certainly has too many digits. Anything this lets through is at most bits/(bits-1) times the limit.
        bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
        if (bits - 1) * abs(e) * _LOG10_2 >= self.config.max_result_digits:
            raise _Decline(f"result too large: would exceed {self.config.max_result_digits} digits")
        return self.check(base**e)


def _compare(a: Fraction, op: str, b: Fraction) -> bool:
    if op == "<":
        return a < b
    if op == ">":
        return a > b
    if op == "<=":
        return a <= b
    if op == ">=":
        return a >= b
    if op == "==":
        return a == b
    return a != b


def _render_decimal(x: Fraction, places: int) -> tuple[str, bool]:
    """x rounded half-even to `places` digits after the point, trailing zeros dropped, and whether that is exact.

    Done in integer arithmetic: one exact division and one rounding, so there is no double rounding (which a
    divide-then-quantize with `decimal` can introduce) and no decimal context, global or local, is touched.
    """
    scaled, remainder = divmod(abs(x.numerator) * 10**places, x.denominator)
    if 2 * remainder > x.denominator or (2 * remainder == x.denominator and scaled % 2 == 1):
        scaled += 1
    digits = int_to_str(scaled).rjust(places + 1, "0")
    whole, fractional = digits[: len(digits) - places], digits[len(digits) - places :].rstrip("0")
    text = f"{whole}.{fractional}" if fractional else whole
    if x < 0 and scaled != 0:
        text = "-" + text
    return text, remainder == 0


class ComputationExpert:
    """The exact expert of PiMoE: `evaluate(expression)` computes with Fractions and never raises."""

    def __init__(self, config: ComputeConfig | None = None) -> None:
        self.config = config or ComputeConfig()
        self._evaluator = _Evaluator(self.config)

    def evaluate(self, expression: str) -> ComputeResult:
        """Compute `expression` exactly.

        The result's `text` is what goes back into the token stream: an integer as plain digits ("43", "-7"); a
        non-integer as a decimal when it terminates within `decimal_places` ("0.75", "-3.5"), otherwise as the exact
        fraction "a/b" in lowest terms ("1/3"); a comparison as "true" or "false".
        """
        normalised = expression.strip() if isinstance(expression, str) else ""
        try:
            tokens, tree = _parse(expression, self.config)
            normalised = "".join(token.text for token in tokens)
            value = self._evaluator.run(tree)
        except _Decline as decline:
            return ComputeResult(ok=False, reason=decline.reason, expression=normalised)
        except RecursionError:
            return ComputeResult(ok=False, reason="nesting too deep: ran out of stack", expression=normalised)
        except Exception as error:  # the contract is "never raises"; the fuzz tests assert this branch is never taken
            return ComputeResult(
                ok=False, reason=f"internal error: {type(error).__name__}: {error}", expression=normalised
            )
        return self._success(value, normalised)

    def _success(self, value: Fraction | bool, normalised: str) -> ComputeResult:
        if isinstance(value, bool):
            return ComputeResult(ok=True, value=value, text="true" if value else "false", expression=normalised)
        numerator, denominator = value.numerator, value.denominator
        fraction = int_to_str(numerator) if denominator == 1 else f"{int_to_str(numerator)}/{int_to_str(denominator)}"
        decimal, exact = _render_decimal(value, self.config.decimal_places)
        text = fraction if denominator == 1 or not exact else decimal
        return ComputeResult(
            ok=True,
            value=value,
            text=text,
            expression=normalised,
            fraction=fraction,
            decimal=decimal,
            decimal_exact=exact,
        )
