"""CUDA graphs for a PiMoE layer's repeated training calls: forward and backward each replayed as one graph.

Legend: B batch, S sequence, D hidden size.

An eager training step of a few thousand tokens is bound by the host: at 2,048 tokens (bf16, hidden 512, 8 experts,
H100, 2026-12-06) it spends ~4 ms of Python and ~160 launches against ~0.5 ms of GPU work. A training loop repeats its
shapes, so `AutoGraphs` (pimoe.cuda.auto_graph) hands a repeated training call to `GraphedTraining`, which captures the
layer's forward and its backward (torch.autograd.grad over the input and the trainable parameters) as two CUDA graphs,
as `torch.cuda.make_graphed_callables` does, and replays them through one autograd Function: a copy in, a replay and
clones of the outputs; in the backward a copy of the incoming gradients and a replay. The parameters are read in place,
so optimiser updates reach the graphs; gradients reach `.grad` through autograd's own accumulation (hooks on the
parameters still run).

What a replay could get wrong runs eagerly instead (`plain_training_call`, and the checks here):
- a graph's saved activations belong to its last replay, so while a graphed call's backward has not run and its
  autograd node is alive, the next call of that shape runs eagerly; a backward that finds its activations overwritten
  by a later call (a graph kept with retain_graph=True and differentiated after another call) raises instead of
  returning wrong gradients, and so does a second-order backward (create_graph=True);
- a change of the parameters' storage, shape, dtype or requires_grad, or of the router's settings, drops the graph;
- autocast, dropout, saved-tensor hooks (activation checkpointing, offloading), a call made inside a backward pass
  (reentrant checkpointing's recompute), forward or backward hooks on the layer's children, masks, labels and per-call
  knobs;
- an input that does not require grad (a layer over frozen embeddings): kept eager after a failure that turned out to
  have another cause (see _fresh_leaves); bench/train_graph_probe.py has since captured such calls correctly on an H100,
  but the layer's GPU tests do not cover them yet;
- inputs or parameters in another dtype than bf16: float32's grouped matmul reads the group offsets on the host, which
  no capture can contain (H100, 2026-12-06); float16 has not been tried.
A capture that fails anyway is logged once, its shape stays eager, and the device's random generator is given back
its state from before (an aborted capture would leave it unusable for the rest of the process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from pimoe.cuda.graph_safety import has_forward_hooks, random_state_kept_on_failure, syncs_reported

__all__ = ["AWAITING_BACKWARD", "GraphedTraining", "host_sync_of_training_call", "plain_training_call",
           "training_state"]

# thread_local: another thread's CUDA work (a server's other sessions) must not break a capture. A module setting so
# bench/train_graph_probe.py can compare the modes.
CAPTURE_ERROR_MODE = "thread_local"

# What GraphedTraining returns when the shape's last graphed call still awaits its backward: run this call eagerly,
# the graph stays valid.
AWAITING_BACKWARD = object()


def _has_backward_hooks(submodules: tuple[nn.Module, ...]) -> bool:
    if nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks:
        return True
    return any(child._backward_hooks or child._backward_pre_hooks for child in submodules)


def _has_dropout(submodules: tuple[nn.Module, ...]) -> bool:
    return any(isinstance(child, nn.modules.dropout._DropoutNd) and child.p > 0 for child in submodules)


def _all_bf16(submodules: tuple[nn.Module, ...]) -> bool:
    return all(p.dtype == torch.bfloat16 for child in submodules for p in child._parameters.values() if p is not None)


def _any_trainable(submodules: tuple[nn.Module, ...]) -> bool:
    return any(p.requires_grad for child in submodules for p in child._parameters.values() if p is not None)


def plain_training_call(system: nn.Module, x: torch.Tensor, submodules: tuple[nn.Module, ...]) -> bool:
    """Whether a graph of this training call (forward and backward) gives what eager autograd would. The caller has
    checked the call's own arguments (no mask, labels or knobs). submodules: the layer's children (`submodules_of`)."""
    # Attribute reads first; the walks over the layer's children last (an autocast step is turned away before them).
    return (x.is_cuda and x.dtype == torch.bfloat16 and system.training
            and torch.is_grad_enabled() and system.strategy.graph_safe
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cuda")
            and not torch.cuda.is_current_stream_capturing()
            and torch._C._current_graph_task_id() == -1  # not a recompute inside a backward pass
            and torch._C._autograd._top_saved_tensors_default_hooks(True) is None
            and not has_forward_hooks(submodules) and not _has_backward_hooks(submodules)
            and not _has_dropout(submodules) and _all_bf16(submodules)
            and (x.requires_grad or _any_trainable(submodules)))  # an input without grad: the first layer, frozen below


def training_state(system: nn.Module, parameters: list[torch.Tensor] | None = None) -> tuple:
    """What a training graph holds by address or by value: each parameter's and buffer's storage, shape, dtype and
    requires_grad, the router's settings and the layer's residual setting. Values of the parameters are not in it: the
    graphs read them in place, so optimiser steps need no new capture. parameters: `list(system.parameters())`, when
    the caller has it."""
    parameters = list(system.parameters()) if parameters is None else parameters
    tensors = tuple((t.data_ptr(), tuple(t.shape), t.dtype, t.requires_grad)
                    for t in (*parameters, *system.buffers()))
    return tensors, tuple(vars(system.router.config).values()), system.config.residual, system.strategy


def _flat_outputs(result) -> tuple[tuple[torch.Tensor, ...], object, tuple[str, ...]]:
    """(tensors, routing template, routing field names) of a forward's result: the output, then the routing's tensors."""
    if isinstance(result, torch.Tensor):
        return (result,), None, ()
    output, routing = result
    names = tuple(f.name for f in dataclasses.fields(routing) if isinstance(getattr(routing, f.name), torch.Tensor))
    return (output, *(getattr(routing, name) for name in names)), routing, names


def _grad_inputs(x: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return ([x] if x.requires_grad else []) + params


def _differentiate(outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor], grad_outputs) -> tuple:
    differentiable = [o for o in outputs if o.requires_grad]
    return torch.autograd.grad(differentiable, inputs, grad_outputs=grad_outputs, allow_unused=True)


@contextlib.contextmanager
def _fresh_leaves(system: nn.Module):
    """For a capture: each trainable parameter of `system` replaced by a new leaf on the same storage (tied parameters
    stay tied); yields those leaves in `system.parameters()` order and puts the parameters back afterwards.

    Why: autograd reuses a parameter's gradient-accumulation node while anything keeps it alive, and that node keeps the
    stream it was made on. A caller's earlier graph that was never differentiated (a call whose output went unused,
    with only the router loss backpropagated) keeps the nodes of the default stream alive; a backward captured on the
    capture stream then synchronises with the default stream, and CUDA invalidates the capture (H100, torch 2.11,
    2026-12-06, tests/cuda/test_train_graph.py). Fresh leaves get fresh nodes on the capture stream. The graphs read the
    same memory, so the replays still see the parameters' current values."""
    params = [p for p in system.parameters() if p.requires_grad]
    leaves = {id(p): p.detach().requires_grad_(True) for p in params}
    swapped = [(module, name, param) for module in system.modules() for name, param in module._parameters.items()
               if param is not None and id(param) in leaves]
    try:
        for module, name, param in swapped:
            module._parameters[name] = leaves[id(param)]
        yield [leaves[id(p)] for p in params]
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def reached_inputs(outputs: tuple[torch.Tensor, ...], inputs: list[torch.Tensor]) -> tuple[frozenset[int], ...]:
    """For each output that takes a gradient: the indices of `inputs` its autograd graph reaches (the graph is kept).
    A backward that leaves some outputs without a gradient gives None to the inputs only those outputs reach."""
    return tuple(frozenset(index for index, grad in enumerate(torch.autograd.grad(
        output, inputs, torch.zeros_like(output), retain_graph=True, allow_unused=True)) if grad is not None)
        for output in outputs if output.requires_grad)


