"""Moving a transformers sparse MoE block's weights into a PiMoEBlock, without copying the routed experts.

Legend: E experts, D hidden size, F expert intermediate width.

transformers 5 stores a block's experts as two stacks: gate_up_proj (E, 2F, D), gate rows first, and down_proj
(E, D, F). A gated PiMoE expert ("mathematical" type: act(x W_g) * (x W_u)) keeps the same layout in its fused `up`
(2F, D) and `down` (D, F), so each expert's parameters are views of the checkpoint's stacks, no copy. Shared experts
(three nn.Linear: gate_proj, up_proj, down_proj) become one more gated PiMoE expert; ungated ones (Nemotron-H: up_proj,
down_proj) and ungated routed experts become `PlainMLPExpert`s, on views too.
"""

from __future__ import annotations

import torch
from torch import nn

from pimoe.hf.block import LayerRoutedBlock, LayerRouter, PiMoEBlock, RoutingSession
from pimoe.hf.experts import ClampedSwiGLUExpert, ClippedGLUExpert, IdentityExpert, PlainMLPExpert
from pimoe.hf.families import Family, activation_name
from pimoe.hf.router import CheckpointRouter
from pimoe.layer.experts import PiMoEExpert

__all__ = ["convert_block", "gated_expert", "replace_moe_blocks"]


def gated_expert(gate_up: torch.Tensor, down: torch.Tensor, activation: str) -> PiMoEExpert:
    """A bias-free gated PiMoE expert whose up (2F, D) and down (D, F) are the given tensors (views kept)."""
    width, hidden = down.shape[1], down.shape[0]
    with torch.device("meta"):  # skip a random init that the checkpoint's weights overwrite at once
        expert = PiMoEExpert(hidden, "mathematical", width, activation=activation, bias=False)
    expert.up.weight = nn.Parameter(gate_up, requires_grad=False)
    expert.down.weight = nn.Parameter(down, requires_grad=False)
    return expert


def _dense_mlp_expert(mlp: nn.Module, activation: str, limit: float = 0.0,
                      cap_before_activation: bool = False) -> nn.Module:
    if any(getattr(mlp, name).bias is not None for name in ("gate_proj", "up_proj", "down_proj")):
        raise ValueError("the shared expert's projections have biases, which PiMoE's gated expert does not carry")
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=0)  # (2F, D), gate rows first
    if limit:  # Bailing-Hybrid's and DeepSeek-V4's shared experts
        return ClippedGLUExpert(gate_up.detach(), mlp.down_proj.weight.detach(), activation, limit,
                                cap_before_activation)
    return gated_expert(gate_up, mlp.down_proj.weight, activation)


def _shared_expert(mlp: nn.Module, family: Family, config, limit: float) -> nn.Module:
    """The block's shared MLP as one more expert: gated (gate_proj, up_proj, down_proj; its SwiGLU clipped at `limit`
    where that is not 0) or ungated (up_proj, down_proj; Nemotron-H, biases kept)."""
    if getattr(mlp, "gate_proj", None) is None:
        bias = [None if getattr(mlp, name).bias is None else getattr(mlp, name).bias.detach()
                for name in ("up_proj", "down_proj")]
        return PlainMLPExpert(mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach(), family.hidden_act(config),
                              *bias)
    return _dense_mlp_expert(mlp, activation_name(config), limit, family.caps_before_activation)


def _detached(module: nn.Module, path: str) -> torch.Tensor | None:
    """The tensor at a dotted attribute path, detached and flattened; None where the path stops."""
    value = module
    for name in path.split("."):
        value = getattr(value, name, None)
    return value.detach().reshape(-1) if isinstance(value, torch.Tensor) else None


def _stacks(experts: nn.Module, paths: tuple[str, ...], layer_id: int, num_experts: int) -> list[torch.Tensor]:
    """The experts' weight stacks at dotted `paths`, detached; ValueError where one is not a plain tensor (a quantized
    checkpoint's) or holds another expert count than the config."""
    stacks = []
    for path in paths:
        value = experts
        for name in path.split("."):
            value = getattr(value, name, None)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"layer {layer_id}: the experts hold no plain {' / '.join(paths)} weights (a quantized "
                             "checkpoint? load it dequantized, e.g. in bf16)")
        stacks.append(value.detach())
    if stacks[0].shape[0] != num_experts:
        raise ValueError(f"layer {layer_id}: {stacks[0].shape[0]} expert weights, config says {num_experts}")
    return stacks


