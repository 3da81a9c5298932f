"""Routing accuracy on named texts, each beside its baselines, in-template and out-of-template.

What routing accuracy measures here: agreement of the router's top-1 expert type with a label from a rule-based
tagger (`pimoe.lm.text.tag_tokens`: regexes over the bytes, e.g. digits -> computation, letters -> language, the
English words in LOGIC_WORDS -> logical). It says how well the router imitates that tagger, not whether a token
"needs" computation. Two baselines come with every figure:

all-language (majority type): the accuracy of sending every token to the most common target type of that text,
    which on prose is the language expert. A router that does not beat it has learned nothing the text rewards.
chance k/E: a token visits k of the E experts; k/E is the share a router that ignores the text would give any one
    expert type per expert of it. It is the floor of the routing lab's load chart.

in-template: the validation split of the training corpus (the same templates the model was trained on, new draws).
out-of-template: `pimoe.lm.heldout` (templates, wording, languages and operand ranges never used in training).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pimoe.lm.data import CorpusConfig, generate_corpus
from pimoe.lm.heldout import HELDOUT_TEXTS, ROUTING_KINDS, heldout_documents
from pimoe.lm.model import PiMoELM
from pimoe.lm.text import TypeToExpertMapping, expert_type_vocabulary
from pimoe.turns import turn_point

__all__ = ["TextScore", "chance_line", "in_template_texts", "majority_baseline", "out_of_template_texts", "routing_report", "score_text", "score_texts"]


@dataclass(frozen=True)
class TextScore:
    """Routing accuracy of one text and its baselines.

    accuracy: mean over layers of the share of labelled tokens whose top-1 expert has the tagger's target type.
    all_language: share of labelled tokens whose target is the text's most common target type (usually language).
    majority_type: that type. chance: k/E. tokens: labelled tokens counted.
    """

    name: str
    accuracy: float
    accuracy_per_layer: tuple[float, ...]
    all_language: float
    majority_type: str
    chance: float
    tokens: int

    @property
    def beats_baseline(self) -> bool:
        return self.accuracy > self.all_language

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "beats_baseline": self.beats_baseline}


def majority_baseline(token_types: torch.Tensor, mapping: TypeToExpertMapping,
                      expert_types: Sequence[str]) -> tuple[float, str, int]:
    """(accuracy of sending every labelled token to the most common target type, that type, labelled tokens).
    token_types: TokenType ids of a text, any shape. NaN and "" when no token has a target."""
    vocabulary = expert_type_vocabulary(expert_types)
    targets = mapping.target_expert_type_ids(token_types, expert_types).reshape(-1)
    labelled = targets[targets >= 0]
    if not labelled.numel():
        return math.nan, "", 0
    counts = torch.bincount(labelled, minlength=len(vocabulary))
    majority = int(counts.argmax())
    return float(counts[majority]) / labelled.numel(), vocabulary[majority], int(labelled.numel())


def chance_line(top_k: int, num_experts: int) -> float:
    """k/E: the share of experts each token visits."""
    return top_k / num_experts


def score_text(model: PiMoELM, name: str, text: str) -> TextScore:
    """Route `text` (as the routing lab does, `PiMoELM.route_text`) and score it against the tagger's labels."""
    routed = model.route_text(text)
    per_layer = tuple(routed.routing_accuracy_per_layer())
    all_language, majority_type, tokens = majority_baseline(routed.token_types, model.mapping, model.expert_types)
    values = [v for v in per_layer if not math.isnan(v)]
    return TextScore(name=name, accuracy=sum(values) / len(values) if values else math.nan,
                     accuracy_per_layer=per_layer, all_language=all_language, majority_type=majority_type,
                     chance=chance_line(model.routers[0].config.top_k, len(model.expert_types)), tokens=tokens)


def score_texts(model: PiMoELM, texts: Mapping[str, str]) -> list[TextScore]:
    scores = []
    for name, text in texts.items():
        turn_point()  # between texts, a caller sharing the device may let other work in (pimoe.turns)
        scores.append(score_text(model, name, text))
    return scores


def in_template_texts(seed: int = 0, per_text: int = 4, count: int = 8) -> dict[str, str]:
    """`count` texts of `per_text` documents each from the training corpus's validation split (training templates,
    draws the model never saw)."""
    val = generate_corpus(CorpusConfig(seed=seed, num_train=1, num_val=per_text * count)).val
    return {f"in-template {i + 1}": " ".join(val[i * per_text:(i + 1) * per_text]) for i in range(count)}


def out_of_template_texts(seed: int = 0, per_text: int = 3) -> dict[str, str]:
    """The ten fixed held-out texts and one text of `per_text` documents per held-out template kind."""
    texts = dict(HELDOUT_TEXTS)
    for kind in ROUTING_KINDS:
        texts[kind] = " ".join(heldout_documents(kind, seed=seed, count=per_text))
    return texts


def _summary(scores: list[TextScore]) -> dict[str, Any]:
    accuracies = [s.accuracy for s in scores]
    return {"mean_accuracy": sum(accuracies) / len(accuracies), "min_accuracy": min(accuracies),
            "mean_all_language": sum(s.all_language for s in scores) / len(scores),
            "all_beat_baseline": all(s.beats_baseline for s in scores), "chance": scores[0].chance,
            "texts": [s.as_dict() for s in scores]}


def routing_report(model: PiMoELM, seed: int = 0) -> dict[str, Any]:
    """In-template and out-of-template routing accuracy, per text and summarised, with both baselines."""
    return {"in_template": _summary(score_texts(model, in_template_texts(seed))),
            "out_of_template": _summary(score_texts(model, out_of_template_texts(seed)))}
