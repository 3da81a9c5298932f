"""The MoE architectures `load_hf_moe` opens, and how each one's config gives its routing rule.

Each family names the transformers class of its sparse MoE block (found by name in the loaded model, never imported
from a model file), the config fields of its expert count and routing rule, and its kind of shared expert:
    "none"   Mixtral, Qwen3-MoE, OLMoE, FlexOlmo, Jamba, LFM2-MoE, MiniMax (Text-01, M1, M2), Granite-MoE (and
             -Shared, -SWA, 4.0-H, whose shared MLP is the decoder layer's own), PhiMoE, DBRX, GPT-OSS, MiMo-V2-Flash,
             Beam, Mellum, LongCat-Flash, JetMoE
    "gated"  Qwen2-MoE, Qwen3-Next, Qwen3.5-MoE, Qwen4-Exp: sigmoid(x . w_shared) * shared_expert(x), added to the
             routed mixture
    "plain"  DeepSeek-V2 / V3 / V3.2, dots.llm1, EXAONE-MoE, Solar-Open, Kimi-Linear, GLM-MoE-DSA, MiniCPM5-MoE, AFMoE,
             GLM-4-MoE (and Lite), ERNIE-4.5-MoE, HunYuan-MoE, Llama 4, Cohere2-MoE, Mistral 4, A.X-K1 / K2, HY-V3 / V4,
             Laguna, Kolibri-1 / 1.1, Flint, Lara-Mini, Nemotron-H (ungated), Bailing-Hybrid, DeepSeek-V4:
             shared_experts(x) added
             ungated (Cohere2-MoE: or averaged with the routed mixture)
and its kind of routed expert: "gated" (transformers' gate_up_proj / down_proj stacks, a gated PiMoE expert each),
"flat_glu" (DBRX: w1 / v1 / w2 of (E * F, D) each, under `experts.mlp`, copied into gated PiMoE experts),
"transposed_gated" (Llama 4: gate_up_proj (E, D, 2F) and down_proj (E, F, D), transposed views), "clamped_swiglu"
(GPT-OSS: interleaved, transposed stacks with biases; `pimoe.hf.experts`), "clamped_silu" (HY-V4: the usual stacks,
gate and up clamped at the experts' `swiglu_limit`), "plain" (Nemotron-H: ungated up_proj (E, F, D) and down_proj
(E, D, F), act(x W_u) W_d; `pimoe.hf.experts.PlainMLPExpert`) or "parallel_linear" (JetMoE: the block's own
`input_linear.weight` (E, 2F, D), gate rows first, and `output_linear.weight` (E, D, F), no `experts` module)
or "normed_plain" (Ergo: ungated up_proj (E, D, F) / down_proj (E, F, D), each expert's output through its own RMSNorm,
`post_expert_norm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pimoe.layer.scoring import ScoringRule

__all__ = ["SUPPORTED_FAMILIES", "Family", "activation_name", "family_for"]

# transformers' ACT2FN names -> PiMoE expert activations (pimoe.layer.expert_types.ACTIVATIONS).
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "relu": "relu", "tanh": "tanh"}


@dataclass(frozen=True)
class Family:
    """One supported architecture.

    model_type: the config's `model_type`. block_class: class name of its sparse MoE block in transformers.
    num_experts: reads E from the config. rule: reads the ScoringRule. shared: "none", "gated", "plain" or "own"
        (the block's shared-expert module kept as transformers' own and called on the block's input: Ergo's, an MLP
        then an RMSNorm).
    router_attr: the block's router attribute. experts_kind: "gated", "flat_glu", "transposed_gated",
        "clamped_swiglu", "clamped_silu", "plain", "parallel_linear" or "normed_plain".
    returns_router_scores: the block returns (hidden, router scores), as GPT-OSS's decoder layer expects.
    block_attr: the decoder layer's attribute holding the block ("mlp"; Granite: "block_sparse_moe").
    selection_bias: dotted path from the block to the correction bias that moves the choice (default: the router's
        `e_score_correction_bias`, where the router has one).
    router_weight: dotted path from the router to its (E, D) weight. shared_attr: the block's shared expert (default
        `shared_expert` for "gated", `shared_experts` for "plain").
    layers_path: dotted path from the causal LM to its decoder layers ("model.layers"; DBRX: "transformer.blocks").
    hidden_act: reads the experts' activation name from the config (default its `hidden_act`).
    weights_on_input: each routed expert sees its input rows times their routing weights and its outputs are summed
        unweighted, expert_e(w x) (Llama 4), rather than w expert_e(x); such blocks run the sorted dispatch.
    averages_shared: reads from the config whether the block returns (routed + shared) / 2 instead of the sum
        (Cohere2-MoE's shared_expert_combination_strategy "average").
    output_norm: the block's attribute holding a module applied to its output, after the shared expert (A.X-K1's
        `post_mlp_layernorm`); it stays transformers' own.
    latent_projections: the block's (into, out of) modules around the routed experts, which then run in a latent
        width: out = out_of(sum_k w_k expert_k(into(x))), the router reading x (Nemotron-H's fc1_latent_proj /
        fc2_latent_proj, nn.Identity where the config has no moe_latent_size).
    output_bias: dotted path from the block to a (D,) bias it adds to every token's output once (JetMoE's `bias`).
    zero_experts: reads from the config how many of the last router rows choose a zero-computation expert, which
        returns its input (LongCat-Flash's zero_expert_num); `num_experts` counts them. Such blocks run the sorted
        dispatch.
    glu_limits: reads from the config and a layer id the (routed, shared) experts' SwiGLU limits, 0 for none: a
        limit caps the activated gate at it and clips the up projection to ±limit (Bailing-Hybrid's per-layer
        expert_swiglu_limit_list / share_expert_swiglu_limit_list); such layers' routed experts run the sorted dispatch.
    caps_before_activation: the limits cap the gate before the activation, act(min(g, limit)) (DeepSeek-V4), not
        after it, min(act(g), limit) (Bailing-Hybrid).
    takes_block: whether PiMoE takes a block of `block_class`; the others stay transformers' own (DeepSeek-V4's hash
        layers, whose experts come from a token-id table rather than the router).
    """

    model_type: str
    display_name: str
    block_class: str
    num_experts: Callable[[Any], int]
    rule: Callable[[Any], ScoringRule]
    shared: str = "none"
    router_attr: str = "gate"
    experts_kind: str = "gated"
    returns_router_scores: bool = False
    block_attr: str = "mlp"
    selection_bias: str | None = None
    router_weight: str = "weight"
    shared_attr: str | None = None
    layers_path: str = "model.layers"
    hidden_act: Callable[[Any], str] = lambda config: getattr(config, "hidden_act", "silu")
    weights_on_input: bool = False
    averages_shared: Callable[[Any], bool] = lambda config: False
    output_norm: str | None = None
    latent_projections: tuple[str, str] | None = None
    output_bias: str | None = None
    zero_experts: Callable[[Any], int] = lambda config: 0
    glu_limits: Callable[[Any, int], tuple[float, float]] = lambda config, layer_id: (0.0, 0.0)
    caps_before_activation: bool = False
    takes_block: Callable[[Any], bool] = lambda block: True

    def selection_bias_path(self) -> str:
        return self.selection_bias or f"{self.router_attr}.e_score_correction_bias"

    def shared_path(self) -> str:
        return self.shared_attr or ("shared_expert" if self.shared == "gated" else "shared_experts")

    def layers(self, model) -> Any:
        """The decoder layers (an nn.ModuleList) of a loaded causal LM of this family."""
        layers = model
        for name in self.layers_path.split("."):
            layers = getattr(layers, name)
        return layers


def _softmax_rule(renormalize: Callable[[Any], bool]) -> Callable[[Any], ScoringRule]:
    return lambda config: ScoringRule("softmax", config.num_experts_per_tok, bool(renormalize(config)))


def _deepseek_rule(config) -> ScoringRule:
    return ScoringRule("sigmoid", config.num_experts_per_tok, bool(config.norm_topk_prob),
                       num_groups=config.n_group or 1, topk_groups=config.topk_group or 1,
                       routed_scaling_factor=float(config.routed_scaling_factor), logits_in_float32=True)


def _same_in_every_layer(value, name: str) -> int:
    """HunYuan's configs may give expert counts and top-k per layer; PiMoE's model view takes one of each."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{name} differs between layers ({list(value)}): not supported")
        return int(value[0])
    return int(value)


