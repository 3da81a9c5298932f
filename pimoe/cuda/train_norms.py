"""Typed experts' input norms on the differentiable fast path: the normalisation per row, the affine folded into the
up projection.

Why: the GPU preset's eight typed experts include a LayerNorm (reasoning) and an RMSNorm (analytical) expert. The
first training path normalised every row both ways in a dozen float32 elementwise passes over (A, D), gathered each
row's weight and bias (A, D) and scattered their gradients back with index_add onto E rows: at 64 x 512 tokens on an
H100 that was ~20 of the step's 77 ms of kernels (`python bench/preset_profile.py`), for a norm over 512 numbers.

Here each row is normalised by torch's fused LayerNorm / RMSNorm kernels (every row through each norm kind present,
then picked by the row's expert: no per-expert slicing, so no host sync), without affine; the affine moves into the
up projection, which it precedes: up(n * w_e + b_e) = (W1_e diag(w_e)) n + (W1_e b_e + b1_e). The folded weights
are (E, N1, D), computed once per call from the stacks; their gradients reach w_e and b_e through the fold. A set of
experts whose norms of one kind use different eps keeps the general float32 formula (`grouped._norm_rows`' maths).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pimoe.cuda.packing import NORM_CODES

__all__ = ["eps_by_code", "fold_norm_affine", "gather_normalised_rows", "normalise_rows"]


class _RowNorm(torch.autograd.Function):
    """The Triton row norm (`pimoe.cuda.ops.row_norm`) with its own backward."""

    @staticmethod
    def forward(ctx, xs, row_expert, norm, eps, out_dtype):
        from pimoe.cuda.ops.row_norm import row_norm_forward

        out, shift, scale = row_norm_forward(xs, row_expert, norm, eps, out_dtype)
        ctx.save_for_backward(xs, row_expert, norm, eps, shift, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        from pimoe.cuda.ops.row_norm import row_norm_backward

        return row_norm_backward(grad, *ctx.saved_tensors), None, None, None, None


class _TokenRows(torch.autograd.Function):
    """Gather, per-expert norm and cast in one Triton pass each way (`pimoe.cuda.ops.token_rows`); with two_buffers
    the rows of `width_classes.class_layout`'s two buffers, returned as two tensors."""

    @staticmethod
    def forward(ctx, x, position, offsets, expert_indices, norm, eps, out_dtype, any_norm, two_buffers):
        from pimoe.cuda.ops.token_rows import token_rows_forward

        out, stats, out_hi = token_rows_forward(x, position, offsets, expert_indices, norm, eps, out_dtype, any_norm,
                                                two_buffers)
        ctx.save_for_backward(x, position, offsets, expert_indices, norm, eps, stats)
        ctx.any_norm = any_norm
        return out if out_hi is None else (out, out_hi)

    @staticmethod
    def backward(ctx, grad, grad_hi=None):
        from pimoe.cuda.ops.token_rows import token_rows_backward

        return (token_rows_backward(grad, *ctx.saved_tensors, ctx.any_norm, grad_hi),) + (None,) * 8


def gather_normalised_rows(x: torch.Tensor, position: torch.Tensor, offsets: torch.Tensor,
                           expert_indices: torch.Tensor, norm: torch.Tensor, eps: torch.Tensor,
                           out_dtype: torch.dtype, any_norm: bool, two_buffers: bool = False):
    """(T, D) tokens -> (A, D) rows in expert order (row position[t * K + k] from token t), each normalised by its
    expert's norm kind (no affine) and written in out_dtype; rows of dropped assignments are zeros. One Triton pass
    each way, in place of `train_ops.gather_rows` + `normalise_rows` + a cast: for CUDA calls with Triton outside
    torch.compile (the caller checks `train_ops.use_triton`). two_buffers: positions and offsets of
    `width_classes.class_layout`; returns the two classes' (A, D) buffers."""
    return _TokenRows.apply(x.contiguous(), position.contiguous(), offsets, expert_indices.contiguous(), norm,
                            eps.float(), out_dtype, any_norm, two_buffers)


