"""Expert networks the engine's typed experts do not cover, for checkpoint families that need them.

Legend: N tokens routed to this expert, D hidden size, F intermediate width.

GPT-OSS's expert is a clamped SwiGLU with biases: g = min(x W_g + b_g, limit), u = clip(x W_u + b_u, ±limit),
h = (u + 1) * g * sigmoid(alpha * g), out = h W_d + b_d. transformers stores W_g / W_u interleaved in one
(D, 2F) matrix per expert (gate in even columns, up in odd); here they are split into one (2F, D) `up`, gate rows first.
Nemotron-H's expert is an ungated MLP, out = act(x W_u + b_u) W_d + b_d, whose activation may be one the typed experts
lack (its squared ReLU, "relu2"); its shared expert has the same form. Ergo's is a squared-ReLU MLP from transposed
stacks whose output goes through the expert's own RMSNorm before its routing weight applies.
HY-V4's and Bailing-Hybrid's (Ling 3.0) experts cap the gate at a limit and clip the up projection to ±limit, no
biases, from transformers' usual (2F, D) gate_up stack (gate rows first): HY-V4 before the activation,
h = act(min(x W_g, limit)) * clip(x W_u, ±limit), Bailing-Hybrid after it (in the layers its config gives a limit),
h = min(act(x W_g), limit) * clip(x W_u, ±limit) (`ClippedGLUExpert`).
LongCat-Flash's zero-computation experts return their input: a token routed to one gets its routing weight times
itself (`IdentityExpert`).
These experts run on PiMoE's sorted dispatch: the CUDA fast path's kernels know only the typed activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pimoe.layer.experts import apply_activation

__all__ = ["ClampedSwiGLUExpert", "ClippedGLUExpert", "IdentityExpert", "PLAIN_ACTIVATIONS", "PlainMLPExpert"]

# transformers' ACT2FN names -> the activation PlainMLPExpert computes
PLAIN_ACTIVATIONS = {"relu2": "relu2", "relu": "relu", "silu": "silu", "swish": "silu", "gelu": "gelu",
                     "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "tanh": "tanh"}


class ClampedSwiGLUExpert(nn.Module):
    """GPT-OSS's expert. gate_up: (D, 2F) interleaved, gate_up_bias (2F,), down: (F, D), down_bias (D,)."""

    def __init__(self, gate_up: torch.Tensor, gate_up_bias: torch.Tensor, down: torch.Tensor, down_bias: torch.Tensor,
                 alpha: float, limit: float) -> None:
        super().__init__()
        hidden, width = down.shape[1], down.shape[0]
        self.hidden_size, self.width, self.alpha, self.limit = hidden, width, float(alpha), float(limit)
        with torch.device("meta"):
            self.up = nn.Linear(hidden, 2 * width)
            self.down = nn.Linear(width, hidden)
        weight = torch.cat([gate_up[:, 0::2], gate_up[:, 1::2]], dim=1).t().contiguous()  # (2F, D), gate rows first
        bias = torch.cat([gate_up_bias[0::2], gate_up_bias[1::2]])
        self.up.weight = nn.Parameter(weight, requires_grad=False)
        self.up.bias = nn.Parameter(bias, requires_grad=False)
        self.down.weight = nn.Parameter(down.t().contiguous(), requires_grad=False)
        self.down.bias = nn.Parameter(down_bias.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D)."""
        gate, up = self.up(x).split(self.width, dim=-1)
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return self.down((up + 1) * gate * torch.sigmoid(gate * self.alpha))

    def extra_repr(self) -> str:
        return f"width={self.width}, alpha={self.alpha}, limit={self.limit}"


class PlainMLPExpert(nn.Module):
    """An ungated expert: up (F, D) and down (D, F) weights (views kept), optional biases, activation one of
    PLAIN_ACTIVATIONS' names (transformers' spelling); with `norm_weight` (D,) its output goes through its own RMSNorm
    (float32, `norm_eps`) before the routing weight applies (Ergo)."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor, activation: str, up_bias: torch.Tensor | None = None,
                 down_bias: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        if activation not in PLAIN_ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not supported for ungated experts; supported: "
                             f"{sorted(PLAIN_ACTIVATIONS)}")
        self.hidden_size, self.width, self.activation = down.shape[0], down.shape[1], PLAIN_ACTIVATIONS[activation]
        self.up_weight = nn.Parameter(up, requires_grad=False)
        self.down_weight = nn.Parameter(down, requires_grad=False)
        self.up_bias = None if up_bias is None else nn.Parameter(up_bias, requires_grad=False)
        self.down_bias = None if down_bias is None else nn.Parameter(down_bias, requires_grad=False)
        self.norm_weight = None if norm_weight is None else nn.Parameter(norm_weight, requires_grad=False)
        self.norm_eps = float(norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D)."""
        h = F.linear(x, self.up_weight, self.up_bias)
        h = torch.square(F.relu(h)) if self.activation == "relu2" else apply_activation(self.activation, h)
        out = F.linear(h, self.down_weight, self.down_bias)
        if self.norm_weight is None:
            return out
        normed = F.rms_norm(out.float(), (out.shape[-1],), eps=self.norm_eps)
        return (normed * self.norm_weight.float()).to(out.dtype)

    def extra_repr(self) -> str:
        return f"width={self.width}, activation={self.activation}"


class IdentityExpert(nn.Module):
    """A zero-computation expert (LongCat-Flash): (N, D) -> the same (N, D), no weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ClippedGLUExpert(nn.Module):
    """A bias-free gated expert whose gate is capped at `limit` and whose up projection is clipped to ±limit:
    act(min(g, limit)) * clip(u) with `cap_before_activation` (HY-V4), min(act(g), limit) * clip(u) without
    (Bailing-Hybrid). gate_up: (2F, D), gate rows first; down: (D, F); both kept as views, no copy."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, activation: str, limit: float,
                 cap_before_activation: bool) -> None:
        super().__init__()
        hidden, width = down.shape
        self.hidden_size, self.width, self.activation, self.limit = hidden, width, activation, float(limit)
        self.cap_before_activation = cap_before_activation
        with torch.device("meta"):
            self.up = nn.Linear(hidden, 2 * width, bias=False)
            self.down = nn.Linear(width, hidden, bias=False)
        self.up.weight = nn.Parameter(gate_up, requires_grad=False)
        self.down.weight = nn.Parameter(down, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D)."""
        gate, up = self.up(x).split(self.width, dim=-1)
        if self.cap_before_activation:
            gate = apply_activation(self.activation, gate.clamp(max=self.limit))
        else:
            gate = apply_activation(self.activation, gate).clamp(max=self.limit)
        return self.down(gate * up.clamp(-self.limit, self.limit))

    def extra_repr(self) -> str:
        return (f"width={self.width}, activation={self.activation}, limit={self.limit}, "
                f"cap_before_activation={self.cap_before_activation}")
