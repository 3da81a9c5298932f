"""Training step (forward + backward) of the PiMoE layer on the fast path, side by side with its baselines, one run.

Contenders at each token count, same shapes (default: bf16, hidden 512, 8 experts, intermediate 2048, top-2):
    fast          PiMoESystem, dispatch "cuda_fast": autograd calls take the `pimoe::expert_mlp` custom op; every call
                  eager (auto_cuda_graphs off). On CUDA also `fast_auto_graph`: the layer's default, which from the
                  third call of a shape replays its own forward and backward graphs (pimoe.cuda.train_graph)
    grouped_mm    argsort + torch._grouped_mm with autograd (torchtitan-style plain torch), same router and weights
    sorted        PiMoESystem, dispatch "sorted" (one nn.Module call per expert)
    dense         a dense FFN with the same active parameters (intermediate = top_k x 2048)
One timed step = zero the grads, forward, backward of a fixed upstream gradient; CUDA events, median of the repeats;
on CUDA also the same step captured in a plain torch.cuda.graph and replayed (no host work: the GPU's time alone).
Also: the forward alone at 512 tokens (inference: every call eager, the layer's default with its automatic graph of the
repeated shape, through GraphedPiMoE and a plain torch.cuda.graph capture)
and typed experts (the seven built-in types) forward at 65,536 (eager) and 512 (graphed), against dense.

    python bench/train_step.py                       # CUDA, writes bench/results/train-step-<card>-<date>.json
    python bench/train_step.py --device cpu --tiny   # smoke run (tests/bench/test_train_step_bench.py)

MFU = model FLOPs / time / the card's dense peak for the dtype (pimoe/measure/flops.py: router and expert GEMMs, x3 for training).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pimoe.cuda  # noqa: E402,F401  (registers cuda_fast)
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig  # noqa: E402
from pimoe.layer.reference import DenseFFN  # noqa: E402
from pimoe.measure.flops import mfu, moe_layer_flops, peak_bf16_flops  # noqa: E402
from pimoe.measure.grouped_mm_baseline import GroupedMMBaseline  # noqa: E402
from pimoe.measure.metrics import measure_latency  # noqa: E402
from pimoe.measure.train_bench import training_step  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical", "language")


def build_system(args, expert_types, dispatch: str) -> PiMoESystem:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=args.hidden, num_experts=args.experts, expert_types=expert_types,
                         router=RouterConfig(top_k=args.top_k), expert=ExpertConfig(intermediate_size=args.intermediate),
                         residual=False)
    system = PiMoESystem(config).to(args.device, args.dtype)
    system.dispatch = dispatch
    system.check_finite = False  # a benchmark times the layer, not the input check's device sync
    return system


def _median_ms(fn, device: str, warmup: int, repeats: int) -> float:
    """Median milliseconds per call, synchronised (CUDA events on CUDA): the engine's `measure_latency`."""
    return measure_latency(fn, device, warmup=warmup, repeats=repeats).median_ms


