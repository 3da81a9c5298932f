"""PiMoESystem: token-level router + typed experts + vectorised dispatch, as one drop-in FFN layer.

Legend: B batch, S sequence, D hidden size, T routed (non-padding) tokens, E experts, K experts per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.dispatch_choice import DispatchChoice
from pimoe.layer.experts import PiMoEExpert
from pimoe.layer.options import RoutingOptions
from pimoe.layer.router import TokenLevelRouter
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.strategies import AUTO
from pimoe.layer.validation import check_attention_mask, check_hidden_states

__all__ = ["PiMoESystem", "RoutedTokens", "create_pimoe_system", "gather_routed_tokens", "scatter_routed_output"]


class PiMoESystem(DispatchChoice, nn.Module):
    """A PiMoE layer: `forward(x)` returns x + sum_k w_k * expert_k(x) per token (x alone when residual=False).

    `dispatch` names a strategy in `pimoe.layer.strategies.STRATEGIES`; "auto" picks the fast path of the device the
    layer lives on. The strategy is resolved when the name is set or the layer moves, not on every call.
    `use_strategy` runs one that is not registered (benchmark-only backends, bench/backends.py).

    `auto_cuda_graphs` (on by default): plain calls on CUDA (no mask, labels or per-call knobs) whose shape keeps coming
    are captured once and replayed as CUDA graphs, which takes the host's launch work off each call: an inference call
    (eval mode, no autograd, no routing info) as one graph, a bf16 training call (train mode, autograd, an input that
    requires grad; routing info allowed) as a forward and a backward graph replayed through autograd.
    `pimoe.cuda.auto_graph` and `pimoe.cuda.train_graph` say when a call runs eagerly instead. Set it to False to run
    every call eagerly.
    """

    def __init__(self, config: PiMoEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else PiMoEConfig()
        cfg = self.config
        self.expert_types = cfg.assigned_expert_types
        self.router = TokenLevelRouter(cfg.hidden_size, cfg.num_experts, cfg.router, self.expert_types)
        self.experts = nn.ModuleList(
            PiMoEExpert(cfg.hidden_size, expert_type, cfg.intermediate_size, cfg.expert.dropout,
                        cfg.expert.activation, cfg.expert.bias)
            for expert_type in self.expert_types
        )
        self.check_finite = True
        self.auto_cuda_graphs = True
        self._auto_graphs = None
        self.dispatch = AUTO

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def _strategy_device(self) -> torch.device:
        return self.router.gate.weight.device

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_routing_info: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        allowed_experts: torch.Tensor | None = None,
        options: RoutingOptions | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, RoutingInfo]:
        """Route and run the experts.

        x: (B, S, D). attention_mask: (B, S), 0 marks padding, which is neither routed nor counted and comes out
        unchanged. options: this call's router knobs (temperature / top_k / capacity factor), which leave the module
        untouched; temperature= and top_k= are shorthands for the same record.
        allowed_experts: (B, S, E) bool token-type labels for the supervised routing loss.
        Returns (B, S, D), and the RoutingInfo when return_routing_info.
        """
        # The cheap tests first: a call on the CPU, or with a mask, labels or knobs, pays nothing more here.
        if (self.auto_cuda_graphs and isinstance(x, torch.Tensor) and x.is_cuda and attention_mask is None
                and temperature is None and top_k is None and allowed_experts is None and options is None
                and not torch.compiler.is_compiling()):
            if self.training and torch.is_grad_enabled():
                replayed = self._replay_graph(x, training=True, return_routing_info=return_routing_info)
            elif not self.training and not torch.is_grad_enabled() and not return_routing_info:
                replayed = self._replay_graph(x)
            else:
                replayed = None
            if replayed is not None:
                return replayed
        options = RoutingOptions.of(options, temperature=temperature, top_k=top_k)
        routed = gather_routed_tokens(x, attention_mask, allowed_experts, self.hidden_size, self.num_experts,
                                      check_finite=self.check_finite)
        tokens, positions = routed.tokens, routed.positions

        strategy = self.strategy
        if (x.dtype != self.router.gate.weight.dtype and not strategy.casts_weights
                and not torch.is_autocast_enabled(x.device.type)):
            self._check_input_dtype(x)
        placement = dict(allowed_experts=routed.labels, token_positions=positions, batch_shape=routed.batch_shape)
        if strategy.route is not None:  # the strategy's own router (pimoe.cuda's fused kernels)
            routing = strategy.route(self.router, tokens, options, **placement)
        else:
            routing = self.router(tokens, options, **placement)
        if self.config.residual and not routed.masked and strategy.fused_residual:
            output = strategy.dispatch(tokens, routing, self.experts, residual=True).view_as(x)
        else:
            mixed = strategy.dispatch(tokens, routing, self.experts)  # (T, D)
            output = scatter_routed_output(x, routed, mixed, residual=self.config.residual)
        if strategy.finish is not None:
            strategy.finish(routing)
        return (output, routing) if return_routing_info else output

    def cuda_graph_stats(self) -> dict:
        """What the automatic CUDA graphs did: inference and training replays, the input shapes holding a graph of each
        kind, failed captures."""
        graphs = self._auto_graphs
        if graphs is None or not graphs.owned_by(self):
            return {"replays": 0, "graphed_shapes": [], "training_replays": 0, "training_graphed_shapes": [],
                    "failed": {}}
        return graphs.stats()

    def clear_cuda_graphs(self) -> None:
        """Drop the automatic CUDA graphs and their memory; plain calls start counting their shapes again."""
        self._auto_graphs = None

    def _replay_graph(self, x: torch.Tensor, *, training: bool = False,
                      return_routing_info: bool = False):
        """This call's result from the layer's automatic CUDA graphs, or None when it must run eagerly."""
        from pimoe.cuda.auto_graph import AutoGraphs, plain_inference_call
        from pimoe.cuda.train_graph import plain_training_call

        check_hidden_states(x, self.hidden_size, check_finite=False)
        graphs = self._auto_graphs
        if graphs is None or not graphs.owned_by(self):  # a copy.copy of the layer must not replay the original
            graphs = self._auto_graphs = AutoGraphs(self)
        if training:
            if not plain_training_call(self, x, graphs.submodules):
                return None
        elif not plain_inference_call(self, x, graphs.submodules):
            return None
        return graphs(x, before_replay=lambda: check_hidden_states(x, self.hidden_size,
                                                                   check_finite=self.check_finite),
                      training=training, return_routing_info=return_routing_info)

    def _check_input_dtype(self, x: torch.Tensor) -> None:
        # the router upcasts whatever it reads; the experts' matrix products do not, and torch's own message ("mat1
        # and mat2 must have the same dtype") names neither the layer nor the fix
        weight = next(self.experts.parameters(), None)
        expert_dtype = weight.dtype if weight is not None else x.dtype
        if x.dtype != expert_dtype:
            raise ValueError(f"input dtype {x.dtype} does not match the layer's {expert_dtype} weights: convert one "
                             f"to the other (layer.to({x.dtype}) or x.to({expert_dtype})), or call it under "
                             "torch.autocast")

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_experts={self.num_experts}, top_k={self.router.top_k}"


@dataclass(frozen=True)
class RoutedTokens:
    """The non-padding tokens of a (B, S, D) input, flattened for routing.

    tokens: (T, D). positions: (T,) their index in the flattened (B * S) grid, or None when unmasked (then token t
    sits at t, and the router writes that index itself: the fused one in its own kernel, saving a launch).
    labels: (T, E) bool or None. masked: whether an attention mask selected them (else tokens is the whole grid, in
    order).
    """

    tokens: torch.Tensor
    positions: torch.Tensor | None
    labels: torch.Tensor | None
    batch_shape: tuple[int, int]
    masked: bool


def gather_routed_tokens(x: torch.Tensor, attention_mask: torch.Tensor | None, allowed_experts: torch.Tensor | None,
                         hidden_size: int, num_experts: int, *, check_finite: bool = True) -> RoutedTokens:
    """Validate a layer call's inputs and pick out the tokens to route (padding is neither routed nor counted)."""
    check_hidden_states(x, hidden_size, check_finite=check_finite)
    batch, seq, hidden = x.shape
    check_attention_mask(attention_mask, batch, seq)
    if allowed_experts is not None and tuple(allowed_experts.shape) != (batch, seq, num_experts):
        raise ValueError(f"allowed_experts shape {tuple(allowed_experts.shape)} does not match "
                         f"[batch, seq, num_experts] = [{batch}, {seq}, {num_experts}]")
    flat = x.reshape(batch * seq, hidden)
    labels = None if allowed_experts is None else allowed_experts.reshape(batch * seq, -1)
    if attention_mask is None:
        positions, tokens = None, flat
    else:
        # NOTE: nonzero reads the count back to the host: masked calls take one sync, unmasked ones none.
        positions = torch.nonzero(attention_mask.reshape(-1).bool(), as_tuple=True)[0]
        tokens = flat[positions]
        labels = None if labels is None else labels[positions]
    return RoutedTokens(tokens, positions, labels, (batch, seq), attention_mask is not None)


