"""Step times of the GPU preset's training, eager against torch.compile'd blocks, in one process on one card.

`python -m pimoe train` reports tokens/s averaged over its run; this prints every step's time (CUDA-synchronised, as
the Trainer measures it) so warm-up, recompilation and steady state can be told apart.

    python bench/train_preset_steps.py [--batch-size 32] [--seq-len 512] [--steps 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.lm.data import CorpusConfig  # noqa: E402
from pimoe.lm.model import LMConfig, PiMoELM  # noqa: E402
from pimoe.lm.recipe import run_throughput  # noqa: E402
from pimoe.lm.train import TrainConfig, Trainer  # noqa: E402


def run(args, compile_blocks: bool) -> dict:
    torch.manual_seed(0)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, device="cuda",
                         warmup=5, compile=compile_blocks, corpus=CorpusConfig(seed=0, num_train=3000, num_val=40))
    model = PiMoELM(LMConfig.gpu())
    trainer = Trainer(model, config)
    records = [trainer.step() for _ in range(args.steps)]
    stats = run_throughput(records, model, config)
    steady = [r.step_ms for r in records[len(records) // 2:]]
    row = {"compile": compile_blocks, "step_ms": [round(r.step_ms, 2) for r in records],
           "steady_median_ms": statistics.median(steady), "tokens_per_s": stats["tokens_per_s"], "mfu": stats["mfu"],
           "steady_tokens_per_s": args.batch_size * args.seq_len / statistics.median(steady) * 1e3}
    print(f"compile={row['compile']}: steady median {row['steady_median_ms']:.1f} ms/step, "
          f"{row['steady_tokens_per_s']:,.0f} tokens/s steady, {stats['tokens_per_s']:,.0f} over the run after warm-up, "
          f"MFU {100 * (stats['mfu'] or 0):.1f}%\n  steps (ms): {row['step_ms']}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # NOTE: torch.compile(mode="reduce-overhead") fails here: the fast path builds its per-expert constants lazily
    # inside the compiled region, and CUDA-graph trees overwrite them on the next replay (2026-12-06, H100).
    rows = [run(args, False), run(args, True)]
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "batch_size": args.batch_size, "seq_len": args.seq_len, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
