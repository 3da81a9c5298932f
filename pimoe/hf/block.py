"""The PiMoE block that stands in for a checkpoint's sparse MoE block inside the transformers model.

Legend: B batch, S sequence, D hidden size, T = B * S tokens, E experts.

forward((B, S, D)) -> (B, S, D), the same contract as the block it replaces (the decoder layer adds the residual):
routed mixture from the checkpoint's router and PiMoE's dispatch (the CUDA fast path on GPU), plus the shared expert
when the family has one. Every block of a model shares one `RoutingSession`: the edits of the current call in, one
RoutingInfo per block call out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pimoe.hf.edits import RoutingEdits
from pimoe.hf.router import CheckpointRouter
from pimoe.layer.dispatch import sorted_dispatch
from pimoe.layer.dispatch_choice import DispatchChoice
from pimoe.layer.routing import RoutingInfo

__all__ = ["LayerRoutedBlock", "LayerRouter", "PiMoEBlock", "RoutingSession"]


@dataclass
class RoutingSession:
    """Shared by the blocks of one model. records: None (not recording) or a list that each block call appends to."""

    edits: RoutingEdits = field(default_factory=RoutingEdits)
    records: list[tuple[int, RoutingInfo]] | None = None


class PiMoEBlock(DispatchChoice, nn.Module):
    """Router + experts (+ shared expert, optionally sigmoid-gated) for decoder layer `layer_id`.

    shared_gate: a (1, D) linear whose sigmoid scales the shared expert (Qwen2-MoE); None adds it ungated (DeepSeek).
    dispatch: a strategy of `pimoe.layer.strategies.STRATEGIES`, or "auto" (the device's fast path where there is one),
    resolved when set or moved (`DispatchChoice`).
    returns_router_scores: return (hidden, (T, K) combine weights), the tuple GPT-OSS's decoder layer unpacks (Llama
        4's discards the second element).
    weights_on_input: expert_e(w x) summed unweighted (Llama 4) instead of w expert_e(x), on the sorted dispatch.
    average_shared: return (routed + shared) / 2 rather than the sum (Cohere2-MoE's "average").
    output_norm: a module applied to the output last (A.X-K1's post-MLP RMSNorm), or None.
    latent_in / latent_out: the checkpoint's projections into and out of the routed experts' latent width (Nemotron-H);
        the router and the shared expert read the block's input itself.
    output_bias: (D,) added to every token's output (JetMoE's block bias), or None.
    """

    def __init__(self, layer_id: int, router: CheckpointRouter, experts: nn.ModuleList, session: RoutingSession,
                 shared_expert: nn.Module | None = None, shared_gate: nn.Linear | None = None, *,
                 dispatch: str = "auto", returns_router_scores: bool = False, weights_on_input: bool = False,
                 average_shared: bool = False, output_norm: nn.Module | None = None,
                 latent_in: nn.Module | None = None, latent_out: nn.Module | None = None,
                 output_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.router = router
        self.experts = experts
        self.shared_expert = shared_expert
        self.shared_gate = shared_gate
        self.session = session
        self.weights_on_input = weights_on_input
        self.dispatch = dispatch
        self.returns_router_scores = returns_router_scores
        self.average_shared = average_shared
        self.output_norm = output_norm
        self.latent_in = latent_in
        self.latent_out = latent_out
        self.output_bias = None if output_bias is None else nn.Parameter(output_bias, requires_grad=False)

    @property
    def dispatch(self) -> str:
        return DispatchChoice.dispatch.fget(self)

    @dispatch.setter
    def dispatch(self, name: str) -> None:
        # the input-weighted form has one implementation: a fast path asked for would silently not run
        if self.weights_on_input and name != "sorted":
            raise ValueError(f"layer {self.layer_id} weights its experts' inputs (Llama 4): only the 'sorted' dispatch "
                             f"runs it, not {name!r}")
        DispatchChoice.dispatch.fset(self, name)

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    def _strategy_device(self) -> torch.device:
        return self.router.weight.device

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, S, D) -> (B, S, D) (and the routing weights, where the family's layer expects them). input_ids: what
        DeepSeek-V4's decoder layers hand every block for its token-id (hash) routing, which PiMoE's blocks do not
        do (those layers stay transformers' own); unused."""
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.reshape(batch * seq, hidden)  # (T, D)
        routing = self._route(x, (batch, seq))
        routed_in = x if self.latent_in is None else self.latent_in(x)  # (T, D), or (T, latent)
        if self.weights_on_input:
            out = sorted_dispatch(routed_in, routing, self.experts, weight_inputs=True)  # (T, D)
        else:
            out = self.strategy.dispatch(routed_in, routing, self.experts)
        if self.latent_out is not None:
            out = self.latent_out(out)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = (out + shared) / 2 if self.average_shared else out + shared
        if self.output_bias is not None:
            out = out + self.output_bias.to(out.dtype)
        if self.output_norm is not None:
            out = self.output_norm(out)
        if self.session.records is not None:
            self.session.records.append((self.layer_id, routing.detach()))
        out = out.view(batch, seq, hidden)
        return (out, routing.expert_weights) if self.returns_router_scores else out

    def _route(self, x: torch.Tensor, batch_shape: tuple[int, int] | None) -> RoutingInfo:
        """(T, D) -> the routing under the session's edits (temperature, top-k, pinned and blocked experts)."""
        edits = self.session.edits
        pinned, blocked = edits.masks(self.layer_id, self.num_experts, x.device)
        return self.router(x, temperature=edits.temperature, top_k=edits.top_k, pinned=pinned, blocked=blocked,
                           batch_shape=batch_shape)

    def extra_repr(self) -> str:
        return f"layer_id={self.layer_id}, num_experts={self.num_experts}, rule={self.router.rule}"


class LayerRoutedBlock(PiMoEBlock):
    """A PiMoEBlock for a decoder layer that calls its router and its experts itself, on different inputs (Gemma 4:
    router(x) -> (scores, weights, indices), then experts(norm(x), indices, weights)); it stands in for the experts
    module and `LayerRouter` for the router. `route` runs PiMoE's router (edits, records) on the router's input;
    forward((T, D) experts' input, indices, weights) runs the experts on the routing `route` handed back.
    batch_shape: the (B, S) of the layer's current call (a pre-hook on the decoder layer sets it), for the records."""

    batch_shape: tuple[int, int] | None = None
    _pending: RoutingInfo | None = None

    def route(self, x: torch.Tensor) -> RoutingInfo:
        """x: (T, D), the router's own input -> RoutingInfo, kept for the experts' call that follows."""
        shape = self.batch_shape if self.batch_shape and self.batch_shape[0] * self.batch_shape[1] == x.shape[0] \
            else None
        routing = self._route(x, shape)
        self._pending = routing
        if self.session.records is not None:
            self.session.records.append((self.layer_id, routing.detach()))
        return routing

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
                ) -> torch.Tensor:
        routing, self._pending = self._pending, None
        if routing is None or routing.expert_indices is not top_k_index:
            raise RuntimeError(f"layer {self.layer_id}: the experts were called without the routing that PiMoE's router "
                               "returned for this call")
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # (T, D)
        out = self.strategy.dispatch(x, routing, self.experts)
        return out.view(hidden_states.shape)


class LayerRouter(nn.Module):
    """Stands in for a decoder layer's own router (`LayerRoutedBlock`): (T, D) -> (scores (T, E), weights (T, K),
    indices (T, K)), transformers' router outputs, from PiMoE's routing."""

    def __init__(self, block: LayerRoutedBlock) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a submodule: the block lives at the layer's experts attribute

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        routing = self.block.route(hidden_states.reshape(-1, hidden_states.shape[-1]))
        return routing.probs, routing.expert_weights, routing.expert_indices
