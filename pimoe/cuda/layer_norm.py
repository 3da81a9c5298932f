"""`FastLayerNorm`: nn.LayerNorm whose float32 CUDA calls run `pimoe.cuda.ops.layer_norm`'s Triton passes.

Same parameters, state dict and results as nn.LayerNorm (within float32 rounding); every other call (CPU, other dtypes,
no affine, rows wider than MAX_HIDDEN, torch.compile tracing, no Triton) is nn.LayerNorm's own. Two additions for the
LM's float32 residual stream under bf16 autocast, each sparing a pass over the stream:
- `add_forward(x, delta)` adds a branch's output to the stream and normalises the sum in one pass; its backward adds
  the stream's own gradient and writes the branch's gradient in the branch's dtype in the same pass.
- `autocast_output=True` (for a norm whose only reader is an autocast Linear) returns the autocast dtype under CUDA
  autocast: the values the Linear would cast the float32 output to, without the cast.
"""

from __future__ import annotations

import torch
from torch import nn

from pimoe.cuda.availability import triton_available

__all__ = ["FastLayerNorm"]


class _LayerNormFunction(torch.autograd.Function):
    """y = LayerNorm(x), or with a delta (h, y) = (x + delta, LayerNorm(x + delta)); rows of the last dimension."""

    @staticmethod
    def forward(ctx, x, delta, weight, bias, eps, out_dtype):
        from pimoe.cuda.ops.layer_norm import layer_norm_forward

        rows = x.reshape(-1, x.shape[-1]).contiguous()
        delta_rows = None if delta is None else delta.reshape(rows.shape).contiguous()
        y, mean, rstd, h = layer_norm_forward(rows, weight, bias, eps, delta_rows, out_dtype)
        ctx.save_for_backward(h, weight, mean, rstd)
        ctx.delta_dtype = None if delta is None else delta.dtype
        if delta is None:
            return y.view(x.shape)
        return h.view(x.shape), y.view(x.shape)

    @staticmethod
    def backward(ctx, *grads):
        from pimoe.cuda.ops.layer_norm import layer_norm_backward

        h, weight, mean, rstd = ctx.saved_tensors
        dh, dy = (None, grads[0]) if ctx.delta_dtype is None else grads
        dres = None if dh is None else dh.reshape(h.shape).contiguous()
        dx, dweight, dbias, ddelta = layer_norm_backward(dy.reshape(h.shape).contiguous(), h, weight, mean, rstd,
                                                         dres, ctx.delta_dtype)
        shape = dy.shape
        return (dx.view(shape), None if ctx.delta_dtype is None else ddelta.view(shape), dweight, dbias, None, None)


class FastLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension; float32 CUDA inputs go through one Triton pass each way.

    autocast_output: under CUDA autocast return the autocast dtype (for a norm read only by an autocast Linear)."""

    def __init__(self, *args, autocast_output: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.autocast_output = autocast_output

    def _triton_applies(self, x: torch.Tensor) -> bool:
        # is_compiling first: dynamo must not trace triton_available's importlib lookup (a graph break under
        # fullgraph=True); Inductor fuses the plain LayerNorm itself.
        if torch.compiler.is_compiling() or not x.is_cuda or not triton_available():
            return False
        from pimoe.cuda.ops.layer_norm import MAX_HIDDEN

        return (x.dtype == torch.float32 and self.weight is not None and self.bias is not None
                and self.weight.dtype == torch.float32 and len(self.normalized_shape) == 1
                and x.shape[-1] <= MAX_HIDDEN)

    def _out_dtype(self) -> torch.dtype | None:
        if self.autocast_output and torch.is_autocast_enabled("cuda"):
            return torch.get_autocast_dtype("cuda")
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._triton_applies(x):
            return _LayerNormFunction.apply(x, None, self.weight, self.bias, self.eps, self._out_dtype())
        return super().forward(x)

    def add_forward(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, this norm of it): the residual stream after a branch (in x's dtype) and its normalised rows."""
        if (self._triton_applies(x) and delta.shape == x.shape and delta.is_cuda
                and delta.dtype in (torch.float32, torch.bfloat16, torch.float16)):
            return _LayerNormFunction.apply(x, delta, self.weight, self.bias, self.eps, self._out_dtype())
        h = x + delta
        return h, self(h)
