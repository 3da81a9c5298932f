"""bench/hf_moe_block.py runs on the CPU at tiny dims, and PiMoE's block equals transformers' eager block there."""

import importlib.util
from pathlib import Path

import torch


def test_hf_moe_block_bench_runs_tiny_on_cpu():
    path = Path(__file__).resolve().parents[2] / "bench" / "hf_moe_block.py"
    spec = importlib.util.spec_from_file_location("hf_moe_block", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # two token counts: the block is built under inference_mode, and every implementation must still run after
    # PiMoE's registered one made its stacks the fast path's pack
    report = bench.run(torch.device("cpu"), torch.float32, tiny=True, token_counts=[16, 24], warmup=0, iters=1)
    for rows in report["results"].values():
        interface = "pimoe experts in transformers' block"
        assert {"pimoe", interface, "transformers eager", "transformers grouped_mm"} <= set(rows)
        assert "transformers pimoe" not in rows  # PiMoE's entry is never counted as one of transformers' own
        for name in ("pimoe", interface):
            assert rows[name]["max_abs_diff_vs_eager"] < 1e-5
            assert rows[name]["speedup_vs_fastest_transformers"] > 0
