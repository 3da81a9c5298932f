"""Moving tokens to their experts and the results back: the interchangeable dispatch strategies.

Legend: T routed tokens, D hidden size, E experts, K experts per token, A = kept assignments (<= T*K).

Every strategy takes the same inputs and returns the weighted sum of expert outputs per token, (T, D), without the
residual. `sorted` is the engine's default; `loop` is the common reference way (one boolean mask per expert), kept to
compare against in tests and benchmarks. `pimoe.layer.strategies` registers these and the device fast paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pimoe.layer.routing import RoutingInfo

__all__ = ["loop_dispatch", "sort_assignments", "sorted_dispatch"]


def sort_assignments(routing: RoutingInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the kept (token, slot) assignments by expert.

    Returns (token_ids (A,), weights (A,), counts (E,)) with assignments ordered by expert, so expert e's tokens are
    the slice counts[:e].sum() : counts[:e+1].sum(). Dropped assignments get the sentinel key E and sort past the end.
    """
    num_tokens, top_k = routing.expert_indices.shape
    num_experts = routing.num_experts
    flat_expert = routing.expert_indices.reshape(-1)
    keep = ~routing.dropped.reshape(-1)
    sort_key = torch.where(keep, flat_expert, torch.full_like(flat_expert, num_experts))
    order = torch.argsort(sort_key, stable=True)
    num_kept = routing.tokens_per_expert.sum()
    flat_token = torch.arange(num_tokens, device=flat_expert.device).repeat_interleave(top_k)
    token_ids = flat_token[order]
    weights = routing.expert_weights.reshape(-1)[order]
    # Slicing by a tensor length would be a host sync on CUDA; callers on CPU pay one read of `num_kept`.
    kept = int(num_kept)
    return token_ids[:kept], weights[:kept], routing.tokens_per_expert


def sorted_dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module], *,
                    weight_inputs: bool = False) -> torch.Tensor:
    """Sort assignments by expert, run each expert once on its contiguous group, scale, scatter-add back.

    One gather, E expert calls on contiguous blocks, one index_add: no per-token work in Python.
    x: (T, D) -> (T, D). weight_inputs: scale each expert's input rows by their weights and sum the outputs unscaled,
    expert_e(w x) (Llama 4), instead of w expert_e(x).
    """
    token_ids, weights, counts = sort_assignments(routing)
    gathered = x[token_ids]  # (A, D)
    if weight_inputs:
        gathered = gathered * weights.to(x.dtype).unsqueeze(-1)
    outputs = []
    start = 0
    for expert, count in zip(experts, counts.tolist(), strict=True):
        if count:
            outputs.append(expert(gathered[start : start + count]))
            start += count
    if not outputs:
        return torch.zeros_like(x)
    expert_out = torch.cat(outputs)
    if not weight_inputs:
        expert_out = expert_out * weights.to(x.dtype).unsqueeze(-1)
    return torch.zeros_like(x).index_add(0, token_ids, expert_out)


def loop_dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module]) -> torch.Tensor:
    """The common reference way: for each expert, a boolean mask over (T, K), gather, compute, index_add.

    x: (T, D) -> (T, D).
    """
    out = torch.zeros_like(x)
    kept = ~routing.dropped
    for expert_id, expert in enumerate(experts):
        token_ids, slots = torch.where((routing.expert_indices == expert_id) & kept)
        if token_ids.numel() == 0:
            continue
        weight = routing.expert_weights[token_ids, slots].to(x.dtype).unsqueeze(-1)
        out.index_add_(0, token_ids, expert(x[token_ids]) * weight)
    return out