def _routed_experts(experts: nn.Module, family: Family, config, layer_id: int) -> nn.ModuleList:
    zero = family.zero_experts(config)
    routed = _weighted_experts(experts, family, config, layer_id, family.num_experts(config) - zero)
    return routed.extend(IdentityExpert() for _ in range(zero)) if zero else routed


def _weighted_experts(experts: nn.Module, family: Family, config, layer_id: int, num_experts: int) -> nn.ModuleList:
    if family.experts_kind == "flat_glu":
        return _flat_glu_experts(experts, num_experts, config, layer_id)
    if family.experts_kind == "plain":  # up (E, F, D), down (E, D, F): one ungated expert each, views
        up, down = _stacks(experts, ("up_proj", "down_proj"), layer_id, num_experts)
        return nn.ModuleList(PlainMLPExpert(up[e], down[e], family.hidden_act(config)) for e in range(num_experts))
    if family.experts_kind == "normed_plain":  # Ergo: up (E, D, F), down (E, F, D), each expert's own RMSNorm after it
        up, down = _stacks(experts, ("up_proj", "down_proj"), layer_id, num_experts)
        norm = experts.post_expert_norm
        return nn.ModuleList(PlainMLPExpert(up[e].t(), down[e].t(), family.hidden_act(config),
                                            norm_weight=norm.weight.detach()[e], norm_eps=norm.eps)
                             for e in range(num_experts))
    if family.experts_kind == "parallel_linear":  # JetMoE: (E, 2F, D) and (E, D, F), the usual layout under other names
        gate_up, down = _stacks(experts, ("input_linear.weight", "output_linear.weight"), layer_id, num_experts)
        activation = activation_name(config)
        return nn.ModuleList(gated_expert(gate_up[e], down[e], activation) for e in range(num_experts))
    gate_up, down = _stacks(experts, ("gate_up_proj", "down_proj"), layer_id, num_experts)
    if family.experts_kind == "clamped_swiglu":
        bias_up, bias_down = experts.gate_up_proj_bias.detach(), experts.down_proj_bias.detach()
        # the experts module holds alpha and limit (older transformers releases hard-code alpha; newer ones read
        # config.swiglu_alpha): take them from the module the checkpoint was loaded into
        alpha, limit = experts.alpha, experts.limit
        return nn.ModuleList(ClampedSwiGLUExpert(gate_up[e], bias_up[e], down[e], bias_down[e], alpha, limit)
                             for e in range(gate_up.shape[0]))
    if family.experts_kind == "clamped_silu":  # HY-V4: silu(min(g, limit)) * clip(u, +-limit), no biases
        return nn.ModuleList(ClippedGLUExpert(gate_up[e], down[e], "silu", experts.swiglu_limit, True)
                             for e in range(gate_up.shape[0]))
    activation = activation_name(config)
    limit = family.glu_limits(config, layer_id)[0]
    if limit:
        if family.experts_kind != "gated":
            raise ValueError(f"layer {layer_id}: SwiGLU limits on {family.experts_kind!r} experts are not supported")
        return nn.ModuleList(ClippedGLUExpert(gate_up[e], down[e], activation, limit, family.caps_before_activation)
                             for e in range(gate_up.shape[0]))
    if family.experts_kind == "transposed_gated":  # (D, 2F) and (F, D) per expert: transposed views, no copy
        return nn.ModuleList(gated_expert(gate_up[e].t(), down[e].t(), activation) for e in range(gate_up.shape[0]))
    return nn.ModuleList(gated_expert(gate_up[e], down[e], activation) for e in range(gate_up.shape[0]))


def _flat_glu_experts(experts: nn.Module, num_experts: int, config, layer_id: int) -> nn.ModuleList:
    """DBRX: gate w1, up v1 and down w2, each (E * F, D) with expert e's rows at [e F, (e + 1) F); out = h w2."""
    mlp = getattr(experts, "mlp", None)
    stacks = [getattr(mlp, name, None) for name in ("w1", "v1", "w2")]
    if not all(isinstance(stack, torch.Tensor) for stack in stacks):
        raise ValueError(f"layer {layer_id}: the experts hold no plain w1 / v1 / w2 weights")
    gate, up, down = (stack.detach() for stack in stacks)
    if gate.shape[0] % num_experts:
        raise ValueError(f"layer {layer_id}: {gate.shape[0]} expert rows do not split into {num_experts} experts")
    width = gate.shape[0] // num_experts
    activation = activation_name(config)
    return nn.ModuleList(
        gated_expert(torch.cat([gate[e * width:(e + 1) * width], up[e * width:(e + 1) * width]]),  # (2F, D)
                     down[e * width:(e + 1) * width].t().contiguous(), activation)  # (D, F)
        for e in range(num_experts))


