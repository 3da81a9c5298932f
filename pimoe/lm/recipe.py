"""The training recipe shared by `python -m pimoe train` and expert-parallel training: presets, the loop, the record.

One loop serves both, so a change to how training is driven, reported or saved cannot drift between them.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from pimoe.lm.checkpoint import json_safe
from pimoe.lm.model import LMConfig
from pimoe.lm.train import EvalResult, StepRecord, TrainConfig, Trainer
from pimoe.measure.flops import lm_flops_per_token, peak_flops

__all__ = ["PRESETS", "TrainingOutcome", "format_eval", "format_throughput", "model_config_for", "run_metadata",
           "run_throughput", "run_training_loop"]

PRESETS: dict[str, Callable[[], LMConfig]] = {"demo": LMConfig.demo, "tiny": LMConfig.tiny, "gpu": LMConfig.gpu}


def model_config_for(preset: str, seq_len: int) -> LMConfig:
    """The preset's model, its context stretched to the training sequence length when that is longer."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]()
    return replace(config, max_seq_len=seq_len) if seq_len > config.max_seq_len else config


@dataclass(frozen=True)
class TrainingOutcome:
    """What a finished run reports: the last training loss (averaged over ranks where there are several), the wall
    time of the training steps alone, the final validation result, and every step's record."""

    final_train_loss: float | None
    train_wall_s: float
    result: EvalResult
    records: list[StepRecord]


def run_training_loop(trainer: Trainer, *, show_progress: bool, description: str,
                      mean_loss: Callable[[float], float] = float,
                      log: Callable[[str], None] | None = print) -> TrainingOutcome:
    """Run every step of `trainer`, show a progress bar and the periodic evaluations, then evaluate once more.

    mean_loss: how a step's loss is reported (expert-parallel training averages it over ranks; every rank must call
    it, so it runs whether or not this process shows progress). log: where evaluation lines go without a progress
    bar, or None to stay quiet (ranks other than 0).
    """
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=trainer.config.steps, desc=description, unit="step")
    started = time.perf_counter()
    last_loss = None
    records: list[StepRecord] = []
    for record in trainer.run():
        records.append(record)
        last_loss = mean_loss(record.loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", lm=f"{record.lm_loss:.3f}",
                            acc=f"{record.routing_accuracy:.3f}", tok_s=f"{record.tokens_per_s:,.0f}")
        if record.eval is not None and log is not None:
            message = (f"step {record.step}: val LM loss {record.eval.lm_loss:.4f}, "
                       f"routing accuracy {record.eval.routing_accuracy:.4f}")
            (bar.write if bar is not None else log)(message)
    train_wall_s = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return TrainingOutcome(last_loss, train_wall_s, trainer.evaluate(), records)


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


def run_metadata(config: TrainConfig, outcome: TrainingOutcome, command: str, **extra: Any) -> dict[str, Any]:
    """The JSON record saved beside a checkpoint: how it was made and what it measured."""
    return {
        "command": command,
        **extra,
        "seed": config.seed,
        "routing_mode": config.routing_mode,
        "train_config": config.to_dict(),
        "eval": json_safe(outcome.result.to_dict()),
        "final_train_loss": outcome.final_train_loss,
        "train_wall_s": round(outcome.train_wall_s, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_throughput(records: list[StepRecord], model: torch.nn.Module, config: TrainConfig) -> dict[str, Any]:
    """Tokens per second over the steps after a warm-up (the first steps compile kernels and fill caches), and the
    model-FLOPs utilisation that gives on the card (pimoe/measure/flops.py has the formula; None off known GPUs),
    against the peak of the precision the GEMMs ran in: bf16 under autocast, else float32 (TF32's where torch allows
    it for matmuls)."""
    skip = min(5, len(records) // 2)
    timed = records[skip:]
    seconds = sum(r.step_ms for r in timed) / 1e3
    tokens = sum(r.tokens_per_s * r.step_ms / 1e3 for r in timed)
    tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    device = torch.device(config.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    flops_per_token = lm_flops_per_token(model, config.seq_len)
    dtype = torch.bfloat16 if config.autocast_bf16 else torch.float32
    peak = peak_flops(card, dtype) if device.type == "cuda" else None
    utilisation = flops_per_token * tokens_per_s / peak if peak else None
    return {"tokens_per_s": tokens_per_s, "timed_steps": len(timed), "flops_per_token": flops_per_token,
            "card": card, "peak_dtype": str(dtype).removeprefix("torch."),
            "peak_tflops": peak / 1e12 if peak else None, "mfu": utilisation,
            "parameters": sum(p.numel() for p in model.parameters())}


def format_throughput(stats: dict[str, Any]) -> str:
    mfu = (f"n/a (no known {stats['peak_dtype']} peak for this device)" if stats["mfu"] is None
           else f"{100 * stats['mfu']:.1f}% of the {stats['peak_dtype']} peak")
    return (f"throughput               {stats['tokens_per_s']:,.0f} tokens/s over {stats['timed_steps']} steps "
            f"({stats['parameters'] / 1e6:.1f} M parameters, {stats['flops_per_token'] / 1e6:.1f} MFLOP per token)\n"
            f"model-FLOPs utilisation  {mfu} on {stats['card']}")
