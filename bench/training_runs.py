"""The command line shared by the benches that train a preset from a seed (preset_ablation, repro_check)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pimoe.devices import available_device
from pimoe.lm.recipe import PRESETS


def add_run_arguments(parser: argparse.ArgumentParser, *, steps: int, batch_size: int, seq_len: int,
                      num_train: int) -> None:
    """--preset, --device, --steps, --batch-size, --seq-len, --num-train, --seed and --cuda-graph."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seq-len", type=int, default=seq_len)
    parser.add_argument("--num-train", type=int, default=num_train)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cuda-graph", action="store_true", help="replay each step as one CUDA graph")


def run_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[torch.device, str]:
    """The device the run asks for and its card's name, or a parser error (no such device, graphs off CUDA) before
    any model is built."""
    try:
        device = available_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.cuda_graph and device.type != "cuda":
        parser.error(f"--cuda-graph needs a CUDA device, not {device}")
    return device, torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_heading(args: argparse.Namespace, card: str) -> str:
    return (f"{args.preset} preset on {card}, torch {torch.__version__}: {args.steps} steps of {args.batch_size} x "
            f"{args.seq_len}, seed {args.seed}")


def write_rows(path: Path, args: argparse.Namespace, card: str, rows: list[dict]) -> None:
    """The run's rows as JSON with the card, torch, command and date they were measured with."""
    path.write_text(json.dumps({"card": card, "torch": torch.__version__, "command": sys.argv,
                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                "preset": args.preset, "rows": rows}, indent=1))
