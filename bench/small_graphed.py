"""Tile shapes and backends timed where they run: CUDA-graph replays of the whole bench layer, issued back to back
(the GPU's time per call) and one at a time (`measure_latency`). Small batches (tiles, backends) by default; the
fused_up backend's down GEMM for typed packs with `--sections mixed_down --expert-types typed`.

At a few hundred tokens every kernel is latency-bound, so isolated kernel timings (do_bench, L2 flushed) rank tile
shapes differently from the graph. Each variant overrides tuning fields (or, for the
benchmark-only backends, the strategy), captures a fresh GraphedPiMoE and checks its output
against the default's. Prints µs and writes JSON.

    python bench/small_graphed.py --tokens 512 --json out.json
    python bench/small_graphed.py --tokens 65536 --expert-types typed --sections mixed_down --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from bench.backends import STRATEGIES as BENCH_STRATEGIES
from bench.breakdown import environment
from pimoe.cuda.graphs import GraphedPiMoE
from pimoe.cuda.tuning import GemmConfig, active_tuning, tuning_overrides
from pimoe.measure.graph_timing import cycle_inputs
from pimoe.measure.layer_bench import BenchConfig, _build_system
from pimoe.measure.metrics import measure_back_to_back, measure_latency
from pimoe.output_paths import output_file

UP = [GemmConfig(64, 64, 64, 4, 3), GemmConfig(64, 64, 128, 4, 3), GemmConfig(64, 128, 64, 4, 3),
      GemmConfig(128, 64, 64, 4, 3), GemmConfig(128, 128, 64, 8, 3), GemmConfig(32, 64, 64, 4, 4),
      GemmConfig(64, 32, 64, 4, 4), GemmConfig(32, 128, 64, 4, 3), GemmConfig(64, 64, 64, 4, 4),
      GemmConfig(64, 64, 64, 8, 3), GemmConfig(128, 64, 128, 8, 3), GemmConfig(32, 64, 128, 4, 3),
      # one row tile per expert at 512 tokens (~128 rows each): every weight slab read once
      GemmConfig(256, 64, 64, 8, 2), GemmConfig(256, 32, 64, 8, 3), GemmConfig(256, 64, 64, 8, 3)]
DOWN = [GemmConfig(64, 64, 128, 4, 3), GemmConfig(256, 32, 64, 8, 3), GemmConfig(256, 64, 64, 8, 2), GemmConfig(64, 64, 64, 4, 3), GemmConfig(32, 64, 128, 4, 4),
        GemmConfig(64, 32, 128, 4, 4), GemmConfig(64, 128, 128, 8, 3), GemmConfig(128, 64, 128, 8, 3),
        GemmConfig(64, 64, 128, 4, 4), GemmConfig(32, 32, 128, 4, 4), GemmConfig(32, 64, 256, 4, 3)]

MIXED_DOWN = [GemmConfig(128, 128, 64, 8, 3), GemmConfig(128, 256, 64, 8, 3), GemmConfig(128, 128, 64, 8, 4),
              GemmConfig(128, 64, 64, 4, 3)]


def _name(cfg: GemmConfig) -> str:
    return f"{cfg.bm}x{cfg.bn}x{cfg.bk} w{cfg.warps} s{cfg.stages}"


def time_variant(system, inputs, expected) -> dict:
    graphed = GraphedPiMoE(system, max_tokens=inputs[0].shape[1], clone_output=False)
    next_input = cycle_inputs(inputs)
    with torch.inference_mode():
        error = float((graphed(inputs[0]).float() - expected).norm() / expected.norm())
        single = measure_latency(lambda: graphed(next_input()), "cuda", warmup=5, repeats=100).median_ms
        b2b = measure_back_to_back(lambda: graphed(next_input()), "cuda", calls=50)
    return {"back_to_back_us": b2b * 1e3, "single_us": single * 1e3, "rel_diff_vs_default": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--json", type=output_file("results file"))
    parser.add_argument("--expert-types", default="language", help="comma-separated; 'typed' for the default mix")
    parser.add_argument("--sections", default="backends,up,down",
                        help="backends, up, down (small-batch tiles), launches (programmatic dependent "
                             "launch, the TMA down GEMM: on and off) and mixed_down (the fused_up backend's down "
                             "GEMM for packs of mixed widths: library against Triton shapes)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    types = {} if args.expert_types == "typed" else {"expert_types": tuple(args.expert_types.split(","))}
    system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", **types))
    system = system.to("cuda", torch.bfloat16)
    inputs = [torch.randn(1, args.tokens, system.hidden_size, device="cuda", dtype=torch.bfloat16)
              for _ in range(max(1, 128 * 2**20 // (args.tokens * system.hidden_size * 2)))]
    with torch.inference_mode():
        expected = system(inputs[0]).float()
    defaults = active_tuning()
    results: dict = {"environment": environment(), "tokens": args.tokens, "default_tuning": {
        k: str(v) for k, v in vars(defaults).items()}, "expert_types": args.expert_types,
        "up": {}, "down": {}, "backends": {}, "mixed_down": {}, "launches": {}}

    def run(section: str, name: str, strategy: str | None = None, **overrides) -> None:
        try:
            with tuning_overrides(**overrides):
                if strategy is None:
                    results[section][name] = time_variant(system, inputs, expected)
                else:  # a benchmark-only backend: the same weights under its strategy
                    other = copy.copy(system)
                    other.use_strategy(BENCH_STRATEGIES[strategy])
                    results[section][name] = time_variant(other, inputs, expected)
            r = results[section][name]
            print(f"  {section:8} {name:22} back-to-back {r['back_to_back_us']:7.1f} µs  single {r['single_us']:7.1f}"
                  f"  rel diff {r['rel_diff_vs_default']:.1e}")
        except Exception as error:  # a shape the compiler cannot take: record and go on
            results[section][name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            print(f"  {section:8} {name:22} {results[section][name]}")

    if "backends" in sections:
        for backend in ("triton", "fused_up"):
            run("backends", backend, small_backend=backend, switch_rows=1 << 30)
        for backend in ("grouped_mm", "hybrid"):
            run("backends", backend, strategy=f"cuda_{backend}")
    if "up" in sections:
        for cfg in UP:
            run("up", _name(cfg), up_small=cfg, switch_rows=1 << 30, small_backend="triton")
    if "down" in sections:
        timed = [k for k, v in results["up"].items() if isinstance(v, dict)]
        best_up = min(timed, key=lambda k: results["up"][k]["back_to_back_us"]) if timed else None
        up_cfg = next((cfg for cfg in UP if _name(cfg) == best_up), defaults.up_small)
        for cfg in DOWN:
            run("down", _name(cfg), up_small=up_cfg, down_small=cfg, switch_rows=1 << 30, small_backend="triton")
    if "launches" in sections:
        run("launches", "defaults")
        run("launches", "plain launches", pdl=False)
        run("launches", "down GEMM without TMA", down_tma=False)
        run("launches", "defaults again")  # the first variant timed also pays warm-up
    if "mixed_down" in sections:
        run("mixed_down", "library", mixed_width_down="library")
        for cfg in MIXED_DOWN:
            run("mixed_down", f"triton {_name(cfg)}", mixed_width_down="triton", down_large=cfg)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
