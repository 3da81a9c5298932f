"""Step times of the GPU preset's training — eager, torch.compile'd blocks, one CUDA graph per step, both — in one
process.

`python -m pimoe train` reports tokens/s averaged over its run; this prints every step's time (CUDA-synchronised, as
the Trainer measures it) so warm-up, recompilation and steady state can be told apart.

    python bench/train_preset_steps.py [--batch-size 32] [--seq-len 512] [--steps 30] [--modes eager,compile,graph,compile-graph]
        [--hidden 512 --intermediate 1024 --layers 6 --heads 8] [--attention-bias 0|1] [--precision float32]
        [--sdpa-backend cudnn|flash|efficient|math] [--try "FIELD=VALUE,..." ...] [--json PATH]

The size options replace the preset's own (hidden 512, intermediate 1024, 6 layers, 8 heads), to see how the model
FLOPs utilisation moves with the width of the GEMMs. Each `--try` is a set of `pimoe.cuda.tuning` overrides ("" is the
defaults); every mode runs under each, in the order given, in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.cuda.tuning import parse_overrides, tuning_overrides  # noqa: E402
from pimoe.lm.data import CorpusConfig  # noqa: E402
from pimoe.lm.model import LMConfig, PiMoELM  # noqa: E402
from pimoe.lm.recipe import run_throughput  # noqa: E402
from pimoe.lm.train import PRECISIONS, TrainConfig, Trainer  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402

MODES = {"eager": {}, "compile": {"compile": True}, "graph": {"cuda_graph": True},
         "compile-graph": {"compile": True, "cuda_graph": True}}


def sized_preset(args) -> LMConfig:
    preset = LMConfig.gpu().resized(hidden_size=args.hidden, intermediate_size=args.intermediate,
                                    num_layers=args.layers, num_heads=args.heads)
    bias = preset.attention_bias if args.attention_bias is None else bool(args.attention_bias)
    return dataclasses.replace(preset, attention_bias=bias)


SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}


def attention_backend(name: str | None):
    """A context in which scaled_dot_product_attention uses only `name`'s kernel (the backward's share of the step,
    ~1.7 ms on an H100, is cuDNN's by default), or changes nothing for None."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def run(args, mode: str) -> dict:
    torch.manual_seed(0)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, device="cuda",
                         precision=args.precision,
                         warmup=5, corpus=CorpusConfig(seed=0, num_train=3000, num_val=40), **MODES[mode])
    torch.cuda.reset_peak_memory_stats()
    model = PiMoELM(sized_preset(args))
    trainer = Trainer(model, config)
    records = [trainer.step() for _ in range(args.steps)]
    stats = run_throughput(records, model, config)
    steady = [r.step_ms for r in records[len(records) // 2:]]
    steady_tokens_per_s = args.batch_size * args.seq_len / statistics.median(steady) * 1e3
    row = {"mode": mode, "step_ms": [round(r.step_ms, 2) for r in records],
           "steady_median_ms": statistics.median(steady), "tokens_per_s": stats["tokens_per_s"], "mfu": stats["mfu"],
           "steady_tokens_per_s": steady_tokens_per_s,
           "steady_mfu": (stats["mfu"] or 0) * steady_tokens_per_s / stats["tokens_per_s"],
           "parameters": stats["parameters"], "flops_per_token": stats["flops_per_token"],
           "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}
    print(f"{mode}, {stats['parameters'] / 1e6:.1f} M parameters, {stats['flops_per_token'] / 1e6:.1f} MFLOP per "
          f"token, peak memory {row['peak_memory_mb']:,.0f} MB: steady median {row['steady_median_ms']:.1f} ms/step, "
          f"{steady_tokens_per_s:,.0f} tokens/s steady (MFU {100 * row['steady_mfu']:.1f}%), {stats['tokens_per_s']:,.0f} over the run after warm-up (MFU "
          f"{100 * (stats['mfu'] or 0):.1f}%)\n  steps (ms): {row['step_ms']}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--modes", default="eager,compile,graph", help="comma-separated: " + ", ".join(MODES))
    for name in ("hidden", "intermediate", "layers", "heads"):
        parser.add_argument(f"--{name}", type=int, help="replaces the preset's own")
    parser.add_argument("--attention-bias", type=int, choices=(0, 1), help="replaces the preset's own")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the Trainer's precision (auto: bf16 autocast on CUDA)")
    parser.add_argument("--sdpa-backend", choices=sorted(SDPA_BACKENDS),
                        help="the one attention kernel torch may use (default: torch's choice, cuDNN on an H100)")
    parser.add_argument("--try", dest="tries", action="append", metavar="FIELD=VALUE,...",
                        help="tuning overrides to run every mode under (repeatable; \"\" is the defaults)")
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args(argv)
    tries = args.tries or [""]
    settings = [parse_overrides([setting]) for setting in tries]  # a malformed one fails before any run
    # NOTE: torch.compile(mode="reduce-overhead") fails here: the fast path builds its per-expert constants lazily
    # inside the compiled region, and CUDA-graph trees overwrite them on the next replay (2026-12-06, H100).
    rows = []
    for setting, overrides in zip(tries, settings, strict=True):
        for mode in args.modes.split(","):
            print(f"[{setting or 'defaults'}] ", end="", flush=True)
            try:
                with tuning_overrides(**overrides), attention_backend(args.sdpa_backend):
                    row = run(args, mode)
            except Exception as error:  # one mode failing must not hide the others' numbers
                print(f"{mode}: failed: {type(error).__name__}: {error}", flush=True)
                row = {"mode": mode, "error": f"{type(error).__name__}: {error}"}
            rows.append({"setting": setting or "defaults", **row})
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                         "batch_size": args.batch_size, "seq_len": args.seq_len,
                                         "sdpa_backend": args.sdpa_backend or "default",
                                         "model": sized_preset(args).to_dict(), "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
