"""CUDA-graph replay of a PiMoE layer's forward, for small token counts where launches dominate.

Legend: B batch, S sequence, D hidden size.

At a few hundred tokens the layer's kernels each run for microseconds and the host's launch work is most of the time;
one graph replay issues them all at once. The fast path is sync-free, so its whole forward (router included) can be
captured. Graphs bake in shapes, addresses and the host-side arguments of each launch, hence the rules below.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pimoe.cuda.packing import pack_experts, packed_key

__all__ = ["GraphedPiMoE", "capture_after_warmup"]


def capture_after_warmup(fn: Callable[[], object], warmups: int = 2,
                         device: torch.device | None = None) -> tuple[torch.cuda.CUDAGraph, object]:
    """`fn` run `warmups` times on a side stream (lazy allocations and autotuning happen outside the graph, as
    torch.cuda.make_graphed_callables does it), then captured once: (graph, what the captured call returned)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: torch.Tensor
    state: tuple
    # every tensor the graph reads outside its own pool (parameters, buffers, the packed weights): held so that a
    # replay issued before the state check below never reads memory the allocator has freed or handed back
    keep_alive: tuple


def _version(tensor: torch.Tensor) -> int | None:
    return None if tensor.is_inference() else tensor._version


class GraphedPiMoE:
    """Replays one captured CUDA graph per input shape of an eval-mode PiMoESystem on CUDA.

    `graphed(x)` with x (B, S, D) on the system's device returns the same tensor `system(x)` would (no attention mask,
    no routing info, no per-call overrides: those calls should use the module directly). Calls with more than
    `max_tokens` tokens run eagerly: at that size the kernels dominate and a graph buys little.

    Rules, checked on every call: the graph holds the packed expert weights and the router's settings by value, so a
    change of any expert or router parameter (version counter or storage) or of `router.config` (temperature, top_k,
    ...) triggers a recapture. The check runs after the replay is issued, while the GPU works (14 µs of host time on
    a 2-core CPU for the benchmark layer's 32 expert tensors, against ~50 µs of kernels at 512 tokens): when it finds
    a change, the layer is captured again and replayed once more on the same stream, so the returned tensor never
    holds the stale result. Graphed calls skip `check_finite` (a NaN check is a host sync, which a graph cannot hold).
    With `clone_output=False` the returned tensor is the graph's own output buffer, overwritten by the next replay of
    the same shape. With `recapture=False` a call that finds a change drops that shape's graph and returns None
    instead of capturing again (the caller runs the module eagerly): the layer's automatic graphs use this so that a
    model whose weights change between calls never pays a capture per call.
    """

    def __init__(self, system, *, max_tokens: int = 8192, max_graphs: int = 8, clone_output: bool = True,
                 recapture: bool = True) -> None:
        if max_tokens < 1 or max_graphs < 1:
            raise ValueError(f"max_tokens and max_graphs must be >= 1, got {max_tokens} and {max_graphs}")
        self.system = system
        self.max_tokens = max_tokens
        self.max_graphs = max_graphs
        self.clone_output = clone_output
        self.recapture = recapture
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = None

    def captured_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(input shape, dtype) of each graph held now, least recently used first."""
        return [(shape, dtype) for shape, dtype, _ in self._graphs]

    def _state(self, x: torch.Tensor) -> tuple:
        router = self.system.router
        gate, bias = router.gate.weight, router.selection_bias
        return (packed_key(self.system.experts, x.dtype, x.device), _version(gate), gate.data_ptr(),
                _version(bias), bias.data_ptr(), tuple(vars(router.config).values()), self.system.training)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if not x.is_cuda:
            raise ValueError(f"GraphedPiMoE needs a CUDA input, got device {x.device}")
        if x.shape[0] * x.shape[1] > self.max_tokens:
            with torch.inference_mode():
                return self.system(x)
        key = (tuple(x.shape), x.dtype, x.device)
        captured = self._graphs.get(key)
        if captured is not None:
            captured.static_input.copy_(x)
            captured.graph.replay()
            state = self._state(x)
            if captured.state == state:
                self._graphs.move_to_end(key)
                return self._result(captured)
            if not self.recapture:
                del self._graphs[key]
                return None
        else:
            state = self._state(x)
        captured = self._capture(x, state)
        self._graphs[key] = captured
        self._graphs.move_to_end(key)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        captured.graph.replay()
        return self._result(captured)

    def _result(self, captured: _Captured) -> torch.Tensor:
        return captured.static_output.clone() if self.clone_output else captured.static_output

    def _capture(self, x: torch.Tensor, state: tuple) -> _Captured:
        system = self.system
        check_finite, system.check_finite = system.check_finite, False
        try:
            with torch.inference_mode(False):  # a normal tensor: copy_ into it works inside and outside inference mode
                static_input = torch.empty_like(x)
            static_input.copy_(x)
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # compiles kernels and packs weights outside the capture
                    system(static_input)
            torch.cuda.current_stream(x.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
                static_output = system(static_input)
        finally:
            system.check_finite = check_finite
        packed = pack_experts(system.experts, x.dtype, x.device)
        keep_alive = (*system.parameters(), *system.buffers(), *vars(packed).values())
        return _Captured(graph, static_input, static_output, state, keep_alive)
