"""Routing quality of the language model against token-type labels, and the unigram baseline its loss is compared to.

Legend: B batch, S sequence, T routed tokens, E experts, C = NUM_TOKEN_TYPES token-type labels, L layers, V vocabulary.

Definitions (docs/model.md repeats them):

routing accuracy (of one layer): the share of non-padding tokens with a routing target whose top-1 expert has the
    expert type that the TypeToExpertMapping assigns to the token's TokenType label. Tokens without a target (EOS
    separators, or a type mapped to an expert type the model lacks with no fallback) are not counted. This is
    `pimoe.metrics.routing_accuracy`; nothing else is called accuracy. The model's routing accuracy is the mean over
    layers, reported per layer too.
type purity (of one layer): the share of labelled tokens whose top-1 expert is the majority top-1 expert of their
    TokenType (the expert the most tokens of that type chose): sum_c max_e N[c, e] / N with N[c, e] the number of
    tokens of type c whose top-1 expert is e. It asks "does each token type stick to one expert?" and needs no mapping,
    so it applies to unsupervised routing. It is 1.0 when every token goes to one expert, so read it with
    expert purity.
expert purity (of one layer): sum_e max_c N[c, e] / N, the share of labelled tokens whose TokenType is the majority
    type of their top-1 expert (classic cluster purity). It is the largest type's share when all tokens go to one
    expert and 1.0 when every expert serves one type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pimoe.layer.routing import RoutingInfo
from pimoe.lm.text import IGNORE_TYPE_ID, NUM_TOKEN_TYPES, TypeToExpertMapping, expert_type_vocabulary
from pimoe.measure.metrics import routing_accuracy

__all__ = [
    "RoutingTally",
    "expert_type_ids",
    "layer_routing_accuracies",
    "purity_from_counts",
    "unigram_loss",
]


def expert_type_ids(expert_types: Sequence[str]) -> torch.Tensor:
    """(E,) index of each expert's type in `expert_type_vocabulary(expert_types)`."""
    vocabulary = expert_type_vocabulary(expert_types)
    return torch.tensor([vocabulary.index(t) for t in expert_types], dtype=torch.long)


def _routed(per_position: torch.Tensor, routing: RoutingInfo) -> torch.Tensor:
    """(B, S) per-position values -> (T,) values of the routed tokens, in routing order."""
    return per_position.reshape(-1).to(routing.token_positions.device)[routing.token_positions]


def layer_routing_accuracies(routings: Sequence[RoutingInfo], token_types: torch.Tensor, expert_types: Sequence[str],
                             mapping: TypeToExpertMapping) -> list[float]:
    """Routing accuracy of each layer (see the module docstring). token_types: (B, S) TokenType ids aligned with the
    routed input. NaN for a layer where no token has a target."""
    targets = mapping.target_expert_type_ids(token_types, expert_types)  # (B, S)
    type_ids = expert_type_ids(expert_types)
    return [routing_accuracy(r, _routed(targets, r), type_ids) for r in routings]


def purity_from_counts(counts: torch.Tensor) -> tuple[float, float]:
    """(type purity, expert purity) from N (C, E): tokens of type c whose top-1 expert is e. NaN when N is empty."""
    total = float(counts.sum())
    if total == 0:
        return math.nan, math.nan
    return float(counts.amax(dim=1).sum()) / total, float(counts.amax(dim=0).sum()) / total


class RoutingTally:
    """Accumulates routing accuracy, the type x expert counts behind purity, and expert loads over many batches."""

    def __init__(self, num_layers: int, expert_types: Sequence[str], mapping: TypeToExpertMapping) -> None:
        self.expert_types = list(expert_types)
        self.mapping = mapping
        num_experts = len(self.expert_types)
        self.hits = [0] * num_layers  # tokens routed to their target type
        self.counted = [0] * num_layers  # tokens with a target
        self.counts = torch.zeros(num_layers, NUM_TOKEN_TYPES, num_experts, dtype=torch.long)  # top-1 by type
        self.load = torch.zeros(num_layers, num_experts, dtype=torch.long)  # assignments (all K slots)

    def update(self, routings: Sequence[RoutingInfo], token_types: torch.Tensor) -> None:
        """Add one batch: per-layer routing records and the (B, S) TokenType ids of the routed input."""
        if not routings:
            return
        # Everything is counted where the routing lives and read back once for all layers: on a GPU each read is a
        # host sync, and the live trainer tallies every step.
        device = routings[0].top1.device
        token_types = token_types.to(device)
        targets = self.mapping.target_expert_type_ids(token_types, self.expert_types)
        type_ids = expert_type_ids(self.expert_types).to(device)
        num_experts = len(self.expert_types)
        num_cells = NUM_TOKEN_TYPES * num_experts
        cell_ids = torch.arange(num_cells, device=device)
        rows = []
        for routing in routings:
            layer_targets = _routed(targets, routing)
            has_target = layer_targets >= 0
            hits = ((type_ids[routing.top1] == layer_targets) & has_target).sum()
            labels = _routed(token_types, routing)
            cells = torch.where(labels != IGNORE_TYPE_ID, labels * num_experts + routing.top1, num_cells)
            # counted by comparison, not bincount: CUDA's bincount has no deterministic implementation
            counts = (cells.unsqueeze(1) == cell_ids).sum(0)
            rows.append(torch.cat([hits.view(1), has_target.sum().view(1), counts,
                                   routing.tokens_per_expert.to(device=device, dtype=torch.long)]))
        for layer, row in enumerate(torch.stack(rows).cpu()):
            self.hits[layer] += int(row[0])
            self.counted[layer] += int(row[1])
            self.counts[layer] += row[2 : 2 + num_cells].view(NUM_TOKEN_TYPES, num_experts)
            self.load[layer] += row[2 + num_cells :]

    def accuracy_per_layer(self) -> list[float]:
        return [h / c if c else math.nan for h, c in zip(self.hits, self.counted, strict=True)]

    def accuracy(self) -> float:
        """Mean routing accuracy over layers (NaN if no layer counted a token)."""
        values = [v for v in self.accuracy_per_layer() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    def purity_per_layer(self) -> list[tuple[float, float]]:
        """Per layer, (type purity, expert purity)."""
        return [purity_from_counts(layer_counts) for layer_counts in self.counts]

    def load_shares(self) -> list[list[float]]:
        """Per layer, each expert's share of the assignments."""
        return (self.load.double() / self.load.sum(dim=1, keepdim=True).clamp_min(1)).tolist()


def unigram_loss(train_targets: torch.Tensor, eval_targets: torch.Tensor, vocab_size: int,
                 smoothing: float = 1.0) -> float:
    """Cross-entropy (nats/token) on `eval_targets` of the unigram model fitted on `train_targets`.

    p(v) = (count_train(v) + smoothing) / (N + smoothing * V): add-one (Laplace) smoothing, so a byte unseen in
    training costs a finite log(N + V) instead of infinity. Both arguments are 1-D LongTensors of token ids.
    """
    counts = torch.bincount(train_targets.reshape(-1), minlength=vocab_size).double() + smoothing
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[eval_targets.reshape(-1)].mean())
