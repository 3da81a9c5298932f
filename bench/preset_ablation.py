"""Train one preset under several model variants — same seed, corpus and batches — and compare what each learns.

A change made to a preset for speed (the GPU preset dropped its attention biases) must not cost validation loss or
routing accuracy; this measures both, beside the unigram baseline, and the run's tokens/s, in one process.

    python bench/preset_ablation.py [--preset gpu] [--device cuda] [--steps 400] [--batch-size 64] [--seq-len 512]
        [--num-train 100000] [--num-val 2000] [--cuda-graph] --variant "" --variant attention_bias=1 [--json PATH]

Each `--variant` is comma-separated `FIELD=VALUE` over LMConfig's top-level switches and numbers, and the MoE layer's
`hidden_size` and `intermediate_size` (the model's width and its experts' base width) ("" is the preset itself);
every variant trains from the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.training_runs import add_run_arguments, run_device, run_heading, write_rows  # noqa: E402
from pimoe.lm.data import CorpusConfig  # noqa: E402
from pimoe.lm.model import LMConfig, PiMoELM  # noqa: E402
from pimoe.lm.recipe import model_config_for, run_throughput  # noqa: E402
from pimoe.lm.train import TrainConfig, Trainer  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402

_SCALAR_FIELDS = {f.name: f.type for f in dataclasses.fields(LMConfig) if f.type in ("bool", "int", "float")}
# Widths live in the MoE layer's config; a size sweep (is a wider preset as good per step?) needs them too.
_WIDTH_FIELDS = {"hidden_size": "int", "intermediate_size": "int"}


def parse_variant(text: str) -> dict:
    """`"attention_bias=0,dropout=0.1"` -> {"attention_bias": False, "dropout": 0.1}; unknown fields or values that
    are not of the field's type raise a ValueError naming them."""
    fields: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        known = _SCALAR_FIELDS | _WIDTH_FIELDS
        if not sep or name not in known:
            raise ValueError(f"expected FIELD=VALUE with one of {sorted(known)}, got {part!r}")
        kind = known[name]
        try:
            fields[name] = ({"0": False, "1": True}[value] if kind == "bool" else int(value) if kind == "int"
                            else float(value))
        except (KeyError, ValueError):
            raise ValueError(f"{name}={value!r}: expected {'0 or 1' if kind == 'bool' else kind}") from None
    return fields


def apply_variant(config: LMConfig, variant: dict) -> LMConfig:
    """`config` with `variant`'s fields replaced, the width fields in its MoE layer's config (validated there)."""
    top = {k: v for k, v in variant.items() if k not in _WIDTH_FIELDS}
    widths = {k: v for k, v in variant.items() if k in _WIDTH_FIELDS}
    return dataclasses.replace(config.resized(**widths), **top)


def train_variant(args, variant: dict) -> dict:
    model_config = apply_variant(model_config_for(args.preset, args.seq_len), variant)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, device=args.device,
                         warmup=args.warmup, seed=args.seed, cuda_graph=args.cuda_graph,
                         corpus=CorpusConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val))
    torch.manual_seed(args.seed)
    model = PiMoELM(model_config)
    trainer = Trainer(model, config)
    started = time.perf_counter()
    records = list(trainer.run())
    wall_s = time.perf_counter() - started
    result = trainer.evaluate()
    stats = run_throughput(records, model, config)
    return {"variant": variant, "val_lm_loss": result.lm_loss, "unigram_loss": result.unigram_loss,
            "routing_accuracy": result.routing_accuracy, "final_train_loss": records[-1].loss if records else None,
            "train_wall_s": wall_s, "tokens_per_s": stats["tokens_per_s"], "mfu": stats["mfu"],
            "parameters": stats["parameters"], "validation_tokens": result.tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, steps=400, batch_size=64, seq_len=512, num_train=100_000)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--num-val", type=int, default=2_000)
    parser.add_argument("--variant", action="append", default=None,
                        help='LMConfig overrides, FIELD=VALUE[,...] (repeatable; "" is the preset itself)')
    parser.add_argument("--json", type=output_file("--json"), help="write every variant's row here")
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in (args.variant or [""])]
        for variant in variants:  # a bad combination (heads not dividing the width) before any training
            apply_variant(model_config_for(args.preset, args.seq_len), variant)
    except ValueError as error:
        parser.error(str(error))
    _, card = run_device(parser, args)
    print(run_heading(args, card), flush=True)
    rows = []
    for variant in variants:
        row = train_variant(args, variant)
        rows.append(row)
        print(f"{variant or 'preset'}: val LM loss {row['val_lm_loss']:.4f} (unigram {row['unigram_loss']:.4f}), "
              f"routing accuracy {row['routing_accuracy']:.4f}, {row['tokens_per_s']:,.0f} tokens/s, "
              f"{row['train_wall_s']:.1f} s", flush=True)
    if args.json:
        write_rows(args.json, args, card, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
