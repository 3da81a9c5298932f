"""Triton kernels for the glue around the expert GEMMs: routing, counting sort, row statistics, gather+norm,
activation and combine. Imported only when CUDA and Triton are present (or under TRITON_INTERPRET=1 in tests).

Legend: T tokens, D hidden size, E experts, EP = E + 1 rounded up to a power of two (bucket E holds dropped
assignments), K experts per token, A = T * K assignments, N1 padded up-projection width, F padded hidden width.

Nothing here reads a value back to the host: every size that decides a grid is T, K, D or E, known from shapes, and
the per-expert counts stay on the device; kernels that need them load them themselves.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "activate_kernel",
    "apply_activation",
    "combine_kernel",
    "enter_kernel",
    "gather_norm_kernel",
    "histogram_kernel",
    "place_kernel",
    "release_dependents",
    "router_finalize_kernel",
    "router_kernel",
    "row_stats_kernel",
    "wait_for_prior",
]

_SQRT_HALF = tl.constexpr(0.7071067811865476)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def release_dependents(PDL: tl.constexpr):
    """Programmatic dependent launch (PDL, Hopper and newer): let the next kernel's programs be scheduled now, so
    their launch and prologue overlap this kernel's tail."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wait_for_prior(PDL: tl.constexpr):
    """Under PDL, block until the previous kernel has finished and its writes are visible. A kernel launched with
    PDL must call this before it reads or writes memory another kernel touches."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def enter_kernel(PDL: tl.constexpr):
    """The start of a PDL-launched kernel with nothing to do before its inputs are ready."""
    release_dependents(PDL)
    wait_for_prior(PDL)


@triton.jit
def _tanh(x):
    # tanh through exp: libdevice tanh is not portable to the interpreter. exp(-2|x|) never overflows.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _gelu_erf(x):
    """0.5 x (1 + erf(x / sqrt 2)) = x Phi(x), with Phi from erfc(|x| / sqrt 2) by the Chebyshev fit of Numerical
    Recipes' `erfcc` (W. H. Press et al.; fractional error below 1.2e-7 everywhere): one reciprocal, nine FMAs, one
    exp, instead of libdevice's erff. The GELU is a third of the fused up GEMM's time (docs/performance.md).
    Against float64 over [-12, 12] (the same formula in float32 torch ops): max abs error 3.8e-7, torch's own
    float32 GELU 1.2e-6; tests/cuda check the compiled kernel's error.
    """
    z = tl.abs(x) * _SQRT_HALF
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -0.82215223 + t * 0.17087277
    poly = 1.48851587 + t * poly
    poly = -1.13520398 + t * poly
    poly = 0.27886807 + t * poly
    poly = -0.18628806 + t * poly
    poly = 0.09678418 + t * poly
    poly = 0.37409196 + t * poly
    poly = 1.00002368 + t * poly
    poly = -1.26551223 + t * poly
    erfc = t * tl.exp(poly - z * z)
    return x * tl.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


@triton.jit
def apply_activation(x, code):
    """x float32, code a scalar from packing.ACT_CODES (gelu 0, gelu_tanh 1, relu 2, silu 3, tanh 4)."""
    y = x
    if code == 0:
        y = _gelu_erf(x)
    elif code == 1:
        y = 0.5 * x * (1.0 + _tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    elif code == 2:
        y = tl.maximum(x, 0.0)
    elif code == 3:
        y = x / (1.0 + tl.exp(-x))
    elif code == 4:
        y = _tanh(x)
    return y


@triton.jit
def _activation_per_element(x, code):
    """The same, with a code per element (rows of several experts in one block): every branch is evaluated."""
    gelu = _gelu_erf(x)
    gelu_tanh = 0.5 * x * (1.0 + _tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    y = tl.where(code == 0, gelu, gelu_tanh)
    y = tl.where(code == 2, tl.maximum(x, 0.0), y)
    y = tl.where(code == 3, x / (1.0 + tl.exp(-x)), y)
    return tl.where(code == 4, _tanh(x), y)


@triton.jit
def router_kernel(x_ptr, w_ptr, bias_ptr, logits_ptr, probs_ptr, idx_ptr, weights_ptr, dropped_ptr, entropy_ptr,
                  confidence_ptr, part_count_ptr, part_prob_ptr, part_z_ptr, positions_ptr, T, D, E, temperature,
                  K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, EP: tl.constexpr,
                  USE_BIAS: tl.constexpr, GATING: tl.constexpr, RENORM: tl.constexpr, NATIVE_DOT: tl.constexpr,
                  WRITE_POSITIONS: tl.constexpr = False, PDL: tl.constexpr = False):
    """One block of BT tokens: float32 logits, softmax, top-k, combine weights, entropy, confidence, and this block's
    partial sums for the losses (assignments and probability mass per expert, sum of logsumexp^2). With
    WRITE_POSITIONS, each token's own index (the unmasked layer's token positions) too."""
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
def router_finalize_kernel(part_count_ptr, part_prob_ptr, part_z_ptr, selected_ptr, tokens_ptr, losses_ptr, P, T, E,
                           lb_weight, z_weight, EP: tl.constexpr, PB: tl.constexpr, USE_AUX: tl.constexpr,
                           WRITE_TOKENS: tl.constexpr,
                           PDL: tl.constexpr = False):
    """One program: reduce the router blocks' partials to per-expert counts and the three losses.

    losses: [load_balance (Switch eq. 4), z (ST-MoE eq. 5), router_loss, supervised (0 here)].
    """
    enter_kernel(PDL)
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
                 position_ptr, counts_ptr, offsets_ptr, A, E, K, num_blocks, BLOCK: tl.constexpr, EP: tl.constexpr,
                 HB: tl.constexpr, HAS_DROP: tl.constexpr,
                 PDL: tl.constexpr = False):
    """Counting sort, pass 2: each assignment's row in expert order (stable: token order inside an expert).

    Writes the sorted token / expert / weight arrays, each assignment's row (`position`), the kept count per expert
    and their running sums (`offsets`, the int32 group ends torch._grouped_mm takes).
    """
    enter_kernel(PDL)
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


@triton.jit
def row_stats_kernel(x_ptr, stats_ptr, T, D, BT: tl.constexpr, BD: tl.constexpr,
                     PDL: tl.constexpr = False):
    """(T, 2) float32 mean and variance of each row, for LayerNorm and RMSNorm experts.

    Sums are taken around each row's first element: E[x^2] - E[x]^2 without a shift loses the variance of rows whose
    mean is large against their spread.
    """
    enter_kernel(PDL)
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    shift = tl.load(x_ptr + rows64 * D, mask=row_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros((BT,), dtype=tl.float32)
    s2 = tl.zeros((BT,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        dcols = d0 + tl.arange(0, BD)
        ok = row_ok[:, None] & (dcols < D)[None, :]
        v = tl.load(x_ptr + rows64[:, None] * D + dcols[None, :], mask=ok, other=0.0).to(tl.float32)
        v = tl.where(ok, v - shift[:, None], 0.0)
        s1 += tl.sum(v, axis=1)
        s2 += tl.sum(v * v, axis=1)
    mean_shifted = s1 / D
    var = tl.maximum(s2 / D - mean_shifted * mean_shifted, 0.0)
    tl.store(stats_ptr + rows64 * 2, shift + mean_shifted, mask=row_ok)
    tl.store(stats_ptr + rows64 * 2 + 1, var, mask=row_ok)


@triton.jit
def _kept_total(counts_ptr, E, EP: tl.constexpr):
    ecols = tl.arange(0, EP)
    return tl.sum(tl.load(counts_ptr + ecols, mask=ecols < E, other=0), axis=0)


@triton.jit
def gather_norm_kernel(x_ptr, sorted_token_ptr, sorted_expert_ptr, norm_ptr, nw_ptr, nb_ptr, eps_ptr,
                       out_ptr, A, D, E, BR: tl.constexpr, DP: tl.constexpr, ANY_NORM: tl.constexpr,
                       PDL: tl.constexpr = False):
    """out[r] = norm_e(x[sorted_token[r]]) for every sorted row r, each row normalised by its own expert's norm."""
    enter_kernel(PDL)
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    # every row below A: dropped rows (past the kept ones) hold real token ids too and are never read, and a mask
    # on the kept count would make every load wait for it
    row_ok = rows < A
    token = tl.load(sorted_token_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    cols = tl.arange(0, DP)
    ok = row_ok[:, None] & (cols < D)[None, :]
    v = tl.load(x_ptr + token[:, None] * D + cols[None, :], mask=ok, other=0.0)
    if ANY_NORM:
        expert = tl.minimum(tl.load(sorted_expert_ptr + rows, mask=row_ok, other=0), E - 1)  # dropped rows: E
        code = tl.load(norm_ptr + expert, mask=row_ok, other=0)
        eps = tl.load(eps_ptr + expert, mask=row_ok, other=1.0)
        v32 = v.to(tl.float32)
        mean = tl.sum(v32, axis=1) / D
        centred = tl.where(ok, v32 - mean[:, None], 0.0)
        var = tl.sum(centred * centred, axis=1) / D
        mean_square = tl.sum(v32 * v32, axis=1) / D
        ln = centred * tl.rsqrt(var + eps)[:, None]
        rms = v32 * tl.rsqrt(mean_square + eps)[:, None]
        normed = tl.where(code[:, None] == 1, ln, tl.where(code[:, None] == 2, rms, v32))
        gamma = tl.load(nw_ptr + expert[:, None] * D + cols[None, :], mask=ok, other=1.0)
        beta = tl.load(nb_ptr + expert[:, None] * D + cols[None, :], mask=ok, other=0.0)
        v = (normed * gamma + beta).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], v, mask=ok)


