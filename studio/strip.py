"""The token strip: the text, each byte-token tinted with the colour of its top-1 expert's type, and a legend.

Text rather than a chart because it wraps like text: 1,000 tokens stay readable, where a one-row chart would need
scrolling. Hovering a token shows its position, type, expert and confidence. This module builds the strip as data
(`token_strip_spec`); studio/token_strip.js lays it out in the browser with text nodes, so no token is ever parsed as
HTML.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from studio.figures.routing import expert_color

__all__ = ["token_strip_spec"]

_SPACE_TOKENS = {"␣": "\u00a0", "⇥": "\u00a0\u00a0"}


def _alpha(confidence: float) -> int:
    """A background alpha (0-255) that grows with the router's confidence, so hesitant tokens look paler."""
    return round((0.12 + 0.55 * min(max(confidence, 0.0), 1.0)) * 255)


def token_strip_spec(
    tokens: Sequence[str],
    token_types: Sequence[str],
    top1: Sequence[int],
    expert_types: Sequence[str],
    *,
    confidence: Sequence[float] | None = None,
    dropped: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The strip and its legend as data for studio/token_strip.js.

    tokens / token_types: T display strings and type names. top1: T expert indices. expert_types: E type names.
    confidence: optional T top-1 probabilities (background strength). dropped: optional T flags, drawn with a red
    dashed outline.

    Returns {"text": shown strings, "color": per-token colour index into "colors", "alpha": per-token background alpha
    0-255, "dropped": indices of dropped tokens, "titles": hover texts, "breaks": {"wbr": indices after which a line may
    break (spaces, as in ordinary text), "br": indices after which it must (newlines)}, "colors", "legend": [[type,
    colour, tokens], ...]}.
    """
    if not (len(tokens) == len(token_types) == len(top1)):
        raise ValueError(f"got {len(tokens)} tokens, {len(token_types)} token types and {len(top1)} top-1 experts")
    colors = list(dict.fromkeys(expert_color(t) for t in expert_types))
    color_of = {t: colors.index(expert_color(t)) for t in expert_types}
    confidences = list(confidence) if confidence is not None else [1.0] * len(tokens)
    flags = [bool(flag) for flag in dropped] if dropped is not None else [False] * len(tokens)
    titles = []
    for index, (token, token_type, expert) in enumerate(zip(tokens, token_types, top1, strict=True)):
        title = f"#{index} {token!r} ({token_type}) → E{expert} {expert_types[expert]}, p = {confidences[index]:.2f}"
        titles.append(title + (", dropped (over capacity)" if flags[index] else ""))
    counts = Counter(expert_types[e] for e in top1)
    return {
        "text": [_SPACE_TOKENS.get(token, token) for token in tokens],
        "color": [color_of[expert_types[e]] for e in top1],
        "alpha": [_alpha(c) for c in confidences],
        "dropped": [index for index, flag in enumerate(flags) if flag],
        "titles": titles,
        "breaks": {"wbr": [i for i, token in enumerate(tokens) if token in _SPACE_TOKENS],
                   "br": [i for i, token in enumerate(tokens) if token == "↵"]},
        "colors": colors,
        "legend": [[t, expert_color(t), counts.get(t, 0)] for t in dict.fromkeys(expert_types)],
    }
