"""Every dispatch strategy, registered here and only here: name -> DispatchStrategy.

A layer resolves its strategy once, when it is built, when `layer.dispatch` is set or when it moves to another device
(`resolve_strategy`), not by a string lookup on every call. "auto" resolves to the device's fast path where there is
one (`cuda_fast` on CUDA) and to `sorted` elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from pimoe.cuda.fast_path import fast_dispatch, make_fast_dispatch
from pimoe.cuda.fused_router import finish_route, fused_route
from pimoe.layer.dense_dispatch import dense_masked_dispatch
from pimoe.layer.dispatch import loop_dispatch, sorted_dispatch
from pimoe.layer.routing import RoutingInfo

__all__ = ["AUTO", "STRATEGIES", "DispatchStrategy", "check_strategy_name", "resolve_strategy"]

AUTO = "auto"
Dispatcher = Callable[..., torch.Tensor]
# route(router, tokens, options, **placement) -> RoutingInfo, standing in for router(tokens, options, **placement)
RouteFn = Callable[..., RoutingInfo]


@dataclass(frozen=True)
class DispatchStrategy:
    """How a layer moves tokens to experts and back.

    dispatch(x (T, D), routing, experts) -> (T, D) weighted mixture. route: the strategy's own router, or None for the
    module's. fused_residual: dispatch also takes `residual=True` and returns x + mixture from one pass (saves a full
    read and write of the activations). graph_safe: an unmasked call never reads back from the device, so the layer
    may capture it in a CUDA graph (`PiMoESystem.auto_cuda_graphs`). finish: called with the routing after dispatch,
    before the layer returns it (the fused router's reduction, deferred into the dispatch's counting sort, runs there
    when the dispatch did not take it). casts_weights: the experts run from a copy of their weights in the input's
    dtype (the fast path's packed stacks), so an input of any floating dtype works; the others need the weights' own.
    """

    name: str
    dispatch: Dispatcher
    summary: str
    route: RouteFn | None = None
    fused_residual: bool = False
    graph_safe: bool = False
    finish: Callable[[RoutingInfo], None] | None = None
    casts_weights: bool = False

    def __call__(self, x: torch.Tensor, routing: RoutingInfo, experts: Sequence[nn.Module]) -> torch.Tensor:
        return self.dispatch(x, routing, experts)


def _fast(name: str, backend: str, summary: str) -> DispatchStrategy:
    dispatch = fast_dispatch if backend == AUTO else make_fast_dispatch(backend)
    return DispatchStrategy(name, dispatch, summary, route=functools.partial(fused_route, defer_finalize=True),
                            fused_residual=True, graph_safe=True, finish=finish_route, casts_weights=True)


STRATEGIES: MappingProxyType[str, DispatchStrategy] = MappingProxyType({s.name: s for s in (
    DispatchStrategy("sorted", sorted_dispatch, "argsort by expert, one call per expert on a contiguous block"),
    DispatchStrategy("loop", loop_dispatch, "reference: one boolean mask per expert"),
    DispatchStrategy("dense_masked", dense_masked_dispatch,
                     "every expert on every token, weights 0 where not chosen (traceable: ONNX export)"),
    _fast("cuda_fast", AUTO, "CUDA fast path: fused router, counting sort, grouped GEMMs; backend by dtype and size"),
    _fast("cuda_triton", "triton", "fast path, Triton GEMMs only"),
    _fast("cuda_fused_up", "fused_up", "fast path, up GEMM with bias and activation in its epilogue"),
)})


def check_strategy_name(name: str) -> str:
    """The name itself when it is "auto" or registered; a ValueError listing the known ones otherwise."""
    if name != AUTO and name not in STRATEGIES:
        raise ValueError(f"unknown dispatch strategy {name!r}; choose one of {[AUTO, *STRATEGIES]}")
    return name


def resolve_strategy(name: str, device: torch.device | str) -> DispatchStrategy:
    """The strategy a layer on `device` runs for `name` ("auto": the device's fast path, else sorted)."""
    check_strategy_name(name)
    if name != AUTO:
        return STRATEGIES[name]
    fast = f"{torch.device(device).type}_fast"
    return STRATEGIES.get(fast, STRATEGIES["sorted"])
