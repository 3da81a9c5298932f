"""PiMoE's dispatch as a transformers experts implementation: `experts_implementation="pimoe"`.

Legend: T tokens, D hidden size, K experts per token, E experts, F expert intermediate width.

transformers 5 sends every experts module decorated with `@use_experts_implementation` through its
`ExpertsInterface`: forward(hidden (T, D), top_k_index (T, K), top_k_weights (T, K)) -> (T, D), picked by the
config's `experts_implementation` (eager, batched_mm, grouped_mm, sonicmoe, ...). Registered there, PiMoE's dispatch
serves a model that transformers loaded, with nothing else of the model changed: the checkpoint's own router picks
the experts and weights, the MoE block and its shared experts stay transformers', and the routed experts run on the
CUDA fast path (counting sort, grouped GEMMs with the gate in the up GEMM's epilogue, fused combine) on a GPU, on its
plain-torch mirror (torch._grouped_mm) elsewhere. `load_hf_moe` goes further (PiMoE's router, routing records, temperature / top-k / force /
ablate edits); this door is for a user who keeps their transformers model as it is.

What it takes: gated experts in the standard layout (gate_up_proj (E, 2F, D) gate rows first, or transposed), no
expert biases, no post-expert norm, no expert parallelism, the default gate, an activation PiMoE's experts have.
Anything else runs transformers' own grouped_mm implementation, with the reason logged once. Training calls take
PiMoE's differentiable path (`pimoe.cuda.train_path.stacked_train_dispatch`) with the module's own stacks as its
weights, so gradients reach gate_up_proj, down_proj, the tokens and the router.

    import pimoe.hf
    pimoe.hf.register_experts_implementation()                 # once per process
    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="pimoe")
    # or, on a model already loaded: model.set_experts_implementation("pimoe")
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pimoe.hf.convert import gated_expert
from pimoe.hf.families import activation_name
from pimoe.layer.losses import count_per_expert
from pimoe.layer.routing import RoutingInfo

__all__ = ["EXPERTS_IMPLEMENTATION", "pimoe_experts_forward", "register_experts_implementation"]

EXPERTS_IMPLEMENTATION = "pimoe"
_logger = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


def register_experts_implementation(name: str = EXPERTS_IMPLEMENTATION) -> str:
    """Register PiMoE's dispatch in transformers' `ExpertsInterface` under `name` (idempotent) and return the name,
    for `from_pretrained(..., experts_implementation=name)` or `model.set_experts_implementation(name)`."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(name, pimoe_experts_forward)
    return name


def unsupported_reason(experts: nn.Module) -> str | None:
    """Why PiMoE's dispatch cannot serve this call of a transformers experts module, or None when it can."""
    from transformers.integrations.moe import _default_apply_gate

    if not getattr(experts, "has_gate", False):
        return "the experts are not gated (no gate_up_proj)"
    if getattr(experts, "has_bias", False):
        return "the experts have biases"
    if getattr(experts, "has_post_expert_norm", False):
        return "the experts apply a post-expert norm"
    if not getattr(experts, "is_concatenated", True):
        return "gate and up rows are interleaved, not concatenated"
    if getattr(experts, "_is_expert_parallel", False):
        return "the experts are split over ranks (expert parallelism)"
    if getattr(type(experts), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        return f"{type(experts).__name__} has its own gate function"
    if not isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor) or \
            not isinstance(getattr(experts, "down_proj", None), torch.Tensor):
        return "the experts hold no plain gate_up_proj / down_proj weights (quantized?)"
    if experts.gate_up_proj.device.type == "meta" or experts.down_proj.device.type == "meta":
        return "the expert weights are not materialised (meta device: offloaded by accelerate?)"
    try:
        _activation(experts)
    except ValueError as error:
        return str(error)
    return None


def _activation(experts: nn.Module) -> str:
    """The PiMoE activation of the module's gate: a supported family's (which knows where its config keeps it), else
    the one `act_fn` computes; ValueError when PiMoE's experts have none."""
    try:
        return activation_name(experts.config)
    except (ValueError, AttributeError):
        pass
    from torch.nn import ReLU, SiLU, Tanh
    from transformers.activations import GELUActivation, GELUTanh, NewGELUActivation, SiLUActivation

    known = {GELUActivation: "gelu", GELUTanh: "gelu_tanh", NewGELUActivation: "gelu_tanh", SiLUActivation: "silu",
             SiLU: "silu", ReLU: "relu", Tanh: "tanh"}
    act_fn = getattr(experts, "act_fn", None)
    if type(act_fn) not in known:
        raise ValueError(f"the experts' activation {type(act_fn).__name__} has no PiMoE expert activation; "
                         f"supported: {sorted(c.__name__ for c in known)}")
    return known[type(act_fn)]


def _expert_views(experts: nn.Module) -> nn.ModuleList:
    """PiMoE gated experts whose weights are views of the module's stacks (no copy), built once per set of stacks:
    a new tensor bound to gate_up_proj or down_proj (a reload, a dtype or device move) builds them again."""
    cached = getattr(experts, "_pimoe_views", None)
    # dynamo cannot compare data pointers; compiled calls read only the views' constants (activation, widths), which
    # a move of the stacks does not change, and take their weights from the module itself (`pimoe_experts_forward`)
    if cached is not None and (torch.compiler.is_compiling() or cached[0] == _stacks_key(experts)):
        return cached[1]
    return _build_views(experts)


