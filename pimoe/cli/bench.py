"""`python -m pimoe bench`: the layer benchmark (and, with --systems, the Basic/Enhanced/Adaptive table)."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from pathlib import Path

from pimoe.devices import available_device
from pimoe.layer.strategies import DispatchStrategy
from pimoe.measure.layer_bench import BenchConfig, format_table, run_layer_benchmark, write_results
from pimoe.output_paths import output_file


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must look like 4x128,4x1024, got {text!r}") from None
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"shapes must look like 4x128,4x1024, got {text!r}")
    return pairs  # type: ignore[return-value]


def _tokens(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((1, int(v)) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tokens must look like 512,2048, got {text!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--num-experts", type=int, default=defaults.num_experts)
    parser.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--expert-types", default=",".join(defaults.expert_types),
                        help="comma-separated expert types, assigned round-robin")
    parser.add_argument("--shapes", type=_shapes, default=defaults.shapes, help="batch x seq list, e.g. 4x128,4x1024")
    parser.add_argument("--tokens", type=_tokens, default=None, help="token counts (batch 1), e.g. 512,65536")
    parser.add_argument("--routing", choices=["balanced", "skewed"], default="balanced")
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--no-loop", action="store_true", help="skip the loop-over-experts reference")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense FFN baseline")
    parser.add_argument("--dispatch", default="auto", help="the layer's strategy (default auto: cuda_fast on CUDA)")
    parser.add_argument("--compare", default="", help="further strategies to time, comma-separated "
                        "(e.g. sorted,cuda_triton)")
    parser.add_argument("--graph", action="store_true", help="CUDA: also time CUDA-graph replays (small token counts)")
    parser.add_argument("--graph-max-tokens", type=int, default=defaults.graph_max_tokens)
    parser.add_argument("--check", action="store_true",
                        help="CUDA: relative error against a float32 copy per size, fresh inputs, poisoned buffers")
    parser.add_argument("--rotate-mb", type=int, default=None,
                        help="cycle inputs until they exceed this many MB (default 128 on CUDA: beyond the L2)")
    parser.add_argument("--min-seconds", type=float, default=defaults.min_seconds,
                        help="time each variant for at least this long")
    parser.add_argument("--json", type=output_file("results file"), default=None, help="write results here (default bench/results/...)")
    parser.add_argument("--systems", action="store_true", help="the Basic / Enhanced / Adaptive systems table")


def main(args: argparse.Namespace, unregistered: Mapping[str, DispatchStrategy] | None = None) -> int:
    """Run the benchmark `args` describe. unregistered: strategies --dispatch and --compare may name besides the
    registered ones (`python -m bench.backends` passes the benchmark-only backends)."""
    available_device(args.device)  # before any model is built or progress shown
    if args.systems:
        from pimoe.original.systems_bench import main as systems_main

        return systems_main(args)
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    cfg = BenchConfig(
        device=args.device, dtype=dtype, hidden_size=args.hidden_size, num_experts=args.num_experts,
        intermediate_size=args.intermediate_size, top_k=args.top_k,
        expert_types=tuple(t for t in args.expert_types.split(",") if t),
        shapes=args.tokens or args.shapes, routing=args.routing, repeats=args.repeats, warmup=args.warmup,
        include_loop=not args.no_loop, include_dense=not args.no_dense,
        dispatch=args.dispatch, compare=tuple(n for n in args.compare.split(",") if n), graph=args.graph,
        graph_max_tokens=args.graph_max_tokens, check=args.check, min_seconds=args.min_seconds,
        rotate_bytes=(args.rotate_mb if args.rotate_mb is not None else 128 if cuda else 0) * 2**20,
    )
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(cfg.shapes), desc="bench", leave=False)

        def progress(done: int, total: int, message: str) -> None:
            bar.n = done
            bar.set_postfix_str(message)
            bar.refresh()
    except ImportError:  # pragma: no cover - tqdm is a dependency; this keeps a bare install usable
        bar, progress = None, None
    rows, meta = run_layer_benchmark(cfg, progress, unregistered)
    if bar is not None:
        bar.close()
    print(format_table(rows, meta))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.json or Path("bench/results") / f"layer-{meta['device']}-{cfg.routing}-{stamp}.json"
    write_results(rows, meta, path)
    print(f"results written to {path}")
    return 0