def _hunyuan_rule(config) -> ScoringRule:
    return ScoringRule("softmax", _same_in_every_layer(config.moe_topk, "moe_topk"), True, logits_in_float32=True)


def _phimoe_rule(config) -> ScoringRule:
    # transformers' sparsemixer always routes two experts, whatever num_experts_per_tok says
    if config.num_experts_per_tok != 2:
        raise ValueError(f"PhiMoE's sparsemixer routes exactly 2 experts per token; the config asks "
                         f"{config.num_experts_per_tok}")
    return ScoringRule("sparsemixer", 2, False, jitter_eps=float(config.router_jitter_noise))


def _cohere2_rule(config) -> ScoringRule:
    # the top-k logits first, then a softmax over those k (a renormalised softmax) or their sigmoids, divided by
    # their plain sum when norm_topk_prob
    if config.expert_selection_fn == "softmax":
        return ScoringRule("softmax", config.num_experts_per_tok, True)
    if config.expert_selection_fn == "sigmoid":
        return ScoringRule("sigmoid", config.num_experts_per_tok, bool(config.norm_topk_prob), choose_by_logits=True,
                           renormalize_eps=0.0)
    raise ValueError(f"Cohere2-MoE expert_selection_fn {config.expert_selection_fn!r} is not supported; supported: "
                     "'softmax', 'sigmoid'")