def graphed(step, warmup: int = 3):
    """The training step captured in a plain CUDA graph (warm-up on a side stream first); returns graph.replay. The
    grads the step sets to None are allocated inside the capture, so every replay rewrites the same buffers."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench_training(args, tokens: int) -> dict:
    shape = (1, tokens, args.hidden)
    x = torch.randn(shape, device=args.device, dtype=args.dtype, requires_grad=True)
    upstream = torch.randn(shape, device=args.device, dtype=args.dtype)
    fast = build_system(args, (args.expert_type,) * args.experts, "cuda_fast")
    contenders = {"fast": fast, "sorted": build_system(args, (args.expert_type,) * args.experts, "sorted"),
                  "dense": DenseFFN.matching(fast).to(args.device, args.dtype)}
    if hasattr(torch, "_grouped_mm"):
        contenders["grouped_mm"] = GroupedMMBaseline(fast)
    flops = moe_layer_flops(fast, tokens, training=True)
    row = {"tokens": tokens, "model_gflop": flops / 1e9}
    fast.auto_cuda_graphs = False  # "fast" times every call eager; the layer's default gets its own column below
    for name, module in contenders.items():
        try:
            median = _median_ms(training_step(module, x, upstream), args.device, args.warmup, args.repeats)
        except Exception as error:  # one contender failing (e.g. no grouped_mm kernel) must not lose the others
            row[f"{name}_error"] = f"{type(error).__name__}: {error}"[:300]
            continue
        row[f"{name}_us"] = median * 1e3
        row[f"{name}_mfu"] = mfu(flops, median / 1e3, args.device_name, args.dtype)
        if args.graphs and name != "sorted":  # the sorted dispatch reads counts on the host: not capturable
            try:
                replay = graphed(training_step(module, x, upstream))
                row[f"{name}_graph_us"] = _median_ms(replay, args.device, args.warmup, args.repeats) * 1e3
            except Exception as error:
                row[f"{name}_graph_error"] = f"{type(error).__name__}: {error}"[:300]
    if args.device.startswith("cuda"):  # the default: from its third call the layer replays its training graphs
        fast.auto_cuda_graphs = True
        try:
            median = _median_ms(training_step(fast, x, upstream), args.device, args.warmup, args.repeats)
            row["fast_auto_graph_us"] = median * 1e3
            row["fast_auto_graph_replays"] = fast.cuda_graph_stats()["training_replays"]
        except Exception as error:
            row["fast_auto_graph_error"] = f"{type(error).__name__}: {error}"[:300]
        fast.clear_cuda_graphs()
        fast.auto_cuda_graphs = False
    if "fast_auto_graph_us" in row and "grouped_mm_us" in row:
        row["fast_auto_graph_vs_grouped_mm"] = row["fast_auto_graph_us"] / row["grouped_mm_us"]
    if "fast_us" in row and "dense_us" in row:
        row["fast_vs_dense"] = row["fast_us"] / row["dense_us"]
    if "fast_us" in row and "grouped_mm_us" in row:
        row["fast_vs_grouped_mm"] = row["fast_us"] / row["grouped_mm_us"]
    if "fast_graph_us" in row and "dense_graph_us" in row:
        row["fast_graph_vs_dense_graph"] = row["fast_graph_us"] / row["dense_graph_us"]
    return row


def profile_training(args, tokens: int, top: int = 25) -> dict:
    """Each GPU kernel's share of one fast-path training step (torch.profiler, 3 profiled steps after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    shape = (1, tokens, args.hidden)
    x = torch.randn(shape, device=args.device, dtype=args.dtype, requires_grad=True)
    upstream = torch.randn(shape, device=args.device, dtype=args.dtype)
    step = training_step(build_system(args, (args.expert_type,) * args.experts, "cuda_fast"), x, upstream)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    # self time: a kernel's own; an operator's device time is its kernels', which would count twice
    kernels = [(e.key, e.self_device_time_total / 3, e.count / 3) for e in prof.key_averages()
               if e.self_device_time_total > 0]
    total = sum(us for _, us, _ in kernels)
    kernels.sort(key=lambda item: -item[1])
    return {"tokens": tokens, "gpu_us_per_step": total, "kernels_per_step": sum(calls for *_, calls in kernels),
            "kernels": [{"name": name[:90], "us": us, "share": us / total, "calls": calls}
                        for name, us, calls in kernels[:top]]}


def _graph_replay_ms(fn, x: torch.Tensor, args) -> float:
    """Plain torch.cuda.graph capture of fn(static x), timed replay."""
    static = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(static)
    return _median_ms(graph.replay, args.device, args.warmup, args.repeats * 5)


def bench_forward(args, expert_type: str | tuple, tokens: int, graphed: bool) -> dict:
    types = TYPED[: args.experts] if expert_type == "typed" else (expert_type,) * args.experts
    system = build_system(args, types, "cuda_fast").eval()
    dense = DenseFFN.matching(system).to(args.device, args.dtype)
    x = torch.randn(1, tokens, args.hidden, device=args.device, dtype=args.dtype)
    row = {"experts": "typed" if expert_type == "typed" else expert_type, "tokens": tokens}
    with torch.inference_mode():
        system.auto_cuda_graphs = False  # every call eager: the host's full work per call
        row["eager_us"] = _median_ms(lambda: system(x), args.device, args.warmup, args.repeats) * 1e3
        system.auto_cuda_graphs = True  # the default: the layer captures the repeated shape and replays it
        row["eager_auto_graph_us"] = _median_ms(lambda: system(x), args.device, args.warmup, args.repeats) * 1e3
        row["auto_graph_replays"] = 0 if system._auto_graphs is None else system._auto_graphs.replays
        system.auto_cuda_graphs = False
        row["dense_eager_us"] = _median_ms(lambda: dense(x), args.device, args.warmup, args.repeats) * 1e3
    if graphed and args.device.startswith("cuda"):
        from pimoe.cuda.graphs import GraphedPiMoE

        wrapper = GraphedPiMoE(system, clone_output=False)
        with torch.inference_mode():
            wrapper(x)
            row["graphed_wrapper_us"] = _median_ms(lambda: wrapper(x), args.device, args.warmup,
                                                   args.repeats * 5) * 1e3
        try:
            with torch.no_grad():
                row["plain_graph_us"] = _graph_replay_ms(system, x, args) * 1e3
                row["dense_graph_us"] = _graph_replay_ms(dense, x, args) * 1e3
        except Exception as error:
            row["plain_graph_error"] = f"{type(error).__name__}: {error}"[:300]
    row["eager_vs_dense"] = row["eager_us"] / row["dense_eager_us"]
    return row


def environment(args) -> dict:
    info = {"torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(), "device": args.device,
            "card": args.device_name, "dtype": str(args.dtype).replace("torch.", ""),
            "peak_bf16_tflops": (peak_bf16_flops(args.device_name) or 0) / 1e12 or None,
            "command": " ".join(["python", *sys.argv])}
    if args.device.startswith("cuda"):
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    return info


