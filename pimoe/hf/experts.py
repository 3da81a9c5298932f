"""Expert networks the engine's typed experts do not cover, for checkpoint families that need them.

Legend: N tokens routed to this expert, D hidden size, F intermediate width.

GPT-OSS's expert is a clamped SwiGLU with biases: g = min(x W_g + b_g, limit), u = clip(x W_u + b_u, ±limit),
h = (u + 1) * g * sigmoid(alpha * g), out = h W_d + b_d. transformers stores W_g / W_u interleaved in one
(D, 2F) matrix per expert (gate in even columns, up in odd); here they are split into one (2F, D) `up`, gate rows first.
These experts run on PiMoE's sorted dispatch: the CUDA fast path's kernels know only the typed activations.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClampedSwiGLUExpert"]


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
