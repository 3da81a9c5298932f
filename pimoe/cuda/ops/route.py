"""The fused router: one pass over the tokens (logits, softmax, top-k, weights, entropy, loss partials) and a
one-program reduction to per-expert counts and the losses.

Legend: T tokens, D hidden size, E experts, EP = E + 1 rounded up to a power of two, K experts per token.

Nothing here reads a value back to the host: every grid size comes from T, D, E and K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pimoe.cuda.layout import next_pow2
from pimoe.cuda.ops.jit import enter_kernel
from pimoe.cuda.ops.launch_options import expert_buckets, pdl_options
from pimoe.cuda.tuning import active_tuning

__all__ = ["PendingFinalize", "finalize_router", "route_tokens", "router_finalize_kernel", "router_kernel"]


@triton.jit
def router_kernel(x_ptr, w_ptr, bias_ptr, logits_ptr, probs_ptr, idx_ptr, weights_ptr, dropped_ptr, entropy_ptr,
                  confidence_ptr, part_count_ptr, part_prob_ptr, part_z_ptr, positions_ptr, T, D, E, temperature,
                  K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, EP: tl.constexpr,
                  USE_BIAS: tl.constexpr, GATING: tl.constexpr, RENORM: tl.constexpr, NATIVE_DOT: tl.constexpr,
                  WRITE_POSITIONS: tl.constexpr = False, ROUND_LOGITS: tl.constexpr = False, PDL: tl.constexpr = False):
    """One block of BT tokens: float32 logits, softmax, top-k, combine weights, entropy, confidence, and this block's
    partial sums for the losses (assignments and probability mass per expert, sum of logsumexp^2). With
    WRITE_POSITIONS, each token's own index (the unmasked layer's token positions) too. With ROUND_LOGITS, the logits
    are rounded to x's dtype first, as a checkpoint whose router matmul runs in that dtype returns them."""
    enter_kernel(PDL)
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    if WRITE_POSITIONS:
        tl.store(positions_ptr + rows64, rows64, mask=row_ok)
    ecols = tl.arange(0, EP)
    e_ok = ecols < E
    acc = tl.zeros((BT, EP), dtype=tl.float32)
    for d0 in range(0, D, BD):
        dcols = d0 + tl.arange(0, BD)
        d_ok = dcols < D
        xa = tl.load(x_ptr + rows64[:, None] * D + dcols[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        wb = tl.load(w_ptr + ecols[None, :] * D + dcols[:, None], mask=e_ok[None, :] & d_ok[:, None], other=0.0)
        if NATIVE_DOT:
            # bf16/fp16 operands: their products are exact in float32 and the tensor cores accumulate in float32,
            # the same arithmetic as the reference's float32 product of the upcast values, in another order.
            acc = tl.dot(xa, wb, acc)
        else:
            # float32 operands: ieee, as the reference is a true float32 product (tf32 would move near-ties)
            acc = tl.dot(xa.to(tl.float32), wb.to(tl.float32), acc, input_precision="ieee")
    logits = acc
    if ROUND_LOGITS:
        logits = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
    neg_inf = float("-inf")
    scaled = tl.where(e_ok[None, :], logits / temperature, neg_inf)
    top = tl.max(scaled, axis=1)
    exps = tl.exp(scaled - top[:, None])
    total = tl.sum(exps, axis=1)
    probs = exps / total[:, None]
    log_probs = scaled - top[:, None] - tl.log(total)[:, None]
    entropy = -tl.sum(tl.where(e_ok[None, :], probs * log_probs, 0.0), axis=1)
    confidence = tl.max(probs, axis=1)
    raw = tl.where(e_ok[None, :], logits, neg_inf)
    raw_top = tl.max(raw, axis=1)
    lse = raw_top + tl.log(tl.sum(tl.exp(raw - raw_top[:, None]), axis=1))

    grid_offs = rows64[:, None] * E + ecols[None, :]
    grid_ok = row_ok[:, None] & e_ok[None, :]
    tl.store(logits_ptr + grid_offs, logits, mask=grid_ok)
    tl.store(probs_ptr + grid_offs, probs, mask=grid_ok)
    tl.store(entropy_ptr + rows, entropy, mask=row_ok)
    tl.store(confidence_ptr + rows, confidence, mask=row_ok)

    scores = probs
    if USE_BIAS:
        scores = probs + tl.load(bias_ptr + ecols, mask=e_ok, other=0.0)[None, :]
    scores = tl.where(e_ok[None, :], scores, neg_inf)
    # First pass: which experts win, and the mass they hold (for renormalisation).
    picked = scores
    chosen_total = tl.zeros((BT,), dtype=tl.float32)
    counts = tl.zeros((EP,), dtype=tl.int32)
    for _ in tl.static_range(K):
        best = tl.argmax(picked, axis=1)
        hit = ecols[None, :] == best[:, None]
        chosen_total += tl.sum(tl.where(hit, probs, 0.0), axis=1)
        counts += tl.sum((hit & row_ok[:, None]).to(tl.int32), axis=0)
        picked = tl.where(hit, neg_inf, picked)
    # Second pass: the same choices again (cheaper than a round trip through memory), stored slot by slot.
    picked = scores
    for k in tl.static_range(K):
        best = tl.argmax(picked, axis=1)
        hit = ecols[None, :] == best[:, None]
        chosen = tl.sum(tl.where(hit, probs, 0.0), axis=1)
        if GATING:
            if RENORM:
                chosen = chosen / chosen_total
        else:
            chosen = tl.full((BT,), 1.0 / K, tl.float32)
        tl.store(idx_ptr + rows64 * K + k, best.to(tl.int64), mask=row_ok)
        tl.store(weights_ptr + rows64 * K + k, chosen, mask=row_ok)
        tl.store(dropped_ptr + rows64 * K + k, tl.zeros((BT,), dtype=tl.int8), mask=row_ok)
        picked = tl.where(hit, neg_inf, picked)

    tl.store(part_count_ptr + pid * EP + ecols, counts)
    tl.store(part_prob_ptr + pid * EP + ecols, tl.sum(tl.where(row_ok[:, None], probs, 0.0), axis=0))
    tl.store(part_z_ptr + pid, tl.sum(tl.where(row_ok, lse * lse, 0.0), axis=0))


@triton.jit
def finalize_router(part_count_ptr, part_prob_ptr, part_z_ptr, selected_ptr, tokens_ptr, losses_ptr, P, T, E,
                    lb_weight, z_weight, EP: tl.constexpr, PB: tl.constexpr, USE_AUX: tl.constexpr,
                    WRITE_TOKENS: tl.constexpr):
    """The router blocks' partials reduced to per-expert counts and the three losses, by one program.

    losses: [load_balance (Switch eq. 4), z (ST-MoE eq. 5), router_loss, supervised (0 here)].
    """
    ecols = tl.arange(0, EP)
    e_ok = ecols < E
    counts = tl.zeros((EP,), dtype=tl.int32)
    mass = tl.zeros((EP,), dtype=tl.float32)
    zsum = tl.zeros((PB,), dtype=tl.float32)
    for p0 in range(0, P, PB):
        prow = p0 + tl.arange(0, PB)
        p_ok = prow < P
        counts += tl.sum(tl.load(part_count_ptr + prow[:, None] * EP + ecols[None, :], mask=p_ok[:, None], other=0),
                         axis=0)
        mass += tl.sum(tl.load(part_prob_ptr + prow[:, None] * EP + ecols[None, :], mask=p_ok[:, None], other=0.0),
                       axis=0)
        zsum += tl.load(part_z_ptr + prow, mask=p_ok, other=0.0)
    tl.store(selected_ptr + ecols, counts.to(tl.int64), mask=e_ok)
    if WRITE_TOKENS:
        tl.store(tokens_ptr + ecols, counts.to(tl.int64), mask=e_ok)
    num_assignments = tl.sum(counts, axis=0).to(tl.float32)
    share = counts.to(tl.float32) / num_assignments
    mean_prob = mass / T
    lb = lb_weight * E * tl.sum(tl.where(e_ok, share * mean_prob, 0.0), axis=0)
    z = z_weight * tl.sum(zsum, axis=0) / T
    total = z
    if USE_AUX:
        total = z + lb
    tl.store(losses_ptr + 0, lb)
    tl.store(losses_ptr + 1, z)
    tl.store(losses_ptr + 2, total)
    tl.store(losses_ptr + 3, 0.0)


@triton.jit
def router_finalize_kernel(part_count_ptr, part_prob_ptr, part_z_ptr, selected_ptr, tokens_ptr, losses_ptr, P, T, E,
                           lb_weight, z_weight, EP: tl.constexpr, PB: tl.constexpr, USE_AUX: tl.constexpr,
                           WRITE_TOKENS: tl.constexpr,
                           PDL: tl.constexpr = False):
    """`finalize_router` as a launch of its own."""
    enter_kernel(PDL)
    finalize_router(part_count_ptr, part_prob_ptr, part_z_ptr, selected_ptr, tokens_ptr, losses_ptr, P, T, E,
                    lb_weight, z_weight, EP, PB, USE_AUX, WRITE_TOKENS)


@dataclass
class PendingFinalize:
    """The router's reduction (`finalize_router`) not launched yet: the counting sort's place pass, which reads the
    same per-block counts, runs it in its first program (`ops.sort.sort_by_expert`: one launch fewer), or `run`
    launches it alone. Until one of them has, the routing's counts and losses are unwritten."""

    part_count: torch.Tensor
    part_prob: torch.Tensor
    part_z: torch.Tensor
    selected: torch.Tensor
    tokens: torch.Tensor
    losses: torch.Tensor
    num_tokens: int
    num_experts: int
    lb_weight: float
    z_weight: float
    use_aux: bool
    write_tokens: bool
    done: bool = False

    def arguments(self) -> tuple:
        """The pointer and scalar arguments `finalize_router` takes, in order."""
        return (self.part_count, self.part_prob, self.part_z, self.selected, self.tokens, self.losses,
                self.part_count.shape[0], self.num_tokens, self.num_experts, self.lb_weight, self.z_weight)

    def constants(self) -> dict:
        """Its compile-time constants (PB: one program reduces every partial: at 1024 partials a 128-row loop took
        12 µs on an H100, one pass fewer)."""
        return dict(EP=self.part_count.shape[1], PB=min(1024, max(16, next_pow2(self.part_count.shape[0]))),
                    USE_AUX=self.use_aux, WRITE_TOKENS=self.write_tokens)

    def run(self) -> None:
        if not self.done:
            router_finalize_kernel[(1,)](*self.arguments(), **self.constants(), num_warps=8,
                                         **pdl_options(self.losses.device))
            self.done = True


def route_tokens(x: torch.Tensor, gate_weight: torch.Tensor, selection_bias: torch.Tensor | None, temperature: float,
                 top_k: int, gating: bool, renormalize: bool, lb_weight: float, z_weight: float, use_aux: bool,
                 write_tokens: bool, write_positions: bool = False, round_logits: bool = False,
                 defer_finalize: bool = False) -> dict[str, torch.Tensor]:
    """The fused router: two launches. Returns the RoutingInfo tensors by field name (losses as 0-dim views), with
    `write_positions` also "token_positions" = arange(T), written by the router kernel (no launch of its own), and
    "block_counts": (counts, block), each program's (EP,) choice counts over its `block` assignments
    (`ops.sort.attach_router_counts`).
    `round_logits`: round the float32 logits to x's dtype (a checkpoint router whose matmul runs in that dtype).
    `defer_finalize`: the reduction is not launched; "pending_finalize" (`PendingFinalize`) says how, and the counts
    and losses stay unwritten until it runs."""
    num_tokens, hidden = x.shape
    num_experts = gate_weight.shape[0]
    device = x.device
    buckets = expert_buckets(num_experts)
    block_t = 32 if num_tokens <= 4096 else 64
    programs = triton.cdiv(num_tokens, block_t)
    f32 = dict(dtype=torch.float32, device=device)
    out = {
        "logits": torch.empty(num_tokens, num_experts, **f32),
        "probs": torch.empty(num_tokens, num_experts, **f32),
        "expert_indices": torch.empty(num_tokens, top_k, dtype=torch.int64, device=device),
        "expert_weights": torch.empty(num_tokens, top_k, **f32),
        "dropped": torch.empty(num_tokens, top_k, dtype=torch.bool, device=device),
        "entropy": torch.empty(num_tokens, **f32),
        "confidence": torch.empty(num_tokens, **f32),
        "selected_per_expert": torch.empty(num_experts, dtype=torch.int64, device=device),
        "tokens_per_expert": torch.empty(num_experts, dtype=torch.int64, device=device),
    }
    part_count = torch.empty(programs, buckets, dtype=torch.int32, device=device)
    part_prob = torch.empty(programs, buckets, **f32)
    part_z = torch.empty(programs, **f32)
    losses = torch.empty(4, **f32)
    if write_positions:
        out["token_positions"] = torch.empty(num_tokens, dtype=torch.int64, device=device)
    bias = selection_bias if selection_bias is not None else out["confidence"]
    router_kernel[(programs,)](
        x, gate_weight, bias, out["logits"], out["probs"], out["expert_indices"], out["expert_weights"],
        out["dropped"].view(torch.int8), out["entropy"], out["confidence"], part_count, part_prob, part_z,
        out.get("token_positions", part_z), num_tokens, hidden, num_experts, float(temperature),
        K=top_k, BT=block_t, BD=min(128, max(16, next_pow2(hidden))), EP=buckets,
        USE_BIAS=selection_bias is not None, GATING=gating, RENORM=renormalize, WRITE_POSITIONS=write_positions,
        ROUND_LOGITS=round_logits and x.dtype != torch.float32,
        NATIVE_DOT=active_tuning().router_native_dot and x.dtype in (torch.bfloat16, torch.float16)
        and gate_weight.dtype == x.dtype, **pdl_options(device))
    pending = PendingFinalize(part_count, part_prob, part_z, out["selected_per_expert"], out["tokens_per_expert"], losses,
                              num_tokens, num_experts, float(lb_weight), float(z_weight), use_aux, write_tokens)
    if defer_finalize:
        out["pending_finalize"] = pending
    else:
        pending.run()
    out.update(load_balance_loss=losses[0], z_loss=losses[1], router_loss=losses[2], supervised_loss=losses[3])
    # each program's choice counts are the counting sort's histogram over runs of block_t * top_k assignments
    out["block_counts"] = (part_count, block_t * top_k)
    return out
