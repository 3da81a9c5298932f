"""Figures for the computation hand-off: the generated text with hand-offs marked, and the computation expert's
routing probability per token. Pure functions: data in, an HTML string or a canvas chart spec (studio.figures.canvas)
out.

Legend: T shown tokens, E experts.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pimoe.handoff.decode import COMPUTATION_TYPE, Handoff, HandoffResult
from pimoe.lm.model import display_tokens
from pimoe.lm.text import ByteTokenizer
from studio.figures.canvas import chart_spec, heatmap_panel, json_floats
from studio.figures.routing import EXPERT_TYPE_COLORS, MAX_CELL_TEXT, MAX_TOKEN_TICKS, expert_labels

__all__ = [
    "MAX_SHOWN_TOKENS",
    "TextSegment",
    "build_computation_figure",
    "build_handoff_html",
    "build_result_figure",
    "handoff_segments",
    "token_labels",
]

MAX_SHOWN_TOKENS = 96  # the routing figure shows at most the last this many tokens of prompt + continuation

_TOKENIZER = ByteTokenizer()
_SEGMENT_STYLES = {
    "prompt": "color:#6b7280;",
    "generated": "",
    "result": "background:#fee2e2;border-bottom:2px solid #dc2626;font-weight:600;",
    "declined": "background:#fef3c7;border-bottom:2px dashed #b45309;",
}


@dataclass(frozen=True)
class TextSegment:
    """A run of text and what produced it: "prompt", "generated" (the model), "result" (spliced by the expert) or
    "declined" (the marker spliced where the expert refused to compute, or the '=' when there is none). note: hover
    text (expression, probability, reason)."""

    kind: str
    text: str
    note: str = ""


def handoff_segments(ids: Sequence[int], prompt_length: int, handoffs: Sequence[Handoff]) -> list[TextSegment]:
    """Cut prompt + continuation into segments at the hand-offs. ids / prompt_length / handoffs as in
    `pimoe.handoff.HandoffResult`. Specials (EOS) are dropped; segments with no text are left out."""
    if not 0 <= prompt_length <= len(ids):
        raise ValueError(f"prompt_length must be in [0, {len(ids)}], got {prompt_length}")
    cuts: list[tuple[int, int, str, str]] = []  # (start, end, kind, note) of the marked spans, in order
    for h in sorted(handoffs, key=lambda h: h.position):
        prob = f"p(computation) = {h.router_probability:.3f}"
        if h.spliced:
            cuts.append((h.result_start, h.result_end, "result", f"{h.expression} = {h.result_text} · {prob}"))
        else:
            # The spliced marker ("[undefined: division by zero]") when there is one, else the '=' itself.
            start, end = (h.result_start, h.result_end) if h.result_end > h.result_start else (h.position,
                                                                                                h.position + 1)
            cuts.append((start, end, "declined", f"{h.expression}: declined ({h.declined_reason}) · {prob}"))
    segments: list[TextSegment] = []

    def plain(start: int, end: int) -> None:
        for lo, hi, kind in ((start, min(end, prompt_length), "prompt"), (max(start, prompt_length), end, "generated")):
            if lo < hi:
                segments.append(TextSegment(kind, _TOKENIZER.decode(ids[lo:hi])))

    cursor = 0
    for start, end, kind, note in cuts:
        plain(cursor, start)
        segments.append(TextSegment(kind, _TOKENIZER.decode(ids[start:end]), note))
        cursor = end
    plain(cursor, len(ids))
    return [s for s in segments if s.text]


def build_handoff_html(segments: Sequence[TextSegment]) -> str:
    """The segments as one escaped HTML block: prompt muted, spliced results highlighted, declined '=' dashed; the
    note shows on hover."""
    spans = []
    for segment in segments:
        if segment.kind not in _SEGMENT_STYLES:
            raise ValueError(f"unknown segment kind {segment.kind!r}; known: {sorted(_SEGMENT_STYLES)}")
        title = f' title="{html.escape(segment.note)}"' if segment.note else ""
        spans.append(f'<span class="pimoe-{segment.kind}" style="{_SEGMENT_STYLES[segment.kind]}"{title}>'
                     f"{html.escape(segment.text)}</span>")
    return ('<div class="pimoe-handoff" style="font-family:monospace;white-space:pre-wrap;line-height:1.6;">'
            + "".join(spans) + "</div>")


def build_computation_figure(
    probs: Any,
    tokens: Sequence[str],
    expert_types: Sequence[str],
    *,
    threshold: float,
    handoff_positions: Sequence[int] = (),
    spliced: Sequence[bool] | None = None,
    title: str = "Router probabilities and the computation expert",
) -> dict[str, Any]:
    """A canvas chart spec (studio.figures.canvas). Top: heatmap of every expert's router probability per token.
    Bottom: the computation expert's probability per token (bars; tokens spliced by the expert in grey), the trigger
    threshold (dashed line) and the hand-offs (stars).

    probs: (T, E) probabilities of the trigger layer (or the layer mean). tokens: T display strings. expert_types: E
    names. handoff_positions: indices (into the T tokens) of the '=' tokens that handed off. spliced: T flags.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(tokens), len(expert_types)):
        raise ValueError(f"probs must be (tokens, experts) = ({len(tokens)}, {len(expert_types)}), "
                         f"got {probs.shape}")
    num_tokens = len(tokens)
    spliced = np.zeros(num_tokens, dtype=bool) if spliced is None else np.asarray(spliced, dtype=bool)
    if spliced.shape != (num_tokens,):
        raise ValueError(f"spliced must have one flag per token ({num_tokens}), got shape {spliced.shape}")
    bad = [p for p in handoff_positions if not 0 <= p < num_tokens]
    if bad:
        raise ValueError(f"hand-off positions {bad} are outside the {num_tokens} shown tokens")
    is_computation = np.array([t == COMPUTATION_TYPE for t in expert_types])
    computation = probs[:, is_computation].sum(axis=1)  # (T,)
    positions = [int(p) for p in handoff_positions]
    hover = [f"token {i}: {token!r}" for i, token in enumerate(tokens)]
    bars = {"values": json_floats(computation), "width": 0.9,
            "colors": np.where(spliced, "#9ca3af", EXPERT_TYPE_COLORS[COMPUTATION_TYPE]).tolist(),
            "hover": [f"{label}: p(computation) = {p:.3f}" + (" (spliced by the expert)" if cut else "")
                      for label, p, cut in zip(hover, computation.tolist(), spliced.tolist(), strict=True)]}
    stars = {"name": "hand-off", "x": positions, "y": json_floats(computation[positions]) if positions else [],
             "color": "#facc15", "marker": "star"}
    panels = [heatmap_panel(probs.T, x=range(num_tokens), y_labels=expert_labels(expert_types), x_hover=hover,
                            y_title="expert", cell_text=probs.size <= MAX_CELL_TEXT, weight=0.65),
              {"kind": "bars", "bars": bars, "series": [stars], "y_title": "p(computation)", "y_range": [0.0, 1.05],
               "weight": 0.35, "hlines": [{"y": float(threshold), "label": f"threshold {threshold:g}",
                                           "color": "#111827", "dash": "dash"}]}]
    show_tokens = 0 < num_tokens <= MAX_TOKEN_TICKS
    legend = [["p(computation)", EXPERT_TYPE_COLORS[COMPUTATION_TYPE], None], ["spliced by the expert", "#9ca3af", None],
              ["hand-off", "#facc15", "star"]]
    return chart_spec(title, 240 + 30 * len(expert_types), panels, x_title="token", legend=True,
                      x_labels=list(tokens) if show_tokens else None, x_integer=True, legend_items=legend)


