"""Helpers the interpreter tests of the router and the counting sort share."""

from __future__ import annotations

import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")


def make_system(expert_types=TYPED, **router_kwargs) -> PiMoESystem:
    """A 32-wide layer of eight experts 48 wide, their types cycled from `expert_types`, in eval mode, seeded."""
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=8, expert_types=expert_types,
                         router=RouterConfig(**router_kwargs), expert=ExpertConfig(intermediate_size=48))
    return PiMoESystem(config).eval()


def fused_routing(monkeypatch, system, x, **kwargs):
    """`fused_route` through the kernels on the CPU (its CUDA-only check patched away)."""
    from pimoe.cuda import fused_router

    monkeypatch.setattr(fused_router, "fused_route_applies", lambda router, x: True)
    return fused_router.fused_route(system.router, x, **kwargs)


def assert_layouts_equal(got, expected) -> None:
    for name in ("sorted_token", "sorted_expert", "position", "counts", "offsets"):
        assert torch.equal(getattr(got, name).long(), getattr(expected, name).long()), name
    assert torch.equal(got.sorted_weight, expected.sorted_weight)
