"""Expert-parallel PiMoE against one GPU: layer and training-step throughput, memory, and the exchange's share of time.

One command gives one JSON with both sides:

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 bench/distributed_bench.py --out bench/results/distributed-2xH100.json
    torchrun --nproc-per-node 2 bench/distributed_bench.py --device cpu --tiny --out /tmp/ep-tiny.json   # gloo smoke run

For every expert count E, rank 0 first measures the single-device PiMoESystem / PiMoE-LM alone (the other ranks wait),
then all W ranks measure the expert-parallel version. Each rank feeds its own `--tokens` tokens, so the distributed
step processes W times as many tokens as the single-device run at `--tokens`; the single device is also measured at the
same global batch (W * tokens) where it fits. Times are medians of synchronised calls (CUDA events) after warm-up; the
distributed time is the slowest rank's median, since every call waits for all ranks. The exchange share comes from a
separate profiled run in which every all_to_all (count exchange, tokens out, results back, and their backward) is
bracketed by CUDA events inside the layer; it includes time spent waiting for the slowest rank.

Before any timing, `equivalence_float32` checks on the real backend that the expert-parallel layer reproduces the
single-process layer's outputs and gradients and that a gathered state dict loads into the single-process model. A
failure in one measurement is recorded under `errors` and the others still run; the JSON is rewritten after each E.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import os
import platform
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig  # noqa: E402
from pimoe.layer.system import PiMoESystem  # noqa: E402
from pimoe.lm.data import LMBatch  # noqa: E402
from pimoe.lm.model import LMConfig, PiMoELM  # noqa: E402
from pimoe.measure.metrics import measure_latency  # noqa: E402
from pimoe.parallel.expert_parallel import ExchangeTimer, ExpertParallelPiMoE, init_distributed, sync_gradients  # noqa: E402
from pimoe.parallel.train import (  # noqa: E402
    broadcast_replicated,
    clip_grad_norm_global,
    gather_full_state_dict,
    shard_experts,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results JSON (written by rank 0 after every E)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU smoke run of the whole script")
    parser.add_argument("--experts", default=None, help="comma-separated expert counts (default 8,32,64; tiny 4,8)")
    parser.add_argument("--hidden-size", type=int, default=None, help="default 1024 (tiny 64)")
    parser.add_argument("--intermediate-size", type=int, default=None, help="default 2048 (tiny 128)")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--expert-types", default=None, help="comma-separated, round-robin (default: all seven)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per rank per call (default 16384; tiny 256)")
    parser.add_argument("--seq-len", type=int, default=None, help="LM sequence length (default 1024; tiny 64)")
    parser.add_argument("--layers", type=int, default=None, help="LM blocks in the training step (default 2)")
    parser.add_argument("--heads", type=int, default=None, help="LM attention heads (default 16; tiny 4)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default 3 (tiny 1)")
    parser.add_argument("--repeats", type=int, default=None, help="default 15 (tiny 3)")
    parser.add_argument("--skip-single", action="store_true", help="skip the single-device baseline")
    parser.add_argument("--skip-train", action="store_true", help="measure the layer only")
    parser.add_argument("--fast-path", action="store_true",
                        help="also time the single-device layer with the CUDA fast path (Triton compiles on first use)")
    parser.add_argument("--timeout-s", type=int, default=300, help="how long a collective may wait for the others")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = {
        "experts": "4,8" if tiny else "8,32,64",
        "hidden_size": 64 if tiny else 1024,
        "intermediate_size": 128 if tiny else 2048,
        "tokens": 256 if tiny else 16384,
        "seq_len": 64 if tiny else 1024,
        "layers": 2,
        "heads": 4 if tiny else 16,
        "warmup": 1 if tiny else 3,
        "repeats": 3 if tiny else 15,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.experts = [int(e) for e in str(args.experts).split(",") if e]
    if args.tokens % args.seq_len:
        parser.error(f"--tokens {args.tokens} must be a multiple of --seq-len {args.seq_len}")
    return args


def _ensure_launch_environment() -> None:
    """Run as a world of one when started with plain `python` instead of torchrun."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _moe_config(args: argparse.Namespace, num_experts: int, residual: bool) -> PiMoEConfig:
    types = tuple(t for t in (args.expert_types or "").split(",") if t) or PiMoEConfig().expert_types
    return PiMoEConfig(hidden_size=args.hidden_size, num_experts=num_experts, expert_types=types, residual=residual,
                       router=RouterConfig(top_k=args.top_k),
                       expert=ExpertConfig(intermediate_size=args.intermediate_size))