def token_labels(ids: Sequence[int]) -> list[str]:
    """One display string per token id (as `pimoe.model.display_tokens`), specials as <eos>/<bos>/<pad>; bytes that
    are not valid UTF-8 on their own are shown as \\xNN."""
    specials = {_TOKENIZER.eos_id: "<eos>", _TOKENIZER.bos_id: "<bos>", _TOKENIZER.pad_id: "<pad>"}
    labels: list[str] = []
    run: list[int] = []

    def flush() -> None:
        data = bytes(run)
        while data:
            try:
                labels.extend(display_tokens(data.decode("utf-8")))
                break
            except UnicodeDecodeError as error:
                labels.extend(display_tokens(data[:error.start].decode("utf-8")))
                labels.extend(f"\\x{b:02x}" for b in data[error.start:error.end])
                data = data[error.end:]
        run.clear()

    for token in ids:
        if token in specials:
            flush()
            labels.append(specials[token])
        else:
            run.append(int(token))
    flush()
    return labels


def build_result_figure(result: HandoffResult, probs: Any, expert_types: Sequence[str], *,
                        max_tokens: int = MAX_SHOWN_TOKENS) -> dict[str, Any]:
    """`build_computation_figure` for a generation with hand-offs: the last `max_tokens` tokens of prompt +
    continuation (the leading EOS left out), spliced results in grey, hand-offs (declined ones too) starred.

    probs: (N, E) router probabilities of all N = len(result.ids) tokens in the trigger layer (or the layer mean),
    e.g. `trigger.layer_probs(route_positions(model, result.ids, range(N)))`.
    """
    probs = np.asarray(probs, dtype=np.float64)
    num_ids = len(result.ids)
    if probs.shape[0] != num_ids:
        raise ValueError(f"probs has {probs.shape[0]} rows but the result has {num_ids} tokens")
    start = max(1 if num_ids > 1 else 0, num_ids - max_tokens)
    spliced = np.zeros(num_ids, dtype=bool)
    for h in result.handoffs:
        spliced[h.result_start:h.result_end] = True
    positions = [h.position - start for h in result.handoffs if h.position >= start]
    return build_computation_figure(probs[start:], token_labels(result.ids[start:]), expert_types,
                                    threshold=result.trigger.threshold, handoff_positions=positions,
                                    spliced=spliced[start:])
