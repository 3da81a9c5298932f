"""Scoring rules of published MoE routers: softmax or sigmoid scores, group-limited top-k, renormalisation, scaling.

Legend: T routed tokens, E experts, K experts per token, G expert groups.

`TokenLevelRouter` implements one rule (softmax, top-k, renormalise when K > 1). Checkpoints trained elsewhere follow
their own, and routing must match the rule they were trained with or the model's output changes. `ScoringRule`
describes the rule; `select_experts` applies it, plus the user's edits (pinned and blocked experts), as pure tensor
operations:

    Mixtral        softmax, top-k, renormalise                       (Jiang et al. 2024, eq. 1-2)
    Qwen2/3-MoE    softmax, top-k, renormalise when norm_topk_prob
    OLMoE          softmax, top-k, no renormalisation                 (Muennighoff et al. 2024)
    DeepSeek-V3    sigmoid; selection adds the loss-free balancing bias; top-k within the `topk_group` best of
                   `n_group` groups (group score: sum of its two best biased scores); gate = unbiased scores of the
                   chosen experts, renormalised, times routed_scaling_factor   (DeepSeek-AI 2024, eq. 12-16)
    DeepSeek-V4    sqrt(softplus(logit)); selection adds the balancing bias; no groups; renormalise; scale
    DeepSeek-V2    softmax; with "group_limited_greedy", top-k within the `topk_group` groups of best single score;
                   gate = chosen scores times routed_scaling_factor, not renormalised   (DeepSeek-AI 2024a, eq. 9-11)
    PhiMoE         "sparsemixer" at inference: top-2 by logit; the r-th chosen expert's gate is its softmax over the
                   experts not chosen before it whose logits lie within a relative 2 * jitter_eps of its own
                   (Liu et al. 2024, GRIN; transformers' `sparsemixer` outside training)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["GROUP_SCORES", "SCORE_FUNCTIONS", "ScoringRule", "score_experts", "select_experts", "sparsemixer_gates"]

SCORE_FUNCTIONS = ("softmax", "sigmoid", "sqrtsoftplus", "sparsemixer")
GROUP_SCORES = ("top2_sum", "max")


@dataclass(frozen=True)
class ScoringRule:
    """How router logits become chosen experts and their combine weights.

    score: "softmax" over the experts, or an independent "sigmoid" or "sqrtsoftplus" (sqrt(softplus(l)), DeepSeek-V4)
        per expert, or "sparsemixer" (PhiMoE: scores are the softmax; each chosen expert's gate is a softmax over the
        experts near it, `sparsemixer_gates`).
    top_k: experts per token. renormalize: divide the chosen scores by their sum.
    num_groups / topk_groups: group-limited selection (DeepSeek-V2/V3); 1 / 1 means no groups.
    group_score: how a group is ranked: "top2_sum" of its two best selection scores (DeepSeek-V3) or its "max" (V2).
    group_fill: the selection score given to the experts outside a token's best groups: -inf (never chosen), or 0.0
        as the hub's DeepSeek-V3 code, A.X-K2 and Mistral 4 fill them (chosen when k exceeds the kept experts, or
        ahead of kept experts whose biased scores are negative).
    jitter_eps: the sparsemixer's relative logit window (PhiMoE's router_jitter_noise).
    renormalize_eps: added to the chosen scores' sum before dividing (1e-20, DeepSeek-V3's guard; LFM2-MoE 1e-6,
        which moves the weights of tokens whose chosen sigmoid scores are all tiny).
    choose_by_logits: rank experts by their logits rather than their scores (Llama 4 takes the top-k logits, then
        their sigmoids: sigmoids that round to 1.0 in float32 would tie where the logits do not).
    routed_scaling_factor: multiplies the combine weights after renormalisation.
    logit_softcap: when > 0, the router's logits become cap * tanh(logits / cap) before anything else (Laguna's
        moe_router_logit_softcapping); 0 leaves them.
    logits_in_float32: compute the router matmul in float32 (DeepSeek-V3) rather than in the input dtype then cast
        (Mixtral, Qwen, OLMoE): in bf16 the two roundings pick different experts on near-ties.
    """

    score: str = "softmax"
    top_k: int = 2
    renormalize: bool = True
    num_groups: int = 1
    topk_groups: int = 1
    routed_scaling_factor: float = 1.0
    logits_in_float32: bool = False
    group_score: str = "top2_sum"
    jitter_eps: float = 0.0
    choose_by_logits: bool = False
    renormalize_eps: float = 1e-20
    group_fill: float = float("-inf")
    logit_softcap: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in SCORE_FUNCTIONS:
            raise ValueError(f"unknown score function {self.score!r}; choose one of {SCORE_FUNCTIONS}")
        if self.group_score not in GROUP_SCORES:
            raise ValueError(f"unknown group score {self.group_score!r}; choose one of {GROUP_SCORES}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.num_groups < 1 or not 1 <= self.topk_groups <= self.num_groups:
            raise ValueError(f"need 1 <= topk_groups <= num_groups, got topk_groups={self.topk_groups}, "
                             f"num_groups={self.num_groups}")
        if not 0.0 <= self.renormalize_eps < 1.0:
            raise ValueError(f"renormalize_eps must be in [0, 1), got {self.renormalize_eps!r}")
        if not 0.0 <= self.jitter_eps < float("inf"):
            raise ValueError(f"jitter_eps must be a finite number >= 0, got {self.jitter_eps!r}")
        if not (self.group_fill == float("-inf") or abs(self.group_fill) < float("inf")):
            raise ValueError(f"group_fill must be -inf or a finite number, got {self.group_fill!r}")
        if not 0.0 <= self.logit_softcap < float("inf"):
            raise ValueError(f"logit_softcap must be a finite number >= 0, got {self.logit_softcap!r}")
        if not self.routed_scaling_factor > 0:
            raise ValueError(f"routed_scaling_factor must be > 0, got {self.routed_scaling_factor!r}")


def score_experts(logits: torch.Tensor, rule: ScoringRule, temperature: float = 1.0) -> torch.Tensor:
    """(T, E) float32 logits -> (T, E) float32 scores: softmax(logits / t), sigmoid(logits / t) or
    sqrt(softplus(logits / t))."""
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    if rule.score == "sigmoid":
        return torch.sigmoid(scaled)
    if rule.score == "sqrtsoftplus":
        return F.softplus(scaled).sqrt()
    return torch.softmax(scaled, dim=-1)


def select_experts(
    scores: torch.Tensor,
    rule: ScoringRule,
    *,
    top_k: int | None = None,
    selection_bias: torch.Tensor | None = None,
    pinned: torch.Tensor | None = None,
    blocked: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose K experts per token and their combine weights.

    scores: (T, E) from `score_experts`. selection_bias: (E,) added only to the scores that *choose* experts.
    logits: the (T, E) logits the scores came from, which choose instead under `rule.choose_by_logits`.
    pinned / blocked: (E,) bool. A blocked expert is never chosen (its slot goes to the next best); a pinned expert is
    always chosen, ahead of the others and whatever its group, and weighted by its own score like any chosen expert.
    Returns (expert_indices (T, K), best selection score first; expert_weights (T, K) float32).
    """
    top_k = rule.top_k if top_k is None else top_k
    if rule.choose_by_logits and logits is None:
        raise ValueError("this rule chooses experts by their logits: pass logits")
    choice = logits.float() if rule.choose_by_logits else scores
    choice = choice if selection_bias is None else choice + selection_bias.float()
    if blocked is not None:
        choice = choice.masked_fill(blocked, float("-inf"))
    if rule.num_groups > 1:
        choice = _mask_to_best_groups(choice, rule.num_groups, rule.topk_groups, rule.group_score, rule.group_fill)
        if blocked is not None and rule.group_fill != float("-inf"):  # a blocked expert outside the groups was refilled
            choice = choice.masked_fill(blocked, float("-inf"))
    if pinned is not None:
        choice = choice.masked_fill(pinned, float("inf"))
    _, expert_indices = torch.topk(choice, top_k, dim=-1)  # sorted: best first
    weights = scores.gather(-1, expert_indices)
    if rule.renormalize:
        # NOTE: the default 1e-20 is DeepSeek-V3's guard for all-zero sigmoid scores; in float32 it leaves softmax sums
        # at 1
        weights = weights / (weights.sum(dim=-1, keepdim=True) + rule.renormalize_eps)
    return expert_indices, weights if rule.routed_scaling_factor == 1.0 else weights * rule.routed_scaling_factor


