"""The MoE architectures `load_hf_moe` opens (`SUPPORTED_FAMILIES`), each a `pimoe.hf.family.Family` with the rule
readers of `pimoe.hf.family_rules`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pimoe.hf.family import Family
from pimoe.hf.family_rules import (
    axk2_rule,
    bailing_glu_limits,
    cohere2_averages_shared,
    cohere2_rule,
    dbrx_rule,
    deepseek_rule,
    deepseek_v2_rule,
    deepseek_v4_rule,
    float32_rule,
    hunyuan_rule,
    kolibri_rule,
    laguna_rule,
    longcat_rule,
    mistral4_rule,
    phimoe_rule,
    same_in_every_layer,
    softmax_rule,
)
from pimoe.hf.router import ScaledRMSNorm
from pimoe.layer.scoring import ScoringRule

__all__ = ["SUPPORTED_FAMILIES", "Family", "activation_name", "family_for"]

# transformers' ACT2FN names -> PiMoE expert activations (pimoe.layer.expert_types.ACTIVATIONS).
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "relu": "relu", "tanh": "tanh"}


def _deepseek_v3_like(model_type: str, display_name: str, block_class: str,
                      num_experts: Callable[[Any], int] = lambda c: c.n_routed_experts) -> Family:
    """A family with DeepSeek-V3's router (sigmoid, correction bias, groups, scaling) and plain shared experts."""
    return Family(model_type, display_name, block_class, num_experts, deepseek_rule, shared="plain")


def _granite_like(model_type: str, display_name: str, block_class: str) -> Family:
    """Granite-MoE's block (a softmax over the top-k logits) at `block_sparse_moe`; a shared MLP, where the config
    has one, sits in the decoder layer beside it and stays transformers' own."""
    return Family(model_type, display_name, block_class, lambda c: c.num_local_experts, softmax_rule(lambda c: True),
                  router_attr="router", block_attr="block_sparse_moe")


