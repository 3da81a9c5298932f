"""The routing lab's compute path: text -> model routing -> arrays for one layer -> figures and token strip.

Kept out of the page so that `bench/app_latency.py` times exactly what the page does.

Legend: T tokens of the text, E experts, K experts per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pimoe.layer.losses import load_balance_loss
from pimoe.layer.options import RoutingOptions
from pimoe.lm.model import PiMoELM, TextRouting
from pimoe.lm.routing_eval import chance_line, majority_baseline
from pimoe.lm.text import TokenType
from pimoe.measure.metrics import RoutingStats, routing_stats
from studio.figures.canvas import build_expert_load_figure, build_routing_heatmap, build_token_confidence_figure

from .strip import token_strip_spec

__all__ = ["MAX_TEXT_BYTES", "RoutingView", "build_lab_figures", "clip_text", "route_text", "routing_view"]

MAX_TEXT_BYTES = 1024  # longer texts are cut here (a warning says so): the heatmap stays readable and redraws fast

_TYPE_NAMES = {int(t): t.name.lower() for t in TokenType}


def clip_text(text: str, max_bytes: int = MAX_TEXT_BYTES) -> tuple[str, bool]:
    """`text` cut to at most max_bytes UTF-8 bytes at a character boundary; True when something was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


def route_text(model: PiMoELM, text: str, options: RoutingOptions) -> TextRouting:
    """Route `text` through the shared model with this call's router knobs (the model is not modified)."""
    return model.route_text(text, options=options)


@dataclass
class RoutingView:
    """One layer of a routed text as plain arrays.

    probs: (T, E). top1: (T,). confidence, entropy: (T,). dropped: (T, E) bool, the chosen-but-over-capacity
    assignments; dropped_tokens: (T,) bool, tokens that lost every assignment. tokens_per_expert: (E,) computed
    assignments. accuracy_per_layer: routing accuracy of each layer against the token-type labels (NaN: no targets).
    load_balance_loss: the load-balancing loss of this layer at the sidebar's weight. all_language: the accuracy of sending
    every token to this text's most common target type (`majority_type`, usually language); chance: k/E.
    """

    layer: int
    tokens: list[str]
    token_types: list[str]
    expert_types: list[str]
    probs: np.ndarray
    top1: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    dropped: np.ndarray
    dropped_tokens: np.ndarray
    tokens_per_expert: np.ndarray
    capacity: int | None
    accuracy_per_layer: list[float]
    stats: RoutingStats
    load_balance_loss: float
    all_language: float = math.nan
    majority_type: str = ""
    chance: float = math.nan

    @property
    def accuracy(self) -> float:
        return self.accuracy_per_layer[self.layer]


def routing_view(routed: TextRouting, layer: int, load_balance_weight: float) -> RoutingView:
    """Arrays of `layer` of a routed text, plus accuracy per layer and the aux loss at `load_balance_weight`."""
    if not 0 <= layer < len(routed.routing):
        raise ValueError(f"layer must be in [0, {len(routed.routing)}), got {layer}")
    info = routed.routing[layer]
    num_tokens, num_experts = info.probs.shape
    dropped = torch.zeros(num_tokens, num_experts, dtype=torch.bool)
    dropped.scatter_(1, info.expert_indices, info.dropped)  # (T, K) flags -> (T, E) cells
    all_language, majority_type, _ = majority_baseline(routed.token_types, routed.mapping, routed.expert_types)
    return RoutingView(
        layer=layer,
        tokens=routed.tokens,
        token_types=[_TYPE_NAMES.get(int(t), "none") for t in routed.token_types.tolist()],
        expert_types=list(routed.expert_types),
        probs=info.probs.numpy(),
        top1=info.top1.numpy(),
        confidence=info.confidence.numpy(),
        entropy=info.entropy.numpy(),
        dropped=dropped.numpy(),
        dropped_tokens=info.dropped_tokens.numpy(),
        tokens_per_expert=info.tokens_per_expert.numpy(),
        capacity=info.capacity,
        accuracy_per_layer=routed.routing_accuracy_per_layer(),
        stats=routing_stats(info),
        load_balance_loss=float(load_balance_loss(info.probs, info.expert_indices, load_balance_weight)),
        all_language=all_language,
        majority_type=majority_type,
        chance=chance_line(info.expert_indices.shape[1], num_experts),
    )


def build_lab_figures(view: RoutingView) -> tuple[dict[str, dict], dict]:
    """The routing lab's three chart specs (heatmap, load, confidence; studio.figures.canvas) and its token strip's
    (studio.strip)."""
    layer = f"layer {view.layer}"
    figures = {
        "heatmap": build_routing_heatmap(view.probs, view.tokens, view.token_types, view.expert_types,
                                         dropped=view.dropped, title=f"Router probabilities, {layer}"),
        "load": build_expert_load_figure(view.tokens_per_expert, view.expert_types, capacity=view.capacity,
                                         title=f"Expert load, {layer}"),
        "confidence": build_token_confidence_figure(view.confidence, view.entropy, view.tokens,
                                                    max_entropy=math.log(len(view.expert_types)),
                                                    dropped_tokens=view.dropped_tokens,
                                                    title=f"Per-token confidence and entropy, {layer}"),
    }
    strip = token_strip_spec(view.tokens, view.token_types, view.top1.tolist(), view.expert_types,
                             confidence=view.confidence.tolist(), dropped=view.dropped_tokens.tolist())
    return figures, strip


TAGGER_NOTE = ("Labels come from a rule-based regex tagger (digits and operators → computation, comparisons and "
               "brackets → mathematical, English logic words → logical, letters, spaces and punctuation → language), "
               "so routing accuracy measures how well the router imitates that tagger, not whether a token needs "
               "computation.")


def _share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def accuracy_help(view: RoutingView) -> str:
    """Hover text of the routing-accuracy metric: definition, per-layer values and both baselines."""
    return ("Share of labelled tokens whose top-1 expert has the type their token type maps to. Per layer: "
            + ", ".join(_share(a) for a in view.accuracy_per_layer)
            + f". Baselines on this text: all-{view.majority_type or 'language'} {_share(view.all_language)}, "
            f"chance k/E {_share(view.chance)}. " + TAGGER_NOTE)


def accuracy_caption(view: RoutingView) -> str:
    """One line under the metrics: accuracy beside its baselines and what it measures."""
    return (f"Routing accuracy {_share(view.accuracy)} (layer {view.layer}) against the all-"
            f"{view.majority_type or 'language'} baseline {_share(view.all_language)} (every token to the most "
            f"common type) and the chance line k/E = {_share(view.chance)}. {TAGGER_NOTE}")