def sparsemixer_gates(logits: torch.Tensor, expert_indices: torch.Tensor, jitter_eps: float,
                      blocked: torch.Tensor | None = None) -> torch.Tensor:
    """PhiMoE's combine weights for chosen experts (transformers' `sparsemixer` outside training, for any K).

    logits: (T, E) (divided by the temperature). expert_indices: (T, K), in choice order. The gate of the r-th chosen
    expert e_r is softmax(logits) at e_r over the experts j neither chosen before it nor blocked with
    (l_{e_r} - l_j) / max(|l_j|, l_{e_r}) <= 2 * jitter_eps. Returns (T, K) float32.
    """
    logits = logits.float()
    if blocked is not None:
        logits = logits.masked_fill(blocked, float("-inf"))
    num_experts = logits.shape[-1]
    reference = logits.gather(-1, expert_indices).unsqueeze(-1)  # (T, K, 1): each rank's own logit
    chosen = torch.nn.functional.one_hot(expert_indices, num_experts).bool()  # (T, K, E)
    chosen_before = chosen.cumsum(dim=1).bool() & ~chosen
    candidates = logits.unsqueeze(1)  # (T, 1, E)
    far = (reference - candidates) / candidates.abs().maximum(reference) > 2 * jitter_eps
    masked = candidates.masked_fill(far | chosen_before, float("-inf"))
    return torch.softmax(masked, dim=-1).gather(-1, expert_indices.unsqueeze(-1)).squeeze(-1)


def _mask_to_best_groups(choice: torch.Tensor, num_groups: int, topk_groups: int,
                         group_score: str = "top2_sum", fill: float = float("-inf")) -> torch.Tensor:
    """(T, E) -> (T, E) with every expert outside each token's `topk_groups` best groups set to `fill` (-inf).

    A group's score is the sum of its two best selection scores (DeepSeek-V3; its best one for one-expert groups), or
    its best one ("max", DeepSeek-V2).
    """
    num_tokens, num_experts = choice.shape
    grouped = choice.view(num_tokens, num_groups, num_experts // num_groups)  # (T, G, E/G)
    best_of_group = 1 if group_score == "max" else min(2, grouped.shape[-1])
    group_scores = grouped.topk(best_of_group, dim=-1).values.sum(dim=-1)  # (T, G)
    best_groups = group_scores.topk(topk_groups, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)  # (T, G)
    return grouped.masked_fill(~keep.unsqueeze(-1), fill).view(num_tokens, num_experts)