def convert_block(block: nn.Module, family: Family, config, layer_id: int, session: RoutingSession,
                  layer: nn.Module | None = None) -> PiMoEBlock:
    """The PiMoEBlock carrying `block`'s router, experts and shared expert (a LayerRoutedBlock, the router taken from
    the decoder `layer`, where the family's router sits in the layer)."""
    gate = getattr(layer if family.router_in_layer else block, family.router_attr)
    expert_scale = _detached(gate, family.expert_scale) if family.expert_scale else None
    router = CheckpointRouter(_detached(gate, family.router_weight).view(family.num_experts(config), -1),
                              family.rule(config), _detached(block, family.selection_bias_path()),
                              _detached(gate, "bias"), input_norm=family.router_input(gate),
                              expert_scale=expert_scale)
    own_stacks = family.experts_kind == "parallel_linear" or family.router_in_layer  # the block holds the stacks
    experts = _routed_experts(block if own_stacks else block.experts, family, config, layer_id)
    shared, shared_gate = None, None
    shared_module = getattr(block, family.shared_path(), None) if family.shared != "none" else None
    if shared_module is not None and family.shared == "own":  # transformers' own module, called as it is (Ergo)
        shared = shared_module
    elif shared_module is not None:  # ERNIE's shared experts are optional
        shared = _shared_expert(shared_module, family, config, family.glu_limits(config, layer_id)[1])
        shared_gate = block.shared_expert_gate if family.shared == "gated" else None
    latent = [getattr(block, name) for name in family.latent_projections] if family.latent_projections else [None] * 2
    # the fast path's kernels know the typed activations and output-side weights only; other blocks take the sorted
    # dispatch
    sorted_only = (family.experts_kind in ("clamped_swiglu", "clamped_silu", "plain", "normed_plain")
                   or family.weights_on_input
                   or family.zero_experts(config) > 0 or bool(family.glu_limits(config, layer_id)[0]))
    block_class = LayerRoutedBlock if family.router_in_layer else PiMoEBlock
    return block_class(layer_id, router, experts, session, shared, shared_gate,
                      dispatch="sorted" if sorted_only else "auto", returns_router_scores=family.returns_router_scores,
                      weights_on_input=family.weights_on_input, average_shared=family.averages_shared(config),
                      output_norm=getattr(block, family.output_norm) if family.output_norm else None,
                      latent_in=latent[0], latent_out=latent[1],
                      output_bias=None if family.output_bias is None else _detached(block, family.output_bias))


def _batch_shape_hook(block: LayerRoutedBlock):
    """A decoder-layer pre-hook giving the block the (B, S) of the layer's input, which its router sees flattened."""
    def hook(layer, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        block.batch_shape = tuple(hidden.shape[:2]) if isinstance(hidden, torch.Tensor) and hidden.dim() == 3 else None
    return hook


def replace_moe_blocks(model: nn.Module, family: Family, session: RoutingSession) -> list[PiMoEBlock]:
    """Swap every `family.block_class` found at `<family.layers_path>[i].<block_attr>` (that the family takes) for a
    PiMoEBlock; dense layers stay.

    Returns the new blocks in layer order; ValueError when the model has none.
    """
    blocks = []
    config = family.own_config(model.config)
    for layer_id, layer in enumerate(family.layers(model)):
        block = getattr(layer, family.block_attr, None)
        if type(block).__name__ == family.block_class and family.takes_block(block):
            converted = convert_block(block, family, config, layer_id, session, layer).train(model.training)
            setattr(layer, family.block_attr, converted)
            if family.router_in_layer:  # the layer calls the router on its own input: PiMoE's router stands in for it
                setattr(layer, family.router_attr, LayerRouter(converted))
                layer.register_forward_pre_hook(_batch_shape_hook(converted), with_kwargs=True)
            blocks.append(converted)
    if not blocks:
        raise ValueError(f"no {family.block_class} found in the model's layers: nothing to run on PiMoE")
    return blocks