SUPPORTED_FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        # Mixtral always renormalises its top-k (the router has no norm_topk_prob switch).
        Family("mixtral", "Mixtral", "MixtralSparseMoeBlock", lambda c: c.num_local_experts,
               softmax_rule(lambda c: True)),
        Family("qwen2_moe", "Qwen2-MoE", "Qwen2MoeSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob), shared="gated"),
        Family("qwen3_moe", "Qwen3-MoE", "Qwen3MoeSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob)),
        Family("olmoe", "OLMoE", "OlmoeSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob)),
        # Jamba: OLMoE's rule without renormalisation; its Mamba layers stay transformers' own.
        Family("jamba", "Jamba", "JambaSparseMoeBlock", lambda c: c.num_experts, softmax_rule(lambda c: False),
               router_attr="router", block_attr="feed_forward"),
        Family("flex_olmo", "FlexOlmo", "FlexOlmoSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob)),
        # MiniMax-Text-01 / M1: Mixtral's router; its lightning-attention layers stay transformers' own.
        Family("minimax", "MiniMax-Text-01 / M1", "MiniMaxSparseMoeBlock", lambda c: c.num_local_experts,
               softmax_rule(lambda c: True)),
        Family("deepseek_v2", "DeepSeek-V2", "DeepseekV2Moe", lambda c: c.n_routed_experts, deepseek_v2_rule,
               shared="plain"),
        _deepseek_v3_like("deepseek_v3", "DeepSeek-V3", "DeepseekV3MoE"),
        # dots.llm1: DeepSeek-V3's router and shared experts.
        _deepseek_v3_like("dots1", "dots.llm1", "Dots1MoE"),
        # Kimi-Linear and GLM-5 (glm_moe_dsa): DeepSeek-V3's router and shared experts beside their own attention
        # (KDA linear attention; DeepSeek sparse attention), which stays transformers' own.
        _deepseek_v3_like("kimi_linear", "Kimi-Linear", "KimiLinearMoE", lambda c: c.num_local_experts),
        _deepseek_v3_like("glm_moe_dsa", "GLM-MoE-DSA (GLM-5)", "GlmMoeDsaMoE"),
        _deepseek_v3_like("minicpm5_moe", "MiniCPM5-MoE", "MiniCPM5MoeMoE"),
        # LFM2-MoE: sigmoid scores, the block's optional expert bias for the choice, renormalised if norm_topk_prob,
        # scaled; its experts are SiLU whatever hidden_act says; its short-convolution layers stay transformers' own.
        Family("lfm2_moe", "LFM2-MoE", "Lfm2MoeSparseMoeBlock", lambda c: c.num_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, bool(c.norm_topk_prob),
                                     routed_scaling_factor=float(c.routed_scaling_factor), renormalize_eps=1e-6),
               block_attr="feed_forward", selection_bias="expert_bias", hidden_act=lambda c: "silu"),
        # AFMoE: sigmoid scores, the block's expert bias for the choice, renormalised, times route_scale; the
        # router's linear at `router.gate`; plain shared experts.
        Family("afmoe", "AFMoE", "AfmoeSparseMoeBlock", lambda c: c.num_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, True,
                                     routed_scaling_factor=float(c.route_scale)),
               shared="plain", router_attr="router", router_weight="gate.weight", selection_bias="expert_bias"),
        # EXAONE-MoE and Solar-Open: DeepSeek-V3's router and shared experts.
        _deepseek_v3_like("exaone_moe", "EXAONE-MoE", "ExaoneMoeSparseMoEBlock", lambda c: c.num_experts),
        _deepseek_v3_like("solar_open", "Solar-Open", "SolarOpenMoE"),
        # DeepSeek-V3.2: V3's MoE block beside its sparse attention (which stays transformers' own).
        _deepseek_v3_like("deepseek_v32", "DeepSeek-V3.2", "DeepseekV32MoE"),
        # GLM-4.5 / 4.6 / 4.7: DeepSeek-V3's router (sigmoid, correction bias, groups, scaling) and shared experts.
        _deepseek_v3_like("glm4_moe", "GLM-4-MoE", "Glm4MoeMoE"),
        _deepseek_v3_like("glm4_moe_lite", "GLM-4-MoE-Lite", "Glm4MoeLiteMoE"),
        # MiniMax-M2: sigmoid scores, a correction bias for the choice (held by the block), renormalised, no groups;
        # the router's matmul runs in the weights' dtype.
        Family("minimax_m2", "MiniMax-M2", "MiniMaxM2SparseMoeBlock", lambda c: c.num_local_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, True), selection_bias="e_score_correction_bias"),
        # ERNIE 4.5: a float32 softmax router whose choice adds a correction bias (held by its `moe_statics`),
        # renormalised; optional plain shared experts.
        Family("ernie4_5_moe", "ERNIE-4.5-MoE", "Ernie4_5_MoeSparseMoeBlock", lambda c: c.num_experts,
               lambda c: ScoringRule("softmax", c.num_experts_per_tok, True, logits_in_float32=True), shared="plain",
               selection_bias="gate.moe_statics.e_score_correction_bias"),
        # Granite-MoE: a softmax over the top-k logits (the renormalised softmax's choice and weights); the block is
        # the decoder layer's `block_sparse_moe`.
        _granite_like("granitemoe", "Granite-MoE", "GraniteMoeMoE"),
        # Granite-MoE-Shared: Granite-MoE's block; the shared MLP sits in the decoder layer beside it and stays.
        _granite_like("granitemoeshared", "Granite-MoE-Shared", "GraniteMoeSharedMoE"),
        # HunYuan-MoE: a float32 softmax router (`gate.wg`), renormalised top-k, a plain shared MLP beside it.
        Family("hunyuan_v1_moe", "HunYuan-MoE", "HunYuanMoEV1Moe",
               lambda c: same_in_every_layer(c.num_experts, "num_experts"), hunyuan_rule, shared="plain",
               router_weight="wg.weight", shared_attr="shared_mlp"),
        # Qwen3-Next: Qwen2-MoE's gated shared expert beside Qwen3-MoE's router; its linear-attention layers stay
        # transformers' own.
        Family("qwen3_next", "Qwen3-Next", "Qwen3NextSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob), shared="gated"),
        # Qwen3.5-MoE: Qwen3-Next's block (gated shared expert) with a router that always renormalises; its
        # linear-attention layers stay transformers' own.
        Family("qwen3_5_moe_text", "Qwen3.5-MoE", "Qwen3_5MoeSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: True), shared="gated"),
        # PhiMoE (Phi-3.5-MoE): the sparsemixer's inference rule (top-2 by logit, each gate a softmax over the
        # experts within a relative window of its logit), the router an nn.Linear at `router`.
        Family("phimoe", "PhiMoE", "PhimoeSparseMoeBlock", lambda c: c.num_local_experts, phimoe_rule,
               router_attr="router"),
        # DBRX: a softmax router (`router.layer`) whose top-k is renormalised (p-norm 1); experts as three flat
        # (E * F, D) matrices; the decoder layers at `transformer.blocks`, the block at `ffn`.
        Family("dbrx", "DBRX", "DbrxFFN", lambda c: c.ffn_config.moe_num_experts, dbrx_rule, router_attr="router",
               experts_kind="flat_glu", block_attr="ffn", router_weight="layer.weight",
               layers_path="transformer.blocks", hidden_act=lambda c: c.ffn_config.ffn_act_fn.get("name", "silu")),
        # Llama 4 (text): top-k by logit, each chosen expert's weight the sigmoid of its logit (not renormalised),
        # applied to the expert's input; a plain shared expert; dense layers between MoE ones (moe_layers).
        Family("llama4_text", "Llama 4", "Llama4TextMoe", lambda c: c.num_local_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, False, choose_by_logits=True), shared="plain",
               router_attr="router", experts_kind="transposed_gated", returns_router_scores=True,
               block_attr="feed_forward", shared_attr="shared_expert", weights_on_input=True),
        # Cohere2-MoE: the top-k logits, then a softmax over them or their sigmoids; optional plain shared experts,
        # summed with the routed mixture or averaged with it.
        Family("cohere2_moe", "Cohere2-MoE", "Cohere2MoeSparseMoeBlock", lambda c: c.num_experts, cohere2_rule,
               shared="plain", averages_shared=cohere2_averages_shared),
        # GPT-OSS takes the top-k logits, then a softmax over those k: the same choice and weights as a softmax over
        # all experts renormalised over the chosen ones.
        Family("gpt_oss", "GPT-OSS", "GptOssMLP", lambda c: c.num_local_experts, softmax_rule(lambda c: True),
               router_attr="router", experts_kind="clamped_swiglu", returns_router_scores=True),
        # Mistral 4 (Mistral Small 4's text model): DeepSeek-V3's block with a softmax router (groups filled with
        # 0.0, renormalised, scaled, no correction bias) and plain shared experts; its causal LM is not in
        # AutoModelForCausalLM's mapping (`pimoe.hf.causal_lm.causal_lm_class`).
        Family("mistral4", "Mistral 4", "Mistral4MoE", lambda c: c.n_routed_experts, mistral4_rule, shared="plain"),
        # MiMo-V2-Flash and Beam: DeepSeek-V3's router without shared experts (Beam scales the summed experts, the same
        # product); dense layers from mlp_layer_types.
        Family("mimo_v2_flash", "MiMo-V2-Flash", "MiMoV2FlashMoE", lambda c: c.n_routed_experts, deepseek_rule),
        Family("beam", "Beam", "BeamMoE", lambda c: c.num_experts, deepseek_rule),
        # A.X-K1: DeepSeek-V3's router and shared experts, then an RMSNorm on the block's output (kept).
        Family("axk1", "A.X-K1", "AXK1MoE", lambda c: c.n_routed_experts, deepseek_rule, shared="plain",
               output_norm="post_mlp_layernorm"),
        # A.X-K2: DeepSeek-V3's router with optional groups filled with 0.0, and plain shared experts.
        Family("axk2", "A.X-K2", "AXK2MoE", lambda c: c.n_routed_experts, axk2_rule, shared="plain"),
        # HY-V4: DeepSeek-V3's router and shared experts; the routed experts clamp gate and up at swiglu_limit.
        Family("hy_v4", "HY-V4", "HYV4MoE", lambda c: c.n_routed_experts, deepseek_rule, shared="plain",
               experts_kind="clamped_silu"),
        # HY-V3: a float32 sigmoid router whose choice adds the block's correction bias, always renormalised, times
        # router_scaling_factor, no groups; plain shared experts.
        Family("hy_v3", "HY-V3", "HYV3MoE", lambda c: c.num_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, True,
                                     routed_scaling_factor=float(c.router_scaling_factor), logits_in_float32=True),
               shared="plain", selection_bias="e_score_correction_bias"),
        # Laguna: optionally softcapped logits, sigmoid scores, the router's correction bias for the choice,
        # renormalised, scaled; plain shared experts.
        Family("laguna", "Laguna", "LagunaSparseMoeBlock", lambda c: c.num_experts, laguna_rule, shared="plain"),
        # Mellum: Qwen3-MoE's block and router.
        Family("mellum", "Mellum", "MellumSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob)),
        # Kolibri-1 / 1.1: top-k by logit plus the router's correction bias, weights the chosen logits' sigmoids;
        # plain shared experts; 1.1's indexed attention stays transformers' own.
        Family("kolibri1", "Kolibri-1", "Kolibri1SparseMoeBlock", lambda c: c.num_experts, kolibri_rule,
               shared="plain"),
        Family("kolibri1_1", "Kolibri-1.1", "Kolibri1_1SparseMoeBlock", lambda c: c.num_experts, kolibri_rule,
               shared="plain"),
        # Flint and Lara-Mini: float32 sigmoid (Flint) or softmax (Lara-Mini) routers, no bias; a shared expert at
        # `shared_expert` added in full (no sigmoid gate); Lara-Mini's gated-delta-net layers stay.
        Family("flint", "Flint", "FlintSparseMoeBlock", lambda c: c.num_experts, float32_rule("sigmoid"),
               shared="plain", shared_attr="shared_expert"),
        Family("lara_mini", "Lara-Mini", "LaraMiniSparseMoeBlock", lambda c: c.num_experts, float32_rule("softmax"),
               shared="plain", shared_attr="shared_expert"),
        # Granite-MoE-SWA and Granite 4.0-H: Granite-MoE's block; 4.0-H's Mamba-2 layers stay transformers' own.
        _granite_like("granitemoe_swa", "Granite-MoE-SWA", "GraniteMoeSWAMoE"),
        _granite_like("granitemoehybrid", "Granite-MoE-Hybrid (Granite 4.0-H)", "GraniteMoeHybridMoE"),
        # Nemotron-H (Nemotron 3): DeepSeek-V3's router; ungated squared-ReLU experts, optionally between fc1 / fc2
        # latent projections; an ungated shared MLP added in full; the block is the `mixer` of "moe" layers.
        Family("nemotron_h", "Nemotron-H", "NemotronHMoE", lambda c: c.n_routed_experts, deepseek_rule,
               shared="plain", experts_kind="plain", block_attr="mixer", hidden_act=lambda c: c.mlp_hidden_act,
               latent_projections=("fc1_latent_proj", "fc2_latent_proj")),
        # Qwen4-Exp: Qwen3-Next's block (softmax router, gated shared expert); its hyper-connections, linear / indexed
        # attention and n-gram embeddings stay transformers' own; a multimodal `qwen4_exp` folder opens its text model.
        Family("qwen4_exp_text", "Qwen4-Exp", "Qwen4ExpTextSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: c.norm_topk_prob), shared="gated"),
        # LongCat-Flash: a float32 softmax router (`router.classifier`) over the routed experts and zero-computation
        # ones (the token times its weight), a correction bias for the choice, not renormalised, scaled; the block is
        # the shortcut beside each decoder layer's two dense MLPs, which stay.
        Family("longcat_flash", "LongCat-Flash", "LongcatFlashMoE",
               lambda c: c.n_routed_experts + (c.zero_expert_num or 0), longcat_rule, router_attr="router",
               router_weight="classifier.weight", zero_experts=lambda c: c.zero_expert_num or 0),
        # Bailing-Hybrid (Ling 3.0): DeepSeek-V3's router and shared experts, both SwiGLUs clipped after the
        # activation in the layers the config gives a limit; its KDA / MLA attention stays.
        replace(_deepseek_v3_like("bailing_hybrid", "Bailing-Hybrid (Ling 3.0)", "BailingHybridMoE",
                                  lambda c: c.num_local_experts), glu_limits=bailing_glu_limits),
        # DeepSeek-V4: the "moe" layers' router (sqrt-softplus scores, correction bias, renormalised, scaled) and
        # plain shared experts, every SwiGLU (routed and shared) capped at swiglu_limit before the activation; the
        # "hash_moe" layers pick their experts from a token-id table and stay transformers' own, as do the
        # hyper-connections and compressed attention.
        Family("deepseek_v4", "DeepSeek-V4", "DeepseekV4SparseMoeBlock", lambda c: c.n_routed_experts,
               deepseek_v4_rule, shared="plain", glu_limits=lambda c, layer_id: (c.swiglu_limit, c.swiglu_limit),
               caps_before_activation=True, takes_block=lambda block: not getattr(block, "is_hash", False)),
        # Ergo: a float32 sigmoid router (`gate.linear`), the router's correction bias for the choice, renormalised,
        # times moe_routed_scaling_factor; squared-ReLU experts, each followed by its own RMSNorm; the shared expert
        # (an MLP then an RMSNorm) stays transformers' own, as do the dense leading layers and the residual gates.
        Family("ergo", "Ergo", "ErgoMoE", lambda c: c.num_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, True,
                                     routed_scaling_factor=float(c.moe_routed_scaling_factor), logits_in_float32=True),
               shared="own", router_weight="linear.weight", experts_kind="normed_plain", hidden_act=lambda c: "relu2"),
        # JetMoE: a softmax over the top-k logits (`router.layer`); the experts are the block's own input_linear /
        # output_linear stacks, and the block adds a bias to its output; the attention's mixture of heads stays.
        Family("jetmoe", "JetMoE", "JetMoeMoE", lambda c: c.num_local_experts, softmax_rule(lambda c: True),
               router_attr="router", router_weight="layer.weight", experts_kind="parallel_linear",
               hidden_act=lambda c: c.activation_function, output_bias="bias"),
        # Qwen3-VL-MoE and GLM-4V-MoE: Qwen3-MoE's block (always renormalised) and GLM-4-MoE's (DeepSeek-V3's router,
        # plain shared experts) in multimodal checkpoints whose language models have no causal-LM class: they load
        # whole (`pimoe.hf.causal_lm.loads_whole`), their decoder layers under model.language_model.
        Family("qwen3_vl_moe_text", "Qwen3-VL-MoE", "Qwen3VLMoeTextSparseMoeBlock", lambda c: c.num_experts,
               softmax_rule(lambda c: True), layers_path="model.language_model.layers"),
        replace(_deepseek_v3_like("glm4v_moe_text", "GLM-4V-MoE", "Glm4vMoeTextMoE"),
                layers_path="model.language_model.layers"),
        # Gemma 4 (26B-A4B): no MoE block; the decoder layer's router reads the residual stream through its own RMSNorm
        # (no weight) times a learned scale and D^-1/2: a float32 softmax, top-k renormalised (no eps), times the
        # chosen experts' per_expert_scale; GELU-tanh experts read the layer's pre_feedforward_layernorm_2 output,
        # beside the dense MLP and the layer's norms, which stay; a multimodal `gemma4` folder opens its text model.
        Family("gemma4_text", "Gemma 4", "Gemma4TextExperts", lambda c: c.num_experts,
               lambda c: ScoringRule("softmax", c.top_k_experts, True, renormalize_eps=0.0), router_attr="router",
               block_attr="experts", router_weight="proj.weight", hidden_act=lambda c: c.hidden_activation,
               router_in_layer=True, expert_scale="per_expert_scale",
               router_input=lambda router: ScaledRMSNorm(router.scale.detach(), router.scalar_root_size, router.eps)),
    )
}


