"""The fast path's device-independent logic on the CPU: padding exactness, expert-order layout, the plain-torch grouped
forward against the float64 reference, pack caching, fallbacks and registration."""

from __future__ import annotations

import pytest
import torch
from drawn_layers import assert_gradients_match, build, draw, grads_of

import pimoe.cuda  # noqa: F401  (registers the fast strategies)
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.cuda.grouped import _activate_rows, _norm_rows, grouped_matmul
from pimoe.cuda.layout import sort_by_expert_torch
from pimoe.cuda.packing import pack_experts
from pimoe.layer.reference import reference_forward
from pimoe.layer.strategies import STRATEGIES, resolve_strategy

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")


def make_system(expert_types=TYPED, num_experts=7, seed=0, **router_kwargs) -> PiMoESystem:
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=32, num_experts=num_experts, expert_types=expert_types,
                         router=RouterConfig(**router_kwargs), expert=ExpertConfig(intermediate_size=48))
    return PiMoESystem(config).eval()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def test_padded_pack_reproduces_every_expert_type_exactly() -> None:
    system = make_system().double()
    packed = pack_experts(system.experts)
    x = torch.randn(9, 32, dtype=torch.float64)
    for e, expert in enumerate(system.experts):
        experts = torch.full((9,), e)
        xs = x
        if packed.norm_host[e]:
            xs = _norm_rows(x, experts, packed)
        pre = xs @ packed.w1[e].t() + packed.b1[e]
        hidden = _activate_rows(pre, experts, packed)
        assert torch.all(hidden[:, expert.width :] == 0), "padded units must be exactly zero"
        out = hidden @ packed.w2[e].t() + packed.b2[e]
        with torch.no_grad():
            # RMSNorm computes in float32 even for a float64 module; every other type agrees to float64 rounding
            tolerance = 1e-6 if packed.norm_host[e] == 2 else 1e-12
            torch.testing.assert_close(out, expert(x), rtol=tolerance, atol=tolerance)


def test_pack_widths_follow_the_widest_expert() -> None:
    packed = pack_experts(make_system().experts)
    assert packed.max_width == 96  # computation: twice 48
    assert packed.w1.shape == (7, 96, 32)  # computation 96 and gated mathematical 2 * 48
    assert packed.w2.shape == (7, 32, 96)
    assert packed.gated_host == (False, False, True, False, False, False, False)


def test_layout_groups_each_kept_assignment_once_in_expert_then_token_order() -> None:
    system = make_system(top_k=2, capacity_factor=0.6)
    with torch.no_grad():
        routing = system.router(torch.randn(23, 32))
    layout = sort_by_expert_torch(routing)
    kept = ~routing.dropped.reshape(-1)
    assert int(layout.counts.sum()) == int(kept.sum())
    torch.testing.assert_close(layout.offsets, layout.counts.cumsum(0).to(torch.int32))
    torch.testing.assert_close(layout.counts.long(), routing.tokens_per_expert)
    flat_expert = routing.expert_indices.reshape(-1)
    rows = layout.position[kept]
    assert torch.equal(layout.sorted_expert[rows], flat_expert[kept]), "each assignment lands in its expert's rows"
    assert torch.equal(layout.sorted_token[rows], torch.arange(23).repeat_interleave(2)[kept])
    kept_rows = layout.sorted_expert[: int(kept.sum())]
    assert torch.all(kept_rows[1:] >= kept_rows[:-1])
    assert torch.all(layout.sorted_expert[int(kept.sum()) :] == routing.num_experts), "dropped rows sort last"


def test_grouped_matmul_applies_each_experts_weight_to_its_rows() -> None:
    system = make_system(top_k=1)
    with torch.no_grad():
        routing = system.router(torch.randn(17, 32))
    layout = sort_by_expert_torch(routing)
    weight = torch.randn(7, 5, 32)
    rows = torch.randn(17, 32)
    out = grouped_matmul(rows, weight, layout)
    start = 0
    for e, count in enumerate(layout.counts.tolist()):
        torch.testing.assert_close(out[start : start + count], rows[start : start + count] @ weight[e].t())
        start += count


