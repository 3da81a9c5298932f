"""Expert parallelism on torch.distributed: each rank holds E / W experts and tokens travel to them by all-to-all.

Legend: B batch, S sequence, D hidden size, T routed tokens on this rank, E experts (global), W ranks in the group,
L = E / W experts per rank, K experts per token, A kept assignments this rank sends, R assignments it receives.

Rank r owns the global experts r*L .. r*L + L - 1. Every rank runs the same router (replicated weights) on its own
tokens, so routing, capacity and dropping are exactly those of a single-process PiMoESystem given the same tokens: the
capacity ceil(cf * T * K / E) is counted per rank over that rank's T tokens, as GShard does per group. The kept
assignments are sorted by expert (`sort_assignments`), which also groups them by owning rank; one all_to_all_single
exchanges the per-expert counts, a second sends the token vectors, the owners run their experts, a third brings the
outputs back, and the sender combines them with its router weights. The exchange is an autograd Function whose backward
is the reverse all-to-all, so expert gradients collect every rank's tokens and router gradients stay local.

Gradients, as data parallelism sees them: a local expert's gradient is the sum over all ranks' losses; a replicated
(router or other non-expert) parameter's gradient is this rank's loss only. Training therefore averages the replicated
gradients across ranks and divides the expert gradients by W (`sync_gradients`), which together give the gradient of
the mean of the ranks' losses - the same update as one process training on all the ranks' batches.

The LM training entry point, `train_expert_parallel`, lives in `pimoe.parallel.train` and is re-exported here.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from pimoe.layer.config import PiMoEConfig
from pimoe.layer.dispatch import sort_assignments
from pimoe.layer.experts import PiMoEExpert
from pimoe.layer.options import RoutingOptions
from pimoe.layer.router import TokenLevelRouter
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem, gather_routed_tokens, scatter_routed_output

__all__ = [
    "ExchangeTimer",
    "ExpertParallelPiMoE",
    "all_to_all",
    "expert_parallel_layers",
    "init_distributed",
    "sync_gradients",

]


def _group_rank_and_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("torch.distributed is not initialised: launch with torchrun and call "
                         "torch.distributed.init_process_group (or pimoe.distributed.init_distributed) first")
    return dist.get_rank(group), dist.get_world_size(group)


class ExchangeTimer:
    """Time spent in the all-to-all exchanges, forward and backward, in milliseconds.

    On CUDA each exchange is bracketed by CUDA events on the current stream, so the time includes waiting for the
    slowest rank to arrive; the events are read (one synchronize) only when `total_ms` is asked for. On CPU the
    collectives are synchronous and perf_counter brackets them.
    """

    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._cpu_ms = 0.0
        self.calls = 0

    def start(self, device: torch.device) -> object:
        self.calls += 1
        if device.type == "cuda":
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            return begin
        return time.perf_counter()

    def stop(self, device: torch.device, token: object) -> None:
        if device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((token, end))  # type: ignore[arg-type]
        else:
            self._cpu_ms += (time.perf_counter() - token) * 1e3  # type: ignore[operator]

    def total_ms(self) -> float:
        if self._events:
            torch.cuda.synchronize()
        return self._cpu_ms + sum(begin.elapsed_time(end) for begin, end in self._events)

    def reset(self) -> None:
        self._events.clear()
        self._cpu_ms = 0.0
        self.calls = 0


def _raw_all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                    group: dist.ProcessGroup | None, timer: ExchangeTimer | None) -> torch.Tensor:
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    token = timer.start(x.device) if timer is not None else None
    dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
    if timer is not None:
        timer.stop(x.device, token)
    return out


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with a gradient: the backward sends each row's gradient back to the rank the row came from.

    NOTE: torch.distributed.nn.functional.all_to_all_single does the same but is deprecated in torch 2.13 (a
    FutureWarning pointing at the private torch.distributed._functional_collectives); this is the few lines it takes.
    """

    @staticmethod
    def forward(ctx, x, output_splits, input_splits, group, timer):  # type: ignore[override]
        ctx.splits = (output_splits, input_splits)
        ctx.group = group
        ctx.timer = timer
        return _raw_all_to_all(x, output_splits, input_splits, group, timer)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        output_splits, input_splits = ctx.splits
        grad = _raw_all_to_all(grad_output, input_splits, output_splits, ctx.group, ctx.timer)
        return grad, None, None, None, None


