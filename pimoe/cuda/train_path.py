"""The differentiable fast path: sort, gather, per-expert norm, the grouped expert MLP, weighted combine.

Legend: T routed tokens, D hidden size, E experts, K experts per token, A = T * K sorted assignment rows, N1 padded up
width, F padded intermediate width.

Serves every call the inference kernels cannot: autograd (training) and `torch.compile` tracing. The heavy parts are
the torch custom ops of `train_ops` (gather_rows, expert_mlp, moe_combine, each with its own backward op; eager calls
run the same implementations as autograd.Functions, `train_ops.differentiable`); the rest is
plain torch. Nothing reads back to the host and no shape depends on the routing, so the same code runs under
`torch.compile(fullgraph=True)` and inside a plain `torch.cuda.graph` capture on bf16 CUDA. The sort is the inference
path's Triton counting sort in eager CUDA calls and the stable argsort (the same arrays) under torch.compile.

Gradients: the routing weights (T, K) enter `moe_combine`, whose backward returns theirs, so the router's
probabilities learn through autograd; the padded weight stacks are built from the experts' parameters with
differentiable pad + stack (and a cast to the autocast dtype under autocast), so each expert's up / down weights and
biases get their own slice of the stacked gradient. On CUDA with Triton the tokens reach their rows gathered,
normalised by each row's expert and cast to the GEMM dtype in one pass each way (`train_norms.gather_normalised_rows`);
elsewhere and under torch.compile through the `gather_rows` op and the norms in torch. The stacks are
rebuilt on every call (one copy of the expert weights) rather than cached: a cache keyed on the parameters' versions
would cut the autograd link the gradients need.

Not covered, with the reason logged once per reason: live dropout (the op has no dropout mask), experts that are not
`PiMoEExpert`, and norms or activations the pack does not know. Those calls take the sorted dispatch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from pimoe.cuda import train_ops
from pimoe.cuda.availability import triton_available
from pimoe.cuda.class_combine import combine_two_buffers
from pimoe.cuda.grouped import sort_by_expert_torch
from pimoe.cuda.packing import ACT_CODES, _norm_code, padded_width
from pimoe.cuda.train_norms import eps_by_code, fold_norm_affine, gather_normalised_rows, normalise_rows
from pimoe.cuda.train_ops import differentiable
from pimoe.cuda.width_classes import WidthClasses, class_layout, plan_width_classes
from pimoe.layer.experts import PiMoEExpert
from pimoe.layer.routing import RoutingInfo

__all__ = ["TrainPack", "needs_autograd", "train_dispatch", "train_pack", "train_path_reason"]

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def needs_autograd(x: torch.Tensor, experts: Sequence[nn.Module]) -> bool:
    """Whether this call records a graph: grad mode on and the input or an expert parameter requires grad."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for e in experts for p in e.parameters())


def train_path_reason(experts: Sequence[nn.Module]) -> str | None:
    """Why the differentiable fast path cannot run these experts, or None when it can."""
    for index, expert in enumerate(experts):
        if not isinstance(expert, PiMoEExpert):
            return f"expert {index} is a {type(expert).__name__}, not a PiMoEExpert"
        if expert.activation not in ACT_CODES:
            return f"expert {index} has activation {expert.activation!r}, which the grouped path does not know"
        try:
            _norm_code(expert.norm)
        except ValueError as error:
            return f"expert {index}: {error}"
        if expert.training and expert.dropout.p > 0:
            return f"expert {index} has live dropout p={expert.dropout.p} (the grouped op has no dropout mask)"
    return None


def log_fallback(reason: str) -> None:
    """Say once per reason that a call left the fast path for the sorted dispatch."""
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        logger.warning("pimoe fast path: using the sorted dispatch because %s", reason)


@dataclass
class _Meta:
    """The per-expert constants of a pack, on one device: they depend only on the architecture, not on weights."""

    widths: torch.Tensor
    gated: torch.Tensor
    act: torch.Tensor
    norm: torch.Tensor
    eps: torch.Tensor
    act_codes: list[int]
    any_gated: bool
    any_norm: bool
    full: bool  # every expert as wide as the widest and ungated: no padded columns anywhere
    aligned: bool  # every expert's width a multiple of 16 (vector accesses at width edges in the activation kernel)
    up_widths: tuple[int, ...]
    key: tuple
    eps_by_code: dict[int, float] | None = None  # the one eps per norm kind present (train_norms.eps_by_code)
    # a split into width classes (`width_classes`), with each class's own constants and the experts' new numbers
    classes: WidthClasses | None = None
    narrow: _Meta | None = None
    wide: _Meta | None = None
    rank: torch.Tensor | None = None  # (E,) int64: each expert's place in classes.order
    virtual: torch.Tensor | None = None  # (E,) int64: each expert's group in the class layout (the gap group skipped)


