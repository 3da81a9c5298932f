"""How each family's config gives its routing rule and its other per-config settings (`pimoe.hf.family.Family`'s
callables): ScoringRule readers, refusals of rules PiMoE does not follow, per-layer limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pimoe.layer.scoring import ScoringRule

__all__ = ["axk2_rule", "bailing_glu_limits", "cohere2_averages_shared", "cohere2_rule", "dbrx_rule", "deepseek_rule",
           "deepseek_v2_rule", "deepseek_v4_rule", "float32_rule", "hunyuan_rule", "kolibri_rule", "laguna_rule",
           "longcat_rule", "mistral4_rule", "phimoe_rule", "same_in_every_layer", "softmax_rule"]


def softmax_rule(renormalize: Callable[[Any], bool]) -> Callable[[Any], ScoringRule]:
    """Mixtral's and Qwen's router: a softmax, top-k, renormalised where `renormalize(config)` says."""
    return lambda config: ScoringRule("softmax", config.num_experts_per_tok, bool(renormalize(config)))


def deepseek_rule(config) -> ScoringRule:
    """DeepSeek-V3's router: float32 sigmoid scores, groups, renormalised if norm_topk_prob, scaled."""
    return ScoringRule("sigmoid", config.num_experts_per_tok, bool(config.norm_topk_prob),
                       num_groups=config.n_group or 1, topk_groups=config.topk_group or 1,
                       routed_scaling_factor=float(config.routed_scaling_factor), logits_in_float32=True)


def same_in_every_layer(value, name: str) -> int:
    """HunYuan's configs may give expert counts and top-k per layer; PiMoE's model view takes one of each."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{name} differs between layers ({list(value)}): not supported")
        return int(value[0])
    return int(value)


def hunyuan_rule(config) -> ScoringRule:
    return ScoringRule("softmax", same_in_every_layer(config.moe_topk, "moe_topk"), True, logits_in_float32=True)


def phimoe_rule(config) -> ScoringRule:
    # transformers' sparsemixer always routes two experts, whatever num_experts_per_tok says
    if config.num_experts_per_tok != 2:
        raise ValueError(f"PhiMoE's sparsemixer routes exactly 2 experts per token; the config asks "
                         f"{config.num_experts_per_tok}")
    return ScoringRule("sparsemixer", 2, False, jitter_eps=float(config.router_jitter_noise))


def cohere2_rule(config) -> ScoringRule:
    # the top-k logits first, then a softmax over those k (a renormalised softmax) or their sigmoids, divided by
    # their plain sum when norm_topk_prob
    if config.expert_selection_fn == "softmax":
        return ScoringRule("softmax", config.num_experts_per_tok, True)
    if config.expert_selection_fn == "sigmoid":
        return ScoringRule("sigmoid", config.num_experts_per_tok, bool(config.norm_topk_prob), choose_by_logits=True,
                           renormalize_eps=0.0)
    raise ValueError(f"Cohere2-MoE expert_selection_fn {config.expert_selection_fn!r} is not supported; supported: "
                     "'softmax', 'sigmoid'")


def cohere2_averages_shared(config) -> bool:
    if config.shared_expert_combination_strategy not in ("sum", "average"):
        raise ValueError(f"Cohere2-MoE shared_expert_combination_strategy "
                         f"{config.shared_expert_combination_strategy!r} is not supported; supported: 'sum', 'average'")
    return config.shared_expert_combination_strategy == "average"


def dbrx_rule(config) -> ScoringRule:
    # DBRX divides the top-k softmax by its p-norm: p = 1 is the usual renormalisation, None none; others are refused
    ffn = config.ffn_config
    p = ffn.moe_normalize_expert_weights
    if p is not None and float(p) != 1.0:
        raise ValueError(f"DBRX moe_normalize_expert_weights={p!r} (a p-norm other than 1) is not supported; "
                         "supported: 1 or None")
    return ScoringRule("softmax", ffn.moe_top_k, p is not None)


def deepseek_v2_rule(config) -> ScoringRule:
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


def mistral4_rule(config) -> ScoringRule:
    # a softmax over logits in the weights' dtype; groups ranked by the sum of their two best scores, the other groups'
    # experts filled with 0.0 (not -inf) for the choice; renormalised when norm_topk_prob (+ 1e-20), then scaled
    return ScoringRule("softmax", config.num_experts_per_tok, bool(config.norm_topk_prob),
                       num_groups=config.n_group or 1, topk_groups=config.topk_group or 1,
                       routed_scaling_factor=float(config.routed_scaling_factor), group_fill=0.0)


def axk2_rule(config) -> ScoringRule:
    # DeepSeek-V3's rule, but the experts outside the chosen groups get a selection score of 0.0, not -inf (the hub's
    # DeepSeek code): a kept expert whose biased score is negative loses to them. n_group None routes over all experts.
    return replace(deepseek_rule(config), group_fill=0.0)


def laguna_rule(config) -> ScoringRule:
    # logits in the weights' dtype, then float32, tanh-softcapped when moe_router_logit_softcapping > 0; sigmoid
    # scores, the router's correction bias for the choice, always renormalised (no eps), times
    # moe_routed_scaling_factor
    return ScoringRule("sigmoid", config.num_experts_per_tok, True, renormalize_eps=0.0,
                       routed_scaling_factor=float(config.moe_routed_scaling_factor),
                       logit_softcap=float(config.moe_router_logit_softcapping or 0.0))


def kolibri_rule(config) -> ScoringRule:
    # the top-k of the float32 logits plus the router's correction bias; each chosen expert's weight the sigmoid of
    # its logit, divided by their plain sum (no eps) when norm_topk_prob
    return ScoringRule("sigmoid", config.num_experts_per_tok, bool(config.norm_topk_prob), logits_in_float32=True,
                       choose_by_logits=True, renormalize_eps=0.0)


def float32_rule(score: str) -> Callable[[Any], ScoringRule]:
    """A float32 router of `score`s, top-k renormalised by their plain sum (no eps) when norm_topk_prob."""
    return lambda config: ScoringRule(score, config.num_experts_per_tok, bool(config.norm_topk_prob),
                                      logits_in_float32=True, renormalize_eps=0.0)


def longcat_rule(config) -> ScoringRule:
    # a float32 softmax over the routed and the zero-computation experts, not renormalised, scaled
    return ScoringRule("softmax", config.moe_topk, False, routed_scaling_factor=float(config.routed_scaling_factor),
                       logits_in_float32=True)


def bailing_glu_limits(config, layer_id: int) -> tuple[float, float]:
    """Bailing-Hybrid's (routed, shared) SwiGLU limits of a layer: its per-layer lists, 0 (or absent) for none."""
    def limit(name: str) -> float:
        limits = getattr(config, name, None) or []
        return float(limits[layer_id] or 0) if layer_id < len(limits) else 0.0

    return limit("swiglu_limits"), limit("swiglu_limits_shared")


def deepseek_v4_rule(config) -> ScoringRule:
    # sqrt(softplus) (or sigmoid) scores of logits in the weights' dtype, the router's correction bias for the choice,
    # no groups, always renormalised (+ 1e-20), scaled
    if config.scoring_func not in ("sqrtsoftplus", "sigmoid"):
        raise ValueError(f"DeepSeek-V4 scoring_func {config.scoring_func!r} is not supported; supported: "
                         "'sqrtsoftplus', 'sigmoid'")
    return ScoringRule(config.scoring_func, config.num_experts_per_tok, True,
                       routed_scaling_factor=float(config.routed_scaling_factor))
