"""Steps per second of the dashboard's live-training run on a device: the same fresh model, corpus, batch and knobs
the Live training page builds (studio.fresh_model.fresh_lm_config, the page's RunSpec defaults), stepped for a fixed time
outside the UI, so a GPU machine and a CPU machine can be compared on the work the page does.

    python bench/live_training_rate.py --device cuda --seconds 20 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time

import torch

from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import PiMoELM
from pimoe.lm.train import TrainConfig, Trainer
from pimoe.output_paths import output_file
from studio.fresh_model import fresh_lm_config
from studio.sidebar import DEFAULT_EXPERT_TYPES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def live_trainer(device: str, batch_size: int = 8, seq_len: int = 64) -> Trainer:
    """The Live training page's fresh model and trainer (bench/host_profile.py's `live` case profiles its step)."""
    torch.manual_seed(0)
    model = PiMoELM(fresh_lm_config(tuple(DEFAULT_EXPERT_TYPES), len(DEFAULT_EXPERT_TYPES), None))
    config = TrainConfig(steps=100_000, batch_size=batch_size, seq_len=seq_len, device=device, seed=0,
                         corpus=CorpusConfig(seed=0, num_train=2000, num_val=100))
    return Trainer(model, config)


def measure(device: str, seconds: float, batch_size: int, seq_len: int, warmup: int) -> dict:
    trainer = live_trainer(device, batch_size, seq_len)
    model, config = trainer.model, trainer.config
    target = torch.device(device)
    for _ in range(warmup):
        trainer.step()
    _sync(target)
    started = time.perf_counter()
    steps = 0
    while time.perf_counter() - started < seconds:
        trainer.step()
        steps += 1
    _sync(target)
    elapsed = time.perf_counter() - started
    card = torch.cuda.get_device_name(target) if target.type == "cuda" else f"{platform.machine()} CPU"
    return {"device": device, "card": card, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "steps": steps, "seconds": round(elapsed, 2), "steps_per_s": steps / elapsed,
            "ms_per_step": 1e3 * elapsed / steps, "batch_size": batch_size, "seq_len": seq_len,
            "precision": "bf16 autocast" if config.autocast_bf16 else "float32",
            "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=output_file("results file"), default=None)
    args = parser.parse_args(argv)
    result = measure(args.device, args.seconds, args.batch_size, args.seq_len, args.warmup)
    print(f"live-training step on {result['card']} ({result['precision']}, {result['torch_threads']} threads): "
          f"{result['steps_per_s']:.1f} steps/s, {result['ms_per_step']:.1f} ms/step over {result['steps']} steps")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
