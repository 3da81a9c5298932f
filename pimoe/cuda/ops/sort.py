"""Counting sort of the (T, K) assignments into expert order (`ExpertLayout`): a histogram pass and a place pass.

Legend: T tokens, E experts, EP = E + 1 rounded up to a power of two (bucket E holds dropped assignments), K experts
per token, A = T * K assignments.

The per-expert counts stay on the device; the grid comes from A alone, so there is no host sync. Where the fused
router already counted each block's choices (`RouterCounts`, attached to its RoutingInfo), the place pass reads those
counts and the histogram launch is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import ExpertLayout, next_pow2
from pimoe.cuda.ops.jit import enter_kernel
from pimoe.cuda.ops.launch_options import expert_buckets, pdl_options
from pimoe.cuda.ops.route import finalize_router
from pimoe.cuda.tuning import active_tuning
from pimoe.layer.routing import RoutingInfo

__all__ = ["RouterCounts", "attach_router_counts", "histogram_kernel", "place_kernel", "sort_by_expert"]

# 512 assignments x 32 buckets: the largest one-hot tile the 8-expert layer was measured with
_ONEHOT_CELLS = 16384


@triton.jit
def _keys(idx_ptr, dropped_ptr, offs, valid, E, HAS_DROP: tl.constexpr):
    key = tl.load(idx_ptr + offs, mask=valid, other=0).to(tl.int32)
    if HAS_DROP:
        dropped = tl.load(dropped_ptr + offs, mask=valid, other=0)
        key = tl.where(dropped != 0, E, key)
    return key


@triton.jit
def histogram_kernel(idx_ptr, dropped_ptr, hist_ptr, A, E, BLOCK: tl.constexpr, EP: tl.constexpr,
                     HAS_DROP: tl.constexpr,
                     PDL: tl.constexpr = False):
    """Counting sort, pass 1: assignments per expert bucket in each block of BLOCK assignments."""
    enter_kernel(PDL)
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < A
    key = _keys(idx_ptr, dropped_ptr, offs, valid, E, HAS_DROP)
    onehot = (key[:, None] == tl.arange(0, EP)[None, :]) & valid[:, None]
    tl.store(hist_ptr + pid * EP + tl.arange(0, EP), tl.sum(onehot.to(tl.int32), axis=0))


@triton.jit
def place_kernel(idx_ptr, dropped_ptr, weight_ptr, hist_ptr, sorted_token_ptr, sorted_expert_ptr, sorted_weight_ptr,
                 position_ptr, counts_ptr, offsets_ptr, A, E, K, num_blocks,
                 part_prob_ptr, part_z_ptr, selected_ptr, tokens_ptr, losses_ptr, T, lb_weight, z_weight,
                 BLOCK: tl.constexpr, EP: tl.constexpr, HB: tl.constexpr, HAS_DROP: tl.constexpr,
                 FINALIZE: tl.constexpr = False, PB: tl.constexpr = 16, USE_AUX: tl.constexpr = False,
                 WRITE_TOKENS: tl.constexpr = False, PDL: tl.constexpr = False):
    """Counting sort, pass 2: each assignment's row in expert order (stable: token order inside an expert).

    Writes the sorted token / expert / weight arrays, each assignment's row (`position`), the kept count per expert
    and their running sums (`offsets`, the int32 group ends torch._grouped_mm takes). With FINALIZE, hist is the fused
    router's per-block counts and the first program also runs the router's reduction (`route.finalize_router`) over
    them and the router's other partials.
    """
    enter_kernel(PDL)
    if FINALIZE:
        if tl.program_id(0) == 0:
            finalize_router(hist_ptr, part_prob_ptr, part_z_ptr, selected_ptr, tokens_ptr, losses_ptr, num_blocks, T,
                            E, lb_weight, z_weight, EP, PB, USE_AUX, WRITE_TOKENS)
    pid = tl.program_id(0)
    ecols = tl.arange(0, EP)
    total = tl.zeros((EP,), dtype=tl.int32)
    before = tl.zeros((EP,), dtype=tl.int32)
    for b0 in range(0, num_blocks, HB):
        blocks = b0 + tl.arange(0, HB)
        h = tl.load(hist_ptr + blocks[:, None] * EP + ecols[None, :], mask=(blocks < num_blocks)[:, None], other=0)
        total += tl.sum(h, axis=0)
        before += tl.sum(tl.where((blocks < pid)[:, None], h, 0), axis=0)
    base = tl.cumsum(total, axis=0) - total + before  # (EP,) first row of this block's assignments per bucket
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < A
    key = _keys(idx_ptr, dropped_ptr, offs, valid, E, HAS_DROP)
    onehot = ((key[:, None] == ecols[None, :]) & valid[:, None]).to(tl.int32)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1
    row = tl.sum(onehot * base[None, :], axis=1) + rank
    tl.store(position_ptr + offs, row, mask=valid)
    tl.store(sorted_token_ptr + row, offs // K, mask=valid)
    tl.store(sorted_expert_ptr + row, key, mask=valid)
    tl.store(sorted_weight_ptr + row, tl.load(weight_ptr + offs, mask=valid, other=0.0), mask=valid)
    if pid == 0:
        tl.store(counts_ptr + ecols, total, mask=ecols < E)
        tl.store(offsets_ptr + ecols, tl.cumsum(total, axis=0), mask=ecols < E)


@dataclass(frozen=True)
class RouterCounts:
    """The fused router's per-block choice counts, the counting sort's first pass already done.

    counts: (blocks, EP) int32, the assignments of each run of `block` consecutive assignments per expert bucket.
    indices, dropped: the RoutingInfo tensors they count, held to tell whether the routing still holds them.
    versions: their autograd version counters when counted (None for inference tensors, which keep none).
    """

    counts: torch.Tensor
    block: int
    indices: torch.Tensor
    dropped: torch.Tensor
    versions: tuple[int, int] | None


def _versions(indices: torch.Tensor, dropped: torch.Tensor) -> tuple[int, int] | None:
    if indices.is_inference() or dropped.is_inference():
        return None
    return indices._version, dropped._version


def attach_router_counts(routing: RoutingInfo, counts: torch.Tensor, block: int) -> RoutingInfo:
    """Marks `routing` (just built from the router kernel's outputs, nothing dropped) with its per-block counts."""
    routing._router_counts = RouterCounts(counts, block, routing.expert_indices, routing.dropped,
                                          _versions(routing.expert_indices, routing.dropped))
    return routing


def _router_counts(routing: RoutingInfo, buckets: int, max_rows: int) -> RouterCounts | None:
    """The attached counts where they still describe `routing`: the same index and drop tensors, unchanged since
    (version counters; inference tensors have none, and an in-place edit of one between the router and the sort
    is the caller's to avoid: replace the tensor instead), a power-of-two block the place pass can hold, at most
    `max_rows` assignments (every place program reads every block's counts). Else None: the histogram pass runs."""
    hint = getattr(routing, "_router_counts", None)
    if hint is None or hint.indices is not routing.expert_indices or hint.dropped is not routing.dropped:
        return None
    if hint.versions is not None and hint.versions != _versions(routing.expert_indices, routing.dropped):
        return None
    block, assignments = hint.block, routing.expert_indices.numel()
    if block & (block - 1) or block * buckets > _ONEHOT_CELLS or assignments > max_rows:
        return None
    if hint.counts.shape != (triton.cdiv(assignments, block), buckets):
        return None
    return hint


def sort_by_expert(routing: RoutingInfo, counted_rows: int | None = None) -> ExpertLayout:
    """Counting sort of the (T, K) assignments into expert order: two launches, or one where the router's own
    per-block counts come with `routing` (up to `counted_rows` assignments; default `Tuning.router_counts_rows`)."""
    idx = routing.expert_indices.contiguous()
    dropped = routing.dropped.contiguous().view(torch.uint8)
    weights = routing.expert_weights.contiguous().float()
    num_experts = routing.num_experts
    assignments = idx.numel()
    buckets = expert_buckets(num_experts)
    device = idx.device
    pdl = pdl_options(device)
    if counted_rows is None:
        counted_rows = active_tuning().router_counts_rows
    counted = _router_counts(routing, buckets, counted_rows)
    if counted is not None:
        block, hist = counted.block, counted.counts
        num_blocks = hist.shape[0]
    else:
        # 1024 x EP one-hots spill registers at 4 warps; small batches take small blocks so more SMs share the
        # cumsums. NOTE: the place pass's cumsum over a BLOCK x EP one-hot lives in shared memory: 512 x 128 int32
        # (64 experts, OLMoE) asked for 256 KB on an H200 (limit 227 KB), so BLOCK x EP stays within _ONEHOT_CELLS.
        block = max(16, min(128 if assignments <= 8192 else 512, next_pow2(assignments), _ONEHOT_CELLS // buckets))
        num_blocks = triton.cdiv(assignments, block)
        hist = torch.empty(num_blocks, buckets, dtype=torch.int32, device=device)
        histogram_kernel[(num_blocks,)](idx, dropped, hist, assignments, num_experts, BLOCK=block, EP=buckets,
                                        HAS_DROP=True, **pdl)
    layout = ExpertLayout(
        sorted_token=torch.empty(assignments, dtype=torch.int32, device=device),
        sorted_expert=torch.empty(assignments, dtype=torch.int32, device=device),
        sorted_weight=torch.empty(assignments, dtype=torch.float32, device=device),
        position=torch.empty(assignments, dtype=torch.int32, device=device),
        counts=torch.empty(num_experts, dtype=torch.int32, device=device),
        offsets=torch.empty(num_experts, dtype=torch.int32, device=device),
    )
    pending = getattr(routing, "_pending_finalize", None)
    if counted is not None and pending is not None and not pending.done and pending.part_count is hist:
        # the router's reduction rides in this launch's first program (route.PendingFinalize)
        (_, part_prob, part_z, selected, tokens, losses, _, num_tokens, _, lb_weight, z_weight) = pending.arguments()
        finalize = dict(FINALIZE=True, **{k: v for k, v in pending.constants().items() if k != "EP"})
        pending.done = True
    else:
        part_prob = part_z = selected = tokens = losses = hist  # unread without FINALIZE
        num_tokens, lb_weight, z_weight, finalize = 0, 0.0, 0.0, {}
    place_kernel[(num_blocks,)](
        idx, dropped, weights, hist, layout.sorted_token, layout.sorted_expert, layout.sorted_weight, layout.position,
        layout.counts, layout.offsets, assignments, num_experts, idx.shape[1], num_blocks,
        part_prob, part_z, selected, tokens, losses, num_tokens, lb_weight, z_weight,
        BLOCK=block, EP=buckets, HB=max(1, min(128, next_pow2(num_blocks), _ONEHOT_CELLS // buckets)),
        HAS_DROP=True, num_warps=8, **finalize, **pdl)
    return layout
