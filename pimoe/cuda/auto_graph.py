"""Automatic CUDA graphs for a PiMoE layer's repeated plain inference calls (`PiMoESystem.auto_cuda_graphs`).

Legend: B batch, S sequence, D hidden size.

An eager forward of a few hundred tokens is bound by the host, not the GPU: about eight Triton launches and 25
allocations cost 450-870 µs of Python against 47 µs of kernels at 512 tokens (H100, 2026-12-06,
bench/results/host-profile-h100-20261206-python.json). Inference repeats its shapes (a server's batch, every decode
step of generation), so once plain calls of one shape have come `min_repeats` times with unchanged weights, the layer
captures that shape (GraphedPiMoE) and replays it from then on: a copy in, one replay, a copy out.

What a replay could get wrong runs eagerly instead: calls with a mask, routing info or per-call knobs; training mode or
autograd; autocast; torch.compile tracing; a capture already running on the stream; hooks on the router or the experts
(a replay would skip them); strategies that read back from the device. A weight, router-setting or mode change found
after a replay drops that shape's graph and the shape must repeat again, so a model whose weights change between calls
keeps running eagerly rather than capturing on every call. Before a shape's first capture, one eager call runs under
torch's sync debug mode: a call that reads back to the host would abort the capture, and an aborted capture leaves
torch's CUDA random generator unusable for the rest of the process. Such a shape, and one whose capture fails anyway,
is logged once and stays eager.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from pimoe.cuda.graph_safety import has_forward_hooks, submodules_of, syncs_reported
from pimoe.cuda.graphs import GraphedPiMoE
from pimoe.cuda.train_graph import AWAITING_BACKWARD, GraphedTraining, host_sync_of_training_call

__all__ = ["AutoGraphs", "plain_inference_call"]

_logger = logging.getLogger(__name__)

MAX_TRACKED_SHAPES = 64  # shapes whose calls are counted; older ones are forgotten (a decode loop sees one or two)


def plain_inference_call(system: nn.Module, x: torch.Tensor, submodules: tuple[nn.Module, ...] | None = None) -> bool:
    """Whether replaying a captured graph gives exactly what an eager call of `system(x)` would (see the module doc).
    submodules: the layer's children (`submodules_of`), when the caller keeps them: walking the module tree costs more
    host time than the rest of a replay."""
    return (x.is_cuda and not system.training and not torch.is_grad_enabled()
            and system.strategy.graph_safe
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cuda")
            and not torch.cuda.is_current_stream_capturing()
            and not has_forward_hooks(submodules_of(system) if submodules is None else submodules))


def host_sync_of_call(system: nn.Module, x: torch.Tensor) -> str | None:
    """One eager inference call system(x) under torch's sync debug mode (`syncs_reported`)."""
    return syncs_reported(system, lambda: system(x))


