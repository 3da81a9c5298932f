"""Hand-off precision and recall on held-out text (`pimoe.lm.heldout`): templates, wording and operand ranges (7..12
digits, powers, percentages, prices, thousands separators, German) that training never used, plus control texts
whose '=' ends no computation (assignments, '==', dates, phone numbers, times, ranges, versions).

Labels: every '=' that ends an arithmetic expression (`pimoe.handoff.decode.label_positions`). Predictions: the
hand-off trigger on a teacher-forced read (`handoff_positions_teacher_forced`: router fires AND an expression is
extracted), and, for comparison, the router alone (router fires at a lone '=').
"""

from __future__ import annotations

from typing import Any

import torch

from pimoe.handoff.decode import (
    DEFAULT_LAYER,
    DEFAULT_THRESHOLD,
    HandoffTrigger,
    label_positions,
    trigger_candidates,
)
from pimoe.lm.heldout import CONTROL_KINDS, HANDOFF_KINDS, HELDOUT_TEXTS, heldout_documents
from pimoe.lm.model import PiMoELM
from pimoe.turns import turn_point

__all__ = ["heldout_handoff_report", "heldout_handoff_texts"]


def heldout_handoff_texts(seed: int = 0, count: int = 30) -> dict[str, list[str]]:
    """Per held-out kind, `count` documents; the fixed held-out texts under "fixed"."""
    texts = {kind: heldout_documents(kind, seed=seed, count=count) for kind in HANDOFF_KINDS + CONTROL_KINDS}
    texts["fixed"] = list(HELDOUT_TEXTS.values())
    return texts


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def heldout_handoff_report(model: PiMoELM, seed: int = 0, count: int = 30, threshold: float = DEFAULT_THRESHOLD,
                           layer: int | str = DEFAULT_LAYER) -> dict[str, Any]:
    """Precision and recall of the hand-off trigger and of the router alone, overall and per kind."""
    trigger = HandoffTrigger(threshold=threshold, layer=layer)
    trigger.check_model(model)
    rows, totals = [], {"labels": 0, "fired": 0, "hits": 0, "router_fired": 0, "router_hits": 0}
    misses: list[dict[str, Any]] = []
    for kind, documents in heldout_handoff_texts(seed, count).items():
        counts = dict.fromkeys(totals, 0)
        for text in documents:
            turn_point()  # between documents, a caller sharing the device may let other work in (pimoe.turns)
            labels = set(label_positions(text))
            candidates = [c for c in trigger_candidates(model, text) if _lone(text, c.char_offset)]
            if candidates:
                fires = trigger.router_fires(torch.stack([c.probs for c in candidates], dim=1), model.expert_types)
            else:
                fires = torch.zeros(0, dtype=torch.bool)
            router = {c.position for c, f in zip(candidates, fires.tolist(), strict=True) if f}
            handed = {c.position for c, f in zip(candidates, fires.tolist(), strict=True) if f and c.expression}
            counts["labels"] += len(labels)
            counts["fired"] += len(handed)
            counts["hits"] += len(handed & labels)
            counts["router_fired"] += len(router)
            counts["router_hits"] += len(router & labels)
            if handed != labels:
                misses.append({"kind": kind, "text": text, "missed": sorted(labels - handed),
                               "spurious": sorted(handed - labels)})
        for key in totals:
            totals[key] += counts[key]
        rows.append({"kind": kind, "documents": len(documents), **counts,
                     "precision": _ratio(counts["hits"], counts["fired"]),
                     "recall": _ratio(counts["hits"], counts["labels"]),
                     "router_precision": _ratio(counts["router_hits"], counts["router_fired"])})
    return {"threshold": threshold, "layer": layer, "seed": seed, "per_kind": rows, **totals,
            "precision": _ratio(totals["hits"], totals["fired"]), "recall": _ratio(totals["hits"], totals["labels"]),
            "router_precision": _ratio(totals["router_hits"], totals["router_fired"]),
            "router_recall": _ratio(totals["router_hits"], totals["labels"]), "misses": misses[:20]}


def _lone(text: str, i: int) -> bool:
    return (i == 0 or text[i - 1] not in "=<>!") and (i + 1 >= len(text) or text[i + 1] != "=")
