"""`python -m pimoe train`: train PiMoE-LM on the synthetic corpus, print validation numbers, save a checkpoint.

The defaults are the recipe of the shipped demo model (`TrainConfig.demo()`, `LMConfig.demo()`); the shipped file is
    python -m pimoe train --seed 0 --out assets/pimoe-demo.safetensors
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from dataclasses import replace

import torch

from pimoe.lm.checkpoint import json_safe, save_checkpoint
from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.train import ROUTING_MODES, EvalResult, TrainConfig, Trainer

PRESETS = {"demo": LMConfig.demo, "tiny": LMConfig.tiny}


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
             f"--device {args.device}", f"--threads {args.threads}", f"--out {args.out}"]
    return " ".join(parts)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, warmup=args.warmup,
        routing_mode=args.routing_mode, supervised_weight=args.supervised_weight,
        load_balance_weight=args.load_balance_weight, temperature=args.temperature, seed=args.seed,
        device=args.device, eval_every=args.eval_every,
        corpus=CorpusConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val),
    )


def _expert_parallel(args: argparse.Namespace) -> int:
    # NOTE: imported here so a plain `train` never pays for torch.distributed's set-up.
    from pimoe.parallel.expert_parallel import train_expert_parallel

    return int(train_expert_parallel(args) or 0)


def format_eval(result: EvalResult) -> str:
    per_layer = ", ".join(f"{v:.4f}" for v in result.routing_accuracy_per_layer)
    type_purity = ", ".join(f"{v:.4f}" for v in result.type_purity_per_layer)
    expert_purity = ", ".join(f"{v:.4f}" for v in result.expert_purity_per_layer)
    return "\n".join([
        f"validation tokens        {result.tokens}",
        f"val LM loss              {result.lm_loss:.4f} nats/token",
        f"unigram baseline         {result.unigram_loss:.4f} nats/token",
        f"routing accuracy         {result.routing_accuracy:.4f} (per layer: {per_layer})",
        f"type purity              {result.type_purity:.4f} (per layer: {type_purity})",
        f"expert purity            {result.expert_purity:.4f} (per layer: {expert_purity})",
    ])


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
    if args.expert_parallel:
        return _expert_parallel(args)
    config = train_config_from_args(args)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = PRESETS[args.preset]()
    if config.seq_len > model_config.max_seq_len:
        model_config = replace(model_config, max_seq_len=config.seq_len)
    load_before = os.getloadavg()
    torch.manual_seed(config.seed)
    model = PiMoELM(model_config)
    trainer = Trainer(model, config)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc=f"train ({config.routing_mode})", unit="step")
    started = time.perf_counter()
    last = None
    for record in trainer.run():
        last = record
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record.loss:.3f}", lm=f"{record.lm_loss:.3f}",
                            acc=f"{record.routing_accuracy:.3f}", tok_s=f"{record.tokens_per_s:,.0f}")
        if record.eval is not None:
            message = (f"step {record.step}: val LM loss {record.eval.lm_loss:.4f}, "
                       f"routing accuracy {record.eval.routing_accuracy:.4f}")
            (bar.write if bar is not None else print)(message)
    train_wall_s = time.perf_counter() - started
    if bar is not None:
        bar.close()
    result = trainer.evaluate()
    load_after = os.getloadavg()
    print(format_eval(result))
    print(f"training wall time       {train_wall_s:.1f} s for {config.steps} steps "
          f"(load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {torch.get_num_threads()} threads)")
    metadata = {
        "command": command_line(args),
        "seed": config.seed,
        "routing_mode": config.routing_mode,
        "train_config": config.to_dict(),
        "eval": json_safe(result.to_dict()),
        "final_train_loss": last.loss if last is not None else None,
        "train_wall_s": round(train_wall_s, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.heldout_count:
        metadata["generalisation"] = _generalisation(model, args.heldout_count)
    path = save_checkpoint(model, args.out, metadata)
    size_mb = path.stat().st_size / 2**20
    print(f"checkpoint written to {path} ({size_mb:.2f} MB) and {path.with_suffix('.json')}")
    return 0