def _cohere2_averages_shared(config) -> bool:
    if config.shared_expert_combination_strategy not in ("sum", "average"):
        raise ValueError(f"Cohere2-MoE shared_expert_combination_strategy "
                         f"{config.shared_expert_combination_strategy!r} is not supported; supported: 'sum', 'average'")
    return config.shared_expert_combination_strategy == "average"


def _deepseek_v3_like(model_type: str, display_name: str, block_class: str,
                      num_experts: Callable[[Any], int] = lambda c: c.n_routed_experts) -> Family:
    """A family with DeepSeek-V3's router (sigmoid, correction bias, groups, scaling) and plain shared experts."""
    return Family(model_type, display_name, block_class, num_experts, _deepseek_rule, shared="plain")


def _dbrx_rule(config) -> ScoringRule:
    # DBRX divides the top-k softmax by its p-norm: p = 1 is the usual renormalisation, None none; others are refused
    ffn = config.ffn_config
    p = ffn.moe_normalize_expert_weights
    if p is not None and float(p) != 1.0:
        raise ValueError(f"DBRX moe_normalize_expert_weights={p!r} (a p-norm other than 1) is not supported; "
                         "supported: 1 or None")
    return ScoringRule("softmax", ffn.moe_top_k, p is not None)


def _deepseek_v2_rule(config) -> ScoringRule:
    # transformers' DeepSeek-V2 router never renormalises (its config's norm_topk_prob is unused) and groups only
    # under topk_method "group_limited_greedy"; "greedy" is a plain top-k.
    if config.topk_method not in ("greedy", "group_limited_greedy"):
        raise ValueError(f"DeepSeek-V2 topk_method {config.topk_method!r} is not supported; supported: 'greedy', "
                         "'group_limited_greedy'")
    grouped = config.topk_method == "group_limited_greedy"
    return ScoringRule("softmax", config.num_experts_per_tok, False,
                       num_groups=(config.n_group or 1) if grouped else 1,
                       topk_groups=(config.topk_group or 1) if grouped else 1,
                       routed_scaling_factor=float(config.routed_scaling_factor), logits_in_float32=True,
                       group_score="max")


