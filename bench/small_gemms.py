"""The two expert GEMMs of a small batch, each timed alone, against library GEMMs over the same rows.

At 512 tokens the layer's graph spends most of its time in the up and down GEMMs (docs/performance.md). This times
each candidate as 20 launches captured in one CUDA graph, replayed back to back (L2 warm, launch latency hidden, as
inside the layer's graph), and prints µs per launch with the weight bytes it must read at least, so the candidates
can be compared with the library's grouped and batched GEMMs on the same routed rows.

    python bench/small_gemms.py --tokens 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from bench.breakdown import environment
from pimoe.cuda.graphs import capture_after_warmup
from pimoe.cuda.ops.down_gemm import down_rows
from pimoe.cuda.ops.down_tma_gemm import down_tma_rows
from pimoe.cuda.ops.gather import gather_norm
from pimoe.cuda.ops.sort import sort_by_expert
from pimoe.cuda.ops.up_act_gemm import up_act_rows
from pimoe.cuda.ops.up_gemm import up_rows
from pimoe.cuda.packing import pack_experts
from pimoe.cuda.tuning import GemmConfig
from pimoe.measure.layer_bench import BenchConfig, _build_system
from pimoe.measure.metrics import measure_back_to_back
from pimoe.output_paths import output_file

UP = [GemmConfig(64, 64, 64, 4, 3), GemmConfig(64, 128, 64, 4, 3), GemmConfig(128, 128, 64, 8, 3),
      GemmConfig(64, 256, 64, 8, 3), GemmConfig(128, 256, 64, 8, 3), GemmConfig(64, 64, 128, 4, 2),
      GemmConfig(64, 128, 128, 8, 2)]
# 256-row tiles: one row tile per expert at 512 tokens (~130 rows each), every weight tile read once
UP_TMA = [GemmConfig(64, 64, 64, 4, 3), GemmConfig(64, 128, 64, 4, 3), GemmConfig(128, 128, 64, 8, 3),
          GemmConfig(128, 64, 64, 4, 3), GemmConfig(256, 128, 64, 8, 3), GemmConfig(256, 64, 64, 8, 3),
          GemmConfig(256, 128, 64, 8, 2), GemmConfig(256, 64, 128, 8, 2)]
DOWN = [GemmConfig(64, 64, 128, 4, 3), GemmConfig(64, 128, 128, 8, 3), GemmConfig(128, 64, 128, 8, 3),
        GemmConfig(128, 128, 64, 8, 3), GemmConfig(64, 32, 128, 4, 4)]
DOWN_TMA = [GemmConfig(64, 64, 128, 4, 3), GemmConfig(128, 64, 128, 8, 3), GemmConfig(64, 128, 64, 4, 3),
            GemmConfig(128, 128, 64, 8, 3), GemmConfig(64, 64, 64, 4, 4), GemmConfig(128, 64, 64, 4, 3),
            GemmConfig(64, 32, 128, 4, 3), GemmConfig(128, 256, 64, 8, 3), GemmConfig(256, 64, 64, 8, 3),
            GemmConfig(256, 32, 128, 8, 3), GemmConfig(256, 64, 128, 8, 2)]
LAUNCHES_PER_GRAPH = 20


def time_alone(fn: Callable[[], object]) -> float:
    """µs per launch of fn, LAUNCHES_PER_GRAPH of them in one CUDA graph, replays back to back."""
    graph, _ = capture_after_warmup(lambda: [fn() for _ in range(LAUNCHES_PER_GRAPH)])
    return measure_back_to_back(graph.replay, "cuda", calls=10) * 1e3 / LAUNCHES_PER_GRAPH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args()
    system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", expert_types=("language",)))
    system = system.to("cuda", torch.bfloat16)
    x = torch.randn(args.tokens, system.hidden_size, device="cuda", dtype=torch.bfloat16)
    results: dict = {"environment": environment(), "tokens": args.tokens, "up": {}, "down": {}}
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        layout = sort_by_expert(routing)
        gathered = gather_norm(x, layout, packed)
        hidden_rows = up_act_rows(gathered, layout, packed, UP_TMA[2], use_tma=True)  # zero past F_e
        counts = layout.counts.tolist()
        experts, width, hidden = packed.num_experts, packed.max_width, system.hidden_size
        per_expert = -(-routing.expert_indices.numel() // experts)
        equal_a = torch.randn(experts, per_expert, hidden, device="cuda", dtype=x.dtype)
        equal_h = torch.randn(experts, per_expert, width, device="cuda", dtype=x.dtype)
        w1_t, w2_t = packed.w1.transpose(1, 2), packed.w2.transpose(1, 2)
        weight_mb = packed.w1.numel() * 2 / 2**20
        print(f"rows per expert {counts}; each GEMM reads {weight_mb:.0f} MiB of weights at least")

        def record(section: str, name: str, fn: Callable[[], object]) -> None:
            try:
                us = time_alone(fn)
                results[section][name] = {"us": us, "weight_gb_per_s": weight_mb * 2**20 / us / 1e3}
                print(f"  {section:5} {name:34} {us:7.2f} µs  {weight_mb * 2**20 / us / 1e3:7.0f} GB/s of weights")
            except Exception as error:  # a shape the compiler cannot take: record and go on
                results[section][name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
                print(f"  {section:5} {name:34} {results[section][name]}")

        for cfg in UP:
            record("up", f"triton gather {cfg.bm}x{cfg.bn}x{cfg.bk} w{cfg.warps} s{cfg.stages}",
                   lambda cfg=cfg: up_rows(x, layout, packed, cfg))
        for cfg in UP_TMA:
            record("up", f"tma epilogue {cfg.bm}x{cfg.bn}x{cfg.bk} w{cfg.warps} s{cfg.stages}",
                   lambda cfg=cfg: up_act_rows(gathered, layout, packed, cfg, use_tma=True))
        record("up", "torch._grouped_mm (no activation)", lambda: torch._grouped_mm(gathered, w1_t, offs=layout.offsets))
        record("up", f"torch.bmm, {per_expert} rows each", lambda: torch.bmm(equal_a, w1_t))
        for cfg in DOWN:
            record("down", f"triton {cfg.bm}x{cfg.bn}x{cfg.bk} w{cfg.warps} s{cfg.stages}",
                   lambda cfg=cfg: down_rows(hidden_rows, layout, packed, cfg, prologue_act=False))
        for cfg in DOWN_TMA:
            record("down", f"tma {cfg.bm}x{cfg.bn}x{cfg.bk} w{cfg.warps} s{cfg.stages}",
                   lambda cfg=cfg: down_tma_rows(hidden_rows, layout, packed, cfg))
        record("down", "torch._grouped_mm", lambda: torch._grouped_mm(hidden_rows, w2_t, offs=layout.offsets))
        record("down", f"torch.bmm, {per_expert} rows each", lambda: torch.bmm(equal_h, w2_t))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
