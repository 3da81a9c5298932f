"""The token strip: the text, each byte-token tinted with the colour of its top-1 expert's type, and a legend.

HTML rather than a plotly figure because it wraps like text: 1,000 tokens stay readable, where a one-row chart would
need scrolling. Every token string is escaped; hovering a token shows its position, type, expert and confidence.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence

from studio.figures.routing import expert_color

__all__ = ["token_strip_html"]

_SPACE_TOKENS = {"␣": "\u00a0", "⇥": "\u00a0\u00a0"}


def _alpha_hex(confidence: float) -> str:
    """A background alpha that grows with the router's confidence, so hesitant tokens look paler."""
    alpha = 0.12 + 0.55 * min(max(confidence, 0.0), 1.0)
    return f"{round(alpha * 255):02x}"


def token_strip_html(
    tokens: Sequence[str],
    token_types: Sequence[str],
    top1: Sequence[int],
    expert_types: Sequence[str],
    *,
    confidence: Sequence[float] | None = None,
    dropped: Sequence[bool] | None = None,
) -> str:
    """HTML for the strip and its legend.

    tokens / token_types: T display strings and type names. top1: T expert indices. expert_types: E type names.
    confidence: optional T top-1 probabilities (background strength). dropped: optional T flags, drawn with a red
    dashed outline.
    """
    if not (len(tokens) == len(token_types) == len(top1)):
        raise ValueError(f"got {len(tokens)} tokens, {len(token_types)} token types and {len(top1)} top-1 experts")
    spans = []
    for index, (token, token_type, expert) in enumerate(zip(tokens, token_types, top1, strict=True)):
        expert_type = expert_types[expert]
        color = expert_color(expert_type)
        conf = confidence[index] if confidence is not None else 1.0
        is_dropped = bool(dropped[index]) if dropped is not None else False
        shown = _SPACE_TOKENS.get(token, token)
        title = f"#{index} {token!r} ({token_type}) → E{expert} {expert_type}, p = {conf:.2f}"
        if is_dropped:
            title += ", dropped (over capacity)"
        outline = "outline:1px dashed #dc2626;" if is_dropped else ""
        spans.append(
            f'<span title="{html.escape(title)}" style="background:{color}{_alpha_hex(conf)};'
            f'border-bottom:3px solid {color};{outline}padding:1px 0;border-radius:2px">{html.escape(shown)}</span>'
        )
        if token in _SPACE_TOKENS:
            spans.append("<wbr>")  # a line may break after a space, as in ordinary text
        elif token == "↵":
            spans.append("<br>")
    counts = Counter(expert_types[e] for e in top1)
    legend = "".join(
        f'<span style="display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap">'
        f'<span style="display:inline-block;width:12px;height:12px;border-radius:2px;background:{expert_color(t)};'
        f'margin-right:5px"></span>{html.escape(t)} <span style="color:#6b7280;margin-left:4px">'
        f"{counts.get(t, 0)}</span></span>"
        for t in dict.fromkeys(expert_types)
    )
    return (
        '<div class="pimoe-strip" style="font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:15px;'
        'line-height:2.0;overflow-wrap:anywhere;padding:8px 10px;border:1px solid #e5e7eb;border-radius:6px">'
        + "".join(spans)
        + '</div><div class="pimoe-strip-legend" style="font-size:13px;margin-top:6px">'
        + '<span style="color:#6b7280;margin-right:10px">top-1 expert type (tokens):</span>'
        + legend
        + "</div>"
    )
