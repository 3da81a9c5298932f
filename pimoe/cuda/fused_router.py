"""The token-level router as two Triton launches, for inference on CUDA.

Legend: T routed tokens, D hidden size, E experts, K experts per token.

`TokenLevelRouter.forward` costs some thirty small launches (softmax, top-k, gather, renormalisation, entropy, three
losses, two counts); at a few hundred tokens those launches, not the arithmetic, are the router's time. `fused_route`
computes the same RoutingInfo in one pass over the tokens plus a one-program reduction. It serves calls that need no
autograd; anything else goes to the module itself, so training is unchanged.
"""

from __future__ import annotations

import torch

from pimoe.cuda.availability import triton_available
from pimoe.cuda.tuning import active_tuning
from pimoe.layer.losses import count_per_expert, supervised_routing_loss
from pimoe.layer.options import RoutingOptions
from pimoe.layer.router import TokenLevelRouter, _capacity_keep_mask, expert_capacity
from pimoe.layer.routing import RoutingInfo

__all__ = ["finish_route", "fused_checkpoint_route", "fused_checkpoint_route_applies", "fused_route",
           "fused_route_applies"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _kernel_call_ok(x: torch.Tensor, gate_weight: torch.Tensor) -> bool:
    """CUDA tokens (T, D) of a supported dtype, Triton present, no autograd to record, not being compiled."""
    if torch.compiler.is_compiling():  # compiled calls trace the module router (checked first: dynamo cannot trace
        return False                   # triton_available's find_spec)
    if not (x.is_cuda and x.dtype in _DTYPES and x.dim() == 2 and x.shape[0] > 0 and triton_available()):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or gate_weight.requires_grad))


def fused_route_applies(router: TokenLevelRouter, x: torch.Tensor) -> bool:
    """True when the fused kernels can stand in for `router(x)`: CUDA, Triton, no autograd, not being compiled, a
    supported dtype."""
    return router.num_experts <= 63 and _kernel_call_ok(x, router.gate.weight)


def fused_route(router: TokenLevelRouter, x: torch.Tensor, options: RoutingOptions | None = None, *,
                temperature: float | None = None, top_k: int | None = None,
                allowed_experts: torch.Tensor | None = None, token_positions: torch.Tensor | None = None,
                batch_shape: tuple[int, int] | None = None, defer_finalize: bool = False) -> RoutingInfo:
    """Same contract as `TokenLevelRouter.forward`; falls back to it where `fused_route_applies` is False.

    defer_finalize: leave the router's one-program reduction (per-expert counts, the losses) to the counting sort's
    place pass, which reads the same per-block counts (one launch fewer), or to `finish_route`: a caller that asks
    for it must call `finish_route(routing)` after its dispatch and before anything reads those fields."""
    options = RoutingOptions.of(options, temperature=temperature, top_k=top_k)
    if not fused_route_applies(router, x):
        return router(x, options, allowed_experts=allowed_experts, token_positions=token_positions,
                      batch_shape=batch_shape)
    from pimoe.cuda.ops.route import route_tokens
    from pimoe.cuda.ops.sort import attach_router_counts

    cfg = router.config
    num_experts = router.num_experts
    run = options.resolve(cfg, num_experts)
    temperature, top_k = run.temperature, run.top_k
    num_tokens = x.shape[0]
    renormalize = cfg.renormalize if cfg.renormalize is not None else top_k > 1
    capacity = expert_capacity(num_tokens, top_k, num_experts, run.capacity_factor)
    fields = route_tokens(
        x.contiguous(), router.gate.weight.contiguous(),
        router.selection_bias.float().contiguous() if cfg.use_selection_bias else None,
        temperature, top_k, cfg.use_gating, renormalize, cfg.load_balance_weight, cfg.z_loss_weight,
        cfg.use_auxiliary_loss, write_tokens=capacity is None, write_positions=token_positions is None,
        defer_finalize=defer_finalize and capacity is None and active_tuning().defer_router_reduction)
    block_counts = fields.pop("block_counts")
    pending = fields.pop("pending_finalize", None)
    if capacity is not None:
        fields["dropped"] = ~_capacity_keep_mask(fields["expert_indices"], num_experts, capacity)
        fields["tokens_per_expert"] = count_per_expert(fields["expert_indices"], num_experts, ~fields["dropped"])
    if allowed_experts is not None and cfg.supervised_weight > 0:
        fields["supervised_loss"] = supervised_routing_loss(fields["probs"], allowed_experts, cfg.supervised_weight)
        fields["router_loss"] = fields["router_loss"] + fields["supervised_loss"]
    if token_positions is None:  # written by the router kernel: token t sits at t
        token_positions = fields.pop("token_positions")
        batch_shape = batch_shape or (1, num_tokens)
    routing = RoutingInfo(token_positions=token_positions, batch_shape=batch_shape, capacity=capacity,
                          temperature=float(temperature), expert_types=router.expert_types, **fields)
    if capacity is not None:
        return routing
    routing._pending_finalize = pending
    return attach_router_counts(routing, *block_counts)


def finish_route(routing: RoutingInfo) -> None:
    """Runs a deferred router reduction (`fused_route(..., defer_finalize=True)`) that the dispatch did not take
    into its counting sort; nothing for any other routing."""
    pending = getattr(routing, "_pending_finalize", None)
    if pending is not None:
        pending.run()


def fused_checkpoint_route_applies(router, x: torch.Tensor, pinned: torch.Tensor | None,
                                   blocked: torch.Tensor | None) -> bool:
    """True when `fused_checkpoint_route` can stand in for a `pimoe.hf.router.CheckpointRouter` call: CUDA inference
    without edits that pin or remove experts, a softmax rule without expert groups or logit softcapping, no router bias
    or selection bias (GPT-OSS, DeepSeek-V3 keep their torch path), at most 127 experts (the kernel holds E + 1 columns
    in 128)."""
    rule = router.rule
    if rule.score != "softmax" or rule.num_groups > 1 or rule.logit_softcap > 0 or router.bias is not None \
            or router.selection_bias is not None:
        return False
    if pinned is not None or blocked is not None or router.num_experts > 127:
        return False
    return _kernel_call_ok(x, router.weight)


def fused_checkpoint_route(router, x: torch.Tensor, temperature: float, top_k: int,
                           batch_shape: tuple[int, int] | None) -> RoutingInfo:
    """A checkpoint's softmax router in the fused kernels: logits in the checkpoint's own rounding (float32 product,
    or rounded to x's dtype when its matmul runs there), softmax at `temperature`, top-k, renormalised or not by the
    rule, scaled by its routed scaling factor; the load-balance loss at weight 1 as `CheckpointRouter` reports it."""
    from pimoe.cuda.ops.route import route_tokens
    from pimoe.cuda.ops.sort import attach_router_counts

    rule = router.rule
    weight = router.weight if router.weight.dtype == x.dtype else router.weight.to(x.dtype)
    fields = route_tokens(x.contiguous(), weight.contiguous(), None, temperature, top_k, True, rule.renormalize,
                          1.0, 0.0, False, write_tokens=True, write_positions=True,
                          round_logits=not rule.logits_in_float32)
    if rule.routed_scaling_factor != 1.0:
        fields["expert_weights"] = fields["expert_weights"] * rule.routed_scaling_factor
    token_positions = fields.pop("token_positions")
    block_counts = fields.pop("block_counts")
    routing = RoutingInfo(token_positions=token_positions, batch_shape=batch_shape or (1, x.shape[0]),
                          capacity=None, temperature=float(temperature), expert_types=router.expert_types, **fields)
    return attach_router_counts(routing, *block_counts)
