"""The plain references the engine is checked against."""

import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.reference import DenseFFN


def test_single_expert_moe_matches_dense_ffn():
    """With one expert and top-1, every token goes to that expert with weight 1: the layer is a dense FFN."""
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=1, expert_types=("language",),
                         router=RouterConfig(top_k=1), expert=ExpertConfig(intermediate_size=64, dropout=0.0),
                         residual=False)
    system = PiMoESystem(config).eval()
    expert = system.experts[0]
    dense = DenseFFN(32, expert.width, activation=expert.activation)
    dense.up.load_state_dict(expert.up.state_dict())
    dense.down.load_state_dict(expert.down.state_dict())
    x = torch.randn(3, 7, 32)
    for dispatch in ("sorted", "loop", "dense_masked", "cuda_fast"):
        system.dispatch = dispatch
        torch.testing.assert_close(system(x), dense(x), rtol=1e-5, atol=1e-5)


def test_dense_ffn_matching_has_the_active_width_of_top_k_experts():
    system = PiMoESystem(PiMoEConfig(hidden_size=16, num_experts=4, expert_types=("language",),
                                     router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=24)))
    assert DenseFFN.matching(system).up.out_features == 2 * 24
