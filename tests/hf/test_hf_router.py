"""CheckpointRouter equals each transformers router class on random hidden states: chosen set and weights."""

import pytest
import torch
from hf_tiny import FAMILIES, their_router_choice, their_routers, tiny_model

from pimoe.hf.families import SUPPORTED_FAMILIES
from pimoe.hf.router import CheckpointRouter

SCALED_BY_THE_BLOCK = {"beam": lambda config: config.routed_scaling_factor,
                       "laguna": lambda config: config.moe_routed_scaling_factor}


@pytest.mark.parametrize("family", FAMILIES)
def test_router_matches_transformers(family):
    model = tiny_model(family)
    theirs = their_routers(model, family)[0]
    block = next(m for m in model.modules() if getattr(m, "gate", None) is theirs or getattr(m, "router", None) is theirs)
    family_spec = SUPPORTED_FAMILIES[family]
    bias = _attribute(block, family_spec.selection_bias_path())
    router_bias = getattr(theirs, "bias", None)  # GPT-OSS's router has one
    weight = _attribute(theirs, family_spec.router_weight)
    expert_scale = _attribute(theirs, family_spec.expert_scale) if family_spec.expert_scale else None
    config = family_spec.own_config(model.config)  # a multimodal model's: its language model's
    ours = CheckpointRouter(weight.detach(), family_spec.rule(config),
                            None if bias is None else bias.detach().reshape(-1),
                            None if router_bias is None else router_bias.detach(),
                            input_norm=family_spec.router_input(theirs),  # Gemma 4's scaled norm of the input
                            expert_scale=None if expert_scale is None else expert_scale.detach())
    x = torch.randn(200, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # MiniMax-M2's router takes its block's correction bias as an argument
        their_weights, their_indices = their_router_choice(family, block, theirs, x, bias)
    # Beam's and Laguna's blocks scale the summed experts, not their routers' weights: the same product
    their_weights = their_weights * SCALED_BY_THE_BLOCK.get(family, lambda config: 1.0)(config)
    info = ours(x)
    order_theirs, order_ours = their_indices.argsort(-1), info.expert_indices.argsort(-1)
    assert torch.equal(their_indices.gather(-1, order_theirs), info.expert_indices.gather(-1, order_ours))
    torch.testing.assert_close(info.expert_weights.gather(-1, order_ours), their_weights.float().gather(-1, order_theirs))


def _attribute(module, path):
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


def test_routing_record_counts_every_assignment():
    router = CheckpointRouter(torch.randn(6, 32), SUPPORTED_FAMILIES["olmoe"].rule(tiny_model("olmoe").config))
    info = router(torch.randn(50, 32))
    assert int(info.tokens_per_expert.sum()) == 50 * info.top_k
    assert info.entropy.shape == (50,) and (info.entropy >= 0).all()


@pytest.mark.parametrize("jitter_eps", [0.0, 0.01, 0.2, 1.0])
def test_sparsemixer_gates_equal_transformers_sparsemixer_at_inference(jitter_eps):
    """PhiMoE's rule on logits of both signs and near-ties: transformers' `sparsemixer` (eval) against the top-2 by
    logit and `sparsemixer_gates`, which also serves other K and blocked experts."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    from pimoe.layer.scoring import sparsemixer_gates

    generator = torch.Generator().manual_seed(int(jitter_eps * 100))
    logits = torch.randn(300, 8, generator=generator) * torch.tensor([0.05, 1.0, 4.0]).repeat_interleave(100)[:, None]
    logits[::7] -= 3.0  # rows whose every logit is negative
    their_weights, their_indices = sparsemixer(logits, jitter_eps=jitter_eps, training=False)
    indices = logits.topk(2, dim=-1).indices
    assert torch.equal(indices, their_indices)
    torch.testing.assert_close(sparsemixer_gates(logits, indices, jitter_eps), their_weights, rtol=1e-6, atol=1e-7)
    # K = 1 is the first rank alone; a blocked expert leaves every window
    torch.testing.assert_close(sparsemixer_gates(logits, indices[:, :1], jitter_eps), their_weights[:, :1])
    blocked = torch.zeros(8, dtype=torch.bool)
    blocked[3] = True
    kept = logits.masked_fill(blocked, float("-inf")).topk(2, dim=-1).indices
    expected, _ = sparsemixer(logits.masked_fill(blocked, -1e30), jitter_eps=jitter_eps, training=False)
    torch.testing.assert_close(sparsemixer_gates(logits, kept, jitter_eps, blocked), expected)
