"""The training path's Triton kernels in Triton's interpreter, and training against inference.

Runs only with TRITON_INTERPRET=1 set before Triton is imported (see test_kernels_interpreted.py):
    TRITON_INTERPRET=1 python -m pytest tests/cuda/test_train_interpreted.py
Checks the activation and combine kernels of `pimoe.cuda.ops.train_activate` / `train_combine` against the plain-torch versions in `train_ops`, the
layer's gradients through those kernels against the sorted dispatch, and that the differentiable path's forward equals
the inference kernels' (a model trained through one serves the same function through the other).
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)
pytest.importorskip("triton")

from drawn_layers import assert_gradients_match, build, draw, grads_of, relative  # noqa: E402

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig  # noqa: E402
from pimoe.cuda.backends import fused_up_forward, triton_forward  # noqa: E402
from pimoe.cuda.ops.sort import sort_by_expert  # noqa: E402
from pimoe.cuda.packing import pack_experts  # noqa: E402
from pimoe.cuda.train_path import train_dispatch  # noqa: E402
from pimoe.cuda.tuning import GemmConfig, Tuning  # noqa: E402
from pimoe.layer.expert_types import known_expert_types  # noqa: E402

# Mixed widths, gating, activations and norms in one pack, and every built-in type alone.
MIXED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")
BUILT_IN_TYPES = list(known_expert_types())
TILES = Tuning(small_rows=1 << 30, up_small=GemmConfig(16, 16, 16, 4, 1), down_small=GemmConfig(16, 16, 16, 4, 1),
               up_act=GemmConfig(16, 16, 16, 4, 1), up_act_gated=GemmConfig(16, 16, 16, 4, 1), up_act_tma=False,
               mixed_width_down="library", triton_down_rows=0, down_tma=False)


@pytest.mark.parametrize("expert_types", [MIXED] + [(name,) * 4 for name in BUILT_IN_TYPES],
                         ids=["mixed", *BUILT_IN_TYPES])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_training_forward_equals_the_inference_kernels(expert_types, capacity_factor) -> None:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=len(expert_types), expert_types=expert_types,
                         router=RouterConfig(top_k=2, capacity_factor=capacity_factor),
                         expert=ExpertConfig(intermediate_size=32))  # every width a multiple of 16
    system = PiMoESystem(config)
    with torch.no_grad():  # norms away from their identity start: training folds the affine, inference applies it
        for expert in system.experts:
            for name in ("weight", "bias"):
                if (param := getattr(expert.norm, name, None)) is not None:
                    param.copy_(torch.randn_like(param) * 0.5 + (1.0 if name == "weight" else 0.0))
    x = torch.randn(45, 32, requires_grad=True)
    routing = system.router(x)
    trained = train_dispatch(x, routing, system.experts)
    assert trained.requires_grad
    with torch.no_grad():
        packed = pack_experts(system.experts, torch.float32, x.device)
        plain = x.detach()
        for name, served in {"triton": triton_forward(plain, routing, packed, TILES),
                             "fused_up": fused_up_forward(plain, routing, packed, TILES)}.items():
            torch.testing.assert_close(served, trained.detach(), atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("expert_types", [MIXED, ("language",) * 4, ("creative",) * 3], ids=["mixed", "uniform",
                                                                                           "creative"])
def test_inference_kernels_on_packs_padded_past_the_widest_expert(expert_types, monkeypatch) -> None:
    """CUDA pads a pack's widest expert to a multiple of 8 (`packing.padded_width`); padded here on the CPU too (and
    8 past it), the kernels still compute each expert at its own width (50, 75, 100: none a multiple of 16)."""
    from pimoe.cuda import packing

    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=len(expert_types), expert_types=expert_types,
                                     router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=50)))
    x = torch.randn(45, 32)
    with torch.no_grad():
        routing = system.router(x)
        unpadded = pack_experts(system.experts, torch.float32, x.device, force=True)
        monkeypatch.setattr(packing, "padded_width", lambda width, device: -(-width // 8) * 8 + 8)
        packed = pack_experts(system.experts, torch.float32, x.device, force=True)
        assert packed.max_width > unpadded.max_width and packed.w1.shape[1] > unpadded.w1.shape[1]
        reference = triton_forward(x, routing, unpadded, TILES)
        for name, served in {"triton": triton_forward(x, routing, packed, TILES),
                             "fused_up": fused_up_forward(x, routing, packed, TILES)}.items():
            torch.testing.assert_close(served, reference, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def _system(expert_types, capacity_factor=None, seed=0) -> PiMoESystem:
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=32, num_experts=len(expert_types), expert_types=expert_types,
                         router=RouterConfig(top_k=2, capacity_factor=capacity_factor),
                         expert=ExpertConfig(intermediate_size=48))
    return PiMoESystem(config)


ALL_TYPES = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical", "language")
PACKS = [ALL_TYPES, ("language",) * 4, ("mathematical",) * 4, ("creative", "logical", "computation", "language")]


@pytest.mark.parametrize("tiles", [None, (4, 16, 1)], ids=["default-tiles", "small-tiles"])
@pytest.mark.parametrize("expert_types", PACKS, ids=["typed", "uniform", "gated", "mixed"])
def test_activation_kernel_matches_torch_forward_and_backward(expert_types, tiles, monkeypatch) -> None:
    """small-tiles: column blocks narrower than the widths, so blocks inside every row's width (row-only masks),
    blocks across a width edge (per-element masks) and, in packs of mixed widths, blocks past every row's width (only
    zeros to write) all occur. The outputs start as NaN: an element the kernel forgets to write fails."""
    from pimoe.cuda.grouped import sort_by_expert_torch
    from pimoe.cuda.ops import train_activate
    from pimoe.cuda.train_ops import _act_torch
    from pimoe.cuda.train_path import train_pack

    monkeypatch.setattr(train_activate, "uninitialised", lambda *shape, **kw: torch.full(shape, float("nan"), **kw))
    system = _system(expert_types, capacity_factor=0.7)
    x = torch.randn(40, 32)
    with torch.no_grad():
        routing = system.router(x)
        layout = sort_by_expert_torch(routing)
        pack = train_pack(system.experts, torch.float32, x.device)
        meta = pack.meta
        rows = layout.position.shape[0]
        pre = torch.randn(rows, pack.w1.shape[1])
        pre[int(layout.offsets[-1]):] = float("nan")  # what the GEMM leaves past the groups
        dh = torch.randn(rows, pack.w2.shape[2])
        dh[int(layout.offsets[-1]):] = float("nan")
        row_expert = layout.sorted_expert.clamp(max=len(expert_types) - 1)
        common = (row_expert, meta.widths, meta.gated, meta.act, layout.offsets)
        want_h, want_dpre = _act_torch(pre, pack.b1, *common, pack.w2.shape[2], meta.act_codes, meta.any_gated, dh)
        got_h = train_activate.act_forward(pre, pack.b1, *common, pack.w2.shape[2], meta.act_codes, meta.any_gated,
                                           tiles=tiles, aligned=meta.aligned)
        got_dpre, got_h2 = train_activate.act_backward(pre, pack.b1, dh, *common, meta.act_codes, meta.any_gated,
                                                      meta.full, tiles=tiles, aligned=meta.aligned)
    kept = int(layout.offsets[-1])
    assert kept < rows  # capacity drops some assignments: their rows sort past the last group
    torch.testing.assert_close(got_h[:kept], want_h[:kept], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got_h2[:kept], want_h[:kept], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got_dpre[:kept], want_dpre[:kept], atol=2e-6, rtol=1e-5)
    # row blocks wholly past the last group are read by nothing, so the kernel leaves them as they were
    block_rows = (tiles or train_activate.TILES)[0]
    first_dead = -(-kept // block_rows) * block_rows
    for out in (got_h, got_h2, got_dpre):
        assert out[first_dead:].isnan().all()


def test_combine_kernels_match_torch() -> None:
    from pimoe.cuda.grouped import sort_by_expert_torch
    from pimoe.cuda.ops import train_combine
    from pimoe.cuda.train_ops import _combine_torch

    system = _system(ALL_TYPES, capacity_factor=0.6)
    x = torch.randn(40, 32)
    with torch.no_grad():
        routing = system.router(x)
    layout = sort_by_expert_torch(routing)
    assert routing.dropped.any()
    kept = int(layout.offsets[-1])
    y_rows = torch.randn(layout.position.shape[0], 32)
    y_rows[kept:] = float("nan")
    b2 = torch.randn(8, 32)
    weights = routing.expert_weights.detach()
    terms, _ = _combine_torch(y_rows, layout.position, layout.offsets, routing.expert_indices, weights, b2)
    got = train_combine.combine_forward(y_rows, layout.position, layout.offsets, routing.expert_indices, weights, b2,
                                        torch.float32)
    torch.testing.assert_close(got, (terms * weights.unsqueeze(-1)).sum(1), atol=1e-5, rtol=1e-5)
    dy = torch.randn(40, 32)
    dy_rows, dweights = train_combine.combine_backward(dy, y_rows, layout.position, layout.offsets,
                                                       routing.expert_indices, weights, b2)
    torch.testing.assert_close(dweights, (terms * dy.unsqueeze(1)).sum(-1), atol=1e-5, rtol=1e-5)
    kept_slots = (layout.position < kept).view(40, 2)
    want_rows = (dy.unsqueeze(1) * weights.unsqueeze(-1))[kept_slots]
    torch.testing.assert_close(dy_rows[layout.position.view(40, 2)[kept_slots]], want_rows)


@pytest.mark.parametrize("split_rows", [4096, 4], ids=["whole-experts", "split-weight-grads"])
@pytest.mark.parametrize("expert_types", PACKS, ids=["typed", "uniform", "gated", "mixed"])
def test_layer_gradients_through_the_kernels_equal_the_sorted_dispatch(expert_types, split_rows, monkeypatch) -> None:
    from pimoe.cuda import train_ops, train_path

    # the CUDA code path, interpreted: Triton elementwise kernels and the Triton counting sort (int32 layout)
    monkeypatch.setattr(train_ops, "use_triton", lambda t: True)
    monkeypatch.setattr(train_ops, "SPLIT_K_ROWS", split_rows)
    monkeypatch.setattr(train_path, "_sort", lambda routing, x: sort_by_expert(routing))
    _assert_kernel_gradients(_system(expert_types, capacity_factor=0.8), torch.randn(2, 20, 32))


@pytest.mark.parametrize("expert_types", PACKS, ids=["typed", "uniform", "gated", "mixed"])
def test_float32_on_cuda_trains_through_the_grouped_rows_kernels(expert_types, monkeypatch) -> None:
    """torch._grouped_mm takes bf16 only on CUDA: a float32 layer's expert GEMMs and weight gradients go to
    `ops.grouped_rows` (no host read of the group ends) instead of a loop over experts. The library is refused here as
    it is on CUDA; every grouped product must come from the kernels, and the gradients equal the sorted dispatch's."""
    from pimoe.cuda import train_ops, train_path
    from pimoe.cuda.ops import grouped_rows
    from pimoe.cuda.tuning import tuning_overrides

    monkeypatch.setattr(train_ops, "use_triton", lambda t: True)
    monkeypatch.setattr(train_path, "_sort", lambda routing, x: sort_by_expert(routing))
    monkeypatch.setattr(train_ops, "_library_takes", lambda a, b: False)
    monkeypatch.setattr(train_ops, "_takes_when_padded", lambda a, b: False)
    calls = {"rows_matmul": 0, "rows_weight_grad": 0}
    for name in calls:
        kernel = getattr(grouped_rows, name)

        def counted(*args, kernel=kernel, name=name, **kwargs):
            calls[name] += 1
            return kernel(*args, **kwargs)

        monkeypatch.setattr(grouped_rows, name, counted)

    @contextlib.contextmanager
    def kernels_without_host_reads():
        with tuning_overrides(grouped_rows_kernels=True), monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "tolist", _no_host_reads)
            yield

    _assert_kernel_gradients(_system(expert_types, capacity_factor=0.8, seed=5), torch.randn(2, 20, 32),
                             fast_context=kernels_without_host_reads)
    # forward: up and down; backward: two input gradients and two weight gradients (per width class)
    assert calls["rows_matmul"] >= 4 and calls["rows_weight_grad"] >= 2, calls
    assert calls["rows_matmul"] == 2 * calls["rows_weight_grad"], calls


