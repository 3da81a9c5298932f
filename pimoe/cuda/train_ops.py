"""The grouped expert MLP as torch custom ops with a hand-written backward: the differentiable core of the fast path.

Legend: A sorted assignment rows, D hidden size, E experts, N1 padded up width (F, or 2F with a gated expert),
F padded intermediate width.

Two ops, each with a hand-written backward op:

`expert_mlp(xs, row_expert, offsets, w1, b1, w2, ...)` maps rows already grouped by expert (group e ends at
offsets[e]; rows past offsets[-1] are dropped assignments) to each row's expert output before bias and weight:

    pre    = xs @ W1[e].T                              (A, N1) in xs' dtype, saved for the backward
    hidden = act_e(pre + b1[e]) (times the gated up half), 0 past F_e       (A, F), float32 math, stored in xs' dtype
    out    = hidden @ W2[e].T                          (A, D)

`moe_combine(out, position, offsets, expert_indices, weights, b2)` -> (T, D): sum_k w_tk (out[position[t, k]] + b2_e)
over kept slots, accumulated in float32.

The backward reads the forward's `pre` and `hidden` (kept, as autograd keeps a dense layer's pre-activation and
activation; recomputing hidden cost one more (A, F) write per step), applies the activation's derivative in one fused
pass, and runs four grouped GEMMs: dh = dout @ W2[e] and dxs = dpre @ W1[e] (2D x 3D, grouped over rows),
dW2[e] = dout_e.T @ hidden_e and dW1[e] = dpre_e.T @ xs_e (2D x 2D, grouped over the reduction); the bias gradients are the same 2D x 2D product with a
column of ones. All GEMMs go through torch._grouped_mm where it takes the dtype and strides. On CUDA with Triton the
elementwise passes are the kernels of `pimoe.cuda.ops.train_activate` / `train_combine` (one pass over (A, F) each way); elsewhere plain torch ops, the
reference the tests hold the kernels to.

All ops carry fake (meta) implementations, so `torch.compile(fullgraph=True)` traces them as single nodes, and none
reads anything back to the host on the bf16 CUDA path, so a plain `torch.cuda.graph` can capture them. (On CUDA,
torch._grouped_mm takes bf16 only; fp16 and fp32 go to its per-group fallback, which copies the offsets to the host:
eager-correct, not capturable.) Gather, per-expert norm and the router stay in differentiable torch ops in
`pimoe.cuda.train_path`, so gradients reach the router probabilities through the combine weights.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from pimoe.cuda.availability import triton_available
from pimoe.cuda.grouped import _TORCH_ACTS
from pimoe.cuda.packing import ACT_CODES
from pimoe.cuda.tuning import active_tuning

__all__ = ["activation_grad", "differentiable", "empty_groups", "expert_mlp", "expert_mlp_backward", "gather_rows",
           "gather_rows_backward", "grouped_rows_matmul", "grouped_weight_grad", "moe_combine", "moe_combine_backward",
           "split_groups", "splits_weight_grads"]


def _aligned(t: Tensor) -> bool:
    """Whether torch._grouped_mm takes t's strides: its last two dimensions row- or column-major with the other stride
    a multiple of 16 bytes and at least the rows' length (torch's own check), any batch stride aligned too. A width of
    1 has unit strides on both dimensions ((A, 1): (1, 1)), which the library refuses."""
    align = max(1, 16 // t.element_size())
    *batch, row_stride, column_stride = t.stride()
    rows, columns = t.shape[-2:]
    row_major = column_stride == 1 and row_stride % align == 0 and row_stride >= max(1, columns)
    column_major = row_stride == 1 and column_stride % align == 0 and column_stride >= max(1, rows)
    return (row_major or column_major) and all(s % align == 0 for s in batch)


def _library_takes(a: Tensor, b: Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm") or a.dtype != b.dtype:
        return False
    if a.device.type == "cuda":
        return a.dtype == torch.bfloat16 and _aligned(a) and _aligned(b) and a.shape[-1] % 8 == 0 \
            and b.shape[-1] % 8 == 0
    return a.dtype in (torch.float32, torch.bfloat16) and _aligned(a) and _aligned(b)


def _takes_when_padded(a: Tensor, b: Tensor) -> bool:
    # A width that is no multiple of 8 (hidden 100) or a transposed view with unaligned strides: the library takes
    # zero-padded contiguous copies. Without them the per-expert loop reads the group ends on the host, which a CUDA
    # graph capture refuses; the copies cost one pass over operands the GEMM reads anyway.
    if not hasattr(torch, "_grouped_mm") or a.dtype != b.dtype:
        return False
    return a.dtype == torch.bfloat16 if a.device.type == "cuda" else a.dtype in (torch.float32, torch.bfloat16)


def _rows_kernels_take(a: Tensor, b: Tensor) -> bool:
    """Whether the Triton grouped-rows kernels (`ops.grouped_rows`) replace the per-expert loop: CUDA operands of a
    floating dtype the library refuses there (float32, float16), when the tuning turns them on."""
    return (use_triton(a) and a.dtype == b.dtype and a.dtype in (torch.float32, torch.float16)
            and active_tuning().grouped_rows_kernels)


def _padded(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """A contiguous copy of t with the sizes of `dims` rounded up to multiples of 8, the new entries zero."""
    shape = list(t.shape)
    for dim in dims:
        shape[dim] += -shape[dim] % 8
    out = t.new_zeros(shape)
    out[tuple(slice(0, size) for size in t.shape)] = t
    return out


def _library_grouped_mm(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    # contiguous: torch._grouped_mm pads its output's rows to 16 bytes (24 x 98 float32 came back with stride 100 on
    # the CPU), and the Triton passes after it index rows by their width. A no-op where rows need no padding.
    return torch._grouped_mm(a, b, offs=offsets).contiguous()


def grouped_rows_matmul(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    """(A, K) rows grouped by expert times (E, K, N) -> contiguous (A, N); rows past offsets[-1] are unspecified."""
    if _library_takes(a, b):
        return _library_grouped_mm(a, b, offsets)
    if _takes_when_padded(a, b):
        return _library_grouped_mm(_padded(a, (1,)), _padded(b, (1, 2)), offsets)[:, :b.shape[2]].contiguous()
    if _rows_kernels_take(a, b):
        from pimoe.cuda.ops.grouped_rows import rows_matmul

        return rows_matmul(a, b, offsets)
    out = a.new_zeros(a.shape[0], b.shape[2])
    start = 0
    for expert, end in enumerate(offsets.tolist()):  # float32 on CUDA: reads the group ends on the host
        if end > start:
            out[start:end] = a[start:end] @ b[expert]
        start = end
    return out


def empty_groups(offsets: Tensor) -> Tensor:
    """(E, 1, 1) bool: the experts with no rows (group end equal to the previous one)."""
    return (torch.diff(offsets, prepend=offsets.new_zeros(1)) == 0).view(-1, 1, 1)


# Rows per piece of an expert's weight gradient. One expert's gradient is a few output tiles (512 x 1,024 is 16 of the
# library's 128 x 256) whose reduction runs over all of the expert's rows on one SM each: when all experts together
# have fewer tiles than the card has SMs (the GPU preset's width classes: 80 and 96 on an H100's 132), most SMs idle,
# and with routing skewed towards one expert the card waits on its few tiles. Then an expert with more rows is cut
# into pieces of at most this many. With enough tiles (8 experts of 2,048 x 512: 256) nothing is cut: on an H100 the
# cut cost the uniform layer's training step 4-15% (8,192 to 65,536 tokens) for what it gave the preset (27.2 -> 26.5
# ms per graphed step; docs/performance.md, "Split-K weight gradients").
SPLIT_K_ROWS = 4096
_TILE_ELEMENTS = 128 * 256


def grouped_weight_grad(a: Tensor, b: Tensor, offsets: Tensor, empty: Tensor | None = None,
                        out_dtype: torch.dtype | None = None, split_rows: int | None = None) -> Tensor:
    """sum over each expert's rows of a_r^T b_r: (A, M), (A, N) grouped by expert -> (E, M, N) in out_dtype (default:
    a's dtype).

    Rows past offsets[-1] are not read; an expert with no rows gets zeros. empty: `empty_groups(offsets)`, when the
    caller computes several gradients over the same groups. split_rows (default SPLIT_K_ROWS; 0 never splits): on the
    Triton path with at least twice this many rows and fewer output tiles than SMs (`splits_weight_grads`), experts
    with more rows are cut into pieces (`split_groups`) added in float32.
    """
    num_experts = offsets.shape[0]
    out_dtype = a.dtype if out_dtype is None else out_dtype
    split_rows = SPLIT_K_ROWS if split_rows is None else split_rows
    library_takes = _library_takes(a, b)
    if not library_takes and _takes_when_padded(a, b):
        grad = grouped_weight_grad(_padded(a, (1,)), _padded(b, (1,)), offsets, empty, out_dtype, split_rows)
        return grad[:, :a.shape[1], :b.shape[1]].contiguous()
    if library_takes:
        if use_triton(a) and splits_weight_grads(a.shape[0], num_experts, a.shape[1], b.shape[1], split_rows,
                                                 _sm_count(a.device)):
            from pimoe.cuda.ops.piece_sums import piece_sums

            ends, first, count = split_groups(offsets, a.shape[0], split_rows)
            return piece_sums(_library_grouped_mm(a.t(), b, ends), ends, first, count, out_dtype)
        # 2D x 2D grouped over the reduction dimension: mat_a (M, A) column-major, mat_b (A, N) row-major. With this
        # layout the kernel puts no alignment condition on the group sizes (pytorch/pytorch#155466: only a row-major
        # mat_a or a column-major mat_b is checked along the dynamic dimension).
        out = _library_grouped_mm(a.t(), b, offsets)
        # NOTE: an expert with no rows is a K = 0 GEMM, which the library kernel need not write: zero it here
        # (no host read).
        if use_triton(out):
            from pimoe.cuda.ops.zero_fill import zero_empty_groups_

            return zero_empty_groups_(out, offsets).to(out_dtype)
        return out.masked_fill_(empty_groups(offsets) if empty is None else empty, 0).to(out_dtype)
    if _rows_kernels_take(a, b):
        from pimoe.cuda.ops.grouped_rows import rows_weight_grad

        return rows_weight_grad(a, b, offsets, out_dtype)
    out = a.new_zeros(num_experts, a.shape[1], b.shape[1])
    start = 0
    for expert, end in enumerate(offsets.tolist()):
        if end > start:
            out[expert] = a[start:end].t() @ b[start:end]
        start = end
    return out.to(out_dtype)


def splits_weight_grads(rows: int, num_experts: int, height: int, width: int, split_rows: int, sm_count: int) -> bool:
    """Whether `grouped_weight_grad` cuts experts into pieces: rows to cut, and the E (height, width) gradients in fewer
    library tiles (128 x 256) than SMs."""
    tiles = num_experts * -(-height * width // _TILE_ELEMENTS)
    return split_rows > 0 and num_experts > 0 and rows >= 2 * split_rows and tiles < sm_count


@functools.cache
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    # NOTE: 132 (an H100 SXM) where there is no CUDA device: the interpreter tests run the CUDA code path on the CPU
    return _device_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 132


def split_groups(offsets: Tensor, total_rows: int, split_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each expert's rows into ceil(rows / split_rows) pieces (at least one; an empty expert keeps one empty piece):
    (piece ends (G,) int32, each expert's first piece (E,), its piece count (E,)).

    G = E + total_rows // split_rows bounds the pieces whatever the routing (a static count, so graphs capture it);
    slots past the last piece are empty pieces at the last end. Pieces are in expert order, so the ends never decrease.
    """
    num_experts = offsets.shape[0]
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1))
    per_expert = ((counts + split_rows - 1) // split_rows).clamp_(min=1)
    after = per_expert.cumsum(0)
    first = after - per_expert
    slots = torch.arange(num_experts + total_rows // split_rows, device=offsets.device)
    owner = torch.searchsorted(after, slots, right=True)
    mine = owner.clamp(max=num_experts - 1)
    piece_end = torch.minimum(offsets[mine] - counts[mine] + (slots - first[mine] + 1) * split_rows, offsets[mine])
    ends = torch.where(owner < num_experts, piece_end, offsets[-1]).to(torch.int32)
    return ends, first.to(torch.int32), per_expert.to(torch.int32)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _activation(code: int, v: Tensor) -> Tensor:
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


def use_triton(t: Tensor) -> bool:
    """Whether the elementwise passes run as Triton kernels (CUDA with Triton; tests force it in the interpreter)."""
    return t.is_cuda and triton_available()


def _kept_rows(rows: int, offsets: Tensor) -> Tensor:
    return (torch.arange(rows, device=offsets.device) < offsets[-1]).unsqueeze(-1)


def segment_sums(rows: Tensor, offsets: Tensor, empty: Tensor | None = None) -> Tensor:
    """(A, N) rows grouped by expert -> (E, N) float32 (float64 rows: float64) sum of each expert's rows (rows past
    offsets[-1] not read): two short Triton passes where Triton runs (`ops.segment_sums`), elsewhere the grouped
    weight-gradient GEMM against a column of ones. Neither uses atomics nor a float32 copy of the rows."""
    if use_triton(rows):
        from pimoe.cuda.ops.segment_sums import segment_column_sums

        return segment_column_sums(rows, offsets)
    ones = rows.new_ones(rows.shape[0], 16)  # 16 columns: the smallest M pytorch's own 2D x 2D tests run
    acc = torch.promote_types(rows.dtype, torch.float32)
    return grouped_weight_grad(ones, rows, offsets, empty)[:, 0].to(acc).contiguous()


def _act_torch(pre: Tensor, b1: Tensor, row_expert: Tensor, widths: Tensor, gated: Tensor, act: Tensor,
               offsets: Tensor, width: int, act_codes: list[int], any_gated: bool, dh: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
    """Plain-torch version of `pimoe.cuda.ops.train_activate.act_kernel`: hidden (A, F), and with dh the gradient of pre (A, N1)."""
    acc = b1.dtype
    full = pre.to(acc) + b1[row_expert]
    kept = _kept_rows(pre.shape[0], offsets)
    row_width = widths[row_expert].long().unsqueeze(-1)
    inside = kept & (torch.arange(width, device=pre.device) < row_width)
    gate = full[:, :width]
    row_act = act[row_expert].unsqueeze(-1)
    activated, slope = torch.zeros_like(gate), torch.zeros_like(gate)
    for code in act_codes:
        rows = row_act == code
        activated = torch.where(rows, _activation(code, gate), activated)
        slope = torch.where(rows, activation_grad(code, gate), slope)
    up = torch.ones_like(gate)
    up_cols = row_gated = None
    if any_gated:
        up_cols = (row_width + torch.arange(width, device=pre.device)).clamp(max=pre.shape[1] - 1)
        row_gated = inside & gated[row_expert].bool().unsqueeze(-1)
        up = torch.where(row_gated, full.gather(1, up_cols), up)
    zero = torch.zeros_like(gate)
    hidden = torch.where(inside, activated * up, zero).to(pre.dtype)
    if dh is None:
        return hidden, None
    dh = dh.to(acc)
    dpre = torch.zeros_like(full)
    dpre[:, :width] = torch.where(inside, dh * up * slope, zero)
    if any_gated:
        dpre.scatter_add_(1, torch.where(row_gated, up_cols, 0), torch.where(row_gated, dh * activated, zero))
    return hidden, dpre.to(pre.dtype)


def _expert_mlp_impl(xs: Tensor, row_expert: Tensor, offsets: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                     widths: Tensor, gated: Tensor, act: Tensor, act_codes: list[int], any_gated: bool, full: bool,
                     aligned: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Rows grouped by expert through their expert's up GEMM, activation and down GEMM (module docstring).

    xs: (A, D) in the weights' dtype. row_expert: (A,) int64 expert of each row (any valid expert on dropped rows).
    offsets: (E,) int32 group ends. w1: (E, N1, D), b1: (E, N1) float32, w2: (E, D, F). widths / gated / act: (E,)
    int32. act_codes: the activation codes present. full: every expert F = N1 wide and ungated. aligned: every
    width a multiple of 16 (the Triton activation then keeps vector accesses at width edges).
    Returns (out (A, D), pre (A, N1), hidden (A, F)) in xs' dtype; rows past offsets[-1] are unspecified. pre and
    hidden are returned for the backward, which reads both (as autograd keeps a dense layer's pre-activation and
    activation); they carry no gradient.
    """
    width = w2.shape[2]
    pre = grouped_rows_matmul(xs, w1.transpose(1, 2), offsets)
    if use_triton(xs):
        from pimoe.cuda.ops.train_activate import act_forward

        hidden = act_forward(pre, b1, row_expert, widths, gated, act, offsets, width, act_codes, any_gated, full=full,
                             aligned=aligned)
    else:
        hidden, _ = _act_torch(pre, b1, row_expert, widths, gated, act, offsets, width, act_codes, any_gated)
    return grouped_rows_matmul(hidden, w2.transpose(1, 2), offsets), pre, hidden


expert_mlp = torch.library.custom_op("pimoe::expert_mlp", mutates_args=())(_expert_mlp_impl)


@expert_mlp.register_fake
def _(xs, row_expert, offsets, w1, b1, w2, widths, gated, act, act_codes, any_gated, full, aligned):
    return (xs.new_empty(xs.shape[0], w2.shape[1]), xs.new_empty(xs.shape[0], w1.shape[1]),
            xs.new_empty(xs.shape[0], w2.shape[2]))


def _expert_mlp_backward_impl(dout: Tensor, xs: Tensor, pre: Tensor, hidden: Tensor, row_expert: Tensor,
                              offsets: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, widths: Tensor, gated: Tensor,
                              act: Tensor, act_codes: list[int], any_gated: bool, full: bool, aligned: bool
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of `expert_mlp` for the upstream gradient dout (A, D) of its `out` (rows past offsets[-1] are not
    read), given the forward's pre and hidden. Returns (dxs (A, D), 0 on dropped rows; dw1 (E, N1, D); db1 (E, N1)
    float32; dw2 (E, D, F))."""
    width = w2.shape[2]
    dout = dout.to(xs.dtype)
    dh = grouped_rows_matmul(dout, w2, offsets)                                                  # (A, F)
    if use_triton(xs):
        from pimoe.cuda.ops.train_activate import act_backward

        dpre, hidden = act_backward(pre, b1, dh, row_expert, widths, gated, act, offsets, act_codes, any_gated, full,
                                    hidden=hidden, aligned=aligned)
    else:
        hidden, dpre = _act_torch(pre, b1, row_expert, widths, gated, act, offsets, width, act_codes, any_gated,
                                  dh)
    empty = None if use_triton(xs) else empty_groups(offsets)  # the Triton path zeroes empty groups by itself
    dw2 = grouped_weight_grad(dout, hidden, offsets, empty, w2.dtype)                            # (E, D, F)
    dw1 = grouped_weight_grad(dpre, xs, offsets, empty, w1.dtype)                                # (E, N1, D)
    dxs = grouped_rows_matmul(dpre, w1, offsets)                                                 # (A, D)
    if use_triton(dxs):
        from pimoe.cuda.ops.zero_fill import zero_rows_past_groups_

        zero_rows_past_groups_(dxs, offsets)
    else:
        dxs.masked_fill_(~_kept_rows(xs.shape[0], offsets), 0)  # in place: no zero-filled (A, D) copy
    return dxs, dw1, segment_sums(dpre, offsets, empty).to(b1.dtype), dw2


expert_mlp_backward = torch.library.custom_op("pimoe::expert_mlp_backward",
                                              mutates_args=())(_expert_mlp_backward_impl)


@expert_mlp_backward.register_fake
def _(dout, xs, pre, hidden, row_expert, offsets, w1, b1, w2, widths, gated, act, act_codes, any_gated, full,
      aligned):
    return torch.empty_like(xs), torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2)


def _mlp_setup_context(ctx, inputs, output) -> None:
    xs, row_expert, offsets, w1, b1, w2, widths, gated, act, act_codes, any_gated, full, aligned = inputs
    _, pre, hidden = output
    ctx.save_for_backward(xs, pre, hidden, row_expert, offsets, w1, b1, w2, widths, gated, act)
    ctx.static = (act_codes, any_gated, full, aligned)
    # pre and hidden are outputs only so the backward can reuse them; nothing differentiates through them. Autograd
    # would otherwise hand the backward zero-filled gradients for both: 1 GB of writes per layer at 65,536 tokens.
    ctx.set_materialize_grads(False)


def _mlp_backward_through(backward):
    def mlp_backward(ctx, dout, dpre_unused, dhidden_unused):
        if dout is None:  # only pre or hidden was used downstream, and they carry no gradient
            return (None,) * 13
        xs, pre, hidden, row_expert, offsets, w1, b1, w2, widths, gated, act = ctx.saved_tensors
        dxs, dw1, db1, dw2 = backward(dout.contiguous(), xs, pre, hidden, row_expert, offsets, w1, b1, w2, widths,
                                      gated, act, *ctx.static)
        return dxs, None, None, dw1, db1, dw2, None, None, None, None, None, None, None

    return mlp_backward


expert_mlp.register_autograd(_mlp_backward_through(expert_mlp_backward), setup_context=_mlp_setup_context)


def _combine_torch(y_rows: Tensor, position: Tensor, offsets: Tensor, expert_indices: Tensor, weights: Tensor,
                   b2: Tensor) -> Tensor:
    """(T, K, D) float32 terms w_tk (y[position] + b2_e) of the combine, 0 for dropped slots."""
    num_tokens, top_k = expert_indices.shape
    kept = (position < offsets[-1]).view(num_tokens, top_k, 1)
    rows = y_rows[position].view(num_tokens, top_k, -1).to(b2.dtype) + b2[expert_indices]
    return torch.where(kept, rows, torch.zeros_like(rows)), kept


def _moe_combine_impl(y_rows: Tensor, position: Tensor, offsets: Tensor, expert_indices: Tensor, weights: Tensor,
                      b2: Tensor, out_dtype: torch.dtype) -> Tensor:
    """(A, D) expert rows -> (T, D) in out_dtype: sum_k w_tk (y[position[t, k]] + b2_e) over kept slots.

    position: (T * K,) sorted row of each assignment. expert_indices: (T, K). weights: (T, K) float32.
    b2: (E, D) float32. Slots at rows past offsets[-1] (dropped by capacity) add nothing.
    """
    if use_triton(y_rows):
        from pimoe.cuda.ops.train_combine import combine_forward

        return combine_forward(y_rows, position, offsets, expert_indices, weights, b2, out_dtype)
    terms, _ = _combine_torch(y_rows, position, offsets, expert_indices, weights, b2)
    return (terms * weights.unsqueeze(-1)).sum(1).to(out_dtype)


moe_combine = torch.library.custom_op("pimoe::moe_combine", mutates_args=())(_moe_combine_impl)


@moe_combine.register_fake
def _(y_rows, position, offsets, expert_indices, weights, b2, out_dtype):
    return y_rows.new_empty(expert_indices.shape[0], y_rows.shape[1], dtype=out_dtype)


def _moe_combine_backward_impl(dy: Tensor, y_rows: Tensor, position: Tensor, offsets: Tensor,
                               expert_indices: Tensor, weights: Tensor, b2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `moe_combine` for dy (T, D): (d y_rows (A, D), rows past offsets[-1] unspecified; d weights (T, K)
    float32, 0 for dropped slots; d b2 (E, D) float32)."""
    if use_triton(y_rows):
        from pimoe.cuda.ops.train_combine import combine_backward

        dy_rows, dweights = combine_backward(dy, y_rows, position, offsets, expert_indices, weights, b2)
    else:
        terms, kept = _combine_torch(y_rows, position, offsets, expert_indices, weights, b2)
        dy32 = dy.to(b2.dtype).unsqueeze(1)                                   # (T, 1, D)
        dweights = (terms * dy32).sum(-1)
        scattered = torch.where(kept, dy32 * weights.unsqueeze(-1), 0.0).reshape(-1, dy.shape[1])
        dy_rows = torch.zeros_like(y_rows).index_copy_(0, position, scattered.to(y_rows.dtype))
    return dy_rows, dweights, segment_sums(dy_rows, offsets).to(b2.dtype)


moe_combine_backward = torch.library.custom_op("pimoe::moe_combine_backward",
                                               mutates_args=())(_moe_combine_backward_impl)


@moe_combine_backward.register_fake
def _(dy, y_rows, position, offsets, expert_indices, weights, b2):
    return torch.empty_like(y_rows), torch.empty_like(weights), torch.empty_like(b2)


def _combine_setup_context(ctx, inputs, output) -> None:
    y_rows, position, offsets, expert_indices, weights, b2, _ = inputs
    ctx.save_for_backward(y_rows, position, offsets, expert_indices, weights, b2)


def _combine_backward_through(backward):
    def combine_backward(ctx, dy):
        y_rows, position, offsets, expert_indices, weights, b2 = ctx.saved_tensors
        dy_rows, dweights, db2 = backward(dy.contiguous(), y_rows, position, offsets, expert_indices, weights, b2)
        return dy_rows, None, None, None, dweights, db2, None

    return combine_backward


moe_combine.register_autograd(_combine_backward_through(moe_combine_backward), setup_context=_combine_setup_context)


def _gather_rows_impl(x: Tensor, sorted_token: Tensor, position: Tensor, offsets: Tensor) -> Tensor:
    """(T, D) tokens -> (A, D) rows in expert order: row r is x[sorted_token[r]].

    Its backward sums each token's K rows (`position` (T * K,) gives them; rows past offsets[-1], dropped
    assignments, add nothing): one pass with no atomics, where autograd's indexing backward sorts the indices and
    accumulates.
    """
    return x[sorted_token]


gather_rows = torch.library.custom_op("pimoe::gather_rows", mutates_args=())(_gather_rows_impl)


@gather_rows.register_fake
def _(x, sorted_token, position, offsets):
    return x.new_empty(sorted_token.shape[0], x.shape[1])


def _gather_rows_backward_impl(dxs: Tensor, position: Tensor, offsets: Tensor, num_tokens: int) -> Tensor:
    """dx (T, D) in dxs' dtype: dx[t] = sum_k dxs[position[t * K + k]] over kept slots."""
    top_k = position.shape[0] // num_tokens
    if use_triton(dxs):
        from pimoe.cuda.ops.train_combine import sum_token_rows

        return sum_token_rows(dxs, position, offsets, num_tokens, top_k)
    kept = (position < offsets[-1]).view(num_tokens, top_k, 1)
    rows = dxs[position].view(num_tokens, top_k, -1)
    return torch.where(kept, rows, torch.zeros_like(rows)).sum(1)


gather_rows_backward = torch.library.custom_op("pimoe::gather_rows_backward",
                                               mutates_args=())(_gather_rows_backward_impl)


@gather_rows_backward.register_fake
def _(dxs, position, offsets, num_tokens):
    return dxs.new_empty(num_tokens, dxs.shape[1])


def _gather_setup_context(ctx, inputs, output) -> None:
    x, _, position, offsets = inputs
    ctx.save_for_backward(position, offsets)
    ctx.num_tokens = x.shape[0]


def _gather_backward_through(backward):
    def gather_backward(ctx, dxs):
        position, offsets = ctx.saved_tensors
        return backward(dxs.contiguous(), position, offsets, ctx.num_tokens), None, None, None

    return gather_backward


gather_rows.register_autograd(_gather_backward_through(gather_rows_backward), setup_context=_gather_setup_context)


def _eager_function(name: str, forward_impl, setup_context, backward) -> type[torch.autograd.Function]:
    """An autograd.Function with the op's forward, saved tensors and backward, calling the implementations directly.

    A torch.library custom op with registered autograd hops Python -> dispatcher -> Python twice per call and again
    for its backward op (pytorch/pytorch#139500, #176592); an eager training step of the layer makes six such calls.
    Eager calls take this Function (`differentiable`); torch.compile traces the op."""

    def forward(ctx, *inputs):
        output = forward_impl(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "backward": staticmethod(backward)})


_EAGER = {
    "expert_mlp": _eager_function("ExpertMLP", _expert_mlp_impl, _mlp_setup_context,
                                  _mlp_backward_through(_expert_mlp_backward_impl)),
    "moe_combine": _eager_function("MoECombine", _moe_combine_impl, _combine_setup_context,
                                   _combine_backward_through(_moe_combine_backward_impl)),
    "gather_rows": _eager_function("GatherRows", _gather_rows_impl, _gather_setup_context,
                                   _gather_backward_through(_gather_rows_backward_impl)),
}
_OPS = {"expert_mlp": expert_mlp, "moe_combine": moe_combine, "gather_rows": gather_rows}


def differentiable(name: str, *args):
    """Call the op `name` ("expert_mlp", "moe_combine", "gather_rows") with autograd: traced as the custom op under
    torch.compile, as the equivalent autograd.Function (no dispatcher round trips) in eager calls."""
    if torch.compiler.is_compiling():
        return _OPS[name](*args)
    return _EAGER[name].apply(*args)
