"""The fused router's reduction deferred into the counting sort, in Triton's interpreter (CI runs this file).

Runs only with TRITON_INTERPRET=1 set before Triton is imported:
    TRITON_INTERPRET=1 python -m pytest tests/cuda/test_router_reduction_interpreted.py
`fused_route(..., defer_finalize=True)` leaves per-expert counts and losses to the place pass's first program
(`ops.sort.sort_by_expert`) or to `finish_route`; these tests hold the values to the router's own and count the
launches.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)
pytest.importorskip("triton")

from routing_helpers import assert_layouts_equal, fused_routing, make_system  # noqa: E402

from pimoe.cuda.layout import sort_by_expert_torch  # noqa: E402
from pimoe.cuda.ops.sort import sort_by_expert  # noqa: E402

_REDUCED = ("selected_per_expert", "tokens_per_expert", "load_balance_loss", "z_loss", "router_loss")


def _assert_reductions_equal(got, expected) -> None:
    for name in _REDUCED:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def _count_launches(monkeypatch, module, name: str) -> list:
    launches = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, type("Spy", (), {"__getitem__": lambda self, grid: (
        launches.append(grid), real[grid])[1]})())
    return launches


@pytest.mark.parametrize(("tokens", "top_k"), [(45, 2), (1, 1), (130, 3)])
def test_a_deferred_router_reduction_runs_in_the_place_pass(monkeypatch, tokens: int, top_k: int) -> None:
    """fused_route(defer_finalize=True) leaves counts and losses to the counting sort's first place program: the same
    values as the router's own reduction launch, one launch fewer; where the sort cannot take it (its own histogram
    pass, or an edited routing), finish_route launches it."""
    from pimoe.cuda import fused_router
    from pimoe.cuda.ops import route

    system = make_system(top_k=top_k)
    x = torch.randn(tokens, 32)
    taken = not (32 * top_k) & (32 * top_k - 1)  # the sort reads the router's counts (32-token blocks) when a power of 2
    with torch.no_grad():
        expected = fused_routing(monkeypatch, system, x)
        launches = _count_launches(monkeypatch, route, "router_finalize_kernel")
        deferred = fused_routing(monkeypatch, system, x, defer_finalize=True)
        layout = sort_by_expert(deferred)
        fused_router.finish_route(deferred)  # where the sort took it, nothing more to launch
        assert len(launches) == (0 if taken else 1)
        _assert_reductions_equal(deferred, expected)
        assert_layouts_equal(layout, sort_by_expert_torch(expected))
        own_histogram = fused_routing(monkeypatch, system, x, defer_finalize=True)
        sort_by_expert(own_histogram, counted_rows=0)
        fused_router.finish_route(own_histogram)
        edited = fused_routing(monkeypatch, system, x, defer_finalize=True)
        edited.expert_indices = edited.expert_indices.flip(-1)  # replaced: the router's counts no longer describe it
        sort_by_expert(edited)
        fused_router.finish_route(edited)
        fused_router.finish_route(edited)  # twice: still one launch
        assert len(launches) == (2 if taken else 3)
        _assert_reductions_equal(own_histogram, expected)
        _assert_reductions_equal(edited, expected)  # the router's own counts and losses, as without the edit


@pytest.mark.parametrize("sorted_fallback", [False, True], ids=["fast", "sorted fallback"])
def test_the_fast_layer_returns_its_routers_counts_and_losses_with_the_reduction_deferred(monkeypatch,
                                                                                      sorted_fallback) -> None:
    """Output, counts and losses as the module router's, the reduction deferred; where the fast path falls back to
    the sorted dispatch (a hidden size or dtype its kernels do not take), which reads the per-expert counts, it runs
    before that dispatch (an H100 run of a drawn layer of hidden size 100 found it missing, 2026-12-07)."""
    from pimoe.cuda import fast_path, fused_router

    monkeypatch.setattr(fused_router, "fused_route_applies", lambda router, x: True)  # the kernels, on the CPU
    if sorted_fallback:
        monkeypatch.setattr(fast_path, "choose_backend", lambda *args, **kwargs: None)
    system = make_system(top_k=2)
    x = torch.randn(2, 19, 32)
    with torch.no_grad():
        system.dispatch = "sorted"
        expected_out, expected = system(x, return_routing_info=True)
        system.dispatch = "cuda_fast"
        out, routing = system(x, return_routing_info=True)
    assert routing._pending_finalize.done
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    for name in _REDUCED:
        torch.testing.assert_close(getattr(routing, name), getattr(expected, name), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("tokens", "hidden", "experts"), [(1, 20, 1), (37, 64, 8), (300, 100, 3), (4500, 48, 33)])
def test_the_float32_gate_passes_match_float64_forward_and_backward(tokens: int, hidden: int, experts: int) -> None:
    """`ops.gate_fp32`: logits, token gradient and gate gradient of float32 tokens against a float32 gate, every
    product in float32 (no TF32), within float32 summation error of float64; 4,500 tokens span three weight-gradient
    splits and a ragged last block."""
    from pimoe.cuda.ops.gate_fp32 import gate_input_grad, gate_logits, gate_weight_grad

    generator = torch.Generator().manual_seed(tokens + hidden + experts)
    x = torch.randn(tokens, hidden, generator=generator) * 3
    weight = torch.randn(experts, hidden, generator=generator)
    dlogits = torch.randn(tokens, experts, generator=generator)
    for got, expected in ((gate_logits(x, weight), x.double() @ weight.double().t()),
                          (gate_input_grad(dlogits, weight), dlogits.double() @ weight.double()),
                          (gate_weight_grad(dlogits, x), dlogits.double().t() @ x.double())):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)


def test_the_router_takes_the_float32_passes_when_asked_and_its_gradients_match(monkeypatch) -> None:
    """router_logits on float32 tokens and gate (PiMoE-LM's router) with `router_fp32_kernel_rows` set: the kernels'
    Function, with autograd gradients equal to the plain float32 product's."""
    from pimoe.cuda.tuning import tuning_overrides
    from pimoe.layer import router_logits as module

    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CUDA branch, run by the interpreter
    x = torch.randn(90, 32, requires_grad=True)
    weight = torch.randn(8, 32, requires_grad=True)
    with tuning_overrides(router_fp32_kernel_rows=64):
        logits = module.router_logits(x, weight)
    assert logits.grad_fn is not None and type(logits.grad_fn).__name__.startswith("_Float32GateProduct")
    upstream = torch.randn(90, 8)
    dx, dweight = torch.autograd.grad(logits, (x, weight), upstream)
    x_ref, weight_ref = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    dx_ref, dweight_ref = torch.autograd.grad(x_ref @ weight_ref.t(), (x_ref, weight_ref), upstream.double())
    torch.testing.assert_close(logits.detach().double(), (x_ref @ weight_ref.t()).detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dweight.double(), dweight_ref, atol=1e-4, rtol=1e-5)
    with tuning_overrides(router_fp32_kernel_rows=0):
        assert type(module.router_logits(x, weight).grad_fn).__name__.startswith("Mm")  # off: the float32 product
