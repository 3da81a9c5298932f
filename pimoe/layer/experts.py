"""Typed expert networks.

Legend: N tokens routed to this expert, D hidden size, F this expert's intermediate width.

Each expert is `down(dropout(act(up(norm(x)))))`; gated experts compute `act(x W_g) * (x W_u)` with W_g and W_u fused
into one (D, 2F) projection so the pair costs one matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pimoe.layer.expert_types import ExpertSpec, expert_spec, resolve_expert_type

__all__ = ["PiMoEExpert", "RMSNorm", "apply_activation", "expert_width"]


def apply_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """The named activation from `expert_types.ACTIVATIONS`."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    if name == "tanh":
        return torch.tanh(x)
    raise ValueError(f"unknown activation {name!r}")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019); computed in float32 (float64 inputs: float64) so bf16 inputs keep
    their scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)  # float64 models keep float64
        wide = x.to(acc)
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(acc)).to(x.dtype)


def expert_width(spec: ExpertSpec, intermediate_size: int) -> int:
    """Intermediate width of an expert: the shared size times the type's multiplier, at least 1."""
    return max(1, round(intermediate_size * spec.width_multiplier))


def _make_norm(kind: str | None, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    return nn.Identity()


class PiMoEExpert(nn.Module):
    """One expert of a given type.

    Args:
        hidden_size: D.
        expert_type: a built-in ExpertType, a registered custom type, or its name.
        intermediate_size: shared intermediate size; this expert's width is it times the type's width multiplier.
        dropout: applied after the activation, in training only.
        activation: overrides the type's activation when given.
    """

    def __init__(
        self,
        hidden_size: int,
        expert_type,
        intermediate_size: int,
        dropout: float = 0.0,
        activation: str | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.expert_type = resolve_expert_type(expert_type)
        spec = expert_spec(self.expert_type)
        self.activation = activation or spec.activation
        self.gated = spec.gated
        self.hidden_size = hidden_size
        self.width = expert_width(spec, intermediate_size)
        self.norm = _make_norm(spec.norm, hidden_size)
        self.up = nn.Linear(hidden_size, self.width * (2 if self.gated else 1), bias=bias)
        self.down = nn.Linear(self.width, hidden_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, F): the activated intermediate, before dropout and the down projection."""
        projected = self.up(self.norm(x))
        if self.gated:
            gate, up = projected.split(self.width, dim=-1)
            return apply_activation(self.activation, gate) * up
        return apply_activation(self.activation, projected)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D)."""
        return self.down(self.dropout(self.hidden(x)))

    def extra_repr(self) -> str:
        return f"type={self.expert_type}, activation={self.activation}, gated={self.gated}, width={self.width}"