def _lm_config(args: argparse.Namespace, num_experts: int) -> LMConfig:
    return LMConfig(max_seq_len=args.seq_len, num_layers=args.layers, num_heads=args.heads,
                    moe=_moe_config(args, num_experts, residual=False))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _allocated_mb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _time(fn: Callable[[], object], device: torch.device, args: argparse.Namespace) -> float:
    """Median milliseconds per call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return measure_latency(fn, device, warmup=args.warmup, repeats=args.repeats).median_ms


def _layer_input(args: argparse.Namespace, tokens: int, device: torch.device, dtype: torch.dtype,
                 rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(1, tokens, args.hidden_size, generator=generator).to(device, dtype)


def _lm_batch(args: argparse.Namespace, tokens: int, device: torch.device, rank: int) -> LMBatch:
    generator = torch.Generator().manual_seed(2000 + rank)
    ids = torch.randint(0, 256, (tokens // args.seq_len, args.seq_len + 1), generator=generator)
    return LMBatch(ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, :-1]), torch.zeros_like(ids[:, :-1])).to(device)


def _train_step_fn(model: PiMoELM, batch: LMBatch, distributed: bool) -> Callable[[], None]:
    """Forward, backward, gradient sync (distributed), global-norm clipping and AdamW, as the Trainer does."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch).total.backward()
        if distributed:
            sync_gradients(model)
            clip_grad_norm_global(model, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


# --- single device (rank 0 alone) -------------------------------------------------------------------------------------


def _single_layer(args, num_experts: int, tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The single-device layer with the "sorted" dispatch (the per-expert loop the expert-parallel layer also runs on
    its local experts) and, with --fast-path, also with what "auto" resolves to on this device (pimoe.cuda)."""
    torch.manual_seed(0)
    with torch.device(device):
        system = PiMoESystem(_moe_config(args, num_experts, residual=True))
    system = system.to(dtype).eval()
    system.check_finite = False
    x = _layer_input(args, tokens, device, dtype, 0)
    system.dispatch = "sorted"
    with torch.no_grad():
        layer_ms = _time(lambda: system(x), device, args)
    out = {"median_ms": layer_ms, "tokens_per_s": tokens / (layer_ms / 1e3), "peak_mb": _peak_mb(device),
           "dispatch": "sorted"}
    system.dispatch = "auto"
    auto = system.choose_dispatch(x)
    if args.fast_path and auto != "sorted":
        system.dispatch = auto
        try:
            with torch.no_grad():
                auto_ms = _time(lambda: system(x), device, args)
            out["auto_dispatch"] = {"dispatch": auto, "median_ms": auto_ms, "tokens_per_s": tokens / (auto_ms / 1e3)}
        except Exception as error:  # noqa: BLE001 - the fast path is optional; the sorted numbers still stand
            out["auto_dispatch"] = {"dispatch": auto, "error": f"{type(error).__name__}: {error}"}
    return out


def _single_train(args, num_experts: int, tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    with torch.device(device):
        model = PiMoELM(_lm_config(args, num_experts))
    model = model.to(dtype).train()
    for block in model.blocks:
        block.moe.check_finite = False
        block.moe.dispatch = "sorted"  # what "auto" gives under autograd too; named so the baseline cannot drift
    _release(device)
    weights_mb = _allocated_mb(device)
    step = _train_step_fn(model, _lm_batch(args, tokens, device, 0), distributed=False)
    step_ms = _time(step, device, args)
    return {"median_ms": step_ms, "tokens_per_s": tokens / (step_ms / 1e3), "peak_mb": _peak_mb(device),
            "weights_mb": weights_mb}


def measure_single(args, num_experts: int, tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The single-device PiMoESystem (layer) and PiMoE-LM (training step) at `tokens` tokens per call."""
    out: dict = {"tokens": tokens, "layer": _single_layer(args, num_experts, tokens, device, dtype)}
    _release(device)
    if not args.skip_train:
        out["train_step"] = _single_train(args, num_experts, tokens, device, dtype)
        _release(device)
    return out


# --- expert parallel (all ranks) --------------------------------------------------------------------------------------


def _slowest(value: float, device: torch.device) -> tuple[float, list[float]]:
    """(max over ranks, every rank's value)."""
    world = dist.get_world_size()
    tensor = torch.zeros(world, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    tensor[dist.get_rank()] = value
    dist.all_reduce(tensor)
    values = tensor.tolist()
    return max(values), values


def _profiled_exchange(fn: Callable[[], object], timer: ExchangeTimer, device: torch.device,
                       args: argparse.Namespace) -> dict:
    """Run `fn` with the exchange timer on: exchange milliseconds per call and its share of the call's time."""
    for _ in range(args.warmup):
        fn()
    _sync(device)
    timer.reset()
    call_ms = measure_latency(fn, device, warmup=0, repeats=args.repeats).mean_ms
    exchange_ms = timer.total_ms() / args.repeats
    return {"exchange_ms": exchange_ms, "call_ms": call_ms, "share": exchange_ms / call_ms,
            "collectives_per_call": timer.calls / args.repeats}


def _parallel_layer(args, num_experts: int, device: torch.device, dtype: torch.dtype) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same router on every rank
    with torch.device(device):
        layer = ExpertParallelPiMoE(_moe_config(args, num_experts, residual=True))
    layer = layer.to(dtype).eval()
    layer.check_finite = False
    layer.broadcast_replicated()
    x = _layer_input(args, args.tokens, device, dtype, rank)
    with torch.no_grad():
        _, routing = layer(x, return_routing_info=True)
        load = routing.tokens_per_expert.clone()
        dist.all_reduce(load)
        layer_ms = _time(lambda: layer(x), device, args)
        peak = _peak_mb(device)
        slowest, per_rank = _slowest(layer_ms, device)
        layer.exchange_timer = ExchangeTimer()
        exchange = _profiled_exchange(lambda: layer(x), layer.exchange_timer, device, args)
    load = load.float()
    return {"median_ms": slowest, "median_ms_per_rank": per_rank,
            "tokens_per_s": args.tokens * world / (slowest / 1e3), "peak_mb": peak,
            "expert_load_max_over_mean": float(load.max() / load.mean()), "exchange": exchange}


def _parallel_train(args, num_experts: int, device: torch.device, dtype: torch.dtype) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    with torch.device(device):
        model = PiMoELM(_lm_config(args, num_experts))
    shard_experts(model)  # drops the other ranks' experts before anything is timed
    model = model.to(dtype).train()
    broadcast_replicated(model)
    layers = [block.moe for block in model.blocks]
    for moe in layers:
        moe.check_finite = False
    _release(device)
    weights_mb = _allocated_mb(device)
    step = _train_step_fn(model, _lm_batch(args, args.tokens, device, rank), distributed=True)
    step_ms = _time(step, device, args)
    peak = _peak_mb(device)
    slowest, per_rank = _slowest(step_ms, device)
    timer = ExchangeTimer()
    for moe in layers:
        moe.exchange_timer = timer
    exchange = _profiled_exchange(step, timer, device, args)
    return {"median_ms": slowest, "median_ms_per_rank": per_rank,
            "tokens_per_s": args.tokens * world / (slowest / 1e3), "peak_mb": peak,
            "weights_mb": weights_mb, "exchange": exchange}


def measure_expert_parallel(args, num_experts: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The expert-parallel layer and LM training step, every rank feeding `args.tokens` tokens per call."""
    world = dist.get_world_size()
    out: dict = {"tokens_per_rank": args.tokens, "tokens_per_call": args.tokens * world,
                 "layer": _parallel_layer(args, num_experts, device, dtype)}
    _release(device)
    if not args.skip_train:
        out["train_step"] = _parallel_train(args, num_experts, device, dtype)
        _release(device)
    return out


# --- correctness on this hardware --------------------------------------------------------------------------------------


def check_equivalence(device: torch.device) -> dict:
    """Float32 on this backend: the expert-parallel layer against a PiMoESystem with the same weights in each process
    (outputs, input and router gradients, expert gradients summed over ranks), and a gathered LM state dict that loads
    into the single-process model. Small sizes; it takes well under a second."""
    rank = dist.get_rank()
    world = dist.get_world_size()
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=128, num_experts=4 * world, router=RouterConfig(top_k=2, capacity_factor=1.0),
                         expert=ExpertConfig(intermediate_size=256))
    reference = PiMoESystem(config).to(device)
    reference.dispatch = "sorted"  # the plain engine path, whatever fast paths this machine registers
    layer = ExpertParallelPiMoE.from_system(copy.deepcopy(reference))
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(2, 512 + 64 * rank, config.hidden_size, generator=generator).to(device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    projection = torch.randn(x.shape, generator=generator).to(device)
    out, routing = layer(x, return_routing_info=True)
    out_ref, routing_ref = reference(x_ref, return_routing_info=True)
    ((out * projection).sum() + routing.router_loss).backward()
    ((out_ref * projection).sum() + routing_ref.router_loss).backward()
    for param in reference.experts.parameters():
        dist.all_reduce(param.grad)

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-30))

    expert_diff = max(relative(p.grad, q.grad)
                      for local, global_id in zip(layer.experts, layer.local_expert_ids, strict=True)
                      for p, q in zip(local.parameters(), reference.experts[global_id].parameters(), strict=True))
    diffs = torch.tensor([relative(out, out_ref), relative(x.grad, x_ref.grad),
                          relative(layer.router.gate.weight.grad, reference.router.gate.weight.grad), expert_diff],
                         device=device)
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    names = ("output", "input_grad", "router_grad", "expert_grad")
    result = {f"{name}_max_relative_error": value for name, value in zip(names, diffs.tolist(), strict=True)}
    result["dropped_assignments"] = int(routing.dropped.sum())

    torch.manual_seed(0)
    lm_config = LMConfig.tiny()
    full = PiMoELM(lm_config)
    expected = {k: v.clone() for k, v in full.state_dict().items()}
    model = shard_experts(full).to(device)
    gathered = gather_full_state_dict(model)
    if rank == 0:
        result["gathered_state_matches"] = sorted(gathered) == sorted(expected) and all(
            torch.equal(gathered[k].cpu(), v) for k, v in expected.items())
    return result


# --- driver -----------------------------------------------------------------------------------------------------------


def _meta(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    world = dist.get_world_size()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "torch": torch.__version__,
        "backend": dist.get_backend(),
        "world_size": world,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
        nccl = torch.cuda.nccl.version()
        meta["nccl"] = ".".join(str(v) for v in nccl) if isinstance(nccl, tuple) else str(nccl)
        meta["gpus_visible"] = torch.cuda.device_count()
    else:
        meta["device_name"] = platform.processor() or platform.machine()
        meta["threads_per_rank"] = torch.get_num_threads()
    return meta


def _any_rank_failed(failed: bool, device: torch.device) -> bool:
    flag = torch.tensor([1.0 if failed else 0.0], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _summary(row: dict, world: int) -> dict:
    """Throughput of the W-rank run over one device, from the measured numbers.

    throughput_vs_one_device: against one device fed one rank's tokens per call; scaling_efficiency divides it by W.
    throughput_vs_one_device_same_global_batch: against one device fed all W ranks' tokens in one call.
    """
    summary = {}
    for kind in ("layer", "train_step"):
        single = (row.get("single_device") or {}).get(kind)
        same_batch = (row.get("single_device_global_batch") or {}).get(kind)
        distributed = (row.get("expert_parallel") or {}).get(kind)
        if not distributed:
            continue
        entry = {"exchange_share": distributed["exchange"]["share"]}
        if single:
            ratio = distributed["tokens_per_s"] / single["tokens_per_s"]
            entry.update(throughput_vs_one_device=ratio, scaling_efficiency=ratio / world)
        if same_batch:
            entry["throughput_vs_one_device_same_global_batch"] = distributed["tokens_per_s"] / same_batch["tokens_per_s"]
        summary[kind] = entry
    return summary


def _format(row: dict) -> str:
    parts = [f"E={row['num_experts']:>3}"]
    for kind in ("layer", "train_step"):
        single = (row.get("single_device") or {}).get(kind)
        distributed = (row.get("expert_parallel") or {}).get(kind)
        if single:
            parts.append(f"{kind} 1-dev {single['tokens_per_s']:,.0f} tok/s")
        if distributed:
            parts.append(f"{kind} EP {distributed['tokens_per_s']:,.0f} tok/s "
                         f"(exchange {100 * distributed['exchange']['share']:.0f}%)")
    if row.get("errors"):
        parts.append(f"errors: {row['errors']}")
    return " | ".join(parts)


def _write(results: dict, path: Path) -> None:
    """Rewritten after every step, so a run cut short still leaves what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _ensure_launch_environment()
    rank, world, device = init_distributed(args.device, timeout=dt.timedelta(seconds=args.timeout_s))
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    results = {"meta": _meta(args, device, dtype), "results": []}
    try:
        try:
            results["equivalence_float32"] = check_equivalence(device)
        except Exception as error:  # noqa: BLE001 - recorded; the timings still run
            results["equivalence_float32"] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        if rank == 0:
            print(f"float32 equivalence with the single-process layer: {results['equivalence_float32']}", flush=True)
            _write(results, args.out)
        for num_experts in args.experts:
            row: dict = {"num_experts": num_experts, "errors": {}}
            if num_experts % world:
                row["errors"]["config"] = f"num_experts={num_experts} is not divisible by world size {world}"
                results["results"].append(row)
                continue
            if not args.skip_single:
                if rank == 0:
                    row["single_device"] = {}
                    for label, tokens in (("same_tokens_as_one_rank", args.tokens),
                                          ("same_global_batch", args.tokens * world)):
                        if label == "same_global_batch" and world == 1:
                            continue
                        try:
                            measured = measure_single(args, num_experts, tokens, device, dtype)
                        except Exception as error:  # noqa: BLE001 - recorded, the other sizes still run
                            row["errors"][f"single_{label}"] = f"{type(error).__name__}: {error}"
                            traceback.print_exc()
                            _release(device)
                            continue
                        if label == "same_tokens_as_one_rank":
                            row["single_device"].update(measured)
                        else:
                            row["single_device_global_batch"] = measured
                dist.barrier()
            failed = False
            try:
                row["expert_parallel"] = measure_expert_parallel(args, num_experts, device, dtype)
            except Exception as error:  # noqa: BLE001
                failed = True
                row["errors"][f"expert_parallel_rank{rank}"] = f"{type(error).__name__}: {error}"
                traceback.print_exc()
                _release(device)
            if _any_rank_failed(failed, device):
                row.setdefault("expert_parallel", None)
                if not failed:
                    row["errors"]["expert_parallel_other_rank"] = "failed on another rank; its traceback is on stderr"
            row["summary"] = _summary(row, world)
            results["results"].append(row)
            if rank == 0:
                print(_format(row), flush=True)
                _write(results, args.out)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