def _no_host_reads(tensor):
    raise AssertionError("the fast path read a tensor on the host (a grouped GEMM's group ends?)")


@pytest.mark.parametrize("expert_types", PACKS, ids=["typed", "uniform", "gated", "mixed"])
def test_stacks_padded_past_the_widest_expert_through_the_kernels(expert_types, monkeypatch) -> None:
    """CUDA pads the stacks' widths to a multiple of 8 (`packing.padded_width`); padding past the widest expert
    here puts zero columns in every pack (a uniform one is then no longer "full"), masked by the kernels."""
    from pimoe.cuda import train_ops, train_path

    monkeypatch.setattr(train_ops, "use_triton", lambda t: True)
    monkeypatch.setattr(train_path, "_sort", lambda routing, x: sort_by_expert(routing))
    monkeypatch.setattr(train_path, "padded_width", lambda width, device: -(-width // 8) * 8 + 8)
    _assert_kernel_gradients(_system(expert_types, capacity_factor=0.8, seed=3), torch.randn(2, 20, 32))


def _assert_kernel_gradients(system: PiMoESystem, x: torch.Tensor, fast_context=contextlib.nullcontext) -> None:
    results = {}
    for dispatch in ("sorted", "cuda_fast"):
        system.zero_grad(set_to_none=True)
        system.dispatch = dispatch
        x_req = x.clone().requires_grad_()
        with fast_context() if dispatch == "cuda_fast" else contextlib.nullcontext():
            out, routing = system(x_req, return_routing_info=True)
            ((out * torch.linspace(-1, 1, 32)).sum() + routing.router_loss).backward()
        results[dispatch] = (out.detach(), x_req.grad, {n: p.grad for n, p in system.named_parameters()})
    (out_ref, dx_ref, grads_ref), (out, dx, grads) = results["sorted"], results["cuda_fast"]
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)
    for name, ref in grads_ref.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("seed", [seed for seed in range(60) if draw(seed)["hidden"] % 16 == 0][:16])
def test_drawn_layers_gradients_through_the_kernels_equal_the_sorted_dispatch(seed: int, monkeypatch) -> None:
    """`drawn_layers.draw`'s configurations (mixed types, 1-33 experts, top-1 to 4, odd widths, capacity), shrunk
    to what the interpreter runs in seconds."""
    from pimoe.cuda import train_ops, train_path

    monkeypatch.setattr(train_ops, "use_triton", lambda t: True)
    monkeypatch.setattr(train_path, "_sort", lambda routing, x: sort_by_expert(routing))
    config = draw(seed)
    hidden = min(config["hidden"], 48)
    config.update(hidden=hidden, width=min(config["width"], 100), shape=(1, min(config["shape"][1], 24), hidden))
    system = build(config, residual=True)
    x = torch.randn(config["shape"])
    expected, got = grads_of(system, x, "sorted"), grads_of(system, x, "cuda_fast")
    assert relative(got[0], expected[0]) < 1e-5 and relative(got[1], expected[1]) < 1e-5, config
    assert_gradients_match(got[2], expected[2], 1e-5, config)


@pytest.mark.parametrize("hidden", [20, 100])
def test_hidden_no_multiple_of_sixteen_trains_through_the_kernels(hidden: int, monkeypatch) -> None:
    """The inference kernels take hidden sizes that are multiples of 16; training takes any: its kernels mask the
    odd columns (and on CUDA its grouped GEMMs run on zero-padded copies)."""
    from pimoe.cuda import train_ops, train_path

    monkeypatch.setattr(train_ops, "use_triton", lambda t: True)
    monkeypatch.setattr(train_path, "_sort", lambda routing, x: sort_by_expert(routing))
    config = draw(3)
    config.update(hidden=hidden, width=min(config["width"], 100), shape=(1, 16, hidden))
    system = build(config, residual=True)
    x = torch.randn(config["shape"])
    expected, got = grads_of(system, x, "sorted"), grads_of(system, x, "cuda_fast")
    assert relative(got[0], expected[0]) < 1e-5 and relative(got[1], expected[1]) < 1e-5, config
    assert_gradients_match(got[2], expected[2], 1e-5, config)


@pytest.mark.parametrize("tiles", [(8, 16, 4), (8, 32, 4)], ids=["row-masks-only", "column-masks"])
def test_activation_kernel_with_the_forwards_hidden_kept(tiles) -> None:
    from pimoe.cuda.grouped import sort_by_expert_torch
    from pimoe.cuda.ops import train_activate
    from pimoe.cuda.train_ops import _act_torch
    from pimoe.cuda.train_path import train_pack

    # intermediate 48: a multiple of 16 (masks by row alone, vector loads) but not of 32 (per-element masks)
    system = _system(("language",) * 4, capacity_factor=0.7)
    x = torch.randn(40, 32)
    with torch.no_grad():
        layout = sort_by_expert_torch(system.router(x))
        pack = train_pack(system.experts, torch.float32, x.device)
        meta = pack.meta
        assert meta.full
        rows, width = layout.position.shape[0], pack.w2.shape[2]
        kept_rows = int(layout.offsets[-1])
        assert kept_rows < rows  # some assignments dropped: their rows sort past the last group
        pre, dh = torch.randn(rows, width), torch.randn(rows, width)
        pre[kept_rows:] = dh[kept_rows:] = float("nan")
        common = (layout.sorted_expert.clamp(max=3), meta.widths, meta.gated, meta.act, layout.offsets)
        want_h, want_dpre = _act_torch(pre, pack.b1, *common, width, meta.act_codes, False, dh)
        got_h = train_activate.act_forward(pre, pack.b1, *common, width, meta.act_codes, False, tiles=tiles, full=True)
        kept_h = got_h.clone()
        got_dpre, got_h2 = train_activate.act_backward(pre, pack.b1, dh, *common, meta.act_codes, False, True,
                                                      tiles=tiles, hidden=kept_h)
    torch.testing.assert_close(got_h[:kept_rows], want_h[:kept_rows], atol=2e-6, rtol=1e-5)
    assert got_h2 is kept_h and torch.equal(kept_h.view(torch.int32), got_h.view(torch.int32))  # read, not rewritten
    torch.testing.assert_close(got_dpre[:kept_rows], want_dpre[:kept_rows], atol=2e-6, rtol=1e-5)


def test_zero_fill_kernels_zero_only_empty_groups_and_rows_past_the_groups() -> None:
    from pimoe.cuda.ops.zero_fill import zero_empty_groups_, zero_rows_past_groups_

    offsets = torch.tensor([3, 3, 7, 7, 9], dtype=torch.int32)  # experts 1 and 3 have no rows; rows 9.. are dropped
    grads = torch.randn(5, 6, 4)
    want = grads.clone()
    want[[1, 3]] = 0
    torch.testing.assert_close(zero_empty_groups_(grads, offsets), want, atol=0, rtol=0)
    rows = torch.randn(12, 5)
    want_rows = rows.clone()
    want_rows[9:] = 0
    torch.testing.assert_close(zero_rows_past_groups_(rows, offsets), want_rows, atol=0, rtol=0)
    every_row_kept = torch.randn(9, 5)
    torch.testing.assert_close(zero_rows_past_groups_(every_row_kept.clone(), offsets), every_row_kept, atol=0, rtol=0)


@pytest.mark.parametrize("hidden", [32, 48])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_row_norm_kernels_match_the_torch_norms_forward_and_backward(hidden, out_dtype) -> None:
    from pimoe.cuda.ops.row_norm import row_norm_backward, row_norm_forward
    from pimoe.cuda.packing import NORM_CODES
    from pimoe.cuda.train_norms import _normalise_rows_torch

    torch.manual_seed(hidden)
    norm = torch.tensor([NORM_CODES["none"], NORM_CODES["layernorm"], NORM_CODES["rmsnorm"], NORM_CODES["layernorm"]],
                        dtype=torch.int32)
    eps = torch.tensor([0.0, 1e-5, 1e-6, 0.5])
    row_expert = torch.randint(0, 4, (37,), dtype=torch.int32)
    xs = (torch.randn(37, hidden) * 3 + 1).requires_grad_()
    want = _normalise_rows_torch(xs, row_expert, norm, None, eps)
    upstream = torch.randn_like(want)
    (want * upstream).sum().backward()
    got, shift, scale = row_norm_forward(xs.detach(), row_expert, norm, eps, out_dtype)
    dx = row_norm_backward(upstream.to(out_dtype), xs.detach(), row_expert, norm, eps, shift, scale)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if out_dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.float(), want.detach(), **tolerance)
    torch.testing.assert_close(dx, xs.grad, **tolerance)  # bf16: the upstream gradient was rounded to bf16