def host_sync_of_training_call(system: nn.Module, x: torch.Tensor, return_routing_info: bool = False) -> str | None:
    """One eager forward and backward under torch's sync debug mode; the first host sync reported, or None."""
    x = x.detach().requires_grad_(x.requires_grad)
    params = [p for p in system.parameters() if p.requires_grad]

    def step() -> None:
        outputs, _, _ = _flat_outputs(system(x, return_routing_info=return_routing_info))
        _differentiate(outputs, _grad_inputs(x, params),
                       [torch.ones_like(o) for o in outputs if o.requires_grad])

    return syncs_reported(system, step)


@dataclasses.dataclass(eq=False)
class _Entry:
    """One captured training call: its two graphs and the static tensors they read and write."""

    forward: torch.cuda.CUDAGraph
    backward: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    outputs: tuple[torch.Tensor, ...]
    grad_outputs: tuple[torch.Tensor | None, ...]  # one per output; None where the output takes no gradient
    grad_input: torch.Tensor | None  # the input's gradient, when the input requires grad
    grad_params: tuple[torch.Tensor | None, ...]
    routing: object  # the RoutingInfo of the capture (its non-tensor fields), or None
    routing_names: tuple[str, ...]
    state: tuple
    # Per output that takes a gradient (in order): the indices of the gradient inputs (the input first when it
    # requires grad, then the trainable parameters) it reaches. None: every output reaches every input.
    reach: tuple[frozenset[int], ...] | None = None
    generation: int = 0
    differentiated: int = 0  # the last generation whose backward ran
    node: weakref.ref | None = None  # the autograd node of the last replay

    def awaiting_backward(self) -> bool:
        return self.differentiated != self.generation and self.node is not None and self.node() is not None


