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
