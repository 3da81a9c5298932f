"""Configs nobody listed: for randomly drawn expert counts, top-k, groups, shared experts, dense layers and
activations, each family's PiMoE model equals transformers' own (float32 logits). Draws transformers itself cannot run
are skipped."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from hf_tiny import ATTN, ROUTER_CLASSES, make_routing_decisive
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pimoe.hf import load_hf_moe

GENERATED_FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "deepseek_v2", "deepseek_v3", "glm4_moe", "minimax_m2",
                      "ernie4_5_moe", "hunyuan_v1_moe", "granitemoe")


@st.composite
def family_config(draw, family: str):
    experts = draw(st.sampled_from([2, 4, 6, 8, 12]))
    top_k = draw(st.integers(1, min(experts, 4)))
    layers = draw(st.integers(1, 3))
    base = dict(ATTN, hidden_act=draw(st.sampled_from(["silu", "gelu", "relu"])))
    if family == "mixtral":
        return family, tf.MixtralConfig(**base, intermediate_size=24, num_hidden_layers=layers,
                                        num_local_experts=experts, num_experts_per_tok=top_k)
    if family == "qwen2_moe":
        return family, tf.Qwen2MoeConfig(**base, intermediate_size=24, num_hidden_layers=layers, num_experts=experts,
                                         num_experts_per_tok=top_k, moe_intermediate_size=16,
                                         shared_expert_intermediate_size=draw(st.sampled_from([8, 24])),
                                         norm_topk_prob=draw(st.booleans()), decoder_sparse_step=1,
                                         mlp_only_layers=[])
    if family == "olmoe":
        return family, tf.OlmoeConfig(**base, intermediate_size=24, num_hidden_layers=layers, num_experts=experts,
                                      num_experts_per_tok=top_k, norm_topk_prob=draw(st.booleans()))
    if family in ("deepseek_v2", "deepseek_v3", "glm4_moe"):
        groups = draw(st.sampled_from([g for g in (1, 2) if experts % g == 0 and experts // g >= 2]))
        topk_group = draw(st.integers(1, groups))
        top_k = min(top_k, topk_group * experts // groups)
        common = dict(intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=layers,
                      n_routed_experts=experts, n_shared_experts=draw(st.integers(1, 2)), n_group=groups,
                      topk_group=topk_group, num_experts_per_tok=top_k,
                      first_k_dense_replace=draw(st.integers(0, layers - 1)),
                      routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])), norm_topk_prob=draw(st.booleans()))
        if family == "glm4_moe":
            return family, tf.Glm4MoeConfig(**base, **common, head_dim=8)
        mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
        if family == "deepseek_v3":
            return family, tf.DeepseekV3Config(**{**base, "num_key_value_heads": 4}, **common, **mla)
        method = draw(st.sampled_from(["greedy", "group_limited_greedy"]))
        return family, tf.DeepseekV2Config(**{**base, "num_key_value_heads": 4}, **common, **mla, topk_method=method)
    if family == "minimax_m2":
        return family, tf.MiniMaxM2Config(**base, head_dim=8, intermediate_size=16, num_hidden_layers=layers,
                                          num_local_experts=experts, num_experts_per_tok=top_k)
    if family == "ernie4_5_moe":
        return family, tf.Ernie4_5_MoeConfig(**base, intermediate_size=48, moe_intermediate_size=16,
                                             num_hidden_layers=layers, moe_num_experts=experts, moe_k=top_k,
                                             moe_num_shared_experts=draw(st.integers(0, 2)),
                                             moe_layer_start_index=draw(st.integers(0, layers - 1)),
                                             moe_layer_end_index=layers - 1, moe_layer_interval=1)
    if family == "hunyuan_v1_moe":
        return family, tf.HunYuanMoEV1Config(**base, head_dim=8, intermediate_size=16, num_hidden_layers=layers,
                                             num_experts=experts, moe_topk=top_k)
    return family, tf.GraniteMoeConfig(**base, intermediate_size=16, num_hidden_layers=layers,
                                       num_local_experts=experts, num_experts_per_tok=top_k,
                                       residual_multiplier=draw(st.sampled_from([1.0, 0.5])))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("family", GENERATED_FAMILIES)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_a_drawn_config_runs_on_pimoe_as_in_transformers(tmp_path_factory, family, data, seed):
    _, config = data.draw(family_config(family))
    torch.manual_seed(seed)
    reference = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    assume(any(type(m).__name__ == ROUTER_CLASSES[family] for m in reference.modules()))  # some MoE layer
    make_routing_decisive(reference, family)
    ids = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    folder = tmp_path_factory.mktemp(family)
    reference.save_pretrained(folder)
    got = load_hf_moe(folder, device="cpu", dtype=torch.float32).trace(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
