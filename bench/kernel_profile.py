"""Where one layer call's GPU time goes, kernel by kernel, and how much of a call is host work.

    python bench/kernel_profile.py --tokens 512,65536 [--expert-types language] [--tuning router_native_dot=1] [--tuning up_act=128x128x64x8x3]
        [--json out.json]

For each token count: the layer's eager call (CUDA events, median), the host time to enqueue one call (perf_counter
without a sync: when it exceeds the GPU time, the call is host-bound), the kernels of one call from the PyTorch
profiler (device µs per call, launches per call), the same for a CUDA-graph replay where the size allows one, and the
dense FFN with the same active parameters. Settings in `--tuning` override fields of
`pimoe.cuda.tuning.active_tuning()` for the run.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pimoe.cuda.graphs import GraphedPiMoE
from pimoe.cuda.tuning import active_tuning, parse_overrides, tuning_overrides
from pimoe.layer.reference import DenseFFN
from pimoe.measure.graph_timing import cycle_inputs, time_graphed_callable
from pimoe.measure.layer_bench import BenchConfig, _build_system
from pimoe.measure.metrics import measure_back_to_back, measure_latency
from pimoe.output_paths import output_file


def kernel_table(fn, calls: int = 10) -> list[dict]:
    """Device time per call of every kernel `fn` launches, largest first."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = collections.defaultdict(list)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name].append(event.device_time if hasattr(event, "device_time") else event.cuda_time)
    rows = [{"kernel": name[:90], "us_per_call": sum(times) / calls, "launches_per_call": len(times) / calls}
            for name, times in totals.items()]
    return sorted(rows, key=lambda row: -row["us_per_call"])


def pipelined_us(fn) -> float:
    return measure_back_to_back(fn, "cuda") * 1e3


def host_enqueue_us(fn, calls: int = 30) -> float:
    """Median host time of one call with the GPU left running behind (no sync inside the timed region)."""
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(samples)


def profile_size(system, dense, tokens: int, graph_max_tokens: int) -> dict:
    count = max(1, min(64, (128 << 20) // (tokens * 512 * 2)))
    inputs = [torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16) for _ in range(count)]
    flats = [x.view(tokens, 512) for x in inputs]
    next_input, next_flat = cycle_inputs(inputs), cycle_inputs(flats)
    entry = {}
    with torch.inference_mode():
        def layer():
            return system(next_input())

        def dense_call():
            return dense(next_flat())

        entry["layer_us"] = measure_latency(layer, "cuda", warmup=5, repeats=50).median_ms * 1e3
        entry["dense_us"] = measure_latency(dense_call, "cuda", warmup=5, repeats=50).median_ms * 1e3
        entry["layer_host_us"] = host_enqueue_us(layer)
        entry["layer_pipelined_us"] = pipelined_us(layer)
        entry["dense_pipelined_us"] = pipelined_us(dense_call)
        entry["layer_kernels"] = kernel_table(layer)
        entry["dense_kernels"] = kernel_table(dense_call)
        if tokens <= graph_max_tokens:
            graphed = GraphedPiMoE(system, max_tokens=tokens, clone_output=False)
            graphed(inputs[0])

            def replay():
                return graphed(next_input())

            entry["graph_us"] = measure_latency(replay, "cuda", warmup=5, repeats=100).median_ms * 1e3
            entry["graph_host_us"] = host_enqueue_us(replay)
            entry["graph_kernels"] = kernel_table(replay)
            entry["graph_pipelined_us"] = pipelined_us(replay)
            dense_graph = time_graphed_callable(dense, flats, {"warmup": 5, "repeats": 100}).single
            entry["dense_graph_us"] = dense_graph.median_ms * 1e3
    return entry


def host_profile(system, tokens: int, calls: int) -> None:
    from bench.host_profile import profiled_calls

    x = torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16)
    graphed = GraphedPiMoE(system, max_tokens=tokens, clone_output=False)
    with torch.inference_mode():
        for label, fn in (("eager", lambda: system(x)), ("graph replay", lambda: graphed(x))):
            fn()
            torch.cuda.synchronize()
            stats = profiled_calls(fn, calls)
            print(f"\n== host profile, {label}, {tokens} tokens, {calls} calls (µs per call = tottime * 1e6 / calls)")
            stats.sort_stats("tottime").print_stats(22)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="512,65536")
    parser.add_argument("--expert-types", default="language")
    parser.add_argument("--tuning", action="append", default=[],
                        help="FIELD=VALUE override of a Tuning field (launch shapes as BMxBNxBKxWARPSxSTAGES)")
    parser.add_argument("--dispatch", default="cuda_fast")
    parser.add_argument("--graph-max-tokens", type=int, default=8192)
    parser.add_argument("--json", type=output_file("results file"))
    parser.add_argument("--cprofile", type=int, default=0, help="profile the host side of N eager calls at the "
                        "first token count and of N graph replays (Python functions by own time)")
    args = parser.parse_args()
    with tuning_overrides(**parse_overrides(args.tuning)):
        profile_all(args)


def profile_all(args: argparse.Namespace) -> None:

    expert_types = tuple(args.expert_types.split(","))
    system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", expert_types=expert_types))
    system = system.to("cuda", torch.bfloat16)
    system.dispatch = args.dispatch
    dense = DenseFFN.matching(system).to("cuda", torch.bfloat16).eval()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "expert_types": [e.expert_type for e in system.experts], "sizes": {}}
    report["tuning"] = {k: (v if isinstance(v, (int, str, bool)) else str(v)) for k, v in vars(active_tuning()).items()}
    for tokens in (int(t) for t in args.tokens.split(",")):
        entry = profile_size(system, dense, tokens, args.graph_max_tokens)
        report["sizes"][tokens] = entry
        print(f"\n== {tokens} tokens: layer {entry['layer_us']:.0f} µs (host enqueue {entry['layer_host_us']:.0f}), "
              f"dense {entry['dense_us']:.0f} µs, ratio {entry['layer_us'] / entry['dense_us']:.2f}; back-to-back "
              f"{entry['layer_pipelined_us']:.0f} vs {entry['dense_pipelined_us']:.0f} µs "
              f"({entry['layer_pipelined_us'] / entry['dense_pipelined_us']:.2f})")
        if "graph_us" in entry:
            print(f"   graphed {entry['graph_us']:.0f} µs (host {entry['graph_host_us']:.0f}, back-to-back "
                  f"{entry['graph_pipelined_us']:.0f}), dense graphed {entry['dense_graph_us']:.0f} µs "
                  f"({entry['graph_us'] / entry['dense_graph_us']:.2f})")
        for label in ("layer_kernels", "graph_kernels", "dense_kernels"):
            if label not in entry:
                continue
            total = sum(row["us_per_call"] for row in entry[label])
            launches = sum(row["launches_per_call"] for row in entry[label])
            print(f"  {label}: {total:.0f} µs of kernels in {launches:.0f} launches")
            for row in entry[label][:12]:
                print(f"    {row['us_per_call']:8.1f} µs  x{row['launches_per_call']:.0f}  {row['kernel']}")
    if args.cprofile:
        host_profile(system, int(args.tokens.split(",")[0]), args.cprofile)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