@pytest.mark.parametrize("rows, hidden", [(70, 96), (130, 512), (1, 8)])
def test_layer_norm_kernels_match_torch(rows, hidden) -> None:
    """The LM's own LayerNorm (pimoe.cuda.ops.layer_norm): rows not a multiple of the backward's ROWS, widths not a
    power of two; forward, dx and the weight and bias gradients against torch's."""
    from pimoe.cuda.ops.layer_norm import layer_norm_backward, layer_norm_forward

    gen = torch.Generator().manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, generator=gen) * 3 + 1
    weight = torch.randn(hidden, generator=gen)
    bias = torch.randn(hidden, generator=gen)
    dy = torch.randn(rows, hidden, generator=gen)
    y, mean, rstd, _ = layer_norm_forward(x, weight, bias, 1e-5)
    dx, dweight, dbias, _ = layer_norm_backward(dy, x, weight, mean, rstd)

    x_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (x, weight, bias))
    y_ref = torch.nn.functional.layer_norm(x_ref, (hidden,), w_ref, b_ref, 1e-5)
    y_ref.backward(dy)
    torch.testing.assert_close(y, y_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dweight, w_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dbias, b_ref.grad, atol=1e-4, rtol=1e-4)


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 150), hidden=st.integers(4, 300), scale=st.floats(0.01, 100.0), seed=st.integers(0, 2**16))
def test_layer_norm_kernels_match_torch_on_generated_shapes(rows, hidden, scale, seed) -> None:
    # hidden >= 4: a row of one element has zero variance, and both sides' float residue of x - mean, multiplied by
    # 1/sqrt(eps) = 316, is noise (hypothesis found 0.0011 against 0 in the weight gradient at hidden 1)
    from pimoe.cuda.ops.layer_norm import layer_norm_backward, layer_norm_forward

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, hidden, generator=gen) + torch.randn(1, generator=gen) * 5) * scale
    weight, bias = torch.randn(hidden, generator=gen), torch.randn(hidden, generator=gen)
    dy = torch.randn(rows, hidden, generator=gen)
    y, mean, rstd, _ = layer_norm_forward(x, weight, bias, 1e-5)
    dx, dweight, dbias, _ = layer_norm_backward(dy, x, weight, mean, rstd)
    x_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (x, weight, bias))
    torch.nn.functional.layer_norm(x_ref, (hidden,), w_ref, b_ref, 1e-5).backward(dy)
    want_y = torch.nn.functional.layer_norm(x, (hidden,), weight, bias, 1e-5)
    torch.testing.assert_close(y, want_y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dx, x_ref.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(dweight, w_ref.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(dbias, b_ref.grad, atol=1e-3, rtol=1e-3)


@settings(max_examples=16, deadline=None)
@given(tokens=st.integers(1, 40), top_k=st.integers(1, 3), hidden=st.integers(4, 80), num_experts=st.integers(1, 6),
       dropped=st.integers(0, 20), any_norm=st.booleans(), seed=st.integers(0, 2**16))
def test_token_rows_kernels_equal_gather_then_norm(tokens, top_k, hidden, num_experts, dropped, any_norm,
                                                   seed) -> None:
    """Gather + per-expert norm + cast in one pass (pimoe.cuda.ops.token_rows) against the torch gather and
    `_normalise_rows_torch` with autograd: any token count, top-k, width, experts (each with its own norm kind and
    eps), and dropped assignments, whose rows must come out zero and give the token no gradient."""
    from pimoe.cuda.ops.token_rows import token_rows_backward, token_rows_forward
    from pimoe.cuda.packing import NORM_CODES
    from pimoe.cuda.train_norms import _normalise_rows_torch

    gen = torch.Generator().manual_seed(seed)
    rows = tokens * top_k
    kept_rows = max(0, rows - dropped)
    position = torch.randperm(rows, generator=gen).to(torch.int32)  # slot t * K + k -> its sorted row
    expert_indices = torch.randint(0, num_experts, (tokens, top_k), generator=gen)
    cuts = torch.sort(torch.randint(0, kept_rows + 1, (num_experts - 1,), generator=gen)).values
    offsets = torch.cat([cuts, torch.tensor([kept_rows])]).to(torch.int32)  # only offsets[-1] matters here
    kinds = [NORM_CODES["none"], NORM_CODES["layernorm"], NORM_CODES["rmsnorm"]]
    norm = torch.tensor([kinds[i] for i in torch.randint(0, 3, (num_experts,), generator=gen)] if any_norm
                        else [NORM_CODES["none"]] * num_experts, dtype=torch.int32)
    eps = torch.rand(num_experts, generator=gen) * 1e-2 + 1e-6
    x = (torch.randn(tokens, hidden, generator=gen) + torch.randn(1, generator=gen) * 3).requires_grad_()

    sorted_token = torch.empty(rows, dtype=torch.long)
    sorted_token[position.long()] = torch.arange(tokens).repeat_interleave(top_k)
    row_expert = torch.empty(rows, dtype=torch.long)
    row_expert[position.long()] = expert_indices.reshape(-1)
    kept = (torch.arange(rows) < kept_rows).unsqueeze(-1)
    want = torch.where(kept, _normalise_rows_torch(x[sorted_token], row_expert, norm, None, eps), 0.0)
    upstream = torch.randn(rows, hidden, generator=gen)
    (want * upstream).sum().backward()

    got, stats, _ = token_rows_forward(x.detach(), position, offsets, expert_indices, norm, eps, torch.float32,
                                       any_norm)
    dx = token_rows_backward(upstream, x.detach(), position, offsets, expert_indices, norm, eps, stats, any_norm)
    torch.testing.assert_close(got, want.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dx, x.grad, atol=1e-4, rtol=1e-4)
    half, _, _ = token_rows_forward(x.detach(), position, offsets, expert_indices, norm, eps, torch.bfloat16,
                                    any_norm)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), want.detach(), atol=2e-2, rtol=2e-2)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 70), hidden=st.integers(4, 200), delta_half=st.booleans(), out_half=st.booleans(),
       seed=st.integers(0, 2**16))
