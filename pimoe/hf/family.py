"""A Family: how one transformers MoE architecture's block maps onto PiMoE's (`pimoe.hf.families` lists them).

Each family names the transformers class of its sparse MoE block (found by name in the loaded model, never imported
from a model file), the config fields of its expert count and routing rule, and its kind of shared expert:
    "none"   Mixtral, Qwen3-MoE, OLMoE, FlexOlmo, Jamba, LFM2-MoE, MiniMax (Text-01, M1, M2), Granite-MoE (and
             -Shared, -SWA, 4.0-H, whose shared MLP is the decoder layer's own), PhiMoE, DBRX, GPT-OSS, MiMo-V2-Flash,
             Beam, Mellum, LongCat-Flash, JetMoE, Gemma 4 (whose dense MLP beside the experts stays), Qwen3-VL-MoE
    "gated"  Qwen2-MoE, Qwen3-Next, Qwen3.5-MoE, Qwen4-Exp: sigmoid(x . w_shared) * shared_expert(x), added to the
             routed mixture
    "plain"  DeepSeek-V2 / V3 / V3.2, dots.llm1, EXAONE-MoE, Solar-Open, Kimi-Linear, GLM-MoE-DSA, MiniCPM5-MoE, AFMoE,
             GLM-4-MoE (and Lite), ERNIE-4.5-MoE, HunYuan-MoE, Llama 4, Cohere2-MoE, Mistral 4, A.X-K1 / K2, HY-V3 / V4,
             Laguna, Kolibri-1 / 1.1, Flint, Lara-Mini, Nemotron-H (ungated), Bailing-Hybrid, DeepSeek-V4, GLM-4V-MoE:
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
from dataclasses import dataclass
from typing import Any

from pimoe.layer.scoring import ScoringRule

__all__ = ["Family"]


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
    layers_path: dotted path from the causal LM to its decoder layers ("model.layers"; DBRX: "transformer.blocks";
        a multimodal model loaded whole: "model.language_model.layers").
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
    router_in_layer: the decoder layer has no MoE block: it calls its router (its `router_attr`) and its experts module
        (`block_class` at `block_attr`) itself, on different inputs (Gemma 4: router(x) -> (scores, weights, indices),
        then experts(norm(x), indices, weights)). PiMoE's router stands in for the layer's router and a
        `pimoe.hf.block.LayerRoutedBlock` for the experts module, which runs the routing the router handed back.
    router_input: builds, from the checkpoint's router module, a module applied to the router's input before its
        linear (Gemma 4: an RMSNorm without weight, times the router's learned `scale` and D^-1/2); None for none.
    expert_scale: dotted path from the router to (E,) per-expert factors of the combine weights, applied after
        renormalisation (Gemma 4's `per_expert_scale`).
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
    router_in_layer: bool = False
    router_input: Callable[[Any], Any] = lambda router: None
    expert_scale: str | None = None

    def own_config(self, config) -> Any:
        """The config this family reads: `config`, or the language model's inside a multimodal model's config (a
        checkpoint loaded whole: `pimoe.hf.causal_lm.loads_whole`)."""
        return config if getattr(config, "model_type", None) == self.model_type else config.get_text_config()

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