# The cache lives on the experts module itself, not in a module-level WeakKeyDictionary: torch.compile guards on what
# a traced lookup reads, and iterating a WeakKeyDictionary while the collector drops another model's entry raised
# "dictionary changed size during iteration" inside dynamo.
_META_ATTR = "_pimoe_train_meta"


def _meta(experts: Sequence[nn.Module], device: torch.device, plan: bool = True) -> _Meta:
    key = (device, tuple((e.activation, e.width, e.gated, _norm_code(e.norm), float(getattr(e.norm, "eps", 0.0)))
                         for e in experts))
    cacheable = isinstance(experts, nn.Module)
    cached = getattr(experts, _META_ATTR, None) if cacheable else None
    if cached is not None and cached.key == key:
        return cached

    def ints(values) -> torch.Tensor:
        # NOTE: a host-to-device copy: built once per experts module, before any graph capture (warm-up calls).
        return torch.tensor(values, dtype=torch.int32).to(device)

    act = [ACT_CODES[e.activation] for e in experts]
    norms = [_norm_code(e.norm) for e in experts]
    meta = _Meta(
        widths=ints([e.width for e in experts]), gated=ints([int(e.gated) for e in experts]), act=ints(act),
        norm=ints(norms), eps=torch.tensor([float(getattr(e.norm, "eps", 0.0)) for e in experts]).to(device),
        act_codes=sorted(set(act)), any_gated=any(e.gated for e in experts), any_norm=any(norms),
        full=not any(e.gated for e in experts) and len({e.width for e in experts}) == 1
        and padded_width(experts[0].width, device) == experts[0].width,
        aligned=all(e.width % 16 == 0 for e in experts),
        up_widths=tuple(e.up.out_features for e in experts), key=key,
        eps_by_code=eps_by_code(norms, [float(getattr(e.norm, "eps", 0.0)) for e in experts]))
    if plan and (classes := plan_width_classes(list(meta.up_widths), [e.width for e in experts])) is not None:
        narrow = classes.order[:classes.narrow]
        rank = torch.empty(len(experts), dtype=torch.int64)
        rank[list(classes.order)] = torch.arange(len(experts))
        meta.classes, meta.rank = classes, rank.to(device)
        meta.virtual = (rank + (rank >= len(narrow)).long()).to(device)
        meta.narrow = _meta([experts[e] for e in narrow], device, plan=False)
        meta.wide = _meta([experts[e] for e in classes.order[classes.narrow:]], device, plan=False)
    if cacheable:
        setattr(experts, _META_ATTR, meta)
    return meta


@dataclass
class TrainPack:
    """Padded stacks that keep the autograd link to each expert's parameters. w1 (E, N1, D), w2 (E, D, F) in the
    compute dtype; b1 (E, N1), b2 (E, D); w1 and b1 with each expert's norm affine folded in (train_norms), so the rows
    go in normalised without it; eps (E,) float32; norm (E,) int32."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    norm: torch.Tensor
    eps: torch.Tensor
    meta: _Meta


def _stack(tensors: list[torch.Tensor | None], sizes: list[int], size: int, fill: float, dtype: torch.dtype,
           device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """Stack (E, ...) from per-expert tensors, each zero-padded on its last dim from sizes[e] to `size`; a missing one
    (None) is `fill`. Padded in the parameters' own dtype and cast once after the stack: each op here is a launch
    (and an autograd node) on every training call, so a cast per expert would cost E launches instead of one."""
    present = [t for t in tensors if t is not None]
    if len(present) == len(tensors) and len(set(sizes)) == 1 and sizes[0] == size:
        return torch.stack(tensors).to(dtype)
    own = present[0].dtype if present else dtype
    parts = [torch.full(shape, fill, dtype=own, device=device) if t is None
             else t.to(own) if n == size else F.pad(t.to(own), (0, size - n))
             for t, n in zip(tensors, sizes, strict=True)]
    return torch.stack(parts).to(dtype)


def _folded_up(expert: PiMoEExpert, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The expert's up weight and bias with its norm's affine folded in (computed in acc, returned in the parameters'
    dtype, which the stacks then cast), or its own parameters when the norm has no affine."""
    weight, bias = expert.up.weight, expert.up.bias
    norm_weight, norm_bias = getattr(expert.norm, "weight", None), getattr(expert.norm, "bias", None)
    if norm_weight is None and norm_bias is None:
        return weight, bias
    folded, folded_bias = fold_norm_affine(weight.to(acc), None if bias is None else bias.to(acc), norm_weight,
                                           norm_bias)
    return folded.to(weight.dtype), None if folded_bias is None else folded_bias.to(weight.dtype)