def all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int],
               group: dist.ProcessGroup | None = None, timer: ExchangeTimer | None = None) -> torch.Tensor:
    """Differentiable all_to_all_single along dim 0.

    x: (sum(input_splits), ...) -> (sum(output_splits), ...); input_splits[r] rows go to rank r, output_splits[r]
    rows arrive from rank r, in rank order.
    """
    return _AllToAll.apply(x, list(output_splits), list(input_splits), group, timer)


class ExpertParallelPiMoE(nn.Module):
    """A PiMoE layer whose experts are spread over the ranks of a process group.

    Build it from a config (`ExpertParallelPiMoE(config, group)`) or from an existing layer
    (`ExpertParallelPiMoE.from_system(system, group)`). With the same seed on every rank, the config constructor gives
    exactly the weights `PiMoESystem(config)` would have, restricted to this rank's experts: it creates the router and
    then every expert in order, keeping only its own (one expert at a time is alive, so the full layer never needs to
    fit). `forward` mirrors PiMoESystem.forward and must be called by every rank of the group (it runs collectives);
    ranks may pass different batch shapes and masks.

    Replicated weights (the router) are the caller's to keep equal: seed every rank the same, or broadcast them once
    (`broadcast_replicated`), and average their gradients (`sync_gradients`).
    """

    def __init__(self, config: PiMoEConfig | None = None, group: dist.ProcessGroup | None = None, *,
                 _modules: tuple[TokenLevelRouter, list[PiMoEExpert]] | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else PiMoEConfig()
        cfg = self.config
        self.group = group
        self.rank, self.world_size = _group_rank_and_size(group)
        if cfg.num_experts % self.world_size:
            raise ValueError(f"num_experts={cfg.num_experts} is not divisible by the expert-parallel world size "
                             f"{self.world_size}: each rank must hold the same number of experts")
        self.num_local_experts = cfg.num_experts // self.world_size
        self.first_expert = self.rank * self.num_local_experts
        self.expert_types = cfg.assigned_expert_types
        if _modules is not None:
            self.router, local = _modules
        else:
            self.router = TokenLevelRouter(cfg.hidden_size, cfg.num_experts, cfg.router, self.expert_types)
            local = []
            for expert_id, expert_type in enumerate(self.expert_types):
                expert = PiMoEExpert(cfg.hidden_size, expert_type, cfg.intermediate_size, cfg.expert.dropout,
                                     cfg.expert.activation, cfg.expert.bias)
                if expert_id in self.local_expert_ids:
                    local.append(expert)
        self.experts = nn.ModuleList(local)
        self.check_finite = True
        self.exchange_timer: ExchangeTimer | None = None

    @classmethod
    def from_system(cls, system: PiMoESystem, group: dist.ProcessGroup | None = None) -> ExpertParallelPiMoE:
        """The expert-parallel version of `system`, keeping only this rank's experts.

        The new layer shares the router and the kept expert modules with `system` (no copy, so swapping a model's
        layers does not double its memory); deep-copy `system` first to keep an independent single-process layer.
        """
        rank, world = _group_rank_and_size(group)
        if system.num_experts % world:
            raise ValueError(f"num_experts={system.num_experts} is not divisible by the expert-parallel world size "
                             f"{world}: each rank must hold the same number of experts")
        per_rank = system.num_experts // world
        local = list(system.experts[rank * per_rank : (rank + 1) * per_rank])
        layer = cls(system.config, group, _modules=(system.router, local))
        layer.check_finite = system.check_finite
        return layer

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def local_expert_ids(self) -> range:
        """Global indices of the experts this rank holds."""
        return range(self.first_expert, self.first_expert + self.num_local_experts)

    def expert_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters sharded over the ranks (this rank's experts); everything else in the layer is replicated."""
        return self.experts.parameters()

    def broadcast_replicated(self, src: int = 0) -> None:
        """Copy the router's weights and selection bias from group rank `src` to every rank (call after `.to(device)`)."""
        source = dist.get_global_rank(self.group, src) if self.group is not None else src
        for tensor in list(self.router.parameters()) + list(self.router.buffers()):
            dist.broadcast(tensor.data, source, group=self.group)

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
        """Route this rank's tokens, run them on their experts wherever those live, combine.

        Arguments, output and RoutingInfo as PiMoESystem.forward; the RoutingInfo describes this rank's tokens (its
        counts are this rank's assignments, over all E experts).
        """
        options = RoutingOptions.of(options, temperature=temperature, top_k=top_k)
        routed = gather_routed_tokens(x, attention_mask, allowed_experts, self.hidden_size, self.num_experts,
                                      check_finite=self.check_finite)
        routing = self.router(routed.tokens, options, allowed_experts=routed.labels,
                              token_positions=routed.positions, batch_shape=routed.batch_shape)
        mixed = self._dispatch(routed.tokens, routing)  # (T, D)
        output = scatter_routed_output(x, routed, mixed, residual=self.config.residual)
        return (output, routing) if return_routing_info else output

    def _exchange_counts(self, counts: torch.Tensor) -> tuple[list[int], list[int], list[int], torch.Tensor]:
        """Tell every owner how many rows each of its experts gets from each rank.

        counts: (E,) this rank's kept assignments per global expert. Returns (send_splits (W,), recv_splits (W,),
        rows_per_local_expert (L,), recv_counts (W, L) on the device: rows from rank s for local expert j).
        NOTE: all_to_all_single takes its split sizes as host integers, so one device-to-host read per layer is
        inherent to the exchange; everything the host needs comes back in that one transfer.
        """
        world, local = self.world_size, self.num_local_experts
        recv_counts = _raw_all_to_all(counts, [local] * world, [local] * world, self.group, self.exchange_timer)
        recv_counts = recv_counts.view(world, local)
        host = torch.cat([counts.view(world, local).sum(dim=1), recv_counts.sum(dim=1), recv_counts.sum(dim=0)])
        host = host.tolist()
        return host[:world], host[world : 2 * world], host[2 * world :], recv_counts

    def _dispatch(self, tokens: torch.Tensor, routing: RoutingInfo) -> torch.Tensor:
        """(T, D) -> (T, D): the weighted sum of expert outputs per token, without the residual."""
        token_ids, weights, counts = sort_assignments(routing)  # sorted by expert, hence by owning rank
        send_splits, recv_splits, per_expert, recv_counts = self._exchange_counts(counts)
        timer = self.exchange_timer
        received = all_to_all(tokens[token_ids], recv_splits, send_splits, self.group, timer)  # (R, D)

        # Rows arrive grouped by source rank, then by local expert; regroup them by local expert.
        local_ids = torch.arange(self.num_local_experts, device=tokens.device).repeat(self.world_size)
        row_expert = local_ids.repeat_interleave(recv_counts.reshape(-1), output_size=received.shape[0])
        order = torch.argsort(row_expert, stable=True)
        # NOTE: every local expert runs, even on zero rows, so the return exchange sits in the autograd graph on every
        # rank; a rank whose experts got no tokens would otherwise skip the backward collective and the others hang.
        chunks = received[order].split(per_expert)
        outputs = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, chunks, strict=True)])
        source_order = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=order.device))
        returned = all_to_all(outputs[source_order], send_splits, recv_splits, self.group, timer)  # (A, D)
        weighted = returned * weights.to(returned.dtype).unsqueeze(-1)
        return torch.zeros_like(tokens).index_add(0, token_ids, weighted)

    def gather_state_dict(self, dst: int = 0) -> dict[str, torch.Tensor] | None:
        """The full layer's state dict, in PiMoESystem's key names, on group rank `dst` (None on the other ranks).

        Every rank must call it. Expert tensors travel by point-to-point send/recv in the dtype of the router's weight
        (the layer's dtype), so the result loads into `PiMoESystem(self.config)` with `load_state_dict`.
        """
        dtype = self.router.gate.weight.dtype
        device = self.router.gate.weight.device
        state = {f"router.{k}": v.detach().clone() for k, v in self.router.state_dict().items()}
        dst_global = dist.get_global_rank(self.group, dst) if self.group is not None else dst
        cfg = self.config
        for expert_id, expert_type in enumerate(self.expert_types):
            owner = expert_id // self.num_local_experts
            owner_global = dist.get_global_rank(self.group, owner) if self.group is not None else owner
            if self.rank == owner:
                local = self.experts[expert_id - self.first_expert].state_dict()
                if self.rank == dst:
                    state.update({f"experts.{expert_id}.{k}": v.detach().clone() for k, v in local.items()})
                    continue
                for value in local.values():
                    dist.send(value.detach().to(dtype).contiguous(), dst_global, group=self.group)
            elif self.rank == dst:
                with torch.device("meta"):
                    shapes = PiMoEExpert(cfg.hidden_size, expert_type, cfg.intermediate_size, cfg.expert.dropout,
                                         cfg.expert.activation, cfg.expert.bias).state_dict()
                for key, meta in shapes.items():
                    buffer = torch.empty(meta.shape, dtype=dtype, device=device)
                    dist.recv(buffer, owner_global, group=self.group)
                    state[f"experts.{expert_id}.{key}"] = buffer
        return state if self.rank == dst else None

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_experts={self.num_experts}, top_k={self.router.top_k}, "
                f"rank={self.rank}/{self.world_size}, local_experts={self.first_expert}..."
                f"{self.first_expert + self.num_local_experts - 1}")


