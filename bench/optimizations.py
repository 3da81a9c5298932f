"""Float32 against int8 dynamic quantisation, bf16, and structured pruning, on the benchmark preset, measured.

    python bench/optimizations.py [--batch 4 --seq 256 --repeats 20 --json PATH]

The bench preset (d=512, E=8, intermediate 2048, top-2) on the CPU. Every candidate is compared with the float32 layer
on the same (batch, seq) input by `pimoe.quantize.compare_outputs`: median latency, taken in turns with the float32
layer (float32 call, candidate call, ...) so both see the same machine load; bytes of parameters and buffers (packed
int8 weights included); relative error of the output and of the MoE contribution (output minus input); and how many
tokens changed their top-1 expert or their set of top-k experts. Peak memory of one forward is measured in a separate
process (see _memory_in_subprocess). Pruned rows use magnitude importance, and activation importance calibrated on a
different batch than the evaluated one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.layer.config import PiMoEConfig  # noqa: E402
from pimoe.layer.system import PiMoESystem  # noqa: E402
from pimoe.measure.layer_bench import device_description  # noqa: E402
from pimoe.measure.metrics import measure_peak_memory  # noqa: E402
from pimoe.optimize.prune import prune_experts  # noqa: E402
from pimoe.optimize.quantize import cast_system, compare_outputs, input_dtype, quantize_dynamic_int8  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _inputs(batch: int, seq: int) -> tuple[PiMoESystem, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig.bench()).eval()
    system.check_finite = False  # time the layer, not the input check
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seq, system.hidden_size, generator=generator)
    calibration = torch.randn(batch, seq, system.hidden_size, generator=generator)
    return system, x, calibration


def build_variants(system: PiMoESystem, x: torch.Tensor, calibration: torch.Tensor) -> list[tuple[str, PiMoESystem]]:
    """The layers compared, all derived from `system` (deterministic, so the memory process rebuilds the same)."""
    variants = [("float32", system), ("int8 dynamic (experts)", quantize_dynamic_int8(system)),
                ("bfloat16 (experts)", cast_system(system, "bfloat16"))]
    for amount in (0.3, 0.5):  # repeats=1, warmup=0: the comparison below is the measured one
        pruned, _ = prune_experts(system, amount, evaluation=x, repeats=1, warmup=0)
        variants.append((f"pruned {amount:.0%} magnitude", pruned))
    pruned, _ = prune_experts(system, 0.5, calibration=calibration, importance="activation", evaluation=x,
                              repeats=1, warmup=0)
    variants.append(("pruned 50% activation", pruned))
    variants.append(("pruned 50% act. + int8", quantize_dynamic_int8(pruned)))
    return variants


def _row(name: str, report, parameters: int) -> dict:
    return {
        "variant": name,
        "median_ms": report.candidate_latency.median_ms,
        "p95_ms": report.candidate_latency.p95_ms,
        "float32_median_ms_same_run": report.reference_latency.median_ms,
        "speedup": report.speedup,
        "storage_bytes": report.candidate_storage_bytes,
        "parameters": parameters,
        "relative_error": report.relative_error,
        "relative_delta_error": report.relative_delta_error,
        "max_abs_error": report.max_abs_error,
        "top1_changed": report.top1_changed,
        "topk_set_changed": report.topk_set_changed,
        "tokens": report.tokens,
        "int8_linears": report.candidate_int8_linears,
    }


def measure_memory(batch: int, seq: int) -> dict[str, float]:
    """Peak RSS growth (MB) of one forward of each variant, after a warm-up forward. Run with a fixed glibc mmap
    threshold (see main), which is why it runs in its own process."""
    system, x, calibration = _inputs(batch, seq)
    peaks = {}
    with torch.no_grad():
        for name, model in build_variants(system, x, calibration):
            x_in = x.to(input_dtype(model))
            model(x_in)
            peaks[name] = float(measure_peak_memory(lambda m=model, v=x_in: m(v))["peak_mb"])
    return peaks


def _memory_in_subprocess(batch: int, seq: int) -> dict[str, float]:
    # NOTE: once glibc has raised its dynamic mmap threshold it keeps freed large blocks on its heap, and the RSS peak
    # of a later forward shows only new growth (often 0). A fixed threshold hands large blocks back on free, so each
    # forward's peak is measurable, but it also slows every forward (fresh pages each call), so latencies are taken
    # in this process with the default allocator and memory in a child process with the fixed threshold.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    done = subprocess.run([sys.executable, __file__, "--memory-only", "--batch", str(batch), "--seq", str(seq)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(batch: int, seq: int, repeats: int) -> tuple[list[dict], dict]:
    system, x, calibration = _inputs(batch, seq)
    load_before = os.getloadavg()
    rows = []
    for name, model in build_variants(system, x, calibration):
        rows.append(_row(name, compare_outputs(system, model, x, repeats=repeats), _count(model)))
    peaks = _memory_in_subprocess(batch, seq)
    for row in rows:
        row["peak_mb"] = peaks[row["variant"]]
    meta = {
        **device_description(torch.device("cpu")),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": system.config.to_dict(),
        "input_shape": [batch, seq, system.hidden_size],
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "memory_method": "peak RSS growth of one forward after a warm-up, in a child process with "
                         "MALLOC_MMAP_THRESHOLD_=65536",
    }
    return rows, meta


def format_table(rows: list[dict], meta: dict) -> str:
    header = (f"PiMoE bench preset, {meta['input_shape'][0]}x{meta['input_shape'][1]} tokens, CPU "
              f"({meta['threads']} threads, torch {meta['torch']}), load average before/after "
              f"{meta['load_average_before'][0]:.2f}/{meta['load_average_after'][0]:.2f}, {meta['date']}\n")
    cols = (f"{'variant':<24} {'median ms':>9} {'f32 ms':>8} {'speedup':>7} {'peak MB':>8} {'param MB':>8} "
            f"{'rel err':>9} {'rel Δerr':>9} {'top1 chg':>8} {'topk chg':>8}")
    lines = [header + cols]
    for r in rows:
        lines.append(
            f"{r['variant']:<24} {r['median_ms']:>9.2f} {r['float32_median_ms_same_run']:>8.2f} {r['speedup']:>7.2f} "
            f"{r['peak_mb']:>8.1f} {r['storage_bytes'] / 2**20:>8.2f} {r['relative_error']:>9.2e} "
            f"{r['relative_delta_error']:>9.2e} {r['top1_changed']:>8d} {r['topk_set_changed']:>8d}"
        )
    lines.append(f"({rows[0]['tokens']} tokens; 'chg' = tokens whose top-1 expert / top-k set changed; "
                 "param MB = parameter and buffer bytes, int8 weights packed)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=output_file("results file"), default=None)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_only:
        print(json.dumps(measure_memory(args.batch, args.seq)))
        return 0
    rows, meta = run(args.batch, args.seq, args.repeats)
    print(format_table(rows, meta))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.json or Path(__file__).resolve().parent / "results" / f"optimizations-cpu-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