def train_pack(experts: Sequence[nn.Module], dtype: torch.dtype, device: torch.device,
               meta: _Meta | None = None) -> TrainPack:
    """The experts' parameters as differentiable zero-padded stacks: weights in `dtype`, the rest float32. meta: these
    experts' constants when the caller has them (a width class's)."""
    meta = meta if meta is not None else _meta(experts, device)
    acc = torch.promote_types(dtype, torch.float32)
    up_widths = list(meta.up_widths)
    widths = [e.width for e in experts]
    max_up, max_width = padded_width(max(up_widths), device), padded_width(max(widths), device)
    hidden = experts[0].hidden_size
    # Each normed expert's affine is folded into its own up projection before the stack: only those experts' weights
    # go through the fold's products, not the whole (E, N1, D) stack (two of the GPU preset's eight).
    ups = [_folded_up(e, acc) for e in experts]
    # (E, N1, D): pad the output rows of each up weight, i.e. dim 0 of (N1_e, D), through its transpose
    if len(set(up_widths)) == 1 and up_widths[0] == max_up:
        w1 = torch.stack([w for w, _ in ups])
    else:
        w1 = torch.stack([w if n == max_up else F.pad(w, (0, 0, 0, max_up - n))
                          for (w, _), n in zip(ups, up_widths, strict=True)])
    w2 = _stack([e.down.weight for e in experts], widths, max_width, 0.0, dtype, device, (hidden, max_width))
    b1 = _stack([b for _, b in ups], up_widths, max_up, 0.0, acc, device, (max_up,))
    b2 = _stack([e.down.bias for e in experts], [hidden] * len(experts), hidden, 0.0, acc, device, (hidden,))
    return TrainPack(w1=w1.to(dtype), b1=b1, w2=w2, b2=b2, norm=meta.norm, eps=meta.eps.to(acc), meta=meta)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The GEMM dtype: the autocast dtype when autocast is on for x's device, else x's own."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _sort(routing: RoutingInfo, x: torch.Tensor):
    """The expert-order layout: the inference path's two-launch Triton counting sort in eager CUDA calls, the stable
    argsort (same arrays) where torch.compile traces or Triton is missing."""
    if not torch.compiler.is_compiling() and x.is_cuda and triton_available():
        from pimoe.cuda.ops.sort import sort_by_expert

        return sort_by_expert(routing)
    return sort_by_expert_torch(routing)


def _rows_in_one_pass(x: torch.Tensor) -> bool:
    """Whether gather, norm and cast run as one Triton pass each way (`train_norms.gather_normalised_rows`)."""
    # is_compiling first: dynamo must not trace triton_available's importlib lookup (a graph break under fullgraph)
    if torch.compiler.is_compiling() or not train_ops.use_triton(x):
        return False
    from pimoe.cuda.ops.token_rows import MAX_HIDDEN

    return x.shape[-1] <= MAX_HIDDEN and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def train_dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module],
                   residual: bool = False) -> torch.Tensor:
    """Dispatcher interface, differentiable: (T, D) tokens -> (T, D) weighted sum of expert outputs (plus x with
    `residual`), in x's dtype. Under autocast the GEMMs run in the autocast dtype."""
    dtype = compute_dtype(x)
    meta = _meta(experts, x.device)
    if meta.classes is not None and _rows_in_one_pass(x):
        mixed = _dispatch_by_width_class(x, routing, experts, meta, dtype)
        return x + mixed if residual else mixed
    pack = train_pack(experts, dtype, x.device, meta)
    mixed = _dispatch_pack(x, routing, pack, len(experts), dtype)
    return x + mixed if residual else mixed


def stacked_train_dispatch(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module], w1: torch.Tensor,
                           w2: torch.Tensor) -> torch.Tensor:
    """`train_dispatch` over weights already stacked: w1 (E, N1, D) and w2 (E, D, F), differentiable tensors (a
    transformers experts module's gate_up_proj and down_proj), so gradients reach them rather than per-expert copies.
    `experts` (one width, no biases, no norms) give the constants: activation, gating, widths. ValueError when the
    stacks are not the shape the pack would have."""
    dtype = compute_dtype(x)
    meta = _meta(experts, x.device, plan=False)
    num_experts, hidden = len(experts), experts[0].hidden_size
    up_width, width = padded_width(max(meta.up_widths), x.device), padded_width(max(e.width for e in experts), x.device)
    if tuple(w1.shape) != (num_experts, up_width, hidden) or tuple(w2.shape) != (num_experts, hidden, width):
        raise ValueError(f"stacks {tuple(w1.shape)} and {tuple(w2.shape)} are not the pack's "
                         f"{(num_experts, up_width, hidden)} and {(num_experts, hidden, width)}")
    if any(e.up.bias is not None or e.down.bias is not None or _norm_code(e.norm) for e in experts):
        raise ValueError("stacked experts carry no biases and no norms")
    acc = torch.promote_types(dtype, torch.float32)
    pack = TrainPack(w1=w1.to(dtype), b1=torch.zeros(num_experts, up_width, dtype=acc, device=x.device),
                     w2=w2.to(dtype), b2=torch.zeros(num_experts, hidden, dtype=acc, device=x.device),
                     norm=meta.norm, eps=meta.eps.to(acc), meta=meta)
    return _dispatch_pack(x, routing, pack, num_experts, dtype)


