"""Plain reference implementations to check and measure the engine against.

Legend: T tokens, D hidden size, E experts, K experts per token.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pimoe.layer.experts import apply_activation

__all__ = ["DenseFFN", "reference_forward"]


@torch.no_grad()
def reference_forward(system, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      temperature: float | None = None) -> torch.Tensor:
    """The PiMoE layer computed the obvious way, in float64: every expert on every token, then pick and weight.

    Routing is recomputed here from the same weights (softmax, top-k, renormalisation, capacity) rather than reused
    from the engine, so a mistake in the engine's router or dispatch shows up as a mismatch. x: (B, S, D).
    NOTE: the capacity rule is a plain Python loop over tokens on purpose: it is the obviously-correct statement the
    engine's vectorised cumsum is checked against, and it only runs in tests on a few hundred tokens.
    """
    model = copy.deepcopy(system).double().eval()
    cfg = model.router.config
    temperature = cfg.temperature if temperature is None else temperature
    batch, seq, hidden = x.shape
    flat = x.double().reshape(batch * seq, hidden)
    keep_token = torch.ones(batch * seq, dtype=torch.bool) if attention_mask is None else attention_mask.reshape(-1).bool()
    tokens = flat[keep_token]
    num_tokens = tokens.shape[0]

    probs = torch.softmax(tokens @ model.router.gate.weight.t() / temperature, dim=-1)
    scores = probs + model.router.selection_bias.double() if cfg.use_selection_bias else probs
    indices = torch.topk(scores, cfg.top_k, dim=-1).indices
    chosen = probs.gather(-1, indices)
    renormalize = cfg.renormalize if cfg.renormalize is not None else cfg.top_k > 1
    if not cfg.use_gating:
        chosen = torch.full_like(chosen, 1.0 / cfg.top_k)
    elif renormalize:
        chosen = chosen / chosen.sum(-1, keepdim=True)

    all_outputs = torch.stack([expert(tokens) for expert in model.experts])  # (E, T, D)
    keep = torch.ones_like(indices, dtype=torch.bool)
    if cfg.capacity_factor is not None:
        capacity = max(1, math.ceil(cfg.capacity_factor * num_tokens * cfg.top_k / model.num_experts))
        used = [0] * model.num_experts
        for slot in range(cfg.top_k):  # slot-major, then token order, as the engine documents
            for t in range(num_tokens):
                e = int(indices[t, slot])
                keep[t, slot] = used[e] < capacity
                used[e] += int(keep[t, slot])
    mixed = torch.zeros_like(tokens)
    for slot in range(cfg.top_k):
        picked = all_outputs[indices[:, slot], torch.arange(num_tokens)]  # (T, D)
        mixed += picked * (chosen[:, slot] * keep[:, slot]).unsqueeze(-1)
    delta = torch.zeros_like(flat)
    delta[keep_token] = mixed
    out = flat + delta if model.config.residual else delta
    return out.view(batch, seq, hidden)


class DenseFFN(nn.Module):
    """A dense feed-forward layer, D -> F -> D, used as the "same active parameters" baseline in benchmarks."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.activation = activation
        self.up = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(apply_activation(self.activation, self.up(x)))

    @staticmethod
    def matching(system) -> DenseFFN:
        """A dense FFN whose width equals the average number of expert intermediate units one token activates."""
        widths = torch.tensor([e.width * (2 if e.gated else 1) for e in system.experts], dtype=torch.float64)
        ffn_units = int(round(float(widths.mean()) * system.router.top_k))
        return DenseFFN(system.hidden_size, ffn_units)