def test_layer_norm_with_a_residual_branch_matches_torch(rows, hidden, delta_half, out_half, seed) -> None:
    """(h, y) = (x + delta, LayerNorm(x + delta)) in one pass, y optionally bf16; the backward adds h's own gradient
    and writes delta's in delta's dtype: against autograd over the same sum."""
    from pimoe.cuda.ops.layer_norm import layer_norm_backward, layer_norm_forward

    gen = torch.Generator().manual_seed(seed)
    delta_dtype = torch.bfloat16 if delta_half else torch.float32
    x = torch.randn(rows, hidden, generator=gen) * 2 + 1
    delta = torch.randn(rows, hidden, generator=gen).to(delta_dtype)
    weight, bias = torch.randn(hidden, generator=gen), torch.randn(hidden, generator=gen)
    dy, dres = torch.randn(rows, hidden, generator=gen), torch.randn(rows, hidden, generator=gen)
    out_dtype = torch.bfloat16 if out_half else None
    y, mean, rstd, h = layer_norm_forward(x, weight, bias, 1e-5, delta, out_dtype)
    dx, dweight, dbias, ddelta = layer_norm_backward(dy.to(y.dtype), h, weight, mean, rstd, dres, delta_dtype)

    x_ref, delta_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (x, delta, weight, bias))
    h_ref = x_ref + delta_ref
    y_ref = torch.nn.functional.layer_norm(h_ref, (hidden,), w_ref, b_ref, 1e-5)
    ((y_ref * dy.to(y.dtype).float()).sum() + (h_ref * dres).sum()).backward()
    torch.testing.assert_close(h, h_ref.detach(), atol=0, rtol=0)
    assert y.dtype == (out_dtype or torch.float32) and ddelta.dtype == delta_dtype
    torch.testing.assert_close(y, y_ref.detach().to(y.dtype), atol=1e-4 if not out_half else 2e-2,
                               rtol=1e-4 if not out_half else 2e-2)
    torch.testing.assert_close(dx, x_ref.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ddelta, delta_ref.grad, atol=1e-3 if not delta_half else 2e-2,
                               rtol=1e-3 if not delta_half else 2e-2)
    torch.testing.assert_close(dweight, w_ref.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(dbias, b_ref.grad, atol=1e-3, rtol=1e-3)


@settings(max_examples=16, deadline=None)
@given(tokens=st.integers(1, 40), top_k=st.integers(1, 3), hidden=st.integers(4, 80), experts=st.integers(2, 7),
       narrow=st.integers(1, 6), drop=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_the_combine_reads_and_writes_both_class_buffers_in_place(tokens, top_k, hidden, experts, narrow, drop,
                                                                   seed) -> None:
    """`class_combine.combine_two_buffers` over `class_layout`'s virtual rows against autograd through one (2A, D)
    tensor of both buffers: the output, each buffer's row gradients (rows no slot reads stay unwritten, so only the
    read ones are compared), the routing weights' gradient and each class's bias gradient with the gap's at zero."""
    from class_routing import random_routing

    from pimoe.cuda.class_combine import combine_two_buffers
    from pimoe.cuda.grouped import sort_by_expert_torch
    from pimoe.cuda.width_classes import class_layout

    narrow, top_k = min(narrow, experts - 1), min(top_k, experts)
    routing = random_routing(tokens, top_k, experts, drop, seed)
    ranked, dropped, weights = routing.expert_indices, routing.dropped, routing.expert_weights
    gen = torch.Generator().manual_seed(seed + 1)
    layout = sort_by_expert_torch(routing)
    split = class_layout(layout.position, layout.offsets, layout.sorted_expert, ranked.reshape(-1), narrow)
    rows = tokens * top_k
    virtual_expert = torch.where(ranked < narrow, ranked, ranked + 1)  # the gap group sits between the classes
    lo = torch.randn(rows, hidden, generator=gen)
    hi = torch.randn(rows, hidden, generator=gen)
    lo[int(split.narrow_offsets[-1]):] = float("nan")  # rows no slot reads: never part of a sum
    hi[int(split.wide_offsets[-1]):] = float("nan")
    b2 = torch.randn(experts + 1, hidden, generator=gen)

    both = torch.cat([lo, hi, torch.zeros(1, hidden)]).requires_grad_()  # row 2A: where dropped slots point
    b2_ref, w_ref = b2.clone().requires_grad_(), weights.clone().requires_grad_()
    kept = (~dropped).unsqueeze(-1)
    terms = torch.where(kept, both[split.position.long()].view(tokens, top_k, hidden) + b2_ref[virtual_expert], 0.0)
    want = (terms * w_ref.unsqueeze(-1)).sum(1)
    dy = torch.randn(tokens, hidden, generator=gen)
    (want * dy).sum().backward()

    lo_in, hi_in = lo.clone().requires_grad_(), hi.clone().requires_grad_()
    b2_in, w_in = b2.clone().requires_grad_(), weights.clone().requires_grad_()
    got = combine_two_buffers(lo_in, hi_in, split.position, split.offsets, virtual_expert, w_in, b2_in, narrow,
                              torch.float32)
    (got * dy).sum().backward()
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_in.grad, w_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b2_in.grad, b2_ref.grad, atol=1e-5, rtol=1e-5)
    assert not b2_in.grad[narrow].any()
    read = split.position[(~dropped).reshape(-1)].long()
    grad_both = torch.cat([lo_in.grad, hi_in.grad])
    torch.testing.assert_close(grad_both[read], both.grad[read], atol=1e-6, rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(0, 300), width=st.integers(1, 300), experts=st.integers(1, 9), unused=st.integers(0, 40),
       half=st.booleans(), small_tiles=st.booleans(), seed=st.integers(0, 2**16))
def test_segment_sums_kernel_sums_each_experts_rows_and_nothing_past_them(rows, width, experts, unused, half,
                                                                           small_tiles, seed) -> None:
    """The bias gradients' column sums (`ops.segment_sums`): any row count and width (not multiples of the blocks),
    experts with no rows, rows past the last group end filled with NaN (never read), bf16 or float32 rows. Small
    tiles: an expert spans many tiles, more than the second pass adds per iteration."""
    from pimoe.cuda.ops.segment_sums import segment_column_sums

    gen = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randint(0, rows + 1, (experts - 1,), generator=gen)).values
    offsets = torch.cat([cuts, torch.tensor([rows])]).to(torch.int32)
    data = torch.randn(rows + unused, width, generator=gen).to(torch.bfloat16 if half else torch.float32)
    data[rows:] = float("nan")
    starts = torch.cat([torch.zeros(1, dtype=torch.int32), offsets[:-1]])
    want = torch.stack([data[int(a):int(b)].double().sum(0) for a, b in zip(starts, offsets, strict=True)])
    tiles = {"tile_rows": 8, "block_rows": 4} if small_tiles else {}
    got = segment_column_sums(data, offsets, **tiles)
    assert got.dtype == torch.float32 and got.shape == (experts, width)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


