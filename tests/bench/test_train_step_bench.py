"""bench/train_step.py's CPU smoke mode: every contender runs, the JSON records card, torch and date."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_times_every_contender_and_writes_json(tmp_path, capsys) -> None:
    bench = load_bench()
    out = tmp_path / "train-step.json"
    assert bench.main(["--device", "cpu", "--tiny", "--tokens", "32", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"torch", "date", "card", "dtype"} <= set(result["env"])
    (row,) = result["training"]
    assert row["tokens"] == 32
    for name in ("fast", "grouped_mm", "sorted", "dense"):
        assert row[f"{name}_us"] > 0, row.get(f"{name}_error")
    assert {r["experts"] for r in result["forward"]} == {"language", "typed"}
    assert all(r["eager_us"] > 0 for r in result["forward"])
    assert "fast/dense" in capsys.readouterr().out


def test_grouped_mm_baseline_matches_the_sorted_layer() -> None:
    import torch

    bench = load_bench()
    args = bench.parse_args(["--device", "cpu", "--tiny"])
    system = bench.build_system(args, ("language",) * args.experts, "sorted")
    baseline = bench.GroupedMMBaseline(system)
    x = torch.randn(1, 24, args.hidden)
    torch.testing.assert_close(baseline(x), system(x), atol=1e-5, rtol=1e-5)