class AutoGraphs:
    """One layer's graphs: counts plain calls per (shape, dtype, device, stream, kind), captures a shape on its
    `min_repeats`-th call and replays it after that. Calls return None whenever the caller must run eagerly.

    Two kinds of call: inference (`replayer`, GraphedPiMoE: one graph per shape) and training (`training_replayer`,
    pimoe.cuda.train_graph.GraphedTraining: a forward and a backward graph per shape, replayed through autograd).
    At most `max_graphs` shapes of each kind hold a graph per stream (least recently used dropped first), none above
    `max_tokens` tokens (there the kernels dominate and a graph buys little). Thread-safe: a call that finds another
    thread capturing or replaying runs eagerly rather than wait. Copies of the layer (copy.copy, deepcopy, pickling)
    do not share or carry graphs. `submodules` is the layer's children as of the last capture or weight change (a
    replaced child brings new weights, which the replay's check finds; the list is then read again).
    """

    def __init__(self, system: nn.Module, *, min_repeats: int = 3, max_tokens: int = 8192, max_graphs: int = 4,
                 replayer: Callable[..., Callable] = GraphedPiMoE,
                 sync_probe: Callable[[nn.Module, torch.Tensor], str | None] = host_sync_of_call,
                 training_replayer: Callable[..., Callable] | None = None,
                 training_sync_probe: Callable[[nn.Module, torch.Tensor, bool], str | None] | None = None) -> None:
        if min_repeats < 1:
            raise ValueError(f"min_repeats must be >= 1, got {min_repeats}")
        self._owner = weakref.ref(system)
        self.submodules = submodules_of(system)
        self.min_repeats = min_repeats
        self.max_tokens = max_tokens
        self.max_graphs = max_graphs
        self._make_replayer = replayer
        self._sync_probe = sync_probe
        self._make_training_replayer = training_replayer or GraphedTraining
        self._training_sync_probe = training_sync_probe or host_sync_of_training_call
        self._probed: set[tuple] = set()  # keys whose eager call was seen not to sync
        self._calls: OrderedDict[tuple, int] = OrderedDict()
        self._replayers: dict[tuple[int, bool], Callable] = {}
        self.failed: dict[tuple, str] = {}
        self.replays = 0
        self.training_replays = 0
        self._lock = threading.Lock()
        self._busy = False  # set while this object captures or replays: the layer's own calls inside run eagerly

    def stats(self) -> dict:
        """Replays so far, the shapes holding a graph now (inference, training) and the shapes whose capture failed."""
        def shapes(training: bool) -> list:
            return [(shape, str(dtype)) for (_, kind), replayer in self._replayers.items() if kind == training
                    for shape, dtype in getattr(replayer, "captured_shapes", list)()]

        return {"replays": self.replays, "graphed_shapes": shapes(False), "training_replays": self.training_replays,
                "training_graphed_shapes": shapes(True),
                "failed": {str(key[0]): error for key, error in self.failed.items()}}

    def owned_by(self, system: nn.Module) -> bool:
        return self._owner() is system

    def __deepcopy__(self, memo):
        return None  # the copy builds its own graphs on first use

    def __reduce__(self):
        return type(None), ()  # a pickled layer carries no graphs

    def __call__(self, x: torch.Tensor, before_replay: Callable[[], None] | None = None, *, training: bool = False,
                 return_routing_info: bool = False):
        """The layer's output for x from a graph, or None: run eagerly. `before_replay` runs just before a replay
        (the layer's input checks, so bad input fails as it would eagerly). A training call returns what the layer
        would (with the RoutingInfo when `return_routing_info`), differentiable through the backward graph."""
        system = self._owner()
        if self._busy or system is None or x.shape[0] * x.shape[1] > self.max_tokens:
            return None
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
        kind = ("train", x.requires_grad, bool(return_routing_info)) if training else ("infer",)
        key = (tuple(x.shape), x.dtype, x.device, stream, kind)
        if key in self.failed:
            return None
        calls = self._calls.pop(key, 0) + 1
        self._calls[key] = calls
        if len(self._calls) > MAX_TRACKED_SHAPES:
            self._calls.popitem(last=False)
        if calls < self.min_repeats or not self._lock.acquire(blocking=False):
            return None
        self._busy = True
        try:
            if before_replay is not None:
                before_replay()
            if key not in self._probed:
                reason = (self._training_sync_probe(system, x, return_routing_info) if training
                          else self._sync_probe(system, x))
                if reason is not None:
                    self._fail(key, x, f"the call reads back to the host, which a graph cannot hold: {reason}")
                    return None
                self._probed.add(key)
            replayer = self._replayers.get((stream, training))
            if replayer is None:
                self.submodules = submodules_of(system)
                if training:
                    replayer = self._make_training_replayer(system, max_graphs=self.max_graphs)
                else:
                    replayer = self._make_replayer(system, max_tokens=self.max_tokens, max_graphs=self.max_graphs,
                                                   clone_output=True, recapture=False)
                self._replayers[(stream, training)] = replayer
            output = replayer(x, return_routing_info) if training else replayer(x)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            self._fail(key, x, f"{type(error).__name__}: {error}")
            return None
        finally:
            self._busy = False
            self._lock.release()
        if output is AWAITING_BACKWARD:  # the graph is fine, its last call's backward has not run: this one is eager
            return None
        if output is None:  # weights or settings changed since the capture: the shape must repeat again
            self._calls[key] = 0
            self.submodules = submodules_of(system)
        elif training:
            self.training_replays += 1
        else:
            self.replays += 1
        return output

    def _fail(self, key: tuple, x: torch.Tensor, reason: str) -> None:
        self.failed[key] = reason
        _logger.warning("PiMoESystem: no CUDA graph for %s input %s %s (%s); calls of that shape run eagerly",
                        "training" if key[-1][0] == "train" else "inference", tuple(x.shape), x.dtype, reason[:300])
