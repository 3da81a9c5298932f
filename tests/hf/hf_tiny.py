"""Tiny random transformers MoE models of every supported family, built from config classes (no download)."""

from __future__ import annotations

import inspect

import torch

from pimoe.hf.families import SUPPORTED_FAMILIES

ATTN = dict(vocab_size=101, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def tiny_config(family: str):
    """The family's tiny config; the test is skipped where the installed transformers lacks the family."""
    import transformers as tf

    try:
        return _tiny_config(tf, family)
    except AttributeError as error:  # e.g. a GPU machine's older transformers (5.17) without FlexOlmo or dots.llm1
        # "module 'transformers' has no attribute X" (5.2x) or "module transformers has no attribute X" (5.17)
        if not str(error).replace("'", "").startswith("module transformers has no attribute"):
            raise
        import pytest

        pytest.skip(f"transformers {tf.__version__} has no {family}: {error}")


def _tiny_config(tf, family: str):
    if family == "mixtral":
        return tf.MixtralConfig(**ATTN, intermediate_size=24, num_hidden_layers=2, num_local_experts=4,
                                num_experts_per_tok=2)
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(**ATTN, intermediate_size=24, num_hidden_layers=2, num_experts=6,
                                 num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                                 norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[])
    if family == "qwen3_moe":  # layer 1 dense (mlp_only_layers): it must stay transformers' own MLP
        return tf.Qwen3MoeConfig(**ATTN, head_dim=8, intermediate_size=24, num_hidden_layers=3, num_experts=6,
                                 num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                                 decoder_sparse_step=1, mlp_only_layers=[1])
    if family == "olmoe":
        return tf.OlmoeConfig(**ATTN, intermediate_size=24, num_hidden_layers=2, num_experts=8, num_experts_per_tok=3,
                              norm_topk_prob=False)
    if family == "deepseek_v3":  # first layer dense, 8 experts in 4 groups, 2 groups per token
        return tf.DeepseekV3Config(**{**ATTN, "num_key_value_heads": 4}, intermediate_size=48, moe_intermediate_size=16,
                                   num_hidden_layers=3,
                                   n_routed_experts=8, n_shared_experts=1, n_group=4, topk_group=2,
                                   num_experts_per_tok=3, first_k_dense_replace=1, routed_scaling_factor=2.5,
                                   kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                   v_head_dim=8, norm_topk_prob=True)
    if family == "deepseek_v2":  # first layer dense, group-limited: 8 experts in 4 groups, 2 groups per token
        return tf.DeepseekV2Config(**{**ATTN, "num_key_value_heads": 4}, intermediate_size=48, moe_intermediate_size=16,
                                   num_hidden_layers=3, n_routed_experts=8, n_shared_experts=2, n_group=4, topk_group=2,
                                   topk_method="group_limited_greedy", num_experts_per_tok=3, first_k_dense_replace=1,
                                   routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
                                   qk_nope_head_dim=8, v_head_dim=8)
    if family == "deepseek_v32":  # V3's MoE beside the sparse attention's indexer
        return tf.DeepseekV32Config(**{**ATTN, "num_key_value_heads": 4}, intermediate_size=48,
                                    moe_intermediate_size=16,
                                    num_hidden_layers=2, n_routed_experts=8, n_shared_experts=1, n_group=2,
                                    topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
                                    routed_scaling_factor=2.0, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                                    qk_nope_head_dim=8, v_head_dim=8, index_topk=8, index_head_dim=16, index_n_heads=2,
                                    head_dim=8, norm_topk_prob=True)
    if family == "glm4_moe_lite":  # MLA attention, dense first layer
        return tf.Glm4MoeLiteConfig(**{**ATTN, "num_key_value_heads": 4}, intermediate_size=48,
                                    moe_intermediate_size=16, num_hidden_layers=2, n_routed_experts=8,
                                    n_shared_experts=1, num_experts_per_tok=3, first_k_dense_replace=1,
                                    routed_scaling_factor=1.8, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                                    qk_nope_head_dim=8, v_head_dim=8, norm_topk_prob=True)
    if family == "ernie4_5_moe":  # layer 0 dense (moe_layer_start_index), two shared experts
        return tf.Ernie4_5_MoeConfig(**ATTN, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                                     moe_num_experts=6, moe_k=2, moe_num_shared_experts=2, moe_layer_start_index=1,
                                     moe_layer_end_index=2, moe_layer_interval=1)
    if family == "granitemoe":
        return tf.GraniteMoeConfig(**ATTN, intermediate_size=16, num_hidden_layers=2, num_local_experts=5,
                                   num_experts_per_tok=2, embedding_multiplier=2.0, residual_multiplier=0.5,
                                   logits_scaling=2.0, attention_multiplier=0.2)
    if family == "hunyuan_v1_moe":  # every layer MoE, a shared MLP beside each
        return tf.HunYuanMoEV1Config(**ATTN, head_dim=8, intermediate_size=16, num_hidden_layers=2, num_experts=6,
                                     moe_topk=2)
    if family == "minimax_m2":
        return tf.MiniMaxM2Config(**ATTN, head_dim=8, intermediate_size=16, num_hidden_layers=2, num_local_experts=6,
                                  num_experts_per_tok=2)
    if family == "glm4_moe":  # first layer dense, 8 experts in 2 groups, 1 group per token, partial rotary
        return tf.Glm4MoeConfig(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
                                num_hidden_layers=2, n_routed_experts=8, n_shared_experts=1, n_group=2, topk_group=1,
                                num_experts_per_tok=2, first_k_dense_replace=1, routed_scaling_factor=1.5,
                                norm_topk_prob=True, partial_rotary_factor=0.5, use_qk_norm=True)
    if family == "qwen3_next":  # a linear-attention layer, then a full-attention one
        return tf.Qwen3NextConfig(**ATTN, head_dim=8, intermediate_size=24, num_hidden_layers=2, num_experts=6,
                                  num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                                  norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                                  layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                                  linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
    if family == "phimoe":  # LayerNorms with biases, attention with biases, the sparsemixer's window 0.2
        return tf.PhimoeConfig(**ATTN, intermediate_size=16, num_hidden_layers=2, num_local_experts=6,
                               num_experts_per_tok=2, router_jitter_noise=0.2)
    if family == "dbrx":  # layers at transformer.blocks, experts as flat (E * F, D) matrices, clipped qkv
        return tf.DbrxConfig(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=101, pad_token_id=0,
                             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                             attn_config={"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
                             ffn_config={"ffn_hidden_size": 24, "moe_num_experts": 6, "moe_top_k": 2})
    if family == "llama4_text":  # layer 0 dense (moe_layers), top-1 as Scout and Maverick, a shared expert
        return tf.Llama4TextConfig(**ATTN, head_dim=8, intermediate_size=16, intermediate_size_mlp=24,
                                   num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=1, moe_layers=[1],
                                   no_rope_layers=[1, 0], attention_chunk_size=8)
    if family == "dots1":  # DeepSeek-V3's router: first layer dense, 8 experts in 2 groups
        return tf.Dots1Config(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                              n_routed_experts=8, n_shared_experts=1, n_group=2, topk_group=1, num_experts_per_tok=2,
                              first_k_dense_replace=1, routed_scaling_factor=2.0, norm_topk_prob=True)
    if family == "flex_olmo":
        return tf.FlexOlmoConfig(**ATTN, intermediate_size=24, num_hidden_layers=2, num_experts=6,
                                 num_experts_per_tok=2, norm_topk_prob=True)
    if family == "minimax":  # a linear (lightning) attention layer, then a full one
        return tf.MiniMaxConfig(**ATTN, head_dim=8, intermediate_size=16, num_hidden_layers=2, num_local_experts=4,
                                num_experts_per_tok=2, layer_types=["linear_attention", "full_attention"], block_size=4)
    if family == "granitemoeshared":  # a shared MLP in every decoder layer, beside the MoE block
        return tf.GraniteMoeSharedConfig(**ATTN, intermediate_size=16, shared_intermediate_size=24,
                                         num_hidden_layers=2, num_local_experts=5, num_experts_per_tok=2,
                                         residual_multiplier=0.5)
    if family == "qwen3_5_moe_text":  # a linear-attention layer, then a full-attention one
        return tf.Qwen3_5MoeTextConfig(**ATTN, head_dim=8, num_hidden_layers=2, num_experts=6, num_experts_per_tok=2,
                                       moe_intermediate_size=16, shared_expert_intermediate_size=24,
                                       layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                                       linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
    if family in ("kimi_linear", "glm_moe_dsa"):  # MLA attention, DeepSeek-V3's router, a dense first layer
        mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                   intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2, n_shared_experts=1, n_group=2,
                   topk_group=1, num_experts_per_tok=2, routed_scaling_factor=2.0, norm_topk_prob=True)
        attn = {**ATTN, "num_key_value_heads": 4}
        if family == "kimi_linear":  # a linear (KDA) layer, then MLA; the first MLP dense
            return tf.KimiLinearConfig(**attn, **mla, num_local_experts=8, layer_types=["linear_attention",
                                       "full_attention"], mlp_layer_types=["dense", "sparse"], linear_head_dim=8,
                                       linear_num_heads=4)
        return tf.GlmMoeDsaConfig(**attn, **mla, n_routed_experts=8, first_k_dense_replace=1,
                                  mlp_layer_types=["dense", "sparse"], index_topk=8, index_head_dim=16, index_n_heads=2,
                                  head_dim=8)
    if family == "cohere2_moe":  # a dense first layer, a shared expert averaged with the routed mixture
        return tf.Cohere2MoeConfig(**ATTN, head_dim=8, intermediate_size=16, prefix_dense_intermediate_size=24,
                                   num_hidden_layers=2, num_experts=6, num_experts_per_tok=2, num_shared_experts=1,
                                   shared_expert_combination_strategy="average", expert_selection_fn="sigmoid",
                                   norm_topk_prob=True, mlp_layer_types=["dense", "sparse"])
    if family == "minicpm5_moe":  # DeepSeek-V3's router, a dense first layer
        return tf.MiniCPM5MoeConfig(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
                                    num_hidden_layers=2, n_routed_experts=8, n_shared_experts=1, n_group=2,
                                    topk_group=1,
                                    num_experts_per_tok=2, routed_scaling_factor=2.0, norm_topk_prob=True,
                                    mlp_layer_types=["dense", "sparse"])
    if family == "lfm2_moe":  # a short-convolution layer, then attention; the first MLP dense; an expert bias
        return tf.Lfm2MoeConfig(**ATTN, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                                num_dense_layers=1, num_experts=6, num_experts_per_tok=2, use_expert_bias=True,
                                routed_scaling_factor=1.5, norm_topk_prob=True,
                                layer_types=["conv", "full_attention", "conv"])
    if family == "afmoe":  # the first layer dense, a shared expert, route_scale
        return tf.AfmoeConfig(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                              num_dense_layers=1, num_experts=6, num_experts_per_tok=2, num_shared_experts=1,
                              route_scale=2.0)
    if family in ("exaone_moe", "solar_open"):  # DeepSeek-V3's router: 8 experts in 2 groups, a dense first layer
        common = dict(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                      n_group=2, topk_group=1, num_experts_per_tok=2, routed_scaling_factor=2.0, norm_topk_prob=True)
        if family == "exaone_moe":
            return tf.ExaoneMoeConfig(**common, num_experts=8, num_shared_experts=1, first_k_dense_replace=1)
        return tf.SolarOpenConfig(**common, n_routed_experts=8, n_shared_experts=1)
    if family == "jamba":  # a Mamba layer, then attention; both with MoE (torch's Mamba path, no kernels)
        return tf.JambaConfig(**ATTN, intermediate_size=24, num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                              expert_layer_period=1, expert_layer_offset=0, attn_layer_period=2, attn_layer_offset=1,
                              use_mamba_kernels=False, mamba_d_state=4, mamba_expand=2, mamba_dt_rank=4)
    if family == "gpt_oss":
        return tf.GptOssConfig(**{**ATTN, "num_key_value_heads": 2}, head_dim=8, intermediate_size=16,
                               num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                               layer_types=["sliding_attention", "full_attention"])
    if family in ("mistral4", "axk1", "axk2", "hy_v4"):  # DeepSeek-V3's block: MLA, a dense first layer, 8 experts
        # in 4 groups, 2 groups per token, two shared experts
        common = dict(**{**ATTN, "num_key_value_heads": 4}, intermediate_size=48, moe_intermediate_size=16,
                      num_hidden_layers=3, n_routed_experts=8, n_shared_experts=2, n_group=4, topk_group=2,
                      num_experts_per_tok=3, norm_topk_prob=True, kv_lora_rank=16, q_lora_rank=24,
                      qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
        if family == "mistral4":  # a softmax router, groups filled with 0.0
            return tf.Mistral4Config(**common, first_k_dense_replace=1, routed_scaling_factor=1.5)
        layered = dict(**common, routed_scaling_factor=2.5, mlp_layer_types=["dense", "sparse", "sparse"])
        if family == "axk1":  # an RMSNorm on the block's output
            return tf.AXK1Config(**layered)
        indexer = dict(index_topk=8, index_head_dim=16, index_n_heads=2)
        if family == "axk2":  # groups filled with 0.0; gated norms, sparse attention
            return tf.AXK2Config(**layered, **indexer, gated_norm_rank=4)
        # clamped experts, with a limit low enough to bite on the tiny experts' activations; hyper-connections
        return tf.HYV4Config(**layered, **indexer, hc_mult=2, swiglu_limit=0.05)
    if family in ("mimo_v2_flash", "beam"):  # DeepSeek-V3's router, no shared experts, a dense first layer
        common = dict(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                      n_group=4, topk_group=2, num_experts_per_tok=3, routed_scaling_factor=2.5, norm_topk_prob=True,
                      mlp_layer_types=["dense", "sparse", "sparse"])
        if family == "mimo_v2_flash":
            return tf.MiMoV2FlashConfig(**common, v_head_dim=8, n_routed_experts=8, sliding_window=5,
                                        layer_types=["full_attention", "sliding_attention", "full_attention"])
        return tf.BeamConfig(**common, num_experts=8, sliding_window=4,
                             layer_types=["sliding_attention", "full_attention", "full_attention"])
    if family == "hy_v3":  # the first layer dense, a correction bias on the block, two shared experts' width
        return tf.HYV3Config(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                             num_experts=8, num_experts_per_tok=3, num_shared_experts=2, router_scaling_factor=2.826,
                             mlp_layer_types=["dense", "sparse", "sparse"])
    if family == "laguna":  # the first MLP dense; softcapped router logits; per-layer head counts, a sliding layer
        return tf.LagunaConfig(**ATTN, head_dim=8, intermediate_size=24, moe_intermediate_size=16,
                               shared_expert_intermediate_size=20, num_hidden_layers=3, num_experts=8,
                               num_experts_per_tok=3, mlp_layer_types=["dense", "sparse", "sparse"],
                               moe_routed_scaling_factor=2.5, moe_router_logit_softcapping=1.5,
                               num_attention_heads_per_layer=[4, 2, 4],
                               layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=8)
    if family == "mellum":  # the first MLP dense, a sliding-window layer, then full attention
        return tf.MellumConfig(**ATTN, head_dim=8, intermediate_size=24, moe_intermediate_size=16, num_hidden_layers=3,
                               num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                               mlp_layer_types=["dense", "sparse", "sparse"],
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               sliding_window=8)
    if family == "kolibri1":  # every layer sparse; a sliding-window layer, then full attention
        return tf.Kolibri1Config(**ATTN, head_dim=8, moe_intermediate_size=16, shared_expert_intermediate_size=20,
                                 num_hidden_layers=2, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True,
                                 layer_types=["sliding_attention", "full_attention"], sliding_window=8)
    if family == "kolibri1_1":  # the first MLP dense; an indexed attention layer whose key budget 12 tokens exceed
        return tf.Kolibri1_1Config(**ATTN, head_dim=16, moe_intermediate_size=16, shared_expert_intermediate_size=20,
                                   mlp_only_layers=[0], mlp_only_intermediate_size=24, num_hidden_layers=3,
                                   num_experts=8, num_experts_per_tok=3, norm_topk_prob=True,
                                   layer_types=["sliding_attention", "indexed_attention", "sliding_attention"],
                                   sliding_window=8, index_topk=4, index_pool_size=8, index_compression=2,
                                   index_num_heads=2, index_num_local_tokens=2, index_num_sink_tokens=1)
    if family == "flint":  # the first MLP dense; full attention, then sliding window; attention sinks
        return tf.FlintConfig(**ATTN, head_dim=8, intermediate_size=24, moe_intermediate_size=16,
                              shared_expert_intermediate_size=20, num_hidden_layers=3, num_experts=6,
                              num_experts_per_tok=3, norm_topk_prob=True, mlp_only_layers=[0],
                              layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=8)
    if family == "lara_mini":  # a gated-delta-net layer, a sliding one, a full one; no renormalisation
        return tf.LaraMiniConfig(**ATTN, head_dim=8, num_hidden_layers=3, num_experts=8, num_experts_per_tok=3,
                                 moe_intermediate_size=16, shared_expert_intermediate_size=24, norm_topk_prob=False,
                                 sliding_window=4,
                                 layer_types=["linear_attention", "sliding_attention", "full_attention"],
                                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                                 linear_value_head_dim=8)
    if family == "granitemoe_swa":  # full then sliding (NoPE) attention, a shared MLP, Granite's multipliers
        return tf.GraniteMoeSWAConfig(**ATTN, intermediate_size=16, shared_intermediate_size=24, num_hidden_layers=2,
                                      num_local_experts=6, num_experts_per_tok=3, residual_multiplier=0.5,
                                      layer_types=["full_attention", "sliding_attention"], sliding_window=4,
                                      layer_rope_theta=[10000.0, 0])
    if family == "granitemoehybrid":  # Mamba-2, attention, Mamba-2 (torch's path); a shared MLP in every layer
        return tf.GraniteMoeHybridConfig(**ATTN, intermediate_size=16, shared_intermediate_size=24,
                                         num_hidden_layers=3, num_local_experts=6, num_experts_per_tok=3,
                                         residual_multiplier=0.5, embedding_multiplier=2.0,
                                         position_embedding_type="rope",
                                         layer_types=["linear_attention", "full_attention", "linear_attention"],
                                         mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4,
                                         mamba_expand=2, mamba_chunk_size=8)
    if family == "nemotron_h":  # Mamba-2, MoE, attention, MoE, MLP; 8 experts in 4 groups; a latent width of 16
        # between fc1 / fc2 (with biases)
        return tf.NemotronHConfig(**ATTN, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
                                  moe_shared_expert_intermediate_size=24, moe_latent_size=16, mlp_bias=True,
                                  layers_block_type=["linear_attention", "moe", "full_attention", "moe", "mlp"],
                                  n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
                                  routed_scaling_factor=2.5, norm_topk_prob=True, use_mamba_kernels=False,
                                  mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=8, n_groups=1, chunk_size=8)
    if family == "qwen4_exp_text":  # a linear-attention layer, then an indexed one; hyper-connections
        return tf.Qwen4ExpTextConfig(**ATTN, head_dim=8, num_hidden_layers=2, moe_intermediate_size=16,
                                     shared_expert_intermediate_size=24,
                                     layer_types=["linear_attention", "indexed_attention"], linear_num_key_heads=2,
                                     linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
                                     hc_count=2, hc_lowrank=8, indexer_n_heads=2, indexer_kv_heads=1,
                                     indexer_head_dim=8, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                                     indexer_budget=4, indexer_compress_ratio=2)
    mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8)
    if family == "longcat_flash":  # 8 routed experts and 4 zero-computation ones, top-3
        return tf.LongcatFlashConfig(**{**ATTN, "num_key_value_heads": 4}, **mla, num_layers=2, ffn_hidden_size=24,
                                     expert_ffn_hidden_size=16, n_routed_experts=8, moe_topk=3, zero_expert_num=4,
                                     routed_scaling_factor=2.5)
    if family == "bailing_hybrid":  # KDA, MLA, KDA; the first MLP dense; 8 experts in 4 groups; the later layers'
        # SwiGLUs clipped, at limits the tiny model's activations reach
        return tf.BailingHybridConfig(**{**ATTN, "num_key_value_heads": 4}, **mla, intermediate_size=48,
                                      moe_intermediate_size=16, num_hidden_layers=3, num_local_experts=8,
                                      n_shared_experts=1, n_group=4, topk_group=2, num_experts_per_tok=3,
                                      first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                                      layer_group_size=2, expert_swiglu_limit_list=[0, 0.03, 0.05],
                                      share_expert_swiglu_limit_list=[0, 0, 0.04])
    if family == "jetmoe":  # no num_attention_heads: num_key_value_heads times top-k
        return tf.JetMoeConfig(**{k: v for k, v in ATTN.items() if k not in ("num_attention_heads",
                                                                           "num_key_value_heads")},
                               num_key_value_heads=2, kv_channels=8, intermediate_size=16, num_hidden_layers=2,
                               num_local_experts=6, num_experts_per_tok=2)
    if family == "deepseek_v4":  # a hash layer (transformers' own), then two routed ones; compressed attention,
        # hyper-connections; a clamp limit low enough to bite on the tiny experts' activations
        return tf.DeepseekV4Config(**{**ATTN, "num_key_value_heads": 1}, moe_intermediate_size=16, num_hidden_layers=3,
                                   head_dim=16, q_lora_rank=16, num_experts_per_tok=2, n_routed_experts=6,
                                   n_shared_experts=1, routed_scaling_factor=1.5, swiglu_limit=0.05,
                                   mlp_layer_types=["hash_moe", "moe", "moe"],
                                   layer_types=["heavily_compressed_attention", "compressed_sparse_attention",
                                                "heavily_compressed_attention"],
                                   compress_rates={"compressed_sparse_attention": 2,
                                                   "heavily_compressed_attention": 4},
                                   hc_mult=2, hc_sinkhorn_iters=3, sliding_window=4, o_groups=2, o_lora_rank=8,
                                   index_n_heads=2, index_head_dim=8, index_topk=2)
    if family == "ergo":  # a dense leading layer, then an MoE one; sliding and global attention
        return tf.ErgoConfig(**ATTN, head_dim=8, num_hidden_layers=2, first_dense_intermediate_size=48,
                             num_dense_blocks=1, moe_intermediate_size=16, shared_intermediate_size=24, num_experts=8,
                             num_experts_per_tok=3, sliding_window=8, global_attention_every_n_layers=2,
                             moe_routed_scaling_factor=2.0)
    if family == "gemma4_text":  # every layer MoE beside its dense MLP; a sliding then a full attention layer (its
        # own global_head_dim), per-layer input embeddings, a final logit softcap
        return tf.Gemma4TextConfig(**ATTN, head_dim=8, global_head_dim=16, intermediate_size=24, num_hidden_layers=2,
                                   enable_moe_block=True, num_experts=6, top_k_experts=2, moe_intermediate_size=16,
                                   layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                                   hidden_size_per_layer_input=8, vocab_size_per_layer_input=101,
                                   final_logit_softcapping=30.0)
    rope = dict(rope_type="default", rope_theta=10000.0)
    if family == "qwen3_vl_moe_text":  # the whole multimodal model (a one-block vision tower); layer 1 dense; F=12, so
        # stacks saved untransposed would not load
        text = tf.Qwen3VLMoeTextConfig(**ATTN, head_dim=8, intermediate_size=24, moe_intermediate_size=12,
                                       num_hidden_layers=3, num_experts=6, num_experts_per_tok=2,
                                       decoder_sparse_step=1, mlp_only_layers=[1],
                                       rope_parameters=dict(**rope, mrope_section=[2, 1, 1], mrope_interleaved=True))
        vision = dict(depth=1, hidden_size=32, num_heads=4, intermediate_size=16, out_hidden_size=32, patch_size=4,
                      deepstack_visual_indexes=[0], num_position_embeddings=16)
        return tf.Qwen3VLMoeConfig(text_config=text.to_dict(), vision_config=vision, tie_word_embeddings=False)
    if family == "glm4v_moe_text":  # the whole multimodal model; first layer dense, 8 experts in 2 groups, scaled
        text = tf.Glm4vMoeTextConfig(**ATTN, intermediate_size=48, moe_intermediate_size=12, num_hidden_layers=3,
                                     n_routed_experts=8, n_shared_experts=1, n_group=2, topk_group=1,
                                     num_experts_per_tok=2, first_k_dense_replace=1, routed_scaling_factor=1.5,
                                     norm_topk_prob=True,
                                     rope_parameters=dict(**rope, mrope_section=[1, 1, 0], partial_rotary_factor=0.5))
        vision = dict(depth=1, hidden_size=32, num_heads=4, intermediate_size=16, out_hidden_size=32, patch_size=4,
                      image_size=16)
        return tf.Glm4vMoeConfig(text_config=text.to_dict(), vision_config=vision, tie_word_embeddings=False)
    raise KeyError(family)


FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe",
            "glm4_moe_lite", "minimax_m2", "qwen3_next", "ernie4_5_moe", "granitemoe",
            "hunyuan_v1_moe", "phimoe", "dbrx", "llama4_text", "dots1", "flex_olmo", "minimax", "granitemoeshared",
            "qwen3_5_moe_text", "exaone_moe", "solar_open", "jamba", "kimi_linear", "glm_moe_dsa", "minicpm5_moe",
            "lfm2_moe", "afmoe", "cohere2_moe", "gpt_oss", "mistral4", "mimo_v2_flash", "beam", "axk1", "axk2", "hy_v4",
            "hy_v3", "laguna", "mellum", "kolibri1", "kolibri1_1", "flint", "lara_mini", "granitemoe_swa",
            "granitemoehybrid", "nemotron_h", "qwen4_exp_text", "longcat_flash", "bailing_hybrid", "jetmoe",
            "deepseek_v4", "ergo", "gemma4_text", "qwen3_vl_moe_text", "glm4v_moe_text")
ROUTER_CLASSES = {"mixtral": "MixtralTopKRouter", "qwen2_moe": "Qwen2MoeTopKRouter", "qwen3_moe": "Qwen3MoeTopKRouter",
                  "olmoe": "OlmoeTopKRouter", "deepseek_v2": "DeepseekV2TopkRouter",
                  "deepseek_v3": "DeepseekV3TopkRouter", "glm4_moe": "Glm4MoeTopkRouter",
                  "deepseek_v32": "DeepseekV32TopkRouter", "glm4_moe_lite": "Glm4MoeLiteTopkRouter",
                  "minimax_m2": "MiniMaxM2TopKRouter", "ernie4_5_moe": "Ernie4_5_MoeTopKRouter",
                  "granitemoe": "GraniteMoeTopKRouter", "hunyuan_v1_moe": "HunYuanMoEV1Gate",
                  "qwen3_next": "Qwen3NextTopKRouter", "phimoe": "PhimoeTopKRouter", "dbrx": "DbrxRouter",
                  "llama4_text": "Llama4Router",
                  "dots1": "Dots1TopkRouter", "flex_olmo": "FlexOlmoTopKRouter", "minimax": "MiniMaxTopKRouter",
                  "granitemoeshared": "GraniteMoeSharedTopKRouter", "qwen3_5_moe_text": "Qwen3_5MoeTopKRouter",
                  "exaone_moe": "ExaoneMoeTopkRouter", "solar_open": "SolarOpenTopkRouter", "jamba": "JambaTopKRouter",
                  "kimi_linear": "KimiLinearTopkRouter", "glm_moe_dsa": "GlmMoeDsaTopkRouter",
                  "minicpm5_moe": "MiniCPM5MoeTopkRouter", "lfm2_moe": "Lfm2MoeTopKRouter",
                  "afmoe": "AfmoeTokenChoiceRouter", "cohere2_moe": "Cohere2MoeTopKRouter",
                  "gpt_oss": "GptOssTopKRouter", "mistral4": "Mistral4TopkRouter",
                  "mimo_v2_flash": "MiMoV2FlashTopkRouter", "beam": "BeamTopKRouter", "axk1": "AXK1TopkRouter",
                  "axk2": "AXK2TopkRouter", "hy_v4": "HYV4TopkRouter", "hy_v3": "HYV3TopKRouter",
                  "laguna": "LagunaTopKRouter", "mellum": "MellumTopKRouter", "kolibri1": "Kolibri1TopKRouter",
                  "kolibri1_1": "Kolibri1_1TopKRouter", "flint": "FlintTopKRouter", "lara_mini": "LaraMiniTopKRouter",
                  "granitemoe_swa": "GraniteMoeSWATopKRouter", "granitemoehybrid": "GraniteMoeHybridTopKRouter",
                  "nemotron_h": "NemotronHTopkRouter", "qwen4_exp_text": "Qwen4ExpTextTopKRouter",
                  "longcat_flash": "LongcatFlashTopkRouter", "bailing_hybrid": "BailingHybridTopkRouter",
                  "jetmoe": "JetMoeTopKGating", "deepseek_v4": "DeepseekV4TopKRouter",
                  "ergo": "ErgoTopkRouter", "gemma4_text": "Gemma4TextRouter",
                  "qwen3_vl_moe_text": "Qwen3VLMoeTextTopKRouter", "glm4v_moe_text": "Glm4vMoeTextTopkRouter"}


def tiny_model(family: str, seed: int = 0):
    """A random eval-mode causal LM; routers get std-1 weights (and DeepSeek a random selection bias) so that routing
    is decisive and the bias changes choices."""
    from pimoe.hf.causal_lm import causal_lm_from_config

    torch.manual_seed(seed)
    model = causal_lm_from_config(tiny_config(family), dtype=torch.float32).eval()
    return make_routing_decisive(model, family)


def moe_routers(model, family: str) -> list:
    """The router module of each of the family's MoE blocks, found as PiMoE's loader finds it (the block class and its
    router attribute), so a transformers whose router is a plain Linear inside the block (Jamba in 5.17) counts too."""
    spec = SUPPORTED_FAMILIES[family]
    if spec.router_in_layer:  # Gemma 4: the router sits in the decoder layer beside its experts module
        return [getattr(m, spec.router_attr) for m in model.modules()
                if type(getattr(m, spec.block_attr, None)).__name__ == spec.block_class]
    return [getattr(m, spec.router_attr) for m in model.modules() if type(m).__name__ == spec.block_class]


def their_routers(model, family: str) -> list:
    """transformers' router modules of the family's own router class, whose outputs the tests read as (weights,
    indices); the test is skipped where the installed transformers routes inside the block instead."""
    import pytest
    import transformers as tf

    # only the MoE blocks' routers: JetMoE's attention (MoA) routes with the same router class
    blocks = [id(m) for m in moe_routers(model, family)]
    routers = [m for m in model.modules() if type(m).__name__ == ROUTER_CLASSES[family] and id(m) in blocks]
    if not routers and moe_routers(model, family):
        pytest.skip(f"transformers {tf.__version__} has no {ROUTER_CLASSES[family]}: its {family} block routes "
                    "through a plain layer")
    return routers


def make_routing_decisive(model, family: str):
    """In place: std-1 router weights, random router biases (GPT-OSS) and correction biases (wherever the family
    keeps them), so that routing is decisive and the biases change choices. Returns the model."""
    with torch.no_grad():
        for module in moe_routers(model, family):
            weight = module
            for name in SUPPORTED_FAMILIES[family].router_weight.split("."):  # "weight", "wg.weight", ...
                weight = getattr(weight, name)
            weight.normal_(0.0, 1.0)
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.uniform_(-0.5, 0.5)
            if SUPPORTED_FAMILIES[family].router_input(module) is not None:  # the router input's learned scale (Gemma 4)
                module.scale.uniform_(0.5, 1.5)
            scale = SUPPORTED_FAMILIES[family].expert_scale  # per-expert factors of the weights (Gemma 4), ones at init
            if scale:
                getattr(module, scale).uniform_(0.5, 2.0)
        for module in model.modules():
            # the router's (DeepSeek, GLM), the block's (MiniMax-M2) or the router's statistics module's (ERNIE)
            if isinstance(getattr(module, "e_score_correction_bias", None), torch.Tensor):
                module.e_score_correction_bias.uniform_(-0.3, 0.3)
            if isinstance(getattr(module, "expert_bias", None), torch.Tensor):  # the block's (LFM2-MoE, AFMoE)
                module.expert_bias.uniform_(-0.3, 0.3)
            if isinstance(getattr(module, "post_expert_norm", None), torch.nn.Module):  # Ergo's per-expert norms,
                module.post_expert_norm.weight.uniform_(0.5, 1.5)  # ones at init
        output_bias = SUPPORTED_FAMILIES[family].output_bias
        for module in model.modules():  # the block's own output bias (JetMoE), zero at init
            if output_bias and type(module).__name__ == SUPPORTED_FAMILIES[family].block_class:
                getattr(module, output_bias).uniform_(-0.5, 0.5)
    return model


def record_router_choices(model, family: str) -> tuple[list, list]:
    """Forward hooks on transformers' own routers: returns (choices, handles); choices gets (T, K) indices per call."""
    choices = []
    if family == "dbrx":  # its router returns logits only
        handles = [_record_dbrx_choices(m, choices) for m in model.modules() if hasattr(m, "route_tokens_to_experts")]
    else:
        handles = [router.register_forward_hook(
            lambda m, args, out: choices.append(_weights_and_indices(family, m, out)[1].detach()))
            for router in their_routers(model, family)]
    return choices, handles


class _Restore:
    def __init__(self, undo):
        self.remove = undo


def _record_dbrx_choices(block, choices: list) -> _Restore:
    route = block.route_tokens_to_experts

    def recording(logits):
        weights, indices = route(logits)
        choices.append(indices.detach())
        return weights, indices

    block.route_tokens_to_experts = recording
    return _Restore(lambda: delattr(block, "route_tokens_to_experts"))


def their_router_choice(family: str, block, router, x, bias=None) -> tuple:
    """(top-k weights, top-k indices) of transformers' own router (DBRX's block turns its router's logits into them;
    MiniMax-M2's, LFM2-MoE's and AFMoE's routers take their block's bias)."""
    if family == "dbrx":
        return block.route_tokens_to_experts(router(x))
    if family == "afmoe":  # its router reads (batch, sequence, hidden)
        x = x.unsqueeze(0)
    takes_bias = len(inspect.signature(router.forward).parameters) > 1  # MiniMax-M2, LFM2-MoE, AFMoE
    return _weights_and_indices(family, router, router(x, bias) if takes_bias else router(x))


def _weights_and_indices(family: str, router, outputs) -> tuple:
    if family == "llama4_text":  # (scores (T, E): sigmoid of the top-k logits, 0 elsewhere; logits (T, E))
        scores, logits = outputs
        indices = logits.topk(router.top_k, dim=-1).indices
        return scores.gather(-1, indices), indices
    if family == "jetmoe":  # (sorted topology..., logits (T, E)): the top-k logits, a softmax over them
        top = outputs[-1].topk(router.top_k, dim=-1)
        return torch.softmax(top.values, dim=-1), top.indices
    return router_weights_and_indices(outputs)


def router_weights_and_indices(outputs: tuple) -> tuple:
    """(top-k weights, top-k indices) from a transformers router's outputs, whatever their order: Granite-MoE's router
    returned (indices, weights, logits) in transformers 5.17 and (logits, weights, indices) in 5.25."""
    indices = [t for t in outputs if not t.is_floating_point()]
    weights = [t for t in outputs if t.is_floating_point() and indices and t.shape == indices[0].shape]
    if len(indices) != 1 or len(weights) != 1:
        raise ValueError(f"cannot tell a router's weights and indices apart: {[tuple(t.shape) for t in outputs]}")
    return weights[0], indices[0]


def save_tiny(family: str, folder, seed: int = 0):
    model = tiny_model(family, seed)
    model.save_pretrained(folder)
    return model