@triton.jit
def activate_kernel(p_ptr, sorted_expert_ptr, b1_ptr, widths_ptr, gated_ptr, act_ptr, h_ptr, A, N1, F, E,
                    BR: tl.constexpr, BC: tl.constexpr, ANY_GATED: tl.constexpr, ONE_ACT: tl.constexpr,
                    PDL: tl.constexpr = False):
    """h[r, j] = act_e(p[r, j] + b1_e[j]) (times the up half p[r, F_e + j] + b1_e[F_e + j] when gated), 0 for j >= F_e.

    A pass over (A, F) elements that must run at memory bandwidth, which needs many loads in flight, which needs few
    registers per thread. ONE_ACT >= 0 (every expert has that activation and none is gated) compiles one activation
    and nothing else. Otherwise a block of rows takes its experts one at a time with each one's scalar activation
    code, so registers hold one activation's temporaries, never all five: the version that evaluated every
    activation per element ran at 1.6 TB/s (640-760 µs at 65,536 tokens on an H100, torch's GELU over the same
    bytes 375 µs).
    Every row below A is computed (rows past the kept ones come out as garbage no later kernel reads), so nothing
    the loads of p wait for is loaded first; no mask depends on a loaded value except a gated expert's up half.
    Padded units need no mask: their weights and bias are zero, so p + b1 is exactly 0 there and every activation
    maps 0 to 0. Consecutive programs take consecutive column blocks of the same rows: the grid walks memory in order.
    """
    enter_kernel(PDL)
    pid = tl.program_id(0)
    col_blocks = tl.cdiv(F, BC)
    r0 = (pid // col_blocks) * BR
    rows = r0 + tl.arange(0, BR)
    row_ok = rows < A
    rows64 = rows.to(tl.int64)
    cols = (pid % col_blocks) * BC + tl.arange(0, BC)
    col_ok = cols < F
    ok = row_ok[:, None] & col_ok[None, :]
    pre = tl.load(p_ptr + rows64[:, None] * N1 + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    # dropped rows carry expert E: clamp (their output is never read)
    first = tl.minimum(tl.load(sorted_expert_ptr + r0), E - 1)
    last = tl.minimum(tl.load(sorted_expert_ptr + tl.minimum(r0 + BR, A) - 1), E - 1)
    if ONE_ACT >= 0:
        if first == last:  # most blocks: one bias row for the whole block
            pre += tl.load(b1_ptr + first * N1 + cols, mask=col_ok, other=0.0)[None, :]
        else:
            expert = tl.minimum(tl.load(sorted_expert_ptr + rows, mask=row_ok, other=0), E - 1)
            pre += tl.load(b1_ptr + expert[:, None] * N1 + cols[None, :], mask=ok, other=0.0)
        h = apply_activation(pre, ONE_ACT)
    else:
        expert = tl.minimum(tl.load(sorted_expert_ptr + rows, mask=row_ok, other=0), E - 1)
        h = tl.zeros((BR, BC), dtype=tl.float32)
        for e in range(first, last + 1):
            mine = expert == e
            z = pre + tl.load(b1_ptr + e * N1 + cols, mask=col_ok, other=0.0)[None, :]
            he = apply_activation(z, tl.load(act_ptr + e))
            if ANY_GATED:
                if tl.load(gated_ptr + e) != 0:
                    width = tl.load(widths_ptr + e)
                    in_width = cols < width
                    up_cols = width + cols
                    up = tl.load(p_ptr + rows64[:, None] * N1 + up_cols[None, :],
                                 mask=ok & mine[:, None] & in_width[None, :], other=0.0).to(tl.float32)
                    he = he * (up + tl.load(b1_ptr + e * N1 + up_cols, mask=in_width, other=0.0)[None, :])
            h = tl.where(mine[:, None], he, h)
    tl.store(h_ptr + rows64[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=ok)


@triton.jit
def combine_kernel(y_ptr, position_ptr, counts_ptr, idx_ptr, weight_ptr, b2_ptr, res_ptr, out_ptr, T, D, E,
                   K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, EP: tl.constexpr,
                   BIAS_WEIGHT: tl.constexpr, RESIDUAL: tl.constexpr,
                   PDL: tl.constexpr = False):
    """out[t] = sum_k y[position[t, k]] over kept slots; with BIAS_WEIGHT, sum_k w_tk * (y + b2_e); with RESIDUAL,
    res[t] + that sum (the layer's residual in the same pass: one read of x instead of a separate add kernel)."""
    enter_kernel(PDL)
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    kept = _kept_total(counts_ptr, E, EP)
    rows = pid_t * BT + tl.arange(0, BT)
    row_ok = rows < T
    rows64 = rows.to(tl.int64)
    cols = pid_d * BD + tl.arange(0, BD)
    col_ok = cols < D
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for k in tl.static_range(K):
        pos = tl.load(position_ptr + rows64 * K + k, mask=row_ok, other=0)
        ok = row_ok & (pos < kept)
        ok2 = ok[:, None] & col_ok[None, :]
        y = tl.load(y_ptr + pos.to(tl.int64)[:, None] * D + cols[None, :], mask=ok2, other=0.0).to(tl.float32)
        if BIAS_WEIGHT:
            expert = tl.load(idx_ptr + rows64 * K + k, mask=ok, other=0)
            weight = tl.load(weight_ptr + rows64 * K + k, mask=ok, other=0.0)
            y = (y + tl.load(b2_ptr + expert[:, None] * D + cols[None, :], mask=ok2, other=0.0)) * weight[:, None]
        acc += y
    if RESIDUAL:
        acc += tl.load(res_ptr + rows64[:, None] * D + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