# Built outside any compiled graph (it builds modules on the meta device, which dynamo does not trace): under
# torch.compile a first call breaks the graph here once; with fullgraph=True, make one call before compiling.
@torch.compiler.disable
def _build_views(experts: nn.Module) -> nn.ModuleList:
    gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    activation = _activation(experts)
    if getattr(experts, "is_transposed", False):  # (E, D, 2F) and (E, F, D): transposed views
        views = nn.ModuleList(gated_expert(gate_up[e].t(), down[e].t(), activation) for e in range(gate_up.shape[0]))
    else:
        views = nn.ModuleList(gated_expert(gate_up[e], down[e], activation) for e in range(gate_up.shape[0]))
        _share_the_pack(experts, views)
    # a plain attribute, not a submodule: the views must not show up as parameters of the transformers model
    object.__setattr__(experts, "_pimoe_views", (_stacks_key(experts), views))
    return views


def _stacks_key(experts: nn.Module) -> tuple:
    gate_up, down = experts.gate_up_proj, experts.down_proj
    return id(gate_up), id(down), gate_up.data_ptr(), down.data_ptr(), gate_up.dtype, gate_up.device


def _share_the_pack(experts: nn.Module, views: nn.ModuleList) -> None:
    """The fast path reads the experts from a padded pack (`pimoe.cuda.packing`); where the pack is exactly the
    module's stacks (one width, padded to nothing), the module's parameters become the pack, so the routed experts'
    weights exist once on the device rather than twice. In-place edits of the parameters are edits of the pack."""
    from pimoe.cuda.packing import pack_experts_in_place

    # the pack must be the same kind of tensor as the parameters it replaces: an inference tensor (made under
    # inference_mode) behind a normal parameter breaks the model's training later ("Inference tensors cannot be saved
    # for backward"), and a normal one behind a parameter that was made under inference_mode breaks its next call
    # ("Inference tensors do not track version counter")
    with torch.inference_mode(experts.gate_up_proj.is_inference()):
        packed = pack_experts_in_place(views)
    if views[0].up.weight.data_ptr() == packed.w1.data_ptr() and packed.w1.shape == experts.gate_up_proj.shape \
            and packed.w2.shape == experts.down_proj.shape:
        experts.gate_up_proj.data = packed.w1
        experts.down_proj.data = packed.w2


def routing_from_choices(top_k_index: torch.Tensor, top_k_weights: torch.Tensor, num_experts: int) -> RoutingInfo:
    """A RoutingInfo carrying another router's choices: (T, K) experts and their combine weights, nothing dropped.
    The router's own statistics (logits, probabilities, losses) are not known here and are zeros."""
    tokens = top_k_index.shape[0]
    indices = top_k_index.long()
    counts = count_per_expert(indices, num_experts)
    zero = top_k_weights.new_zeros((), dtype=torch.float32)
    scores = torch.zeros(tokens, num_experts, device=indices.device)
    return RoutingInfo(
        logits=scores, probs=scores, expert_indices=indices, expert_weights=top_k_weights,
        dropped=torch.zeros_like(indices, dtype=torch.bool), token_positions=torch.arange(tokens, device=indices.device),
        batch_shape=(1, tokens), tokens_per_expert=counts, selected_per_expert=counts,
        entropy=torch.zeros(tokens, device=indices.device), confidence=torch.zeros(tokens, device=indices.device),
        load_balance_loss=zero, z_loss=zero, supervised_loss=zero, router_loss=zero, capacity=None, temperature=1.0,
        expert_types=["mathematical"] * num_experts)


def _needs_gradient(experts: nn.Module, hidden_states: torch.Tensor, top_k_weights: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (hidden_states.requires_grad or top_k_weights.requires_grad
                                        or any(p.requires_grad for p in experts.parameters()))


def _differentiable_stacks(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up_proj and down_proj as the training path's (E, 2F, D) and (E, D, F): the parameters themselves, or
    differentiable transposed copies."""
    if getattr(experts, "is_transposed", False):
        return experts.gate_up_proj.transpose(1, 2).contiguous(), experts.down_proj.transpose(1, 2).contiguous()
    return experts.gate_up_proj, experts.down_proj


def pimoe_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """The `ExpertsInterface` entry: (T, D) tokens, (T, K) chosen experts and weights -> (T, D) weighted sum of the
    chosen experts' outputs in hidden_states' dtype. A call that needs gradients, or that torch.compile traces, takes
    the differentiable path (custom ops) with the module's own stacks as its weights, so gradients reach gate_up_proj,
    down_proj, the tokens and the router's weights."""
    if hidden_states.shape[0] == 0:  # an empty batch: nothing to route (the sort's shapes need a row); an empty
        return hidden_states * 0  # product keeps the autograd link a caller's backward may walk
    reason = unsupported_reason(self)
    if reason is None:
        from pimoe.cuda.fast_path import fast_dispatch
        from pimoe.cuda.train_path import stacked_train_dispatch, train_path_reason

        experts = _expert_views(self)
        weights = top_k_weights.to(torch.promote_types(top_k_weights.dtype, torch.float32))  # float64 stays
        routing = routing_from_choices(top_k_index, weights, len(experts))
        if not (_needs_gradient(self, hidden_states, top_k_weights) or torch.compiler.is_compiling()):
            # fast_dispatch: the GPU's kernels, or their plain-torch mirror on a CPU
            return fast_dispatch(hidden_states, routing, experts).to(hidden_states.dtype)
        reason = train_path_reason(experts)
        if reason is None:
            try:
                w1, w2 = _differentiable_stacks(self)
                return stacked_train_dispatch(hidden_states, routing, experts, w1, w2).to(hidden_states.dtype)
            except ValueError as error:  # stacks the pack would pad (an odd width on CUDA)
                reason = str(error)
    from transformers.integrations.moe import grouped_mm_experts_forward

    if (type(self).__name__, reason) not in _logged:
        _logged.add((type(self).__name__, reason))
        _logger.warning("experts_implementation=%r: %s runs transformers' grouped_mm: %s", EXPERTS_IMPLEMENTATION,
                        type(self).__name__, reason)
    return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
