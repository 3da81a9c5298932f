"""`FastLayerNorm`: nn.LayerNorm whose float32 CUDA calls run `pimoe.cuda.ops.layer_norm`'s Triton passes.

Same parameters, state dict and results as nn.LayerNorm (within float32 rounding); every other call (CPU, other dtypes,
no affine, rows wider than MAX_HIDDEN, torch.compile tracing, no Triton) is nn.LayerNorm's own.
"""

from __future__ import annotations

import torch
from torch import nn

from pimoe.cuda.availability import triton_available

__all__ = ["FastLayerNorm"]


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        from pimoe.cuda.ops.layer_norm import layer_norm_forward

        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y, mean, rstd = layer_norm_forward(rows, weight, bias, eps)
        ctx.save_for_backward(rows, weight, mean, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        from pimoe.cuda.ops.layer_norm import layer_norm_backward

        rows, weight, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = layer_norm_backward(dy.reshape(rows.shape).contiguous(), rows, weight, mean, rstd)
        return dx.view(dy.shape), dweight, dbias, None


class FastLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension; float32 CUDA inputs go through one Triton pass each way."""

    def _triton_applies(self, x: torch.Tensor) -> bool:
        from pimoe.cuda.ops.layer_norm import MAX_HIDDEN

        return (x.is_cuda and x.dtype == torch.float32 and self.weight is not None and self.bias is not None
                and self.weight.dtype == torch.float32 and len(self.normalized_shape) == 1
                and x.shape[-1] <= MAX_HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # is_compiling first: dynamo must not trace triton_available's importlib lookup (a graph break under
        # fullgraph=True); Inductor fuses the plain LayerNorm itself.
        if not torch.compiler.is_compiling() and x.is_cuda and triton_available() and self._triton_applies(x):
            return _LayerNormFunction.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)
