"""The router's gate product on float32 tokens, forward and backward, as three bandwidth-sized Triton passes.

Legend: T tokens, D hidden size, E experts (at most MAX_EXPERTS), EP E rounded up to a power of two of at least 16.

PiMoE-LM's router reads the float32 output of the block's second LayerNorm against a float32 gate, so the product is
a float32 GEMM with N = E = 8: cuBLAS runs it, its input gradient and its weight gradient as SIMT tiles at about a
tenth of the bandwidth the shapes need (252 + 171 + 244 µs per step of the GPU preset on an H100, profile of
2026-12-07, for three passes over 67 MB of tokens). Each pass here reads or writes the tokens once, with every product
in float32 (`tl.dot` at "ieee" precision: no TF32 rounding), so the logits keep the float32 product's accuracy up to
summation order. The weight gradient sums per-split partials in a fixed order: no atomics, the same bits every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_EXPERTS", "gate_input_grad", "gate_logits", "gate_weight_grad"]

MAX_EXPERTS = 64  # the (rows, EP) accumulator stays in registers up to here
BLOCK_T, BLOCK_D = 64, 64
SPLIT_ROWS = 2048  # tokens per program of the weight gradient; its partials are added afterwards


def _experts_padded(num_experts: int) -> int:
    # tl.dot wants every dimension of at least 16
    return max(16, triton.next_power_of_2(num_experts))


@triton.jit
def gate_logits_kernel(x_ptr, w_ptr, out_ptr, T, D, E, EP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Program over BT tokens: out[rows, :E] = x[rows] @ w.T, float32 products and sums."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    experts = tl.arange(0, EP)
    acc = tl.zeros((BT, EP), dtype=tl.float32)
    for start in range(0, D, BD):
        cols = start + tl.arange(0, BD)
        x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < D),
                    other=0.0)
        w = tl.load(w_ptr + experts[None, :] * D + cols[:, None], mask=(experts[None, :] < E) & (cols[:, None] < D),
                    other=0.0)
        acc += tl.dot(x, w, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * E + experts[None, :], acc, mask=(rows[:, None] < T) & (experts[None, :] < E))


@triton.jit
def gate_input_grad_kernel(dl_ptr, w_ptr, dx_ptr, T, D, E, EP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Program (BT tokens, BD columns): dx = dlogits @ w."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    experts = tl.arange(0, EP)
    dl = tl.load(dl_ptr + rows[:, None] * E + experts[None, :], mask=(rows[:, None] < T) & (experts[None, :] < E),
                 other=0.0)
    w = tl.load(w_ptr + experts[:, None] * D + cols[None, :], mask=(experts[:, None] < E) & (cols[None, :] < D),
                other=0.0)
    dx = tl.dot(dl, w, input_precision="ieee")
    tl.store(dx_ptr + rows[:, None] * D + cols[None, :], dx, mask=(rows[:, None] < T) & (cols[None, :] < D))


@triton.jit
def gate_weight_partials_kernel(dl_ptr, x_ptr, partial_ptr, T, D, E, SPLIT, EP: tl.constexpr, BT: tl.constexpr,
                                BD: tl.constexpr):
    """Program (split, BD columns): partial[split, :E, cols] = dlogits[split's rows].T @ x[split's rows, cols]."""
    split = tl.program_id(0)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    experts = tl.arange(0, EP)
    acc = tl.zeros((EP, BD), dtype=tl.float32)
    for start in range(split * SPLIT, tl.minimum(split * SPLIT + SPLIT, T), BT):
        rows = start + tl.arange(0, BT)
        dl = tl.load(dl_ptr + experts[:, None] + rows[None, :] * E, mask=(experts[:, None] < E) & (rows[None, :] < T),
                     other=0.0)
        x = tl.load(x_ptr + rows[:, None] * D + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < D),
                    other=0.0)
        acc += tl.dot(dl, x, input_precision="ieee")
    tl.store(partial_ptr + split * E * D + experts[:, None] * D + cols[None, :], acc,
             mask=(experts[:, None] < E) & (cols[None, :] < D))


def gate_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(T, D) float32 tokens, (E, D) float32 gate -> (T, E) float32 logits."""
    tokens, hidden = x.shape
    num_experts = weight.shape[0]
    out = x.new_empty(tokens, num_experts)
    gate_logits_kernel[(triton.cdiv(tokens, BLOCK_T),)](x, weight, out, tokens, hidden, num_experts,
                                                        EP=_experts_padded(num_experts), BT=BLOCK_T, BD=BLOCK_D)
    return out


def gate_input_grad(dlogits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(T, E) float32 upstream gradient, (E, D) gate -> (T, D) float32 gradient of the tokens."""
    tokens, num_experts = dlogits.shape
    hidden = weight.shape[1]
    dx = dlogits.new_empty(tokens, hidden)
    grid = (triton.cdiv(tokens, BLOCK_T), triton.cdiv(hidden, BLOCK_D))
    gate_input_grad_kernel[grid](dlogits, weight, dx, tokens, hidden, num_experts, EP=_experts_padded(num_experts),
                                 BT=BLOCK_T, BD=BLOCK_D)
    return dx


def gate_weight_grad(dlogits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(T, E) float32 upstream gradient, (T, D) float32 tokens -> (E, D) float32 gradient of the gate."""
    tokens, num_experts = dlogits.shape
    hidden = x.shape[1]
    splits = max(1, triton.cdiv(tokens, SPLIT_ROWS))
    partials = x.new_empty(splits, num_experts, hidden)
    grid = (splits, triton.cdiv(hidden, BLOCK_D))
    gate_weight_partials_kernel[grid](dlogits, x, partials, tokens, hidden, num_experts, SPLIT_ROWS,
                                      EP=_experts_padded(num_experts), BT=BLOCK_T, BD=BLOCK_D)
    return partials.sum(dim=0)