def _mistral4_rule(config) -> ScoringRule:
    # a softmax over logits in the weights' dtype; groups ranked by the sum of their two best scores, the other groups'
    # experts filled with 0.0 (not -inf) for the choice; renormalised when norm_topk_prob (+ 1e-20), then scaled
    return ScoringRule("softmax", config.num_experts_per_tok, bool(config.norm_topk_prob),
                       num_groups=config.n_group or 1, topk_groups=config.topk_group or 1,
                       routed_scaling_factor=float(config.routed_scaling_factor), group_fill=0.0)


def _axk2_rule(config) -> ScoringRule:
    # DeepSeek-V3's rule, but the experts outside the chosen groups get a selection score of 0.0, not -inf (the hub's
    # DeepSeek code): a kept expert whose biased score is negative loses to them. n_group None routes over all experts.
    return replace(_deepseek_rule(config), group_fill=0.0)


def _laguna_rule(config) -> ScoringRule:
    # logits in the weights' dtype, then float32, tanh-softcapped when moe_router_logit_softcapping > 0; sigmoid
    # scores, the router's correction bias for the choice, always renormalised (no eps), times
    # moe_routed_scaling_factor
    return ScoringRule("sigmoid", config.num_experts_per_tok, True, renormalize_eps=0.0,
                       routed_scaling_factor=float(config.moe_routed_scaling_factor),
                       logit_softcap=float(config.moe_router_logit_softcapping or 0.0))


def _kolibri_rule(config) -> ScoringRule:
    # the top-k of the float32 logits plus the router's correction bias; each chosen expert's weight the sigmoid of
    # its logit, divided by their plain sum (no eps) when norm_topk_prob
    return ScoringRule("sigmoid", config.num_experts_per_tok, bool(config.norm_topk_prob), logits_in_float32=True,
                       choose_by_logits=True, renormalize_eps=0.0)


def _float32_rule(score: str) -> Callable[[Any], ScoringRule]:
    """A float32 router of `score`s, top-k renormalised by their plain sum (no eps) when norm_topk_prob."""
    return lambda config: ScoringRule(score, config.num_experts_per_tok, bool(config.norm_topk_prob),
                                      logits_in_float32=True, renormalize_eps=0.0)


def _granite_like(model_type: str, display_name: str, block_class: str) -> Family:
    """Granite-MoE's block (a softmax over the top-k logits) at `block_sparse_moe`; a shared MLP, where the config
    has one, sits in the decoder layer beside it and stays transformers' own."""
    return Family(model_type, display_name, block_class, lambda c: c.num_local_experts, _softmax_rule(lambda c: True),
                  router_attr="router", block_attr="block_sparse_moe")


def _longcat_rule(config) -> ScoringRule:
    # a float32 softmax over the routed and the zero-computation experts, not renormalised, scaled
    return ScoringRule("softmax", config.moe_topk, False, routed_scaling_factor=float(config.routed_scaling_factor),
                       logits_in_float32=True)


def _bailing_glu_limits(config, layer_id: int) -> tuple[float, float]:
    """Bailing-Hybrid's (routed, shared) SwiGLU limits of a layer: its per-layer lists, 0 (or absent) for none."""
    def limit(name: str) -> float:
        limits = getattr(config, name, None) or []
        return float(limits[layer_id] or 0) if layer_id < len(limits) else 0.0

    return limit("swiglu_limits"), limit("swiglu_limits_shared")


