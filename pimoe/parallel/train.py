"""Training PiMoE-LM with expert-parallel MoE layers and data-parallel everything else, under torchrun.

Legend: W ranks, E experts per layer, L = E / W experts per rank.

Every rank builds the same model from the same seed, then keeps only its own experts (`shard_experts`). Each step every
rank takes its own batch (`ExpertParallelTrainer` hands rank r the batches r, r + W, r + 2W, ... of the shared epoch
order), runs forward and backward - the MoE layers exchange tokens with all-to-all - and then, before clipping and the
update, `sync_gradients` averages the replicated gradients and rescales the expert ones, so every rank applies the
gradient of the mean loss over the W batches. Gradient clipping uses the global norm (replicated parameters counted once,
every rank's experts included), so all ranks scale by the same factor and the replicated weights stay identical.

NOTE: replicated gradients are all-reduced once after backward (one flat bucket per dtype), not overlapped with the
backward pass as DistributedDataParallel would; DDP's bucketing assumes every parameter is replicated, and here the
experts must be left out. The replicated part of a PiMoE-LM (attention, norms, embeddings, routers) is a small share of
its weights once experts dominate, which is when expert parallelism is worth using.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pimoe.layer.system import PiMoESystem
from pimoe.lm.checkpoint import save_checkpoint
from pimoe.lm.data import Corpus, LMBatch
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.recipe import format_eval, run_metadata, run_training_loop
from pimoe.lm.train import TrainConfig, Trainer
from pimoe.parallel.expert_parallel import (
    ExpertParallelPiMoE,
    _group_rank_and_size,
    expert_parallel_layers,
    init_distributed,
    sync_gradients,
)

__all__ = [
    "ExpertParallelTrainer",
    "broadcast_replicated",
    "clip_grad_norm_global",
    "gather_full_state_dict",
    "shard_experts",
    "train_expert_parallel",
]


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every PiMoESystem inside `model` by its ExpertParallelPiMoE (this rank's experts only), in place.

    Build `model` identically on every rank (same seed) before calling this, so the replicated weights agree.
    """
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, PiMoESystem)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no PiMoESystem layer to make expert-parallel")
    for parent, name, child in targets:
        setattr(parent, name, ExpertParallelPiMoE.from_system(child, group))
    return model


def _expert_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for layer in expert_parallel_layers(model) for p in layer.expert_parameters()}


def broadcast_replicated(model: nn.Module, group: dist.ProcessGroup | None = None, src: int = 0) -> None:
    """Copy every replicated parameter and buffer (all but the local experts') from group rank `src` to all ranks."""
    source = dist.get_global_rank(group, src) if group is not None else src
    expert_ids = _expert_param_ids(model)
    expert_buffers = {id(b) for layer in expert_parallel_layers(model) for b in layer.experts.buffers()}
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if id(tensor) not in expert_ids and id(tensor) not in expert_buffers:
                dist.broadcast(tensor.data, source, group=group)


def clip_grad_norm_global(model: nn.Module, max_norm: float, group: dist.ProcessGroup | None = None) -> float:
    """Clip by the norm of the whole distributed model's gradient, as torch.nn.utils.clip_grad_norm_ would on one
    process; returns that norm.

    Replicated gradients (identical on all ranks after `sync_gradients`) count once, the experts of every rank are
    summed in with one all_reduce, so every rank gets the same norm and the same scale factor.
    """
    expert_ids = _expert_param_ids(model)
    grads = [(p.grad, id(p) in expert_ids) for p in model.parameters() if p.grad is not None]
    device = next(model.parameters()).device
    squares = torch.zeros(2, dtype=torch.float32, device=device)  # [replicated, experts]
    for grad, is_expert in grads:
        squares[int(is_expert)] += grad.detach().float().pow(2).sum()
    expert_squares = squares[1:].clone()
    dist.all_reduce(expert_squares, group=group)
    total = float(torch.sqrt(squares[0] + expert_squares[0]))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for grad, _ in grads:
            grad.mul_(scale)
    return total


def gather_full_state_dict(model: nn.Module, group: dist.ProcessGroup | None = None,
                           dst: int = 0) -> dict[str, torch.Tensor] | None:
    """The single-process model's state dict on group rank `dst` (None elsewhere); every rank must call it.

    Each expert-parallel layer's experts are gathered with `ExpertParallelPiMoE.gather_state_dict`, under the key names
    the layer had as a PiMoESystem, so the result loads into a freshly built single-process model.
    """
    rank, _ = _group_rank_and_size(group)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, ExpertParallelPiMoE)]
    state: dict[str, torch.Tensor] = {}
    if rank == dst:
        inside_layers = tuple(f"{name}." for name, _ in layers)
        state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(inside_layers)}
    for name, layer in layers:  # the same order on every rank: the send/recv pairs match
        layer_state = layer.gather_state_dict(dst)
        if layer_state is not None:
            state.update({f"{name}.{k}": v for k, v in layer_state.items()})
    return state if rank == dst else None