def _triton_rows(xs: torch.Tensor) -> bool:
    from pimoe.cuda.availability import triton_available
    from pimoe.cuda.ops.row_norm import MAX_HIDDEN

    return (xs.is_cuda and xs.dtype in (torch.float32, torch.bfloat16, torch.float16) and xs.shape[-1] <= MAX_HIDDEN
            and not torch.compiler.is_compiling() and triton_available())


def normalise_rows(xs: torch.Tensor, row_expert: torch.Tensor, norm: torch.Tensor,
                   eps_by_code: dict[int, float] | None, eps: torch.Tensor,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(A, D) rows -> each normalised by its expert's norm kind (LayerNorm, RMSNorm or none), no affine, computed in
    float32 or wider. norm (E,) int codes; eps_by_code: the one eps of each kind present, or None when a kind has
    several (then the per-expert eps (E,) tensor is used in the general formula). out_dtype: the result's dtype (the
    GEMM's, so no separate cast pass), float32 or wider when None. On CUDA one Triton pass each way
    (`pimoe.cuda.ops.row_norm`); in torch elsewhere and while torch.compile traces."""
    if _triton_rows(xs):
        wanted = out_dtype or torch.promote_types(xs.dtype, torch.float32)
        return _RowNorm.apply(xs.contiguous(), row_expert.contiguous(), norm, eps.float(), wanted)
    out = _normalise_rows_torch(xs, row_expert, norm, eps_by_code, eps)
    return out if out_dtype is None else out.to(out_dtype)


def _normalise_rows_torch(xs: torch.Tensor, row_expert: torch.Tensor, norm: torch.Tensor,
                          eps_by_code: dict[int, float] | None, eps: torch.Tensor) -> torch.Tensor:
    x32 = xs.to(torch.promote_types(xs.dtype, torch.float32))
    code = norm[row_expert].unsqueeze(-1)
    if eps_by_code is None:
        row_eps = eps[row_expert].unsqueeze(-1).to(x32.dtype)
        centred = x32 - x32.mean(-1, keepdim=True)
        layer = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + row_eps)
        rms = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + row_eps)
        return torch.where(code == NORM_CODES["layernorm"], layer,
                           torch.where(code == NORM_CODES["rmsnorm"], rms, x32))
    out = x32
    hidden = (x32.shape[-1],)
    if NORM_CODES["layernorm"] in eps_by_code:
        layer = F.layer_norm(x32, hidden, eps=eps_by_code[NORM_CODES["layernorm"]])
        out = torch.where(code == NORM_CODES["layernorm"], layer, out)
    if NORM_CODES["rmsnorm"] in eps_by_code:
        rms = F.rms_norm(x32, hidden, eps=eps_by_code[NORM_CODES["rmsnorm"]])
        out = torch.where(code == NORM_CODES["rmsnorm"], rms, out)
    return out


def fold_norm_affine(w1: torch.Tensor, b1: torch.Tensor | None, norm_weight: torch.Tensor | None,
                     norm_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One expert's up weight (N1, D) and bias (N1,) (None: no bias) with its norm's affine inside: w1 * norm_weight
    per input column, b1 + w1 @ norm_bias; unchanged where the norm has no weight or bias (None). Computed in w1's
    dtype (the parameters' own, before any cast to the GEMM dtype)."""
    folded_w1 = w1 if norm_weight is None else w1 * norm_weight.to(w1.dtype)
    if norm_bias is None:
        return folded_w1, b1
    shift = w1 @ norm_bias.to(w1.dtype)
    return folded_w1, shift if b1 is None else b1 + shift.to(b1.dtype)


def eps_by_code(codes: list[int], eps: list[float]) -> dict[int, float] | None:
    """The one eps of each norm kind present among the experts, or None when some kind has several."""
    found: dict[int, set[float]] = {}
    for code, value in zip(codes, eps, strict=True):
        if code != NORM_CODES["none"]:
            found.setdefault(code, set()).add(value)
    if any(len(values) > 1 for values in found.values()):
        return None
    return {code: values.pop() for code, values in found.items()}
