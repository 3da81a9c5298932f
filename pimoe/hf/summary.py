"""Per-layer numbers of a Trace (load, MaxVio, entropy, top experts) and the whole trace as JSON-ready data.

Legend: T tokens, E experts, K experts per token.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import torch

from pimoe.hf.model import HFMoEModel, Trace
from pimoe.measure.metrics import max_violation

__all__ = ["LayerSummary", "summarize_trace", "token_strings", "trace_to_dict"]


@dataclass(frozen=True)
class LayerSummary:
    """One MoE layer of a trace. load: each expert's share of the T*K assignments. max_violation: max / mean load - 1.
    entropy: mean router entropy in nats (ln E at uniform). top_experts: [(expert, share)], busiest first."""

    layer: int
    tokens: int
    load: list[float]
    max_violation: float
    entropy: float
    max_entropy: float
    top_experts: list[tuple[int, float]]


def summarize_trace(trace: Trace, top: int = 3) -> list[LayerSummary]:
    out = []
    for layer, info in zip(trace.layer_ids, trace.routing, strict=True):
        counts = info.tokens_per_expert.double()
        shares = counts / counts.sum().clamp_min(1)
        order = torch.argsort(shares, descending=True, stable=True)[:top].tolist()
        out.append(LayerSummary(layer, info.num_tokens, shares.tolist(), max_violation(counts),
                                float(info.entropy.mean()), float(torch.log(torch.tensor(float(info.num_experts)))),
                                [(e, float(shares[e])) for e in order]))
    return out


def token_strings(model: HFMoEModel, input_ids: torch.Tensor) -> list[list[str]]:
    """The tokenizer's own token strings per row (ids as text when there is no tokenizer)."""
    rows = input_ids.tolist()
    if model.tokenizer is None:
        return [[str(i) for i in row] for row in rows]
    return [model.tokenizer.convert_ids_to_tokens(row) for row in rows]


def trace_to_dict(model: HFMoEModel, trace: Trace) -> dict:
    """Everything in the trace as plain lists: model, device, dtype, date, edits, tokens, per-layer routing."""
    layers = []
    for summary, info in zip(summarize_trace(trace), trace.routing, strict=True):
        layers.append({**asdict(summary),
                       "expert_indices": info.expert_indices.tolist(),
                       "expert_weights": [[round(w, 6) for w in row] for row in info.expert_weights.tolist()],
                       "scores": [[round(p, 6) for p in row] for row in info.probs.tolist()],
                       "token_entropy": [round(h, 6) for h in info.entropy.tolist()]})
    return {
        "model": model.source, "family": model.family.display_name, "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "num_experts": model.num_experts, "top_k": model.top_k, "moe_layers": trace.layer_ids,
        "edits": trace.edits.to_dict(), "input_ids": trace.input_ids.tolist(),
        "tokens": token_strings(model, trace.input_ids), "layers": layers,
    }