def family_for(config) -> Family:
    """The Family of a transformers config; ValueError naming the supported ones otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        names = ", ".join(f"{f.display_name} ({f.model_type})" for f in SUPPORTED_FAMILIES.values())
        raise ValueError(f"model_type {model_type!r} is not a supported sparse MoE architecture; supported: {names}")
    return SUPPORTED_FAMILIES[model_type]


def language_model_config(config):
    """The config whose family runs: `config` itself, or the language model's of a multimodal checkpoint whose own
    model_type is not a supported family but whose text config's is (Llama 4's "llama4" around "llama4_text",
    Qwen3.5-MoE's "qwen3_5_moe" around "qwen3_5_moe_text"; AutoModelForCausalLM loads their language model alone;
    Qwen3-VL-MoE's "qwen3_vl_moe" around "qwen3_vl_moe_text", whose whole model loads: `causal_lm.loads_whole`)."""
    if getattr(config, "model_type", None) in SUPPORTED_FAMILIES or not hasattr(config, "get_text_config"):
        return config
    text = config.get_text_config()
    return text if getattr(text, "model_type", None) in SUPPORTED_FAMILIES else config


def activation_name(config) -> str:
    """The PiMoE activation for the experts' activation in the config (`hidden_act`, or the family's own field);
    ValueError when the engine has none."""
    act = family_for(config).hidden_act(config)
    if act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} has no PiMoE expert activation; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[act]
