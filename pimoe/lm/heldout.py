"""Held-out evaluation text: sentence frames, wording, names, languages and operand ranges that no training template
uses (`pimoe.lm.data`, `pimoe.lm.varied`), for routing accuracy and hand-off precision/recall on text nobody tuned for.

Two kinds of text:
- `HELDOUT_TEXTS`: ten fixed texts written for this evaluation (German, Russian, numbers in words, a logic argument,
  code, a recipe, ...). Routing accuracy is reported for each, beside its all-language baseline (issue 20).
- `heldout_documents(kind, seed, count)`: seeded documents from the templates below, with operands of 7..12 digits
  (training uses 0..99 and, for thousands only, up to 6 digits), decimals, powers, percentages, prices and thousands
  separators, plus control texts whose '=' ends no computation (assignments, comparisons, dates, phone numbers).

Nothing here is used in training; tests/test_heldout.py checks that no six-word run of these texts (digits masked)
occurs in the training corpus and that the template names differ.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction

__all__ = ["CONTROL_KINDS", "HELDOUT_TEXTS", "HANDOFF_KINDS", "ROUTING_KINDS", "heldout_documents"]

HELDOUT_TEXTS: dict[str, str] = {
    "german": "Gestern hat Jürgen im Laden 14 Brötchen gekauft und heute noch 9, also insgesamt 14+9=23 Brötchen.",
    "russian": "Вчера Наташа прочитала 37 страниц, а сегодня ещё 25, поэтому всего 37+25=62 страницы.",
    "number_words": "Thirty-one and eleven together make forty-two, written 31+11=42 on the board.",
    "logic": "Not every student passed, but if someone studied then they passed; Priya studied, thus she passed.",
    "code": "const total = price * qty; /* price 19, qty 4 */ console.log(19*4=76);",
    "recipe": "Whisk 3 eggs into 240 ml of milk, fold in 120 g of oats, and bake for 25 minutes: 240+120=360 g of batter.",
    "portuguese": "A padaria vendeu 58 pães de manhã e 47 à tarde, ou seja, 58+47=105 pães no dia.",
    "polish": "Marek miał 72 znaczki i oddał siostrze 18, więc zostało mu 72-18=54 znaczki.",
    "science": "A probe travels 7,250 km per hour for 12 hours, covering 7,250*12=87,000 km in total.",
    "shopping": "Two tickets at $48.50 each come to 2*$48.50=$97, and with a 10% fee of 97 that is 9.7 more.",
}

_PEOPLE = ("Priya", "Tomás", "Yuki", "Olek", "Zanele", "Bartek", "Ingrid", "Rafael")
_THINGS = ("bottles", "tickets", "bricks", "seeds", "tiles", "lanterns")


def _big(rng: random.Random) -> int:
    digits = rng.randint(7, 12)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _warehouse(rng: random.Random) -> str:
    a, b = _big(rng), _big(rng)
    who, what = rng.choice(_PEOPLE), rng.choice(_THINGS)
    return f"The warehouse counted {a} {what}; {who} delivered {b} extra, making {a} + {b} = {a + b} on the shelves."


def _ledger(rng: random.Random) -> str:
    b, a = sorted((_big(rng), _big(rng)))
    return f"Ledger check. Opening balance {a}, payments {b}; closing balance is {a}-{b}={a - b} exactly."


def _area(rng: random.Random) -> str:
    a, b = _big(rng), rng.randint(1000, 99999)
    return f"Field survey: a strip {a} m long and {b} m wide covers {a} × {b} = {a * b} square metres."


def _exponent(rng: random.Random) -> str:
    base, exponent = rng.randint(13, 99), rng.randint(4, 7)
    return f"Each generation multiplies by {base}, so after {exponent} generations: {base}^{exponent}={base**exponent}."


def _share(rng: random.Random) -> str:
    whole = 1000 * rng.randint(1000, 999999)
    percent = rng.choice((2.5, 7.5, 12.5, 35, 60))
    share = Fraction(str(percent)) * whole / 100  # whole is a multiple of 1000, so at most one decimal
    written = str(share.numerator) if share.denominator == 1 else f"{float(share):.1f}"
    return f"The fund reserves {percent:g}% of {whole} = {written} for repairs this year."


def _invoice(rng: random.Random) -> str:
    cents, count = rng.randint(100_000, 99_999_999), rng.randint(21, 99)
    price, total = f"{cents // 100:,}.{cents % 100:02d}", f"{cents * count // 100:,}.{cents * count % 100:02d}"
    return f"Invoice no. 7 — {count} units at €{price} each: {count} * €{price} = €{total} due."


def _german_fraction(rng: random.Random) -> str:
    a, b = _big(rng), rng.randint(2, 9)
    return f"Die Gemeinde verteilt {a * b} Euro gleichmäßig auf {b} Vereine: {a * b} / {b} = {a} Euro für jeden."


_HANDOFF: dict[str, Callable[[random.Random], str]] = {
    "warehouse": _warehouse,
    "ledger": _ledger,
    "area": _area,
    "exponent": _exponent,
    "share": _share,
    "invoice": _invoice,
    "german_fraction": _german_fraction,
}
HANDOFF_KINDS: tuple[str, ...] = tuple(_HANDOFF)


def _assignment(rng: random.Random) -> str:
    return f"config: retries={rng.randint(1, 9)} timeout={_big(rng)} ; mode=fast"


def _equality(rng: random.Random) -> str:
    a = _big(rng)
    return f"Is {a}=={a + rng.randint(1, 99)}? No; {a}>={a - 1} though."


def _date(rng: random.Random) -> str:
    return (f"Deadline = {rng.randint(2025, 2039)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}, "
            f"hotline = {rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}.")


def _time_range(rng: random.Random) -> str:
    start = rng.randint(7, 17)
    return f"Office hours = {start}:00-{start + 2}:30, pages = {rng.randint(1, 50)}-{rng.randint(51, 99)}, v = 2.4.1."


_CONTROLS: dict[str, Callable[[random.Random], str]] = {
    "assignment": _assignment,
    "equality": _equality,
    "date": _date,
    "time_range": _time_range,
}
CONTROL_KINDS: tuple[str, ...] = tuple(_CONTROLS)
ROUTING_KINDS: tuple[str, ...] = HANDOFF_KINDS + CONTROL_KINDS


def heldout_documents(kind: str, seed: int = 0, count: int = 20) -> list[str]:
    """`count` seeded documents of one held-out template (`HANDOFF_KINDS` or `CONTROL_KINDS`)."""
    table = {**_HANDOFF, **_CONTROLS}
    if kind not in table:
        raise ValueError(f"unknown held-out kind {kind!r}; choose from {list(table)}")
    rng = random.Random(f"heldout/{kind}/{seed}")
    return [table[kind](rng) for _ in range(count)]