def _grads_of_differentiable(entry: _Entry, grads: tuple) -> list:
    """The incoming gradients of the outputs that take one (the others are marked non-differentiable)."""
    return [grad for grad, buffer in zip(grads, entry.grad_outputs, strict=True) if buffer is not None]


class _ReplayTraining(torch.autograd.Function):
    @staticmethod
    def forward(ctx, entry: _Entry, x: torch.Tensor, *params: torch.Tensor):
        entry.static_input.copy_(x)
        entry.forward.replay()
        entry.generation += 1
        ctx.entry, ctx.generation = entry, entry.generation
        entry.node = weakref.ref(ctx)
        outputs = tuple(o.clone() for o in entry.outputs)  # each call keeps its own results, as an eager call would
        ctx.mark_non_differentiable(*(o for o, g in zip(outputs, entry.grad_outputs, strict=True) if g is None))
        ctx.set_materialize_grads(False)  # an output that got no gradient arrives as None: see backward
        return outputs

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        entry: _Entry = ctx.entry
        if torch.is_grad_enabled():
            raise RuntimeError("a PiMoE layer's graphed training call cannot be differentiated twice "
                               "(create_graph=True); set layer.auto_cuda_graphs = False for higher-order gradients")
        if ctx.generation != entry.generation:
            raise RuntimeError("this backward belongs to an earlier call of the PiMoE layer whose CUDA graph has been "
                               "replayed since (a graph kept with retain_graph=True); set layer.auto_cuda_graphs = "
                               "False to differentiate a call after later ones")
        differentiable = [buffer for buffer in entry.grad_outputs if buffer is not None]
        used: set[int] = set()
        for index, (buffer, grad) in enumerate(zip(differentiable, _grads_of_differentiable(entry, grads), strict=True)):
            if grad is None:
                buffer.zero_()
            else:
                buffer.copy_(grad)
                used |= entry.reach[index] if entry.reach is not None else set(range(len(ctx.needs_input_grad)))
        entry.backward.replay()
        entry.differentiated = ctx.generation
        # An input that only outputs without a gradient reach gets None, as eagerly: with zeros instead, an optimiser
        # would decay the weights of experts that only the unused layer output depends on when the router loss alone
        # is trained.
        has_input = entry.grad_input is not None
        computed = ([entry.grad_input] if has_input else []) + list(entry.grad_params)
        kept = [g if index in used else None for index, g in enumerate(computed)]
        return (None, kept[0] if has_input else None, *(kept[1:] if has_input else kept))


