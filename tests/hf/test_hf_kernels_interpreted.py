"""The fast path's Triton kernels on checkpoint-sized expert counts (64 and 256, top-8), through Triton's CPU
interpreter: the counting sort and the triton / fused_up backends against the plain-torch grouped forward, fed by a
checkpoint router. Runs only with TRITON_INTERPRET=1 set before Triton is imported (see tests/cuda/
test_kernels_interpreted.py); the GPU runs the same kernels compiled."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)
pytest.importorskip("triton")

from pimoe.cuda.backends import fused_up_forward, triton_forward  # noqa: E402
from pimoe.cuda.grouped import torch_forward  # noqa: E402
from pimoe.cuda.layout import sort_by_expert_torch  # noqa: E402
from pimoe.cuda.ops.sort import sort_by_expert  # noqa: E402
from pimoe.cuda.packing import pack_experts_in_place  # noqa: E402
from pimoe.cuda.tuning import GemmConfig, Tuning  # noqa: E402
from pimoe.hf.convert import gated_expert  # noqa: E402
from pimoe.hf.router import CheckpointRouter  # noqa: E402
from pimoe.layer.scoring import ScoringRule  # noqa: E402

TILES = Tuning(small_rows=1 << 30, up_small=GemmConfig(16, 16, 16, 4, 1), down_small=GemmConfig(16, 16, 16, 4, 1),
               up_act=GemmConfig(16, 16, 16, 4, 1), up_act_gated=GemmConfig(16, 16, 16, 4, 1), up_act_tma=False,
               mixed_width_down="library", triton_down_rows=0, down_tma=False)


def _checkpoint_layer(num_experts: int, rule: ScoringRule, hidden: int = 32, width: int = 16):
    torch.manual_seed(0)
    gate_up = torch.randn(num_experts, 2 * width, hidden) * 0.2
    down = torch.randn(num_experts, hidden, width) * 0.2
    experts = torch.nn.ModuleList(gated_expert(gate_up[e], down[e], "silu") for e in range(num_experts))
    router = CheckpointRouter(torch.randn(num_experts, hidden), rule)
    return router, experts


@pytest.mark.parametrize("num_experts, rule", [
    (64, ScoringRule("softmax", top_k=8, renormalize=False)),  # OLMoE-1B-7B's routing
    (256, ScoringRule("sigmoid", top_k=8, num_groups=8, topk_groups=4, routed_scaling_factor=2.5)),  # DeepSeek-V3's
], ids=["olmoe-64", "deepseek-256"])
def test_fast_path_kernels_take_checkpoint_expert_counts(num_experts, rule):
    router, experts = _checkpoint_layer(num_experts, rule)
    x = torch.randn(40, 32)
    with torch.inference_mode():
        routing = router(x)
        expected_layout, layout = sort_by_expert_torch(routing), sort_by_expert(routing)
        for name in ("sorted_token", "sorted_expert", "counts", "offsets"):
            assert torch.equal(getattr(layout, name).long(), getattr(expected_layout, name).long()), name
        packed = pack_experts_in_place(experts)
        expected = torch_forward(x, routing, packed)
        for name, result in {"triton": triton_forward(x, routing, packed, TILES),
                             "fused_up": fused_up_forward(x, routing, packed, TILES)}.items():
            error = float((result.double() - expected.double()).norm() / expected.double().norm())
            assert error < 1e-5, name


@pytest.mark.parametrize("num_experts", [8, 64, 127])
@pytest.mark.parametrize("rule", [ScoringRule(top_k=8, renormalize=False),
                                  ScoringRule(top_k=2, renormalize=True, routed_scaling_factor=2.5),
                                  ScoringRule(top_k=4, renormalize=True, logits_in_float32=True)],
                         ids=["olmoe-like", "scaled-renormalised", "float32-logits"])
def test_fused_checkpoint_router_reproduces_the_torch_router(num_experts: int, rule: ScoringRule) -> None:
    from pimoe.cuda.fused_router import fused_checkpoint_route

    top_k = min(rule.top_k, num_experts)
    router, _ = _checkpoint_layer(num_experts, rule)
    x = torch.randn(50, 32)
    for temperature in (1.0, 0.6):
        with torch.inference_mode():
            ref = router(x, temperature=temperature, top_k=top_k, batch_shape=(5, 10))  # CPU: the torch path
            got = fused_checkpoint_route(router, x, temperature, top_k, (5, 10))
        assert torch.equal(got.expert_indices, ref.expert_indices)
        for name in ("logits", "probs", "expert_weights", "entropy", "confidence", "load_balance_loss"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(got.tokens_per_expert, ref.tokens_per_expert)
        assert torch.equal(got.token_positions, torch.arange(50))
        assert got.batch_shape == (5, 10) and not got.dropped.any() and float(got.router_loss) == 0.0
