"""What experts specialise in: token classes of the tokenizer's own tokens, class × expert shares, co-activation.

Legend: T tokens, E experts, K experts per token, C token classes.

A token's class comes from its text alone (digits, operators, letters, other), so it applies to any tokenizer. Under
routing blind to class, each expert receives a share K/E of every class's tokens (the chance line the figures draw).
"""

from __future__ import annotations

import torch

from pimoe.layer.routing import RoutingInfo

__all__ = ["TOKEN_CLASSES", "class_expert_share", "classify_token", "coactivation", "token_texts", "vocabulary_expert_share"]

TOKEN_CLASSES = ("number", "operator", "word", "other")
_OPERATORS = set("+-*/=<>×÷^%")


def classify_token(text: str) -> str:
    """The class of one token's text (leading space or byte-level 'Ġ' marker ignored)."""
    core = text.replace("Ġ", " ").replace("▁", " ").strip()
    if core and all(ch.isdigit() for ch in core):
        return "number"
    if core and all(ch in _OPERATORS for ch in core):
        return "operator"
    if core and all(ch.isalpha() for ch in core):
        return "word"
    return "other"


def token_texts(tokenizer, input_ids: torch.Tensor) -> list[str]:
    """Each token of the (B, S) ids decoded alone, flattened in B * S order (routing's token order)."""
    return [tokenizer.decode([i]) if tokenizer is not None else str(i) for i in input_ids.reshape(-1).tolist()]


def class_expert_share(routing: RoutingInfo, classes: list[str]) -> torch.Tensor:
    """(C, E): of the tokens of each class in TOKEN_CLASSES, the share that chose each expert (any of its K slots).

    Rows of absent classes are NaN. A row sums to K; chance is K / E per entry.
    """
    class_ids = torch.tensor([TOKEN_CLASSES.index(c) for c in classes], device=routing.expert_indices.device)
    chosen = torch.zeros(routing.num_tokens, routing.num_experts, device=class_ids.device)
    chosen.scatter_(1, routing.expert_indices, 1.0)  # (T, E) 1 where chosen
    per_class = torch.zeros(len(TOKEN_CLASSES), routing.num_experts, device=class_ids.device)
    per_class.index_add_(0, class_ids, chosen)
    counts = torch.bincount(class_ids, minlength=len(TOKEN_CLASSES)).float().unsqueeze(-1)
    return torch.where(counts > 0, per_class / counts.clamp_min(1), torch.full_like(per_class, float("nan")))


def coactivation(routing: RoutingInfo) -> torch.Tensor:
    """(E, E): how often experts i and j are chosen for the same token, as a share of tokens; the diagonal is each
    expert's own share of tokens."""
    chosen = torch.zeros(routing.num_tokens, routing.num_experts, device=routing.expert_indices.device)
    chosen.scatter_(1, routing.expert_indices, 1.0)
    return chosen.t() @ chosen / max(routing.num_tokens, 1)


def vocabulary_expert_share(routing: RoutingInfo, token_ids: torch.Tensor, min_count: int = 2,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per vocabulary entry seen at least `min_count` times: the share of its occurrences that chose each expert.

    token_ids: (T,) in routing's token order. Returns (ids (U,), counts (U,), share (U, E)), most frequent first. An
    entry always sent to one expert has share 1 there; routing blind to the token gives K/E on average.
    """
    token_ids = token_ids.reshape(-1).to(routing.expert_indices.device)
    ids, inverse, counts = torch.unique(token_ids, return_inverse=True, return_counts=True)
    chosen = torch.zeros(routing.num_tokens, routing.num_experts, device=token_ids.device)
    chosen.scatter_(1, routing.expert_indices, 1.0)
    per_id = torch.zeros(len(ids), routing.num_experts, device=token_ids.device).index_add_(0, inverse, chosen)
    keep = counts >= min_count
    order = torch.argsort(counts[keep], descending=True, stable=True)
    return ids[keep][order], counts[keep][order], (per_id[keep] / counts[keep].unsqueeze(-1))[order]