def expert_parallel_layers(model: nn.Module) -> list[ExpertParallelPiMoE]:
    """Every ExpertParallelPiMoE inside `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, ExpertParallelPiMoE)]


def sync_gradients(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Make `model`'s gradients those of the mean loss over the ranks, after every rank's backward.

    Replicated parameters (all but the local experts): all-reduce-sum their gradients and divide by W (one flattened
    bucket per dtype, so a model costs a handful of collectives). Expert parameters: their gradient already sums every
    rank's loss through the exchange, so it is divided by W. A replicated parameter with no gradient on this rank
    counts as zeros, so ranks whose batches skipped a branch still take part in the same collective.
    """
    _, world = _group_rank_and_size(group)
    expert_ids = {id(p) for layer in expert_parallel_layers(model) for p in layer.expert_parameters()}
    replicated = [p for p in model.parameters() if p.requires_grad and id(p) not in expert_ids]
    for param in model.parameters():
        if id(param) in expert_ids and param.grad is not None:
            param.grad.div_(world)
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for param in replicated:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        by_dtype.setdefault(param.grad.dtype, []).append(param)
    for params in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def init_distributed(device: str | None = None, timeout: dt.timedelta | None = None) -> tuple[int, int, torch.device]:
    """Initialise the default process group from torchrun's environment; returns (rank, world_size, device).

    device: "cuda" or "cpu"; None picks CUDA when available. CUDA means NCCL with one GPU per local rank, CPU means
    gloo. timeout: how long a collective may wait for the other ranks before failing (torch's default when None).
    """
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set: launch with "
                             f"`torchrun --nproc-per-node N -m pimoe train --expert-parallel`")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device not in (None, "cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu' (each rank takes cuda:LOCAL_RANK), got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    use_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    chosen = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        options = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=chosen if use_cuda else None, **options)
    return dist.get_rank(), dist.get_world_size(), chosen