def scatter_routed_output(x: torch.Tensor, routed: RoutedTokens, mixed: torch.Tensor, *, residual: bool) -> torch.Tensor:
    """Put the (T, D) expert mixture back on the (B, S, D) grid: padding gets 0, plus x when residual."""
    if routed.masked:
        delta = torch.zeros_like(x.reshape(-1, x.shape[-1])).index_copy(0, routed.positions, mixed).view_as(x)
    else:
        delta = mixed.view_as(x)
    return x + delta if residual else delta


def create_pimoe_system(
    hidden_size: int = 512,
    num_experts: int = 8,
    expert_types: Sequence[Enum | str] | None = None,
    top_k: int | None = None,
    router_config: RouterConfig | dict[str, Any] | None = None,
    expert_config: ExpertConfig | dict[str, Any] | None = None,
    residual: bool = True,
) -> PiMoESystem:
    """Build a PiMoESystem from the original description's arguments.

    router_config / expert_config accept the seed's dicts ({'temperature', 'load_balance_weight', 'use_gating',
    'use_auxiliary_loss', ...} and {'intermediate_size', 'dropout', 'activation'}) or the config dataclasses.
    """
    router = router_config if isinstance(router_config, RouterConfig) else RouterConfig.from_dict(router_config or {})
    if top_k is not None:
        router = RouterConfig(**{**router.__dict__, "top_k": top_k})
    expert = expert_config if isinstance(expert_config, ExpertConfig) else ExpertConfig.from_dict(expert_config or {})
    config = PiMoEConfig(
        hidden_size=hidden_size,
        num_experts=num_experts,
        expert_types=tuple(expert_types) if expert_types else PiMoEConfig().expert_types,
        router=router,
        expert=expert,
        residual=residual,
    )
    return PiMoESystem(config)