def _deepseek_v4_rule(config) -> ScoringRule:
    # sqrt(softplus) (or sigmoid) scores of logits in the weights' dtype, the router's correction bias for the choice,
    # no groups, always renormalised (+ 1e-20), scaled
    if config.scoring_func not in ("sqrtsoftplus", "sigmoid"):
        raise ValueError(f"DeepSeek-V4 scoring_func {config.scoring_func!r} is not supported; supported: "
                         "'sqrtsoftplus', 'sigmoid'")
    return ScoringRule(config.scoring_func, config.num_experts_per_tok, True,
                       routed_scaling_factor=float(config.routed_scaling_factor))


SUPPORTED_FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        # Mixtral always renormalises its top-k (the router has no norm_topk_prob switch).
        Family("mixtral", "Mixtral", "MixtralSparseMoeBlock", lambda c: c.num_local_experts,
               _softmax_rule(lambda c: True)),
        Family("qwen2_moe", "Qwen2-MoE", "Qwen2MoeSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob), shared="gated"),
        Family("qwen3_moe", "Qwen3-MoE", "Qwen3MoeSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob)),
        Family("olmoe", "OLMoE", "OlmoeSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob)),
        # Jamba: OLMoE's rule without renormalisation; its Mamba layers stay transformers' own.
        Family("jamba", "Jamba", "JambaSparseMoeBlock", lambda c: c.num_experts, _softmax_rule(lambda c: False),
               router_attr="router", block_attr="feed_forward"),
        Family("flex_olmo", "FlexOlmo", "FlexOlmoSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob)),
        # MiniMax-Text-01 / M1: Mixtral's router; its lightning-attention layers stay transformers' own.
        Family("minimax", "MiniMax-Text-01 / M1", "MiniMaxSparseMoeBlock", lambda c: c.num_local_experts,
               _softmax_rule(lambda c: True)),
        Family("deepseek_v2", "DeepSeek-V2", "DeepseekV2Moe", lambda c: c.n_routed_experts, _deepseek_v2_rule,
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
               lambda c: _same_in_every_layer(c.num_experts, "num_experts"), _hunyuan_rule, shared="plain",
               router_weight="wg.weight", shared_attr="shared_mlp"),
        # Qwen3-Next: Qwen2-MoE's gated shared expert beside Qwen3-MoE's router; its linear-attention layers stay
        # transformers' own.
        Family("qwen3_next", "Qwen3-Next", "Qwen3NextSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob), shared="gated"),
        # Qwen3.5-MoE: Qwen3-Next's block (gated shared expert) with a router that always renormalises; its
        # linear-attention layers stay transformers' own.
        Family("qwen3_5_moe_text", "Qwen3.5-MoE", "Qwen3_5MoeSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: True), shared="gated"),
        # PhiMoE (Phi-3.5-MoE): the sparsemixer's inference rule (top-2 by logit, each gate a softmax over the
        # experts within a relative window of its logit), the router an nn.Linear at `router`.
        Family("phimoe", "PhiMoE", "PhimoeSparseMoeBlock", lambda c: c.num_local_experts, _phimoe_rule,
               router_attr="router"),
        # DBRX: a softmax router (`router.layer`) whose top-k is renormalised (p-norm 1); experts as three flat
        # (E * F, D) matrices; the decoder layers at `transformer.blocks`, the block at `ffn`.
        Family("dbrx", "DBRX", "DbrxFFN", lambda c: c.ffn_config.moe_num_experts, _dbrx_rule, router_attr="router",
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
        Family("cohere2_moe", "Cohere2-MoE", "Cohere2MoeSparseMoeBlock", lambda c: c.num_experts, _cohere2_rule,
               shared="plain", averages_shared=_cohere2_averages_shared),
        # GPT-OSS takes the top-k logits, then a softmax over those k: the same choice and weights as a softmax over
        # all experts renormalised over the chosen ones.
        Family("gpt_oss", "GPT-OSS", "GptOssMLP", lambda c: c.num_local_experts, _softmax_rule(lambda c: True),
               router_attr="router", experts_kind="clamped_swiglu", returns_router_scores=True),
        # Mistral 4 (Mistral Small 4's text model): DeepSeek-V3's block with a softmax router (groups filled with
        # 0.0, renormalised, scaled, no correction bias) and plain shared experts; its causal LM is not in
        # AutoModelForCausalLM's mapping (`pimoe.hf.causal_lm.causal_lm_class`).
        Family("mistral4", "Mistral 4", "Mistral4MoE", lambda c: c.n_routed_experts, _mistral4_rule, shared="plain"),
        # MiMo-V2-Flash and Beam: DeepSeek-V3's router without shared experts (Beam scales the summed experts, the same
        # product); dense layers from mlp_layer_types.
        Family("mimo_v2_flash", "MiMo-V2-Flash", "MiMoV2FlashMoE", lambda c: c.n_routed_experts, _deepseek_rule),
        Family("beam", "Beam", "BeamMoE", lambda c: c.num_experts, _deepseek_rule),
        # A.X-K1: DeepSeek-V3's router and shared experts, then an RMSNorm on the block's output (kept).
        Family("axk1", "A.X-K1", "AXK1MoE", lambda c: c.n_routed_experts, _deepseek_rule, shared="plain",
               output_norm="post_mlp_layernorm"),
        # A.X-K2: DeepSeek-V3's router with optional groups filled with 0.0, and plain shared experts.
        Family("axk2", "A.X-K2", "AXK2MoE", lambda c: c.n_routed_experts, _axk2_rule, shared="plain"),
        # HY-V4: DeepSeek-V3's router and shared experts; the routed experts clamp gate and up at swiglu_limit.
        Family("hy_v4", "HY-V4", "HYV4MoE", lambda c: c.n_routed_experts, _deepseek_rule, shared="plain",
               experts_kind="clamped_silu"),
        # HY-V3: a float32 sigmoid router whose choice adds the block's correction bias, always renormalised, times
        # router_scaling_factor, no groups; plain shared experts.
        Family("hy_v3", "HY-V3", "HYV3MoE", lambda c: c.num_experts,
               lambda c: ScoringRule("sigmoid", c.num_experts_per_tok, True,
                                     routed_scaling_factor=float(c.router_scaling_factor), logits_in_float32=True),
               shared="plain", selection_bias="e_score_correction_bias"),
        # Laguna: optionally softcapped logits, sigmoid scores, the router's correction bias for the choice,
        # renormalised, scaled; plain shared experts.
        Family("laguna", "Laguna", "LagunaSparseMoeBlock", lambda c: c.num_experts, _laguna_rule, shared="plain"),
        # Mellum: Qwen3-MoE's block and router.
        Family("mellum", "Mellum", "MellumSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob)),
        # Kolibri-1 / 1.1: top-k by logit plus the router's correction bias, weights the chosen logits' sigmoids;
        # plain shared experts; 1.1's indexed attention stays transformers' own.
        Family("kolibri1", "Kolibri-1", "Kolibri1SparseMoeBlock", lambda c: c.num_experts, _kolibri_rule,
               shared="plain"),
        Family("kolibri1_1", "Kolibri-1.1", "Kolibri1_1SparseMoeBlock", lambda c: c.num_experts, _kolibri_rule,
               shared="plain"),
        # Flint and Lara-Mini: float32 sigmoid (Flint) or softmax (Lara-Mini) routers, no bias; a shared expert at
        # `shared_expert` added in full (no sigmoid gate); Lara-Mini's gated-delta-net layers stay.
        Family("flint", "Flint", "FlintSparseMoeBlock", lambda c: c.num_experts, _float32_rule("sigmoid"),
               shared="plain", shared_attr="shared_expert"),
        Family("lara_mini", "Lara-Mini", "LaraMiniSparseMoeBlock", lambda c: c.num_experts, _float32_rule("softmax"),
               shared="plain", shared_attr="shared_expert"),
        # Granite-MoE-SWA and Granite 4.0-H: Granite-MoE's block; 4.0-H's Mamba-2 layers stay transformers' own.
        _granite_like("granitemoe_swa", "Granite-MoE-SWA", "GraniteMoeSWAMoE"),
        _granite_like("granitemoehybrid", "Granite-MoE-Hybrid (Granite 4.0-H)", "GraniteMoeHybridMoE"),
        # Nemotron-H (Nemotron 3): DeepSeek-V3's router; ungated squared-ReLU experts, optionally between fc1 / fc2
        # latent projections; an ungated shared MLP added in full; the block is the `mixer` of "moe" layers.
        Family("nemotron_h", "Nemotron-H", "NemotronHMoE", lambda c: c.n_routed_experts, _deepseek_rule,
               shared="plain", experts_kind="plain", block_attr="mixer", hidden_act=lambda c: c.mlp_hidden_act,
               latent_projections=("fc1_latent_proj", "fc2_latent_proj")),
        # Qwen4-Exp: Qwen3-Next's block (softmax router, gated shared expert); its hyper-connections, linear / indexed
        # attention and n-gram embeddings stay transformers' own; a multimodal `qwen4_exp` folder opens its text model.
        Family("qwen4_exp_text", "Qwen4-Exp", "Qwen4ExpTextSparseMoeBlock", lambda c: c.num_experts,
               _softmax_rule(lambda c: c.norm_topk_prob), shared="gated"),
        # LongCat-Flash: a float32 softmax router (`router.classifier`) over the routed experts and zero-computation
        # ones (the token times its weight), a correction bias for the choice, not renormalised, scaled; the block is
        # the shortcut beside each decoder layer's two dense MLPs, which stay.
        Family("longcat_flash", "LongCat-Flash", "LongcatFlashMoE",
               lambda c: c.n_routed_experts + (c.zero_expert_num or 0), _longcat_rule, router_attr="router",
               router_weight="classifier.weight", zero_experts=lambda c: c.zero_expert_num or 0),
        # Bailing-Hybrid (Ling 3.0): DeepSeek-V3's router and shared experts, both SwiGLUs clipped after the
        # activation in the layers the config gives a limit; its KDA / MLA attention stays.
        replace(_deepseek_v3_like("bailing_hybrid", "Bailing-Hybrid (Ling 3.0)", "BailingHybridMoE",
                                  lambda c: c.num_local_experts), glu_limits=_bailing_glu_limits),
        # DeepSeek-V4: the "moe" layers' router (sqrt-softplus scores, correction bias, renormalised, scaled) and
        # plain shared experts, every SwiGLU (routed and shared) capped at swiglu_limit before the activation; the
        # "hash_moe" layers pick their experts from a token-id table and stay transformers' own, as do the
        # hyper-connections and compressed attention.
        Family("deepseek_v4", "DeepSeek-V4", "DeepseekV4SparseMoeBlock", lambda c: c.n_routed_experts,
               _deepseek_v4_rule, shared="plain", glu_limits=lambda c, layer_id: (c.swiglu_limit, c.swiglu_limit),
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
        Family("jetmoe", "JetMoE", "JetMoeMoE", lambda c: c.num_local_experts, _softmax_rule(lambda c: True),
               router_attr="router", router_weight="layer.weight", experts_kind="parallel_linear",
               hidden_act=lambda c: c.activation_function, output_bias="bias"),
    )
}


def family_for(config) -> Family:
    """The Family of a transformers config; ValueError naming the supported ones otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        names = ", ".join(f"{f.display_name} ({f.model_type})" for f in SUPPORTED_FAMILIES.values())
        raise ValueError(f"model_type {model_type!r} is not a supported sparse MoE architecture; supported: {names}")
    return SUPPORTED_FAMILIES[model_type]


def activation_name(config) -> str:
    """The PiMoE activation for the experts' activation in the config (`hidden_act`, or the family's own field);
    ValueError when the engine has none."""
    act = family_for(config).hidden_act(config)
    if act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} has no PiMoE expert activation; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[act]