@st.composite
def _weight_grad_case(draw):
    split_rows = draw(st.sampled_from([4, 8, 16]))
    total = draw(st.integers(2 * split_rows, 10 * split_rows))
    experts = draw(st.integers(1, 5))
    kept = draw(st.integers(0, total))
    cuts = sorted(draw(st.lists(st.integers(0, kept), min_size=experts - 1, max_size=experts - 1)))
    return split_rows, total, [*cuts, kept], draw(st.sampled_from([torch.float32, torch.bfloat16]))


@settings(max_examples=12, deadline=None)
@given(_weight_grad_case(), st.integers(0, 2**31 - 1))
def test_split_weight_gradient_equals_each_experts_product(case, seed) -> None:
    """Experts cut into pieces of at most split_rows rows (`train_ops.split_groups`), the pieces' products added by
    `ops.piece_sums` (garbage in the empty pieces, NaN in the dropped rows) equal the unsplit per-expert products."""
    from pimoe.cuda import train_ops
    from pimoe.cuda.ops.piece_sums import piece_sums

    split_rows, total, ends, out_dtype = case
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(total, 16, generator=gen), torch.randn(total, 8, generator=gen)
    a[ends[-1]:] = float("nan")
    offsets = torch.tensor(ends, dtype=torch.int32)
    piece_ends, first, count = train_ops.split_groups(offsets, total, split_rows)
    starts = torch.cat([piece_ends.new_zeros(1), piece_ends[:-1]])
    assert bool((piece_ends >= starts).all()) and int((piece_ends - starts).max()) <= split_rows
    pieces = torch._grouped_mm(a.t(), b, offs=piece_ends)
    pieces[piece_ends == starts] = float("nan")  # a K = 0 group the library need not write
    got = piece_sums(pieces, piece_ends, first, count, out_dtype)
    bounds = [0, *ends]
    expected = torch.stack([a[s:e].double().t() @ b[s:e].double() for s, e in zip(bounds, bounds[1:], strict=False)])
    assert got.dtype == out_dtype
    tolerance = dict(rtol=1e-5, atol=1e-4) if out_dtype == torch.float32 else dict(rtol=1e-2, atol=5e-2)
    torch.testing.assert_close(got.double(), expected, **tolerance)


