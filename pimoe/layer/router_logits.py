"""The router's gate product, (T, D) x (E, D)^T -> (T, E) logits in float32.

Legend: T routed tokens, D hidden size, E experts.

The router keeps its logits in float32 (softmax and top-k on bf16 logits flip close choices). With bf16 tokens and a
bf16 gate on CUDA, upcasting both and running a float32 GEMM computes exactly the products a bf16 GEMM with float32
accumulation computes, at the cost of a float32 copy of the tokens and a SIMT float32 GEMM: 184 µs against 29 µs for
`torch.mm(..., out_dtype=torch.float32)` at 65,536 x 512 x 8 on an H100 (bench/launch_probe.py, 2026-12-06), and the
backward repeats both. There the product runs as one bf16 tensor-core GEMM with a float32 result; its backward feeds
the upstream gradient to the two GEMMs in bf16 (as autocast's linear would), accumulating the gate's gradient in
float32. Everywhere else (float32 models, CPU, autocast over float32 weights) the float32 product stays.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["router_logits"]

_MM_TAKES_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


class _Bf16GateProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.mm(x, weight.t(), out_dtype=torch.float32)

    @staticmethod
    def backward(ctx, dlogits: torch.Tensor):
        x, weight = ctx.saved_tensors
        upstream = dlogits.to(torch.bfloat16)
        dx = upstream @ weight if ctx.needs_input_grad[0] else None
        dweight = torch.mm(upstream.t(), x, out_dtype=torch.float32).to(weight.dtype) if ctx.needs_input_grad[1] \
            else None
        return dx, dweight


def router_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(T, D) tokens, (E, D) gate weight -> (T, E) float32 logits (module docstring: which GEMM runs where)."""
    if _MM_TAKES_OUT_DTYPE and x.is_cuda and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 \
            and x.dim() == 2:
        return _Bf16GateProduct.apply(x, weight)
    return F.linear(x.float(), weight.float())
