"""Seeded arithmetic and word problems with operands far outside the demo model's training range, for the computation
hand-off evaluation (`pimoe.handoff.evaluation`).

The demo model was trained on `pimoe.lm.data` problems with operands 0..99. Here every operand has `min_digits` to
`max_digits` digits (3..6 by default, so >= 100), in the same sentence shapes the model learned ("Ana has 17 apples and
buys 26 more, so Ana has 17+26=43 apples."), so the text is familiar and only the numbers are new. Each problem is a
prompt that ends right before the answer ("... so Ana has 123456+654321="), the reference expression, the exact answer
(computed with Python ints here, independently of the expert) and the full reference text.

Control texts hold '=' characters that end no computation ("123456==654321 is false", "If 4521>=387 then ...",
"set total=4521"): no labels, so they only count against the hand-off trigger's precision.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CONTROL_KINDS",
    "DEV_SEED",
    "EVAL_SEED",
    "PROBLEM_KINDS",
    "TRAINING_MAX_OPERAND",
    "ComputeProblem",
    "ProblemSetConfig",
    "build_control_texts",
    "build_problems",
]

TRAINING_MAX_OPERAND = 99  # the demo corpus's max_value (assets/pimoe-demo.json: metadata.train_config.corpus)
# Separate seeds: the trigger was tuned on the dev set only; the eval set is never used for tuning.
DEV_SEED = 2
EVAL_SEED = 7

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mia", "Omar")
_OBJECTS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "shells", "cards", "eggs", "stones")


@dataclass(frozen=True)
class ComputeProblem:
    """One problem. prompt ends with the '=' that asks for the answer; expression is what precedes it (as written);
    answer is the exact result as the expert renders it; reference is the full text; operands are the numbers the
    problem was built from."""

    kind: str
    prompt: str
    expression: str
    answer: str
    reference: str
    operands: tuple[int, ...]


MAX_PROBLEMS = 100_000


@dataclass(frozen=True)
class ProblemSetConfig:
    """seed: private RNG seed. num_problems, num_controls: how many of each. min_digits, max_digits: operand size;
    min_digits >= 3 keeps every operand above the training range 0..99."""

    seed: int = EVAL_SEED
    num_problems: int = 140
    num_controls: int = 30
    min_digits: int = 3
    max_digits: int = 6

    def __post_init__(self) -> None:
        value = self.seed
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"seed must be an int >= 0, got {value!r}")
        # every problem is generated three ways (plain, hand-off, teacher-forced) on a small model: a bound keeps a
        # mistyped count from filling memory with a problem list no run would finish
        for name, low in (("num_problems", 1), ("num_controls", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_PROBLEMS:
                raise ValueError(f"{name} must be an int in [{low}, {MAX_PROBLEMS:,}], got {value!r}")
        for name in ("min_digits", "max_digits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 3 <= value <= 12:
                raise ValueError(f"{name} must be an int in [3, 12] (operands above the training range 0..99), "
                                 f"got {value!r}")
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) must be <= max_digits ({self.max_digits})")


class _Draw:
    def __init__(self, rng: random.Random, config: ProblemSetConfig) -> None:
        self.rng, self.config = rng, config

    def operand(self) -> int:
        digits = self.rng.randint(self.config.min_digits, self.config.max_digits)
        return self.rng.randint(10 ** (digits - 1), 10**digits - 1)

    def name(self) -> str:
        return self.rng.choice(_NAMES)

    def obj(self) -> str:
        return self.rng.choice(_OBJECTS)


def _problem(kind: str, prompt: str, expression: str, answer: int, tail: str, operands: tuple[int, ...]
             ) -> ComputeProblem:
    assert prompt.endswith(expression + "=")
    return ComputeProblem(kind=kind, prompt=prompt, expression=expression, answer=str(answer),
                          reference=f"{prompt}{answer}{tail}", operands=operands)


def _addition(d: _Draw) -> ComputeProblem:
    a, b, name, obj = d.operand(), d.operand(), d.name(), d.obj()
    expression = f"{a}+{b}"
    return _problem("addition", f"{name} has {a} {obj} and buys {b} more, so {name} has {expression}=", expression,
                    a + b, f" {obj}.", (a, b))


def _subtraction(d: _Draw) -> ComputeProblem:
    b, a = sorted((d.operand(), d.operand()))
    name, obj = d.name(), d.obj()
    expression = f"{a}-{b}"
    return _problem("subtraction", f"{name} had {a} {obj} and gave away {b}, so {name} has {expression}=",
                    expression, a - b, f" {obj} left.", (a, b))


def _multiplication(d: _Draw) -> ComputeProblem:
    a, b, obj, op = d.operand(), d.operand(), d.obj(), d.rng.choice(("*", "*", "×"))
    expression = f"{a}{op}{b}"
    return _problem("multiplication", f"There are {a} boxes with {b} {obj} in each, so there are {expression}=",
                    expression, a * b, f" {obj} in total.", (a, b))


def _division(d: _Draw) -> ComputeProblem:
    # Exact by construction, as in training: the dividend is divisor * quotient.
    divisor, quotient, name, obj = d.operand(), d.operand(), d.name(), d.obj()
    op = d.rng.choice(("/", "/", "÷"))
    expression = f"{divisor * quotient}{op}{divisor}"
    return _problem("division", f"{name} shares {divisor * quotient} {obj} equally among {divisor} friends, so each "
                    f"friend gets {expression}=", expression, quotient, f" {obj}.", (divisor * quotient, divisor))


def _parentheses(d: _Draw) -> ComputeProblem:
    bags, red, blue, obj = d.operand(), d.operand(), d.operand(), d.obj()
    expression = f"({red}+{blue})*{bags}"
    return _problem("parentheses", f"Each of {bags} bags holds {red} red and {blue} blue {obj}, so there are "
                    f"{expression}=", expression, (red + blue) * bags, f" {obj}.", (bags, red, blue))


def _two_step(d: _Draw) -> ComputeProblem:
    packs, per_pack, name, obj = d.operand(), d.operand(), d.name(), d.obj()
    total = packs * per_pack
    given = d.rng.randint(100, total)
    expression = f"{total}-{given}"
    return _problem("two_step", f"{name} buys {packs} packs of {per_pack} {obj}, which is {packs}*{per_pack}={total} "
                    f"{obj}. Then {name} gives away {given}, so {expression}=", expression, total - given,
                    " are left.", (packs, per_pack, given))


def _bare(d: _Draw) -> ComputeProblem:
    a, b, op = d.operand(), d.operand(), d.rng.choice("+-*")
    if op == "-":
        b, a = sorted((a, b))
    expression = f"{a}{op}{b}"
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    return _problem("bare", f"{expression}=", expression, answer, " is true.", (a, b))


_PROBLEMS: dict[str, Callable[[_Draw], ComputeProblem]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "division": _division,
    "parentheses": _parentheses,
    "two_step": _two_step,
    "bare": _bare,
}
PROBLEM_KINDS: tuple[str, ...] = tuple(_PROBLEMS)


def _comparison(d: _Draw) -> str:
    a, b = d.operand(), d.operand()
    first, second = d.rng.sample(_NAMES, 2)
    winner = first if a > b else second
    relation = f"{max(a, b)}>={min(a, b)}" if d.rng.random() < 0.5 else f"{min(a, b)}<={max(a, b)}"
    return f"{first} has {a} {d.obj()} and {second} has {b}. {relation}, therefore {winner} has at least as many."


def _false_equality(d: _Draw) -> str:
    a = d.operand()
    b = a + d.rng.randint(1, 99)
    return f"{a}=={b} is false, because {a}!={b}."


def _assignment(d: _Draw) -> str:
    return f"The program sets total={d.operand()} and count={d.operand()} before the loop starts."


_CONTROLS: dict[str, Callable[[_Draw], str]] = {
    "comparison": _comparison,
    "false_equality": _false_equality,
    "assignment": _assignment,
}
CONTROL_KINDS: tuple[str, ...] = tuple(_CONTROLS)


def build_problems(config: ProblemSetConfig | None = None) -> list[ComputeProblem]:
    """`num_problems` problems cycling through PROBLEM_KINDS, drawn from a private RNG: the same config always gives
    the same list."""
    config = config or ProblemSetConfig()
    draw = _Draw(random.Random(f"problems-{config.seed}"), config)
    return [_PROBLEMS[PROBLEM_KINDS[i % len(PROBLEM_KINDS)]](draw) for i in range(config.num_problems)]


def build_control_texts(config: ProblemSetConfig | None = None) -> list[str]:
    """`num_controls` texts with '=' characters that end no computation, cycling through CONTROL_KINDS."""
    config = config or ProblemSetConfig()
    draw = _Draw(random.Random(f"controls-{config.seed}"), config)
    return [_CONTROLS[CONTROL_KINDS[i % len(CONTROL_KINDS)]](draw) for i in range(config.num_controls)]