def _per_expert(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, weight_grad: bool) -> torch.Tensor:
    """The loop the kernels replace, in float64."""
    starts = [0, *offsets.tolist()[:-1]]
    if weight_grad:
        return torch.stack([a[s:e].double().t() @ b[s:e].double() for s, e in zip(starts, offsets.tolist(),
                                                                                   strict=True)])
    return torch.cat([a[s:e].double() @ b[i].double() for i, (s, e) in enumerate(zip(starts, offsets.tolist(),
                                                                                     strict=True))])


@settings(max_examples=12, deadline=None)
@given(counts=st.lists(st.integers(0, 150), min_size=1, max_size=9), depth=st.integers(1, 80),
       width=st.integers(1, 140), past=st.integers(0, 7), transposed=st.booleans(), int64=st.booleans())
def test_grouped_rows_kernels_equal_the_per_expert_products(counts, depth, width, past, transposed, int64) -> None:
    """Any split of the rows (empty experts, one expert taking all), widths no multiple of a tile, rows past the last
    group, a transposed weight view, int32 or int64 group ends."""
    from pimoe.cuda.ops.grouped_rows import rows_matmul, rows_weight_grad

    torch.manual_seed(len(counts) * 1000 + depth)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int64 if int64 else torch.int32)
    kept = int(offsets[-1])
    a = torch.randn(kept + past, depth)
    b = torch.randn(len(counts), width, depth).transpose(1, 2) if transposed else torch.randn(len(counts), depth, width)
    out = rows_matmul(a, b, offsets)
    assert out.shape == (kept + past, width) and out.is_contiguous()
    torch.testing.assert_close(out[:kept].double(), _per_expert(a, b, offsets, False), atol=1e-4, rtol=1e-5)
    grads = torch.randn(kept + past, width)
    grads[kept:] = float("nan")  # rows past the last group must not be read
    weight_grad = rows_weight_grad(a, grads, offsets)
    assert weight_grad.shape == (len(counts), depth, width) and weight_grad.dtype == torch.float32
    torch.testing.assert_close(weight_grad.double(), _per_expert(a, grads, offsets, True), atol=1e-4, rtol=1e-5)
    assert not weight_grad[torch.tensor(counts) == 0].any()  # experts with no rows: exact zeros