def _dispatch_pack(x: torch.Tensor, routing: RoutingInfo, pack: TrainPack, num_experts: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Sort, gather (with the experts' norms), the expert MLP and the weighted combine over one pack: (T, D) in x's
    dtype."""
    meta = pack.meta
    layout = _sort(routing, x)
    row_expert = layout.sorted_expert.clamp(max=num_experts - 1)  # dropped rows: any expert, masked in the op
    # the experts' norm affine is inside pack.w1 / pack.b1 (train_norms.fold_norm_affine): rows go in without it
    if _rows_in_one_pass(x):
        xs = gather_normalised_rows(x, layout.position, layout.offsets, routing.expert_indices, pack.norm, pack.eps,
                                    dtype, meta.any_norm)
    else:
        xs = differentiable("gather_rows", x, layout.sorted_token, layout.position, layout.offsets)  # (A, D)
        if meta.any_norm:
            xs = normalise_rows(xs, row_expert, pack.norm, meta.eps_by_code, pack.eps, out_dtype=dtype)
    out, _, _ = differentiable("expert_mlp", xs.to(dtype).contiguous(), row_expert, layout.offsets, pack.w1, pack.b1,
                               pack.w2, meta.widths, meta.gated, meta.act, meta.act_codes, meta.any_gated,
                               meta.full, meta.aligned)  # (A, D)
    # back in x's dtype, as the sorted dispatch returns it: under autocast a float32 residual stream stays float32
    return differentiable("moe_combine", out, layout.position, layout.offsets, routing.expert_indices,
                           routing.expert_weights.to(pack.b2.dtype).contiguous(), pack.b2, x.dtype)  # (T, D)


def _class_mlp(xs: torch.Tensor, row_expert: torch.Tensor, offsets: torch.Tensor, pack: TrainPack) -> torch.Tensor:
    meta = pack.meta
    out, _, _ = differentiable("expert_mlp", xs, row_expert, offsets, pack.w1, pack.b1, pack.w2, meta.widths,
                               meta.gated, meta.act, meta.act_codes, meta.any_gated, meta.full, meta.aligned)
    return out


def _dispatch_by_width_class(x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module], meta: _Meta,
                             dtype: torch.dtype) -> torch.Tensor:
    """`train_dispatch` for a pack split into width classes (`pimoe.cuda.width_classes`): one expert MLP per class,
    each over its own row buffer and its own padded stacks, then one combine reading both buffers in place."""
    classes = meta.classes
    narrow_ids, wide_ids = classes.order[:classes.narrow], classes.order[classes.narrow:]
    narrow_pack = train_pack([experts[e] for e in narrow_ids], dtype, x.device, meta.narrow)
    wide_pack = train_pack([experts[e] for e in wide_ids], dtype, x.device, meta.wide)
    ranked = meta.rank[routing.expert_indices]
    layout = _sort(replace(routing, expert_indices=ranked), x)
    split = class_layout(layout.position, layout.offsets, layout.sorted_expert, ranked.reshape(-1), classes.narrow)
    acc = torch.promote_types(dtype, torch.float32)
    narrow_xs, wide_xs = gather_normalised_rows(x, split.position, split.offsets, routing.expert_indices, meta.norm,
                                                meta.eps.to(acc), dtype, meta.any_norm, two_buffers=True)
    narrow_rows = _class_mlp(narrow_xs, split.narrow_expert, split.narrow_offsets, narrow_pack)
    wide_rows = _class_mlp(wide_xs, split.wide_expert, split.wide_offsets, wide_pack)
    gap = narrow_pack.b2.new_zeros(1, narrow_pack.b2.shape[1])  # the gap group's bias: no assignment reads it
    b2 = torch.cat([narrow_pack.b2, gap, wide_pack.b2])
    return combine_two_buffers(narrow_rows, wide_rows, split.position, split.offsets,
                               meta.virtual[routing.expert_indices], routing.expert_weights, b2, classes.narrow,
                               x.dtype)