@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("case", ["balanced", "skewed", "capacity", "masked"])
def test_torch_grouped_forward_matches_float64_reference(expert_types, top_k: int, case: str) -> None:
    system = make_system(expert_types, top_k=top_k, capacity_factor=0.5 if case == "capacity" else None,
                         use_selection_bias=case == "skewed").double()
    if case == "skewed":
        system.router.selection_bias[0] = 1.0
    system.dispatch = "cuda_fast"
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    mask = None
    if case == "masked":
        mask = torch.ones(3, 11)
        mask[1, 6:] = 0
    with torch.inference_mode():
        out, routing = system(x, attention_mask=mask, return_routing_info=True)
    if case == "capacity":
        assert routing.dropped.any()
    # 1e-6, not float64 rounding: the analytical expert's RMSNorm computes in float32 even in a float64 module
    assert relative_error(out - x, reference_forward(system, x, attention_mask=mask) - x) < 1e-6


def test_float32_torch_grouped_forward_matches_reference_within_float32_rounding() -> None:
    system = make_system(top_k=2)
    system.dispatch = "cuda_fast"
    x = torch.randn(4, 13, 32)
    with torch.inference_mode():
        out = system(x)
    assert relative_error(out - x, reference_forward(system, x) - x) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_grouped_forward_takes_rows_whose_bytes_are_no_multiple_of_16(dtype) -> None:
    """torch._grouped_mm refuses such strides; the per-expert loop takes them (hidden 18, widths 30 to 60)."""
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=18, num_experts=7, expert_types=TYPED,
                                     expert=ExpertConfig(intermediate_size=30))).eval().to(dtype)
    system.dispatch = "cuda_fast"
    x = torch.randn(2, 9, 18).to(dtype)
    with torch.inference_mode():
        out = system(x)
    system.dispatch = "sorted"
    with torch.inference_mode():
        expected = system(x)
    assert relative_error(out - x, expected - x) < (2e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("seed", range(12))
def test_drawn_layers_on_the_cpu_fast_path_match_the_reference_and_the_sorted_gradients(seed: int) -> None:
    """`drawn_layers.draw`'s configurations (1-33 experts of mixed types, top-1 to 4, odd widths, capacity or none),
    shrunk to CPU size: float32 inference against the float64 reference, training against the sorted dispatch."""
    config = draw(seed)
    config.update(width=min(config["width"], 300), shape=(1, min(config["shape"][1], 64), config["hidden"]))
    system = build(config, residual=True).eval()
    x = torch.randn(config["shape"])
    with torch.inference_mode():
        out = system(x)
    assert relative_error(out - x, reference_forward(system, x) - x) < 1e-5, config
    system.train()
    expected, got = grads_of(system, x, "sorted"), grads_of(system, x, "cuda_fast")
    assert relative_error(got[0], expected[0]) < 1e-5 and relative_error(got[1], expected[1]) < 1e-5, config
    assert_gradients_match(got[2], expected[2], 1e-5, config)


def test_pack_is_rebuilt_after_an_in_place_weight_update() -> None:
    system = make_system(top_k=2)
    system.dispatch = "cuda_fast"
    x = torch.randn(1, 12, 32)
    with torch.inference_mode():
        before = system(x)
    first = pack_experts(system.experts)
    with torch.no_grad():
        for expert in system.experts:
            expert.down.bias.add_(1.0)
    assert pack_experts(system.experts) is not first
    with torch.inference_mode():
        after = system(x)
    assert relative_error(after - x, reference_forward(system, x) - x) < 1e-5
    assert not torch.allclose(after, before)


def test_pack_is_cached_while_weights_are_unchanged() -> None:
    system = make_system()
    assert pack_experts(system.experts) is pack_experts(system.experts)


def test_training_calls_backpropagate_through_the_differentiable_fast_path() -> None:
    system = make_system(top_k=2).train()
    system.dispatch = "cuda_fast"
    out = system(torch.randn(2, 8, 32))
    out.pow(2).mean().backward()
    assert system.router.gate.weight.grad.abs().sum() > 0
    assert any(e.up.weight.grad is not None and e.up.weight.grad.abs().sum() > 0 for e in system.experts)


def test_fast_strategies_and_their_router_are_registered() -> None:
    for name in ("cuda_fast", "cuda_triton", "cuda_fused_up"):
        assert STRATEGIES[name].route is not None and STRATEGIES[name].fused_residual
    assert resolve_strategy("auto", "cpu").name == "sorted", "CPU layers keep the sorted default"
    assert resolve_strategy("auto", "cuda").name == "cuda_fast"


def test_unknown_backend_is_rejected_by_name() -> None:
    from pimoe.cuda import make_fast_dispatch

    with pytest.raises(ValueError, match="warp"):
        make_fast_dispatch("warp")