def test_grouped_rows_kernels_in_half_precision_and_refusals() -> None:
    from pimoe.cuda.ops.grouped_rows import rows_matmul, rows_weight_grad

    offsets = torch.tensor([30, 30, 64], dtype=torch.int32)
    a, b = torch.randn(64, 48).half(), torch.randn(3, 48, 40).half()
    out = rows_matmul(a, b, offsets)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), _per_expert(a, b, offsets, False), atol=2e-2, rtol=1e-2)
    grad = rows_weight_grad(a, torch.randn(64, 40).half(), offsets, out_dtype=torch.float16)
    assert grad.dtype == torch.float16 and not grad[1].any()
    with pytest.raises(ValueError, match="one dtype"):
        rows_matmul(a, b.float(), offsets)
    with pytest.raises(ValueError, match="group ends"):
        rows_weight_grad(a, a, offsets.float())
    assert rows_matmul(a[:0], b, offsets.new_zeros(3)).shape == (0, 40)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_stacked_experts_train_through_the_kernels_with_gradients_on_the_stacks(activation, monkeypatch) -> None:
    """`stacked_train_dispatch` (a transformers experts module's gate_up_proj / down_proj as the weights, the path of
    `experts_implementation="pimoe"`): output and gradients of the tokens, the combine weights and each stack equal
    the sorted dispatch over per-expert modules holding the same weights."""
    from pimoe.cuda import train_ops, train_path
    from pimoe.hf.convert import gated_expert
    from pimoe.hf.experts_interface import routing_from_choices
    from pimoe.layer.dispatch import sorted_dispatch
    from pimoe.layer.experts import PiMoEExpert
    from pimoe.layer.router import TokenLevelRouter

    monkeypatch.setattr(train_ops, "use_triton", lambda t: True)
    monkeypatch.setattr(train_path, "_sort", lambda routing, x: sort_by_expert(routing))
    torch.manual_seed(7)
    experts_n, hidden, width = 5, 32, 48
    w1 = (torch.randn(experts_n, 2 * width, hidden) * 0.2).requires_grad_()
    w2 = (torch.randn(experts_n, hidden, width) * 0.2).requires_grad_()
    views = torch.nn.ModuleList(gated_expert(w1.detach()[e], w2.detach()[e], activation) for e in range(experts_n))
    router = TokenLevelRouter(hidden, experts_n, RouterConfig(top_k=2))
    x = torch.randn(37, hidden)
    routing = router(x)
    weights = routing.expert_weights.detach().clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    ours = train_path.stacked_train_dispatch(x_ours, routing_from_choices(routing.expert_indices, weights, experts_n),
                                             views, w1, w2)
    probe = torch.randn_like(ours)
    (ours * probe).sum().backward()

    modules = torch.nn.ModuleList(PiMoEExpert(hidden, "mathematical", width, activation=activation, bias=False)
                                  for _ in range(experts_n))
    with torch.no_grad():
        for e, module in enumerate(modules):
            module.up.weight.copy_(w1[e])
            module.down.weight.copy_(w2[e])
    weights_ref = routing.expert_weights.detach().clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    expected = sorted_dispatch(x_ref, routing_from_choices(routing.expert_indices, weights_ref, experts_n), modules)
    (expected * probe).sum().backward()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.grad, weights_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w1.grad, torch.stack([m.up.weight.grad for m in modules]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2.grad, torch.stack([m.down.weight.grad for m in modules]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not the pack's"):
        train_path.stacked_train_dispatch(x, routing, views, w1[:, :-1], w2)
