"""Configs nobody listed: for randomly drawn expert counts (one expert too), top-k, groups, shared experts, dense
layers, layer kinds (linear, sliding or indexed attention, Mamba) and activations, and each family's own features
(group fill, clamped or clipped SwiGLUs, softcapped router logits, zero-computation experts, latent projections), each
family's PiMoE model equals transformers' own (float32 logits). Draws transformers itself cannot run are skipped.
PIMOE_HF_DRAWS=150 searches longer (150 draws per family passed on 2026-12-07; 200 per family from mistral4 on,
on 2026-12-08)."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tf
from hf_tiny import ATTN, make_routing_decisive, moe_routers
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from pimoe.hf import load_hf_moe
from pimoe.hf.causal_lm import causal_lm_from_config

GENERATED_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "olmoe", "deepseek_v2", "deepseek_v3",
                      "deepseek_v32", "glm4_moe", "glm4_moe_lite", "minimax_m2", "ernie4_5_moe", "hunyuan_v1_moe",
                      "granitemoe", "phimoe", "dbrx", "llama4_text", "gpt_oss", "dots1", "flex_olmo", "minimax",
                      "granitemoeshared", "qwen3_5_moe_text", "exaone_moe", "solar_open", "jamba",
                      "kimi_linear", "glm_moe_dsa", "minicpm5_moe", "lfm2_moe", "afmoe",
                      "cohere2_moe", "mistral4", "mimo_v2_flash", "beam", "axk1", "axk2", "hy_v4", "hy_v3", "laguna",
                      "mellum", "kolibri1", "kolibri1_1", "flint", "lara_mini", "granitemoe_swa", "granitemoehybrid",
                      "nemotron_h", "qwen4_exp_text", "longcat_flash", "bailing_hybrid", "jetmoe",
                      "deepseek_v4", "ergo", "gemma4_text", "qwen3_vl_moe_text", "glm4v_moe_text")
MAX_EXAMPLES = int(os.environ.get("PIMOE_HF_DRAWS", "5"))  # more draws for a longer local search


def _layer_kinds(draw, layers: int, *kinds: str, needs: str | None = None) -> list[str]:
    """A drawn kind (attention, linear attention, Mamba, dense or sparse MLP ...) per layer; `needs`: that kind at a
    drawn layer at least (transformers' cache needs some attention layer; the test some MoE layer)."""
    drawn = draw(st.lists(st.sampled_from(kinds), min_size=layers, max_size=layers))
    if needs is not None:
        drawn[draw(st.integers(0, layers - 1))] = needs
    return drawn


def _mlp_layer_types(draw, layers: int) -> list[str]:
    """Drawn dense and sparse layers (mlp_layer_types), some sparse."""
    return _layer_kinds(draw, layers, "dense", "sparse", needs="sparse")


@st.composite
def family_config(draw, family: str):
    experts = draw(st.sampled_from([1, 2, 4, 6, 8, 12]))
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
    if family in ("qwen3_moe", "qwen3_next", "qwen3_5_moe_text"):
        step = draw(st.integers(1, 2))
        dense = draw(st.lists(st.integers(0, layers - 1), max_size=layers, unique=True))
        common = dict(**base, head_dim=8, intermediate_size=24, num_hidden_layers=layers, num_experts=experts,
                      num_experts_per_tok=top_k, moe_intermediate_size=16, norm_topk_prob=draw(st.booleans()),
                      decoder_sparse_step=step, mlp_only_layers=dense)
        if family == "qwen3_moe":
            return family, tf.Qwen3MoeConfig(**common)
        if family == "qwen3_5_moe_text":  # every layer MoE, always renormalised
            common = {k: v for k, v in common.items()
                      if k not in ("intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")}
        kinds = draw(st.lists(st.sampled_from(["linear_attention", "full_attention"]), min_size=layers,
                              max_size=layers))
        kinds[-1] = "full_attention"  # transformers' cache needs one (as every released Qwen3-Next has)
        linear = dict(shared_expert_intermediate_size=draw(st.sampled_from([8, 24])), layer_types=kinds,
                      linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
        if family == "qwen3_5_moe_text":
            return family, tf.Qwen3_5MoeTextConfig(**common, **linear)
        return family, tf.Qwen3NextConfig(**common, **linear)
    if family == "phimoe":  # the sparsemixer routes two experts
        return family, tf.PhimoeConfig(**base, intermediate_size=16, num_hidden_layers=layers,
                                       num_local_experts=max(experts, 2), num_experts_per_tok=2,
                                       router_jitter_noise=draw(st.sampled_from([0.0, 0.01, 0.2, 0.5])))
    if family == "dbrx":  # renormalised (p-norm 1) or not (None); the experts' own activation field
        return family, tf.DbrxConfig(d_model=32, n_heads=4, n_layers=layers, max_seq_len=64, vocab_size=101,
                                     attn_config={"kv_n_heads": draw(st.sampled_from([1, 2, 4])), "rope_theta": 1e4,
                                                  "clip_qkv": draw(st.sampled_from([None, 8.0]))},
                                     ffn_config={"ffn_hidden_size": 24, "moe_num_experts": experts, "moe_top_k": top_k,
                                                 "moe_normalize_expert_weights": draw(st.sampled_from([None, 1.0])),
                                                 "ffn_act_fn": {"name": base["hidden_act"]}})
    if family == "llama4_text":  # drawn MoE layers (the others dense), RoPE-free layers and attention chunks
        moe_layers = draw(st.lists(st.integers(0, layers - 1), min_size=1, max_size=layers, unique=True))
        return family, tf.Llama4TextConfig(**base, head_dim=8, intermediate_size=16, intermediate_size_mlp=24,
                                           num_hidden_layers=layers, num_local_experts=experts,
                                           num_experts_per_tok=top_k, moe_layers=sorted(moe_layers),
                                           no_rope_layers=draw(st.lists(st.integers(0, 1), min_size=layers,
                                                                        max_size=layers)),
                                           attention_chunk_size=draw(st.sampled_from([4, 8, 64])))
    if family == "gpt_oss":
        kinds = draw(st.lists(st.sampled_from(["sliding_attention", "full_attention"]), min_size=layers,
                              max_size=layers))
        return family, tf.GptOssConfig(**{**base, "num_key_value_heads": 2}, head_dim=8, intermediate_size=16,
                                       num_hidden_layers=layers, num_local_experts=experts, num_experts_per_tok=top_k,
                                       sliding_window=draw(st.sampled_from([4, 8])), layer_types=kinds)
    if family == "jamba":  # drawn Mamba / attention and MoE / dense layer patterns
        return family, tf.JambaConfig(**base, intermediate_size=24, num_hidden_layers=layers, num_experts=experts,
                                      num_experts_per_tok=top_k, expert_layer_period=draw(st.integers(1, 2)),
                                      expert_layer_offset=0, attn_layer_period=draw(st.integers(1, 2)),
                                      attn_layer_offset=0, use_mamba_kernels=False, mamba_d_state=4, mamba_expand=2,
                                      mamba_dt_rank=4)
    if family == "cohere2_moe":  # softmax or sigmoid over the top-k logits; shared experts summed or averaged
        dense = draw(st.integers(0, layers - 1))
        return family, tf.Cohere2MoeConfig(**base, head_dim=8, intermediate_size=16, prefix_dense_intermediate_size=24,
                                           num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=top_k,
                                           num_shared_experts=draw(st.integers(0, 2)),
                                           shared_expert_combination_strategy=draw(st.sampled_from(["sum", "average"])),
                                           expert_selection_fn=draw(st.sampled_from(["softmax", "sigmoid"])),
                                           norm_topk_prob=draw(st.booleans()),
                                           mlp_layer_types=["dense"] * dense + ["sparse"] * (layers - dense))
    if family in ("lfm2_moe", "afmoe"):
        dense = draw(st.integers(0, layers - 1))
        common = dict(**base, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=layers,
                      num_dense_layers=dense, num_experts=experts, num_experts_per_tok=top_k)
        if family == "afmoe":
            return family, tf.AfmoeConfig(**common, head_dim=8, num_shared_experts=draw(st.integers(1, 2)),
                                          route_scale=draw(st.sampled_from([1.0, 2.5])))
        kinds = draw(st.lists(st.sampled_from(["conv", "full_attention"]), min_size=layers, max_size=layers))
        return family, tf.Lfm2MoeConfig(**common, use_expert_bias=draw(st.booleans()), layer_types=kinds,
                                        routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                                        norm_topk_prob=draw(st.booleans()))
    if family == "flex_olmo":
        return family, tf.FlexOlmoConfig(**base, intermediate_size=24, num_hidden_layers=layers, num_experts=experts,
                                         num_experts_per_tok=top_k, norm_topk_prob=draw(st.booleans()))
    if family == "minimax":
        kinds = draw(st.lists(st.sampled_from(["linear_attention", "full_attention"]), min_size=layers,
                              max_size=layers))
        return family, tf.MiniMaxConfig(**base, head_dim=8, intermediate_size=16, num_hidden_layers=layers,
                                        num_local_experts=experts, num_experts_per_tok=top_k, layer_types=kinds,
                                        block_size=draw(st.sampled_from([2, 4])))
    if family == "olmoe":
        return family, tf.OlmoeConfig(**base, intermediate_size=24, num_hidden_layers=layers, num_experts=experts,
                                      num_experts_per_tok=top_k, norm_topk_prob=draw(st.booleans()))
    if family in ("deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe", "glm4_moe_lite", "dots1", "exaone_moe",
                  "solar_open", "kimi_linear", "glm_moe_dsa", "minicpm5_moe"):
        groups = draw(st.sampled_from([g for g in (1, 2) if experts % g == 0 and (g == 1 or experts // g >= 2)]))
        topk_group = draw(st.integers(1, groups))
        top_k = min(top_k, topk_group * experts // groups)
        common = dict(intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=layers,
                      n_routed_experts=experts, n_shared_experts=draw(st.integers(1, 2)), n_group=groups,
                      topk_group=topk_group, num_experts_per_tok=top_k,
                      first_k_dense_replace=draw(st.integers(0, layers - 1)),
                      routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])), norm_topk_prob=draw(st.booleans()))
        if family == "glm4_moe":
            return family, tf.Glm4MoeConfig(**base, **common, head_dim=8)
        if family == "dots1":
            return family, tf.Dots1Config(**base, **common, head_dim=8)
        if family == "exaone_moe":
            renamed = {"n_routed_experts": "num_experts", "n_shared_experts": "num_shared_experts"}
            return family, tf.ExaoneMoeConfig(**base, **{renamed.get(k, k): v for k, v in common.items()}, head_dim=8)
        if family == "solar_open":
            return family, tf.SolarOpenConfig(**base, **{k: v for k, v in common.items()
                                                         if k != "first_k_dense_replace"}, head_dim=8)
        mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
        mla_base = {**base, "num_key_value_heads": 4}
        if family == "deepseek_v3":
            return family, tf.DeepseekV3Config(**mla_base, **common, **mla)
        if family == "minicpm5_moe":
            dense = common.pop("first_k_dense_replace")
            return family, tf.MiniCPM5MoeConfig(**base, **common, head_dim=8,
                                                mlp_layer_types=["dense"] * dense + ["sparse"] * (layers - dense))
        if family == "glm_moe_dsa":
            return family, tf.GlmMoeDsaConfig(**mla_base, **common, **mla, index_topk=8, index_head_dim=16,
                                              index_n_heads=2, head_dim=8)
        if family == "kimi_linear":
            dense = common.pop("first_k_dense_replace")
            kinds = draw(st.lists(st.sampled_from(["linear_attention", "full_attention"]), min_size=layers,
                                  max_size=layers))
            kimi = {k: v for k, v in common.items() if k != "n_routed_experts"}
            return family, tf.KimiLinearConfig(**mla_base, **kimi, **mla, num_local_experts=experts, layer_types=kinds,
                                               mlp_layer_types=["dense"] * dense + ["sparse"] * (layers - dense),
                                               linear_head_dim=8, linear_num_heads=4)
        if family == "deepseek_v32":
            return family, tf.DeepseekV32Config(**mla_base, **common, **mla, index_topk=8, index_head_dim=16,
                                                index_n_heads=2, head_dim=8)
        if family == "glm4_moe_lite":  # no expert groups in this family's config
            lite = {k: v for k, v in common.items() if k not in ("n_group", "topk_group")}
            lite["num_experts_per_tok"] = top_k
            return family, tf.Glm4MoeLiteConfig(**mla_base, **lite, **mla)
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
    mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
    if family in ("mistral4", "axk1", "axk2", "hy_v4", "mimo_v2_flash", "beam", "nemotron_h", "bailing_hybrid"):
        # DeepSeek-V3-like routers: expert groups (A.X-K2: or none), drawn dense layers, scaling, renormalisation
        groups = draw(st.sampled_from([g for g in (1, 2, 4) if experts % g == 0 and (g == 1 or experts // g >= 2)]))
        topk_group = draw(st.integers(1, groups))
        if family not in ("mistral4", "axk2"):  # their groups are filled with 0.0: a top-k beyond the kept groups'
            top_k = min(top_k, topk_group * experts // groups)  # experts takes filled ones (group fill)
        routing = dict(num_hidden_layers=layers, moe_intermediate_size=16, intermediate_size=48, n_group=groups,
                       topk_group=topk_group, num_experts_per_tok=top_k, norm_topk_prob=draw(st.booleans()),
                       routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])))
        shared = draw(st.integers(1, 2))
        mla_base = {**base, "num_key_value_heads": 4}
        if family == "mistral4":  # a softmax router; the dense layers a prefix (first_k_dense_replace)
            return family, tf.Mistral4Config(**mla_base, **routing, **mla, n_routed_experts=experts,
                                             n_shared_experts=shared,
                                             first_k_dense_replace=draw(st.integers(0, layers - 1)))
        mlp_types = _mlp_layer_types(draw, layers)
        if family == "axk1":
            return family, tf.AXK1Config(**mla_base, **routing, **mla, n_routed_experts=experts,
                                         n_shared_experts=shared, mlp_layer_types=mlp_types)
        indexer = dict(index_topk=8, index_head_dim=16, index_n_heads=2)
        if family == "axk2":  # no groups at all (A.X-K2-Light) or groups filled with 0.0
            if draw(st.booleans()):
                routing.update(n_group=None, topk_group=None)
            return family, tf.AXK2Config(**mla_base, **routing, **mla, **indexer, n_routed_experts=experts,
                                         n_shared_experts=shared, mlp_layer_types=mlp_types, gated_norm_rank=4)
        if family == "hy_v4":  # routed experts clamped at swiglu_limit: small enough to bite (0.05) or not (10)
            return family, tf.HYV4Config(**mla_base, **routing, **mla, **indexer, n_routed_experts=experts,
                                         n_shared_experts=shared, mlp_layer_types=mlp_types,
                                         hc_mult=draw(st.integers(2, 3)),
                                         swiglu_limit=draw(st.sampled_from([0.05, 0.5, 10.0])))
        attn_kinds = _layer_kinds(draw, layers, "sliding_attention", "full_attention")
        if family == "mimo_v2_flash":  # no shared experts; sliding-window layers
            return family, tf.MiMoV2FlashConfig(**base, **routing, head_dim=8, v_head_dim=8, n_routed_experts=experts,
                                                mlp_layer_types=mlp_types, layer_types=attn_kinds,
                                                sliding_window=draw(st.sampled_from([3, 5])))
        if family == "beam":  # no shared experts; the block scales the summed experts
            return family, tf.BeamConfig(**base, **routing, head_dim=8, num_experts=experts, mlp_layer_types=mlp_types,
                                         layer_types=attn_kinds, sliding_window=draw(st.sampled_from([2, 4])))
        if family == "nemotron_h":  # drawn Mamba-2 / attention / MLP / MoE layers, the first Mamba-2 or attention
            # and some attention (transformers' cache needs both); ungated experts, optionally between latent
            # projections
            mixers = ["linear_attention", "full_attention"]
            kinds = _layer_kinds(draw, 1, *mixers) + _layer_kinds(draw, layers, *mixers, "mlp", "moe", needs="moe")
            if "full_attention" not in kinds:
                kinds.insert(draw(st.integers(0, len(kinds))), "full_attention")
            routing.pop("num_hidden_layers")
            return family, tf.NemotronHConfig(**{k: v for k, v in base.items() if k != "hidden_act"}, **routing,
                                              head_dim=8, n_routed_experts=experts, layers_block_type=kinds,
                                              moe_shared_expert_intermediate_size=draw(st.sampled_from([8, 24])),
                                              moe_latent_size=draw(st.sampled_from([None, 16, 48])),
                                              mlp_bias=draw(st.booleans()),
                                              mlp_hidden_act=draw(st.sampled_from(["relu2", "relu", "silu", "gelu"])),
                                              use_mamba_kernels=False, mamba_num_heads=4, mamba_head_dim=16,
                                              ssm_state_size=8, n_groups=1, chunk_size=8)
        # Bailing-Hybrid: KDA / MLA layers; each layer's routed and shared SwiGLUs clipped (0: not) at limits the
        # tiny model's activations reach or not
        limits = st.lists(st.sampled_from([0, 0, 0.03, 0.1, 5.0]), min_size=layers, max_size=layers)
        return family, tf.BailingHybridConfig(**mla_base, **routing, **mla, head_dim=8, num_local_experts=experts,
                                              n_shared_experts=shared, mlp_layer_types=mlp_types,
                                              layer_types=_layer_kinds(draw, layers, "linear_attention",
                                                                       "full_attention", needs="full_attention"),
                                              expert_swiglu_limit_list=draw(limits),
                                              share_expert_swiglu_limit_list=draw(limits))
    if family == "hy_v3":  # always renormalised; the block's correction bias; one or two shared experts' width
        return family, tf.HYV3Config(**base, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
                                     num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=top_k,
                                     num_shared_experts=draw(st.integers(1, 2)),
                                     router_scaling_factor=draw(st.sampled_from([1.0, 2.826])),
                                     enable_moe_fp32_combine=draw(st.booleans()),
                                     mlp_layer_types=_mlp_layer_types(draw, layers))
    if family == "laguna":  # softcapped router logits (0: off; small: it bites), scaled experts, per-layer heads
        return family, tf.LagunaConfig(**base, head_dim=8, intermediate_size=24, moe_intermediate_size=16,
                                       shared_expert_intermediate_size=draw(st.sampled_from([8, 24])),
                                       num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=top_k,
                                       mlp_layer_types=_mlp_layer_types(draw, layers),
                                       moe_routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                                       moe_router_logit_softcapping=draw(st.sampled_from([0.0, 0.5, 1.5, 30.0])),
                                       num_attention_heads_per_layer=draw(st.lists(st.sampled_from([2, 4]),
                                                                                   min_size=layers, max_size=layers)),
                                       layer_types=_layer_kinds(draw, layers, "sliding_attention", "full_attention"),
                                       sliding_window=draw(st.sampled_from([2, 4])))
    if family == "mellum":  # Qwen3-MoE's router; drawn dense and sliding-window layers
        return family, tf.MellumConfig(**base, head_dim=8, intermediate_size=24, moe_intermediate_size=16,
                                       num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=top_k,
                                       norm_topk_prob=draw(st.booleans()),
                                       mlp_layer_types=_mlp_layer_types(draw, layers),
                                       layer_types=_layer_kinds(draw, layers, "sliding_attention", "full_attention"),
                                       sliding_window=draw(st.sampled_from([2, 4])))
    if family in ("kolibri1", "kolibri1_1", "flint", "lara_mini"):  # a shared expert added in full
        common = dict(**base, moe_intermediate_size=16, num_hidden_layers=layers, num_experts=experts,
                      num_experts_per_tok=top_k, norm_topk_prob=draw(st.booleans()),
                      shared_expert_intermediate_size=draw(st.sampled_from([8, 24])),
                      sliding_window=draw(st.sampled_from([2, 4])))
        dense = draw(st.lists(st.integers(0, layers - 1), max_size=layers - 1, unique=True))  # some layer sparse
        if family == "kolibri1":  # every layer sparse
            return family, tf.Kolibri1Config(**common, head_dim=8, layer_types=_layer_kinds(
                draw, layers, "sliding_attention", "full_attention"))
        if family == "kolibri1_1":  # sliding or indexed attention (whose key budget the 9 tokens exceed or not)
            return family, tf.Kolibri1_1Config(**common, head_dim=16, mlp_only_layers=sorted(dense),
                                               mlp_only_intermediate_size=24, layer_types=_layer_kinds(
                                                   draw, layers, "sliding_attention", "indexed_attention"),
                                               index_topk=draw(st.sampled_from([4, 16])), index_pool_size=8,
                                               index_compression=2, index_num_heads=2, index_num_local_tokens=2,
                                               index_num_sink_tokens=1)
        if family == "flint":  # dense layers by mlp_only_layers and decoder_sparse_step; attention sinks
            return family, tf.FlintConfig(**common, head_dim=8, intermediate_size=24, mlp_only_layers=sorted(dense),
                                          decoder_sparse_step=draw(st.integers(1, min(2, layers))),
                                          layer_types=_layer_kinds(draw, layers, "sliding_attention", "full_attention"))
        return family, tf.LaraMiniConfig(**common, head_dim=8, layer_types=_layer_kinds(
            draw, layers, "linear_attention", "sliding_attention", "full_attention"), linear_num_key_heads=2,
            linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
    if family == "qwen4_exp_text":  # Qwen3-Next's block; linear or indexed attention, hyper-connections
        return family, tf.Qwen4ExpTextConfig(**base, head_dim=8, num_hidden_layers=layers, moe_intermediate_size=16,
                                             shared_expert_intermediate_size=draw(st.sampled_from([8, 24])),
                                             num_experts=experts, num_experts_per_tok=top_k,
                                             norm_topk_prob=draw(st.booleans()),
                                             output_gate_type=draw(st.sampled_from(["sigmoid", "silu"])),
                                             layer_types=_layer_kinds(draw, layers, "linear_attention",
                                                                      "indexed_attention", needs="indexed_attention"),
                                             linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                                             linear_value_head_dim=8, hc_count=draw(st.integers(2, 3)), hc_lowrank=8,
                                             indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8,
                                             indexer_budget=draw(st.sampled_from([4, 16])), indexer_compress_ratio=2)
    if family == "longcat_flash":  # zero-computation experts (none or some) beside the routed ones
        zero = draw(st.sampled_from([0, 1, 2, 4]))
        return family, tf.LongcatFlashConfig(**{**base, "num_key_value_heads": 4}, **mla, head_dim=8,
                                             num_layers=draw(st.integers(1, 2)), ffn_hidden_size=24,
                                             expert_ffn_hidden_size=16, n_routed_experts=experts,
                                             zero_expert_num=zero,
                                             moe_topk=draw(st.integers(1, min(experts + zero, 4))),
                                             routed_scaling_factor=draw(st.sampled_from([1.0, 2.5, 6.0])))
    if family == "deepseek_v4":  # hash layers first (transformers' own), then routed ones; both score functions;
        # every SwiGLU capped before the activation at a limit that bites (0.05) or not
        hashed = draw(st.integers(0, layers - 1))
        return family, tf.DeepseekV4Config(**{**base, "num_key_value_heads": 1}, moe_intermediate_size=16,
                                           num_hidden_layers=layers, head_dim=16, q_lora_rank=16,
                                           num_experts_per_tok=top_k, n_routed_experts=experts,
                                           n_shared_experts=draw(st.integers(1, 2)),
                                           scoring_func=draw(st.sampled_from(["sqrtsoftplus", "sigmoid"])),
                                           routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                                           swiglu_limit=draw(st.sampled_from([0.05, 10.0])),
                                           mlp_layer_types=["hash_moe"] * hashed + ["moe"] * (layers - hashed),
                                           layer_types=_layer_kinds(draw, layers, "heavily_compressed_attention",
                                                                    "compressed_sparse_attention"),
                                           compress_rates={"compressed_sparse_attention": 2,
                                                           "heavily_compressed_attention": 4},
                                           hc_mult=2, hc_sinkhorn_iters=3, sliding_window=4, o_groups=2,
                                           o_lora_rank=8, index_n_heads=2, index_head_dim=8, index_topk=2)
    if family == "ergo":  # drawn dense leading blocks, global attention every n layers, scaling
        return family, tf.ErgoConfig(**{k: v for k, v in base.items() if k != "hidden_act"}, head_dim=8,
                                     num_hidden_layers=layers, first_dense_intermediate_size=48,
                                     num_dense_blocks=draw(st.integers(0, layers - 1)), moe_intermediate_size=16,
                                     shared_intermediate_size=draw(st.sampled_from([8, 24])), num_experts=experts,
                                     num_experts_per_tok=top_k, sliding_window=draw(st.sampled_from([4, 8])),
                                     global_attention_every_n_layers=draw(st.integers(1, 2)),
                                     moe_routed_scaling_factor=draw(st.sampled_from([1.0, 2.0])))
    if family == "gemma4_text":  # every layer's router and experts beside its dense MLP; sliding / full layers,
        # per-layer input embeddings on or off
        per_layer = draw(st.sampled_from([0, 8]))
        return family, tf.Gemma4TextConfig(**{k: v for k, v in base.items() if k != "hidden_act"}, head_dim=8,
                                           global_head_dim=16, intermediate_size=24, num_hidden_layers=layers,
                                           enable_moe_block=True, num_experts=experts, top_k_experts=top_k,
                                           moe_intermediate_size=16, sliding_window=draw(st.sampled_from([4, 8])),
                                           layer_types=_layer_kinds(draw, layers, "sliding_attention",
                                                                    "full_attention"),
                                           hidden_size_per_layer_input=per_layer,
                                           vocab_size_per_layer_input=101 if per_layer else 0,
                                           final_logit_softcapping=draw(st.sampled_from([None, 30.0])))
    if family in ("qwen3_vl_moe_text", "glm4v_moe_text"):  # whole multimodal models (a one-block vision tower)
        rope = dict(rope_type="default", rope_theta=10000.0)
        vision = dict(depth=1, hidden_size=32, num_heads=4, intermediate_size=16, out_hidden_size=32, patch_size=4)
        if family == "qwen3_vl_moe_text":  # dense mlp_only_layers, sparse steps, interleaved mrope or not
            text = tf.Qwen3VLMoeTextConfig(**base, head_dim=8, intermediate_size=24, moe_intermediate_size=12,
                                           num_hidden_layers=layers, num_experts=experts, num_experts_per_tok=top_k,
                                           decoder_sparse_step=draw(st.integers(1, 2)),
                                           mlp_only_layers=draw(st.lists(st.integers(0, layers - 1), unique=True,
                                                                         max_size=layers - 1)),
                                           rope_parameters=dict(**rope, mrope_section=[2, 1, 1],
                                                                mrope_interleaved=draw(st.booleans())))
            return family, tf.Qwen3VLMoeConfig(text_config=text.to_dict(), tie_word_embeddings=False,
                                               vision_config=dict(**vision, deepstack_visual_indexes=[0],
                                                                  num_position_embeddings=16))
        groups = draw(st.sampled_from([g for g in (1, 2) if experts % g == 0 and (g == 1 or experts // g >= 2)]))
        topk_group = draw(st.integers(1, groups))
        text = tf.Glm4vMoeTextConfig(**base, intermediate_size=48, moe_intermediate_size=12, num_hidden_layers=layers,
                                     n_routed_experts=experts, n_shared_experts=draw(st.integers(1, 2)),
                                     n_group=groups, topk_group=topk_group,
                                     num_experts_per_tok=min(top_k, topk_group * experts // groups),
                                     first_k_dense_replace=draw(st.integers(0, layers - 1)),
                                     routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                                     norm_topk_prob=draw(st.booleans()),
                                     rope_parameters=dict(**rope, mrope_section=[1, 1, 0], partial_rotary_factor=0.5))
        return family, tf.Glm4vMoeConfig(text_config=text.to_dict(), vision_config=dict(**vision, image_size=16),
                                         tie_word_embeddings=False)
    if family == "jetmoe":  # the experts' own activation field; attention heads are kv heads times top-k
        return family, tf.JetMoeConfig(**{k: v for k, v in base.items() if k not in ("num_attention_heads",
                                                                                     "hidden_act")},
                                       activation_function=base["hidden_act"], kv_channels=8, intermediate_size=16,
                                       num_hidden_layers=layers, num_local_experts=experts, num_experts_per_tok=top_k)
    granite = dict(**base, intermediate_size=16, num_hidden_layers=layers, num_local_experts=experts,
                   num_experts_per_tok=top_k, residual_multiplier=draw(st.sampled_from([1.0, 0.5])))
    if family == "granitemoe_swa":  # full or sliding attention, per-layer RoPE (0: NoPE), an optional shared MLP
        return family, tf.GraniteMoeSWAConfig(**granite, shared_intermediate_size=draw(st.sampled_from([0, 24])),
                                              layer_types=_layer_kinds(draw, layers, "sliding_attention",
                                                                       "full_attention"),
                                              sliding_window=draw(st.sampled_from([2, 4])),
                                              layer_rope_theta=draw(st.lists(st.sampled_from([10000.0, 0]),
                                                                             min_size=layers, max_size=layers)))
    if family == "granitemoehybrid":  # Mamba-2 or attention layers (with or without RoPE), a shared MLP
        return family, tf.GraniteMoeHybridConfig(**granite, shared_intermediate_size=draw(st.sampled_from([8, 24])),
                                                 embedding_multiplier=draw(st.sampled_from([1.0, 2.0])),
                                                 position_embedding_type=draw(st.sampled_from([None, "rope"])),
                                                 layer_types=_layer_kinds(draw, layers, "linear_attention",
                                                                          "full_attention", needs="full_attention"),
                                                 mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4,
                                                 mamba_expand=2, mamba_chunk_size=8)
    if family == "granitemoeshared":
        return family, tf.GraniteMoeSharedConfig(**granite, shared_intermediate_size=draw(st.sampled_from([0, 24])))
    return family, tf.GraniteMoeConfig(**granite)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("family", GENERATED_FAMILIES)
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_a_drawn_config_runs_on_pimoe_as_in_transformers(tmp_path_factory, family, data, seed):
    try:
        _, config = data.draw(family_config(family))
    except AttributeError as error:  # an older transformers without this family's config class
        pytest.skip(f"transformers {tf.__version__}: {error}")
    torch.manual_seed(seed)
    reference = causal_lm_from_config(config, dtype=torch.float32).eval()  # Mistral 4: not in the auto map
    assume(moe_routers(reference, family))  # some MoE layer
    make_routing_decisive(reference, family)
    ids = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            expected = reference(input_ids=ids).logits
    except (RuntimeError, ValueError, IndexError):  # e.g. DeepSeek's group score, a top-2 within a one-expert group
        reject()
    folder = tmp_path_factory.mktemp(family)
    reference.save_pretrained(folder)
    got = load_hf_moe(folder, device="cpu", dtype=torch.float32).trace(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
