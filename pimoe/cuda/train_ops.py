"""The grouped expert MLP as torch custom ops with a hand-written backward: the differentiable core of the fast path.

Legend: A sorted assignment rows, D hidden size, E experts, N1 padded up width (F, or 2F with a gated expert),
F padded intermediate width.

`expert_mlp(xs, row_expert, offsets, w1, b1, w2, b2, ...)` maps rows already grouped by expert (group e ends at
offsets[e]; rows past offsets[-1] are dropped assignments) to each row's expert output before the routing weight:

    pre    = xs @ W1[e].T + b1[e]                      (A, N1) float32, saved for the backward
    hidden = act_e(pre[:, :F]) (* pre[:, F_e:2F_e] when gated), 0 past F_e
    out    = hidden @ W2[e].T + b2[e]                  (A, D) float32, 0 on dropped rows

Its backward is a second op, `expert_mlp_backward`, that recomputes `hidden` from `pre` and runs four grouped GEMMs:
dh = dout @ W2[e] and dxs = dpre @ W1[e] (2D x 3D, grouped over rows), dW2[e] = dout_e.T @ hidden_e and
dW1[e] = dpre_e.T @ xs_e (2D x 2D, grouped over the reduction), all through torch._grouped_mm where it takes the
dtype and strides, with float32 bias sums by index_add. Both ops carry fake (meta) implementations, so
`torch.compile(fullgraph=True)` traces through them as single nodes, and neither reads anything back to the host on
the bf16 CUDA path, so a plain `torch.cuda.graph` can capture them. (On CUDA, torch._grouped_mm takes bf16 only; fp16
and fp32 go to its per-group fallback, which copies the offsets to the host: eager-correct, not capturable.)

Everything around the ops (gather, per-expert norm, routing weights, combine) stays in plain differentiable torch ops
in `pimoe.cuda.train_path`, so gradients reach the router probabilities and the norm parameters through autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pimoe.cuda.packing import ACT_CODES

__all__ = ["activation_grad", "expert_mlp", "expert_mlp_backward", "grouped_rows_matmul", "grouped_weight_grad"]


def _aligned(t: Tensor) -> bool:
    # torch._grouped_mm wants 16-byte aligned strides on every dimension it reads.
    return all(s % max(1, 16 // t.element_size()) == 0 for s in t.stride() if s != 1)


def _library_takes(a: Tensor, b: Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm") or a.dtype != b.dtype:
        return False
    if a.device.type == "cuda":
        return a.dtype == torch.bfloat16 and _aligned(a) and _aligned(b) and a.shape[-1] % 8 == 0 \
            and b.shape[-1] % 8 == 0
    return a.dtype in (torch.float32, torch.bfloat16) and _aligned(a) and _aligned(b)


def grouped_rows_matmul(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    """(A, K) rows grouped by expert times (E, K, N) -> (A, N); rows past offsets[-1] are unspecified."""
    if _library_takes(a, b):
        return torch._grouped_mm(a, b, offs=offsets)
    out = a.new_zeros(a.shape[0], b.shape[2])
    start = 0
    for expert, end in enumerate(offsets.tolist()):  # the fallback of a fallback: reads offsets on the host
        if end > start:
            out[start:end] = a[start:end] @ b[expert]
        start = end
    return out


def grouped_weight_grad(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    """sum over each expert's rows of a_r^T b_r: (A, M), (A, N) grouped by expert -> (E, M, N).

    Rows past offsets[-1] are not read; an expert with no rows gets zeros.
    """
    num_experts = offsets.shape[0]
    if _library_takes(a, b):
        # 2D x 2D grouped over the reduction dimension: mat_a (M, A) column-major, mat_b (A, N) row-major. With this
        # layout the kernel puts no alignment condition on the group sizes (pytorch/pytorch#155466: only a row-major
        # mat_a or a column-major mat_b is checked along the dynamic dimension).
        out = torch._grouped_mm(a.t(), b, offs=offsets)
        # NOTE: an expert with no rows is a K = 0 GEMM, which the library kernel need not write: zero it here
        # (an elementwise pass over (E, M, N), no host read).
        counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
        return torch.where((counts > 0).view(-1, 1, 1), out, torch.zeros_like(out))
    out = a.new_zeros(num_experts, a.shape[1], b.shape[1])
    start = 0
    for expert, end in enumerate(offsets.tolist()):
        if end > start:
            out[expert] = a[start:end].t() @ b[start:end]
        start = end
    return out


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _activation(code: int, v: Tensor) -> Tensor:
    from pimoe.cuda.grouped import _TORCH_ACTS

    return _TORCH_ACTS[code](v)


def activation_grad(code: int, v: Tensor) -> Tensor:
    """d act(v) / dv, elementwise, for an activation code of `packing.ACT_CODES` (the same formulas as autograd's)."""
    if code == ACT_CODES["gelu"]:
        cdf = 0.5 * (1.0 + torch.erf(v * _INV_SQRT_2))
        return cdf + v * torch.exp(-0.5 * v * v) * _INV_SQRT_2PI
    if code == ACT_CODES["gelu_tanh"]:
        inner = _SQRT_2_OVER_PI * (v + 0.044715 * v.pow(3))
        t = torch.tanh(inner)
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
    if code == ACT_CODES["relu"]:
        return (v > 0).to(v.dtype)
    if code == ACT_CODES["silu"]:
        s = torch.sigmoid(v)
        return s * (1.0 + v * (1.0 - s))
    if code == ACT_CODES["tanh"]:
        t = torch.tanh(v)
        return 1.0 - t * t
    raise ValueError(f"unknown activation code {code}; known: {ACT_CODES}")


def _row_meta(row_expert: Tensor, widths: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(A, 1) each row's own width and (A, F) whether a column lies inside it."""
    row_width = widths[row_expert].long().unsqueeze(-1)
    cols = torch.arange(width, device=row_expert.device)
    return row_width, cols < row_width


def _hidden_and_grad(pre: Tensor, row_expert: Tensor, widths: Tensor, gated: Tensor, act: Tensor, act_codes: list[int],
                     width: int, any_gated: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
    """From (A, N1) pre-activations: hidden (A, F), act'(gate) (A, F), for gated packs the up half (A, F; 1 on
    other rows) and its column index (A, F; 0 on other rows), and act(gate) (A, F)."""
    row_width, inside = _row_meta(row_expert, widths, width)
    gate = pre[:, :width]
    activated = torch.zeros_like(gate)
    slope = torch.zeros_like(gate)
    row_act = act[row_expert].unsqueeze(-1)
    for code in act_codes:
        rows = row_act == code
        activated = torch.where(rows, _activation(code, gate), activated)
        slope = torch.where(rows, activation_grad(code, gate), slope)
    up = up_cols = None
    if any_gated:
        cols = torch.arange(width, device=pre.device)
        up_cols = (row_width + cols).clamp(max=pre.shape[1] - 1)
        row_gated = gated[row_expert].bool().unsqueeze(-1)
        up = torch.where(row_gated & inside, pre.gather(1, up_cols), torch.ones_like(gate))
        up_cols = torch.where(row_gated & inside, up_cols, torch.zeros_like(up_cols))
        hidden = activated * up
    else:
        hidden = activated
    zero = torch.zeros_like(hidden)
    return torch.where(inside, hidden, zero), torch.where(inside, slope, zero), up, up_cols, activated


def _kept_rows(rows: int, offsets: Tensor) -> Tensor:
    return (torch.arange(rows, device=offsets.device) < offsets[-1]).unsqueeze(-1)


@torch.library.custom_op("pimoe::expert_mlp", mutates_args=())
def expert_mlp(xs: Tensor, row_expert: Tensor, offsets: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
               widths: Tensor, gated: Tensor, act: Tensor, act_codes: list[int], any_gated: bool
               ) -> tuple[Tensor, Tensor]:
    """Rows grouped by expert through their expert's up GEMM, activation and down GEMM (module docstring).

    xs: (A, D) in the weights' dtype. row_expert: (A,) int64 expert of each row (any valid expert on dropped rows).
    offsets: (E,) int32 group ends. w1: (E, N1, D), b1: (E, N1) float32, w2: (E, D, F), b2: (E, D) float32.
    widths / gated / act: (E,) int32. act_codes: the activation codes present. Returns (out (A, D), pre (A, N1)),
    both float32 (b1's dtype); out is 0 on dropped rows.
    """
    acc = b1.dtype
    width = w2.shape[2]
    pre = grouped_rows_matmul(xs, w1.transpose(1, 2), offsets).to(acc) + b1[row_expert]
    hidden, _, _, _, _ = _hidden_and_grad(pre, row_expert, widths, gated, act, act_codes, width, any_gated)
    out = grouped_rows_matmul(hidden.to(xs.dtype), w2.transpose(1, 2), offsets).to(acc) + b2[row_expert]
    kept = _kept_rows(xs.shape[0], offsets)
    return torch.where(kept, out, torch.zeros_like(out)), torch.where(kept, pre, torch.zeros_like(pre))


@expert_mlp.register_fake
def _(xs, row_expert, offsets, w1, b1, w2, b2, widths, gated, act, act_codes, any_gated):
    return xs.new_empty(xs.shape[0], w2.shape[1], dtype=b1.dtype), xs.new_empty(xs.shape[0], w1.shape[1],
                                                                                dtype=b1.dtype)


@torch.library.custom_op("pimoe::expert_mlp_backward", mutates_args=())
def expert_mlp_backward(dout: Tensor, xs: Tensor, pre: Tensor, row_expert: Tensor, offsets: Tensor, w1: Tensor,
                        w2: Tensor, widths: Tensor, gated: Tensor, act: Tensor, act_codes: list[int], any_gated: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of `expert_mlp` for the upstream gradient dout (A, D) of its `out`.

    Returns (dxs (A, D) in xs' dtype, dw1 (E, N1, D) and dw2 (E, D, F) in the weights' dtype, db1 (E, N1) and
    db2 (E, D) float32). dxs is 0 on dropped rows, which therefore add nothing to the token gradients.
    """
    acc = pre.dtype
    num_experts = w1.shape[0]
    width = w2.shape[2]
    kept = _kept_rows(xs.shape[0], offsets)
    dout = torch.where(kept, dout.to(acc), torch.zeros_like(dout, dtype=acc))
    hidden, slope, up, up_cols, activated = _hidden_and_grad(pre, row_expert, widths, gated, act, act_codes, width,
                                                             any_gated)
    dout_c = dout.to(xs.dtype)
    dw2 = grouped_weight_grad(dout_c, hidden.to(xs.dtype), offsets)                       # (E, D, F)
    dh = grouped_rows_matmul(dout_c, w2, offsets).to(acc)                                  # (A, F)
    dh = torch.where(kept, dh, torch.zeros_like(dh))
    dpre = torch.zeros_like(pre)
    if any_gated:
        dpre[:, :width] = dh * up * slope
        # d hidden / d up = act(gate) on a gated row's own columns; up_cols points at column 0 elsewhere with a 0 value
        dup = torch.where(up_cols > 0, dh * activated, torch.zeros_like(dh))
        dpre.scatter_add_(1, up_cols, dup)
    else:
        dpre[:, :width] = dh * slope
    dpre_c = dpre.to(xs.dtype)
    dw1 = grouped_weight_grad(dpre_c, xs, offsets)                                         # (E, N1, D)
    dxs = grouped_rows_matmul(dpre_c, w1, offsets)                                         # (A, D)
    dxs = torch.where(kept, dxs, torch.zeros_like(dxs))
    db1 = torch.zeros(num_experts, pre.shape[1], dtype=acc, device=pre.device).index_add_(0, row_expert, dpre)
    db2 = torch.zeros(num_experts, dout.shape[1], dtype=acc, device=dout.device).index_add_(0, row_expert, dout)
    return dxs.to(xs.dtype), dw1.to(w1.dtype), db1, dw2.to(w2.dtype), db2


@expert_mlp_backward.register_fake
def _(dout, xs, pre, row_expert, offsets, w1, w2, widths, gated, act, act_codes, any_gated):
    num_experts = w1.shape[0]
    return (torch.empty_like(xs), torch.empty_like(w1), pre.new_empty(num_experts, w1.shape[1]), torch.empty_like(w2),
            pre.new_empty(num_experts, w2.shape[1]))


def _setup_context(ctx, inputs, output) -> None:
    xs, row_expert, offsets, w1, _, w2, _, widths, gated, act, act_codes, any_gated = inputs
    _, pre = output
    ctx.save_for_backward(xs, pre, row_expert, offsets, w1, w2, widths, gated, act)
    ctx.act_codes = act_codes
    ctx.any_gated = any_gated


def _backward(ctx, dout, dpre_unused):
    xs, pre, row_expert, offsets, w1, w2, widths, gated, act = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros(xs.shape[0], w2.shape[1], dtype=pre.dtype, device=xs.device)
    dxs, dw1, db1, dw2, db2 = expert_mlp_backward(dout.contiguous(), xs, pre, row_expert, offsets, w1, w2, widths,
                                                  gated, act, ctx.act_codes, ctx.any_gated)
    return dxs, None, None, dw1, db1, dw2, db2, None, None, None, None, None


expert_mlp.register_autograd(_backward, setup_context=_setup_context)
