"""A whole training step — forward, loss, backward, gradient clipping and the optimiser's update — as one CUDA graph.

Why: an eager step of the GPU preset launches ~1,500 small kernels from Python and is host-bound (98.6 ms per step at
64 x 512 tokens on an H100 against a much shorter GPU time, docs/performance.md); a replay launches them all at once.

How (PyTorch's whole-network capture recipe): the first WARMUP_STEPS steps run eagerly on a side stream (the
optimiser's state, the fast path's constants and the allocator's pools settle), then one capture records a step over
static input buffers, and every later step copies its batch into those buffers and replays. The captured step writes
the gradients and the updated parameters in place, so the model and the optimiser are the ordinary objects
throughout: an eager step (a batch with padding) or a checkpoint can come between two replays.

What a graph cannot follow makes the step eager or the graph stale:
- a batch with padding (its routed-token count depends on the data): eager, the graph kept;
- a change of the router's settings (temperature, load-balance weight, selection bias): the graph is dropped and the
  next steps warm up and capture again;
- the learning rate is a device tensor the optimiser reads at replay time (AdamW with `capturable=True`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pimoe.cuda.tuning import active_tuning
from pimoe.lm.data import LMBatch
from pimoe.lm.model import LossBreakdown, PiMoELM

__all__ = ["WARMUP_STEPS", "StepGraph", "step_graph_unsupported"]

WARMUP_STEPS = 3


def step_graph_unsupported(model: PiMoELM, device: torch.device, controller: object | None,
                           autocast_bf16: bool = True) -> str | None:
    """Why a trainer with this setup cannot replay its steps from a graph, or None when it can. Compiled blocks can:
    torch.compile's default mode captures nothing itself, its kernels are compiled during the warm-up steps and read
    nothing back to the host, so the capture records them like any other kernel. autocast_bf16: whether the steps
    run under bf16 autocast (else the experts' GEMMs run in the weights' float32)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not autocast_bf16 and not active_tuning().grouped_rows_kernels:
        return ("float32 training on CUDA runs the experts' grouped GEMMs one expert at a time, reading where each "
                "expert's rows end on the host (torch._grouped_mm takes bf16 only there), which a graph cannot "
                "capture: train in bf16 (precision 'bf16' or 'auto'), or turn on the Triton grouped-rows kernels "
                "(pimoe.cuda.tuning, grouped_rows_kernels; not yet measured on a GPU)")
    if controller is not None:
        return "the adaptive controller changes the router's settings every step"
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()) \
            or model.config.dropout > 0:
        return "dropout draws random numbers that a replay would repeat"
    return None


def _router_settings(model: PiMoELM) -> tuple:
    """What the captured step baked in from the routers (their settings, Python numbers) or holds by address (the
    selection-bias buffer)."""
    return tuple((repr(r.config), r.selection_bias.data_ptr()) for r in model.routers)


class StepGraph:
    """Runs `step_fn(batch) -> LossBreakdown` (forward, backward, clip, update; no zero_grad inside) for a trainer.

    `run(batch)` returns the step's breakdown: an eager one during warm-up or for a padded batch, else the captured
    one (its tensors are overwritten by the next replay: read them before the next step).
    """

    def __init__(self, model: PiMoELM, optimizer: torch.optim.Optimizer,
                 step_fn: Callable[[LMBatch], LossBreakdown]) -> None:
        self.model, self.optimizer, self.step_fn = model, optimizer, step_fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: LMBatch | None = None
        self.static_breakdown: LossBreakdown | None = None
        self.settings: tuple | None = None
        self.warm_steps = 0
        self.replays = 0
        self.captures = 0

    def run(self, batch: LMBatch) -> LossBreakdown:
        settings = _router_settings(self.model)
        if settings != self.settings:
            self._drop()
            self.settings = settings
        packed = batch.attention_mask is None or bool((batch.attention_mask == 1).all())
        if not packed:
            return self._eager(batch)
        batch = LMBatch(batch.input_ids, batch.target_ids, None, batch.token_types)
        if self.graph is None:
            if self.warm_steps < WARMUP_STEPS:
                self.warm_steps += 1
                return self._warm_up(batch)
            self._capture(batch)
        elif tuple(batch.input_ids.shape) != tuple(self.static_batch.input_ids.shape):
            return self._eager(batch)  # the last, short batch of an epoch without drop_last
        for static, new in zip(self.static_batch, batch, strict=True):
            if static is not None:
                static.copy_(new, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.static_breakdown

    def _eager(self, batch: LMBatch) -> LossBreakdown:
        self.optimizer.zero_grad(set_to_none=True)
        return self.step_fn(batch)

    def _warm_up(self, batch: LMBatch) -> LossBreakdown:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            breakdown = self._eager(batch)
        torch.cuda.current_stream().wait_stream(stream)
        return breakdown

    def _capture(self, batch: LMBatch) -> None:
        self.static_batch = LMBatch(*(None if t is None else t.clone() for t in batch))
        self.optimizer.zero_grad(set_to_none=True)  # the capture's backward allocates the gradients in its pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_breakdown = self.step_fn(self.static_batch)
        self.graph = graph
        self.captures += 1

    def _drop(self) -> None:
        self.graph, self.static_batch, self.static_breakdown, self.warm_steps = None, None, None, 0