class ExpertParallelTrainer(Trainer):
    """A Trainer for a PiMoELM whose MoE layers are (or will be made) expert-parallel over `group`.

    `model` must be built identically on every rank; PiMoESystem layers are sharded here. `config.batch_size` is per
    rank, so a step sees W * batch_size sequences; `config.device` is this rank's device. StepRecords describe this
    rank's batch; `mean_loss` gives the loss averaged over ranks.
    """

    def __init__(self, model: PiMoELM, config: TrainConfig | None = None, corpus: Corpus | Sequence[str] | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank, self.world_size = _group_rank_and_size(group)
        if not expert_parallel_layers(model):
            shard_experts(model, group)
        super().__init__(model, config, corpus)
        batches = len(self.train_set) // self.config.batch_size if self._drop_last else 1
        if batches < self.world_size:
            raise ValueError(f"the training split gives {batches} batches of {self.config.batch_size} per epoch, fewer "
                             f"than the {self.world_size} ranks: use a smaller batch_size or a larger corpus")
        broadcast_replicated(self.model, group)
        # Dropout differs per rank, as each rank's batch does; the seed keeps every rank's run reproducible.
        self._rng_state = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.rank).get_state()

    def _epoch_batches(self) -> Iterator[LMBatch]:
        # NOTE: called by Trainer.__init__ before this class's attributes beyond rank/world_size exist.
        for index, batch in enumerate(super()._epoch_batches()):
            if index % self.world_size == self.rank:
                yield batch

    def _finish_gradients(self) -> None:
        sync_gradients(self.model, self.group)
        if self.config.grad_clip > 0:
            clip_grad_norm_global(self.model, self.config.grad_clip, self.group)

    def mean_loss(self, value: float) -> float:
        """`value` (this rank's) averaged over the ranks; every rank must call it."""
        device = next(self.model.parameters()).device
        tensor = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
        dist.all_reduce(tensor, group=self.group)
        return float(tensor) / self.world_size

    def full_state_dict(self, dst: int = 0) -> dict[str, torch.Tensor] | None:
        return gather_full_state_dict(self.model, self.group, dst)


def train_expert_parallel(config: TrainConfig, model_config: LMConfig, out: str | Path, *, command: str,
                          show_progress: bool = True) -> int:
    """`torchrun --nproc-per-node N -m pimoe train --expert-parallel [options]`: the `pimoe train` recipe
    (`pimoe.lm.recipe`), with each block's experts spread over the N ranks and every other weight replicated.

    config.device "cuda" runs NCCL with GPU LOCAL_RANK per rank, "cpu" gloo; config.batch_size is per rank. Rank 0
    shows the progress (loss averaged over ranks), evaluates and writes one ordinary single-process checkpoint
    (safetensors + JSON) with every rank's experts gathered into it.
    """
    if config.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda' with --expert-parallel (rank r takes cuda:LOCAL_RANK), "
                         f"got {config.device!r}")
    rank, world, device = init_distributed(config.device)
    try:
        config = replace(config, device=str(device))
        if model_config.moe.num_experts % world:
            raise ValueError(f"the model has {model_config.moe.num_experts} experts per layer, not divisible by "
                             f"{world} ranks")
        torch.manual_seed(config.seed)
        model = PiMoELM(model_config)
        trainer = ExpertParallelTrainer(model, config)
        outcome = run_training_loop(trainer, show_progress=rank == 0 and show_progress,
                                    description=f"train expert-parallel x{world}", mean_loss=trainer.mean_loss,
                                    log=print if rank == 0 else None)
        state = trainer.full_state_dict()
        if rank == 0:
            tokens = config.steps * world * config.batch_size * config.seq_len
            print(format_eval(outcome.result))
            print(f"training wall time       {outcome.train_wall_s:.1f} s for {config.steps} steps on {world} ranks "
                  f"({device.type}), {tokens / outcome.train_wall_s:,.0f} tokens/s over all ranks")
            full = PiMoELM(model_config, model.mapping)
            full.load_state_dict(state)
            for full_router, router in zip(full.routers, model.routers, strict=True):
                full_router.config = router.config
            torchrun = f"torchrun --nproc-per-node {world} -m " + command.removeprefix("python -m ")
            metadata = run_metadata(config, outcome, torchrun + " --expert-parallel", expert_parallel={
                "world_size": world, "backend": dist.get_backend(), "device": device.type,
                "batch_size_per_rank": config.batch_size})
            path = save_checkpoint(full, out, metadata)
            print(f"checkpoint written to {path} and {path.with_suffix('.json')}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0