class GraphedTraining:
    """Replays captured training calls (forward + backward) of one PiMoESystem on CUDA, one pair of graphs per
    (input shape, dtype, device, input requires_grad, routing info returned). `graphed(x, return_routing_info)` returns
    what `system(x, return_routing_info=...)` would, differentiable; None where the layer changed since the capture (the
    graph is dropped), AWAITING_BACKWARD where the shape's last graphed call awaits its backward (both: run eagerly).
    At most `max_graphs` shapes hold graphs (least recently used dropped first); each holds one step's activations."""

    def __init__(self, system: nn.Module, *, max_graphs: int = 4) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.system = system
        self.max_graphs = max_graphs
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def captured_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [(key[0], key[1]) for key in self._entries]

    def __call__(self, x: torch.Tensor, return_routing_info: bool = False):
        if not x.is_cuda:
            raise ValueError(f"GraphedTraining needs a CUDA input, got device {x.device}")
        key = (tuple(x.shape), x.dtype, x.device, x.requires_grad, bool(return_routing_info))
        parameters = list(self.system.parameters())  # one walk of the module tree per call, for both uses below
        state = training_state(self.system, parameters)
        entry = self._entries.get(key)
        if entry is not None and entry.state != state:
            del self._entries[key]
            return None
        if entry is None:
            entry = self._capture(x, bool(return_routing_info), state)
            self._entries[key] = entry
            while len(self._entries) > self.max_graphs:
                self._entries.popitem(last=False)
        elif entry.awaiting_backward():
            return AWAITING_BACKWARD
        self._entries.move_to_end(key)
        params = [p for p in parameters if p.requires_grad]
        outputs = _ReplayTraining.apply(entry, x, *params)
        if entry.routing is None:
            return outputs[0]
        return outputs[0], dataclasses.replace(entry.routing, **dict(zip(entry.routing_names, outputs[1:],
                                                                         strict=True)))

    def _capture(self, x: torch.Tensor, return_routing_info: bool, state: tuple) -> _Entry:
        system = self.system
        check_finite, system.check_finite = system.check_finite, False  # a NaN check is a host sync
        try:
            with random_state_kept_on_failure(x.device), _fresh_leaves(system) as params:
                static_input = torch.empty_like(x).requires_grad_(x.requires_grad)
                with torch.no_grad():
                    static_input.copy_(x)
                inputs = _grad_inputs(static_input, params)
                current = torch.cuda.current_stream(x.device)
                side = torch.cuda.Stream(device=x.device)
                side.wait_stream(current)
                with torch.cuda.stream(side):
                    for _ in range(2):  # compiles kernels and builds lazy constants outside the capture
                        warm = _flat_outputs(system(static_input, return_routing_info=return_routing_info))[0]
                        reach = reached_inputs(warm, inputs)  # before the full backward below frees the graph
                        _differentiate(warm, inputs, [torch.zeros_like(o) for o in warm if o.requires_grad])
                current.wait_stream(side)
                del warm  # nothing of the warm-up's autograd graph may live on into the capture (see _fresh_leaves)
                pool = torch.cuda.graph_pool_handle()
                forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
                with torch.cuda.graph(forward, pool=pool, capture_error_mode=CAPTURE_ERROR_MODE):
                    result = system(static_input, return_routing_info=return_routing_info)
                outputs, routing, names = _flat_outputs(result)
                grad_outputs = tuple(torch.empty_like(o) if o.requires_grad else None for o in outputs)
                with torch.cuda.graph(backward, pool=pool, capture_error_mode=CAPTURE_ERROR_MODE):
                    grads = _differentiate(outputs, inputs, [g for g in grad_outputs if g is not None])
        finally:
            system.check_finite = check_finite
        grads = tuple(None if g is None else g.detach() for g in grads)
        grad_input, grad_params = (grads[0], grads[1:]) if x.requires_grad else (None, grads)
        outputs = tuple(o.detach() for o in outputs)
        return _Entry(forward, backward, static_input, outputs, grad_outputs, grad_input, grad_params, routing, names,
                      state, reach)