def format_table(result: dict) -> str:
    lines = [f"training step (forward + backward), {result['env']['dtype']}, {result['env']['card']}, "
             f"torch {result['env']['torch']}",
             f"{'tokens':>8} {'fast':>10} {'fast auto':>10} {'grouped_mm':>11} {'sorted':>10} {'dense':>10} "
             f"{'fast/dense':>10} {'fast/gmm':>9} {'auto/gmm':>9} {'MFU fast':>9} {'fast graph':>11} {'gmm graph':>10} "
             f"{'dense graph':>12}"]

    def cell(row, key, width, digits=0):
        value = row.get(key)
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    for row in result["training"]:
        mfu_fast = row.get("fast_mfu")
        lines.append(f"{row['tokens']:>8} {cell(row, 'fast_us', 10)} {cell(row, 'fast_auto_graph_us', 10)} "
                     f"{cell(row, 'grouped_mm_us', 11)} "
                     f"{cell(row, 'sorted_us', 10)} {cell(row, 'dense_us', 10)} {cell(row, 'fast_vs_dense', 10, 2)} "
                     f"{cell(row, 'fast_vs_grouped_mm', 9, 2)} {cell(row, 'fast_auto_graph_vs_grouped_mm', 9, 2)} "
                     f"{'-' if mfu_fast is None else f'{100 * mfu_fast:.1f}%':>9} {cell(row, 'fast_graph_us', 11)} "
                     f"{cell(row, 'grouped_mm_graph_us', 10)} {cell(row, 'dense_graph_us', 12)}")
    lines.append("forward (inference), µs")
    lines.append(f"{'experts':>9} {'tokens':>8} {'eager':>9} {'auto graph':>11} {'dense':>9} {'wrapper graph':>14} "
                 f"{'plain graph':>12} {'dense graph':>12}")
    for row in result["forward"]:
        lines.append(f"{row['experts']:>9} {row['tokens']:>8} {cell(row, 'eager_us', 9, 1)} "
                     f"{cell(row, 'eager_auto_graph_us', 11, 1)} {cell(row, 'dense_eager_us', 9, 1)} {cell(row, 'graphed_wrapper_us', 14, 1)} "
                     f"{cell(row, 'plain_graph_us', 12, 1)} {cell(row, 'dense_graph_us', 12, 1)}")
    for section in ("training", "forward"):
        for row in result[section]:
            for key, value in row.items():
                if key.endswith("_error"):
                    lines.append(f"{section} {row['tokens']} {key}: {value}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="smoke sizes: hidden 32, 4 experts, 64 / 128 tokens")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-forward", action="store_true", help="only the training-step table")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false",
                        help="CUDA: skip the training steps captured in plain CUDA graphs")
    parser.add_argument("--profile", type=int, default=0, metavar="TOKENS",
                        help="CUDA: also each kernel's share of a fast training step at TOKENS tokens")
    parser.add_argument("--json", type=output_file("results file"), default=None, help="default bench/results/train-step-<card>-<date>.json")
    args = parser.parse_args(argv)
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    if args.tiny:
        args.hidden, args.experts, args.intermediate, args.top_k = 32, 4, 64, 2
        args.tokens = args.tokens or [64, 128]
        args.forward_small, args.forward_large = 32, 128
        args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 2)
    else:
        args.hidden, args.experts, args.intermediate, args.top_k = 512, 8, 2048, 2
        args.tokens = args.tokens or [2048, 8192, 32768, 65536]
        args.forward_small, args.forward_large = 512, 65536
    args.graphs = args.graphs and args.device.startswith("cuda")
    args.expert_type = "language"  # GELU, no norm: the uniform layer the numbers describe
    args.device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = {"env": environment(args), "shape": {"hidden": args.hidden, "experts": args.experts,
                                                  "intermediate": args.intermediate, "top_k": args.top_k},
              "training": [], "forward": []}
    card = "".join(ch for ch in args.device_name.lower().replace(" ", "-") if ch.isalnum() or ch == "-")[:32] or "cpu"
    path = args.json or Path("bench/results") / f"train-step-{card}-{dt.date.today():%Y%m%d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(row: dict) -> None:  # after every row: a run cut short by a time limit keeps what it measured
        print(json.dumps(row), flush=True)
        path.write_text(json.dumps(result, indent=1) + "\n")

    for tokens in args.tokens:
        result["training"].append(bench_training(args, tokens))
        save(result["training"][-1])
    if not args.skip_forward:
        for expert_type, tokens, graphed_too in (("language", args.forward_small, True),
                                                 ("typed", args.forward_small, True),
                                                 ("typed", args.forward_large, False)):
            try:
                result["forward"].append(bench_forward(args, expert_type, tokens, graphed_too))
            except Exception as error:
                result["forward"].append({"experts": expert_type, "tokens": tokens,
                                          "forward_error": f"{type(error).__name__}: {error}"[:300]})
            save(result["forward"][-1])
    if args.profile and args.device.startswith("cuda"):
        try:
            result["profile"] = profile_training(args, args.profile)
        except Exception as error:
            result["profile"] = {"error": f"{type(error).__name__}: {error}"[:300]}
        save(result["profile"])
    print(format_table(result))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
