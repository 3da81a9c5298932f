"""`python -m pimoe train`: train PiMoE-LM on the synthetic corpus, print validation numbers, save a checkpoint.

The defaults are the recipe of the shipped demo model (`TrainConfig.demo()`, `LMConfig.demo()`); the shipped file is
    python -m pimoe train --seed 0 --out assets/pimoe-demo.safetensors
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pimoe.lm.checkpoint import checkpoint_destination, json_safe, save_checkpoint
from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import PiMoELM
from pimoe.lm.recipe import (
    PRESETS,
    format_eval,
    format_throughput,
    model_config_for,
    run_metadata,
    run_throughput,
    run_training_loop,
)
from pimoe.lm.train import PRECISIONS, ROUTING_MODES, TrainConfig, Trainer


def configure_parser(parser: argparse.ArgumentParser) -> None:
    recipe = TrainConfig.demo()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="model size (default demo)")
    parser.add_argument("--steps", type=int, default=recipe.steps)
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size)
    parser.add_argument("--seq-len", type=int, default=recipe.seq_len)
    parser.add_argument("--lr", type=float, default=recipe.lr)
    parser.add_argument("--warmup", type=int, default=recipe.warmup)
    parser.add_argument("--routing-mode", choices=ROUTING_MODES, default=recipe.routing_mode)
    parser.add_argument("--supervised-weight", type=float, default=recipe.supervised_weight)
    parser.add_argument("--load-balance-weight", type=float, default=recipe.load_balance_weight)
    parser.add_argument("--temperature", type=float, default=recipe.temperature, help="router temperature")
    parser.add_argument("--seed", type=int, default=recipe.seed, help="seeds the model, the corpus and the batches")
    parser.add_argument("--num-train", type=int, default=recipe.corpus.num_train, help="training documents")
    parser.add_argument("--num-val", type=int, default=recipe.corpus.num_val, help="validation documents")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0 = only at the end)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 autocast on CUDA, float32 on the CPU")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every transformer block (GPU training: fewer, fused launches per step)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture the whole training step in one CUDA graph after three warm-up steps and replay "
                             "it (GPU; no adaptive controller, no dropout; with --compile it records the compiled kernels)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; 0 keeps torch's default). On a busy 2-core machine two "
                             "intra-op threads that wait on each other made steps 5-10x slower than one thread")
    parser.add_argument("--out", default="checkpoints/pimoe-lm.safetensors",
                        help="checkpoint path (.safetensors; the config goes next to it as .json)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--heldout-count", type=int, default=10,
                        help="after training, documents per held-out kind for the generalisation numbers stored in "
                             "the metadata (routing accuracy in/out of template, hand-off precision/recall); 0 skips")
    parser.add_argument("--expert-parallel", action="store_true",
                        help="shard the experts over GPUs (needs torchrun and pimoe.parallel.expert_parallel)")


def command_line(args: argparse.Namespace) -> str:
    """The full command with every training option spelled out, as stored in the checkpoint metadata."""
    parts = ["python -m pimoe train", f"--preset {args.preset}", f"--seed {args.seed}", f"--steps {args.steps}",
             f"--batch-size {args.batch_size}", f"--seq-len {args.seq_len}", f"--lr {args.lr:g}",
             f"--warmup {args.warmup}", f"--routing-mode {args.routing_mode}",
             f"--supervised-weight {args.supervised_weight:g}", f"--load-balance-weight {args.load_balance_weight:g}",
             f"--temperature {args.temperature:g}", f"--num-train {args.num_train}", f"--num-val {args.num_val}",
             f"--device {args.device}", f"--precision {args.precision}", f"--threads {args.threads}",
             *(["--compile"] if args.compile else []), *(["--cuda-graph"] if args.cuda_graph else []),
             f"--out {args.out}"]
    return " ".join(parts)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, warmup=args.warmup,
        routing_mode=args.routing_mode, supervised_weight=args.supervised_weight,
        load_balance_weight=args.load_balance_weight, temperature=args.temperature, seed=args.seed,
        device=args.device, eval_every=args.eval_every, precision=args.precision, compile=args.compile,
        cuda_graph=args.cuda_graph,
        corpus=CorpusConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val),
    )


def _expert_parallel(args: argparse.Namespace) -> int:
    # NOTE: imported here so a plain `train` never pays for torch.distributed's set-up.
    from pimoe.parallel.train import train_expert_parallel

    config = train_config_from_args(args)
    return int(train_expert_parallel(config, model_config_for(args.preset, config.seq_len), args.out,
                                     command=command_line(args), show_progress=not args.no_progress) or 0)


def _generalisation(model: PiMoELM, count: int) -> dict:
    """Routing accuracy in- and out-of-template beside its baselines, and, for a model with a computation expert, the
    hand-off precision/recall on held-out text; printed and returned for the checkpoint metadata."""
    from pimoe.handoff.evaluation import format_generalisation
    from pimoe.handoff.heldout_eval import heldout_handoff_report
    from pimoe.lm.routing_eval import routing_report

    started = time.perf_counter()
    out = {"routing": routing_report(model)}
    if "computation" in model.expert_types:
        out["handoff"] = {k: v for k, v in heldout_handoff_report(model, count=count).items() if k != "misses"}
    print(format_generalisation(out))
    print(f"held-out evaluation took {time.perf_counter() - started:.1f} s")
    return json_safe(out)


def main(args: argparse.Namespace) -> int:
    checkpoint_destination(args.out)  # before training: a bad --out must not cost the run
    if args.heldout_count < 0:
        raise ValueError(f"--heldout-count must be >= 0, got {args.heldout_count}")
    if args.expert_parallel:
        if args.cuda_graph:  # its all-to-all sizes come from the routing, read back every step
            raise ValueError("--cuda-graph does not combine with --expert-parallel")
        return _expert_parallel(args)
    config = train_config_from_args(args)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = model_config_for(args.preset, config.seq_len)
    load_before = os.getloadavg()
    torch.manual_seed(config.seed)
    model = PiMoELM(model_config)
    outcome = run_training_loop(Trainer(model, config), show_progress=not args.no_progress,
                                description=f"train ({config.routing_mode})")
    load_after = os.getloadavg()
    print(format_eval(outcome.result))
    stats = run_throughput(outcome.records, model, config) if outcome.records else None
    if stats is not None:
        print(format_throughput(stats))
    print(f"training wall time       {outcome.train_wall_s:.1f} s for {config.steps} steps "
          f"(load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {torch.get_num_threads()} threads)")
    metadata = run_metadata(config, outcome, command_line(args),
                            load_average_before=[round(v, 2) for v in load_before],
                            load_average_after=[round(v, 2) for v in load_after],
                            precision="bf16 autocast" if config.autocast_bf16 else "float32", throughput=stats)
    if args.heldout_count:
        metadata["generalisation"] = _generalisation(model, args.heldout_count)
    path = save_checkpoint(model, args.out, metadata)
    size_mb = path.stat().st_size / 2**20
    print(f"checkpoint written to {path} ({size_mb:.2f} MB) and {path.with_suffix('.json')}")
    return 0
