"""The router's gate product, (T, D) x (E, D)^T -> (T, E) logits in float32.

Legend: T routed tokens, D hidden size, E experts.

The router keeps its logits in float32 (softmax and top-k on bf16 logits flip close choices). With bf16 tokens and a
bf16 gate on CUDA, upcasting both and running a float32 GEMM computes exactly the products a bf16 GEMM with float32
accumulation computes, at the cost of a float32 copy of the tokens and a SIMT float32 GEMM: 184 µs against 29 µs for
`torch.mm(..., out_dtype=torch.float32)` at 65,536 x 512 x 8 on an H100 (bench/launch_probe.py, 2026-12-06), and the
backward repeats both. There the product runs as one bf16 tensor-core GEMM with a float32 result; its backward feeds
the upstream gradient to the two GEMMs in bf16 (as autocast's linear would), accumulating the gate's gradient in
float32.

Autocast over a float32 gate with bf16 tokens took the float32 product (both upcast, three SIMT GEMMs). From
`Tuning.router_split_rows` tokens on, the gate is split into three bf16 pieces whose sum is exactly the float32
weight (8 significant bits each), and one bf16 GEMM against the stacked pieces gives every product exactly, summed
in float32: the float32 product's value up to summation order (measured on an H100 at 4,096 x 512 x 8: 4.8e-7 from
float64 against cuBLAS float32's 2.1e-7; the tensor cores' float32 accumulation is not cuBLAS's SIMT order).
The backward splits the upstream gradient the same way: all nine products for the gate's float32 gradient (exact
products again, one GEMM over the tokens), and the three largest (2^-16 of the result and above) for the tokens' bf16
gradient. Below that many tokens the split's extra small launches cost more host time than the SIMT GEMMs take.
Everywhere else (float32 models, float32 tokens, CPU) the float32 product stays. That includes PiMoE-LM's training:
its router reads the float32 output of the block's second LayerNorm, so the GPU preset's three float32 SIMT GEMMs of
the gate (~670 µs of a 26.5 ms step on an H100, profile of 2026-12-07) are untouched by the split; the twentieth
pass's "no step change, 1.4 GB less memory" was the split never running and the second of two runs in one process.
Tried for those and dropped: the float32 product and both gradients as three Triton passes (float32 products,
fixed-order partial sums), 1,015 µs per step against the SIMT GEMMs' ~670 (graphed step 26.1 against 25.8 / 25.9 ms,
H100, 2026-12-07, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["bf16_pieces", "router_logits", "split_gate_product"]

_MM_TAKES_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()

# (a, b) -> a @ b.T with bf16 operands and a float32 result: every product exact, float32 sums
Float32Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cuda_float32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b.t(), out_dtype=torch.float32)


def bf16_pieces(value: torch.Tensor, count: int) -> torch.Tensor:
    """(count, *value.shape) bf16 whose float32 sum is `value` to count x 8 significant bits (three pieces: exactly,
    for normal float32 numbers): each piece is the bf16 rounding of what the ones before it left."""
    pieces = []
    rest = value.float()
    for _ in range(count):
        piece = rest.to(torch.bfloat16)
        pieces.append(piece)
        rest = rest - piece  # exact: a float32 minus its own rounding
    return torch.stack(pieces)


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


class _SplitGateProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, product: Float32Product) -> torch.Tensor:
        pieces = bf16_pieces(weight, 3)  # (3, E, D)
        num_experts = weight.shape[0]
        ctx.save_for_backward(x, pieces)
        ctx.product = product
        partial = product(x, pieces.flatten(0, 1))  # (T, 3E): x against each piece
        return partial.view(-1, 3, num_experts).sum(dim=1)

    @staticmethod
    def backward(ctx, dlogits: torch.Tensor):
        x, pieces = ctx.saved_tensors
        upstream = bf16_pieces(dlogits, 3)  # (3, T, E)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            # the products of the leading pieces: hi.hi, hi.mid, mid.hi (the rest are below 2^-16 of the largest)
            left = torch.cat((upstream[0], upstream[0], upstream[1]), dim=1)  # (T, 3E)
            right = torch.cat((pieces[0], pieces[1], pieces[0]), dim=0)  # (3E, D)
            dx = (left @ right).to(x.dtype)
        if ctx.needs_input_grad[1]:
            per_piece = ctx.product(upstream.permute(0, 2, 1).flatten(0, 1), x.t())  # (3E, D)
            dweight = per_piece.view(3, -1, x.shape[1]).sum(dim=0)
        return dx, dweight, None


def split_gate_product(x: torch.Tensor, weight: torch.Tensor, product: Float32Product | None = None) -> torch.Tensor:
    """(T, D) bf16 tokens, (E, D) float32 gate -> (T, E) float32 logits through bf16 GEMMs (module docstring).
    product: the bf16 GEMM with a float32 result (CUDA's `torch.mm(..., out_dtype=float32)` by default; tests on the
    CPU pass the float32 product of the upcast operands, which computes the same)."""
    return _SplitGateProduct.apply(x, weight, product or _cuda_float32_product)


def router_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(T, D) tokens, (E, D) gate weight -> (T, E) float32 logits (module docstring: which GEMM runs where)."""
    if _MM_TAKES_OUT_DTYPE and x.is_cuda and x.dtype == torch.bfloat16 and x.dim() == 2:
        if weight.dtype == torch.bfloat16:
            return _Bf16GateProduct.apply(x, weight)
        from pimoe.cuda.tuning import active_tuning  # here: pimoe.cuda's package imports the router

        split_rows = active_tuning().router_split_rows
        # NOTE: not under torch.compile: the Function takes a Python callable, which dynamo would have to trace (not
        # tried); a compiled call keeps the float32 product
        if weight.dtype == torch.float32 and split_rows and x.shape[0] >= split_rows \
                and not torch.compiler.is_compiling():
            return split_gate_product(x, weight)
    return F.linear(x.float(), weight.float())
