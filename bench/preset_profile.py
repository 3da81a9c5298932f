"""Where the GPU time of one training step of the GPU preset goes: torch.profiler over a few steps, kernels by GPU time.

A whole-step CUDA graph made the preset's step only 5% faster (80.4 -> 76.0 ms at 64 x 512 on an H100), so the step is
bound by the GPU, not the host; this names the kernels that take it.

    python bench/preset_profile.py [--batch-size 64] [--seq-len 512] [--steps 2] [--top 30] [--ops 25]
        [--try "FIELD=VALUE,..."] [--json PATH]

--ops N also lists the N aten ops with the most GPU time, by input shapes: which tensors PyTorch's generic elementwise,
copy and reduction kernels were working on (the kernel list alone names only the functor).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.cuda.tuning import parse_overrides, tuning_overrides  # noqa: E402
from pimoe.lm.data import CorpusConfig  # noqa: E402
from pimoe.lm.model import LMConfig, PiMoELM  # noqa: E402
from pimoe.lm.train import TrainConfig, Trainer  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--ops", type=int, default=0, help="list the N aten ops with the most GPU time, by shapes")
    parser.add_argument("--try", dest="setting", default="", metavar="FIELD=VALUE,...",
                        help="pimoe.cuda.tuning overrides to profile under (default: the defaults)")
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args(argv)
    with tuning_overrides(**parse_overrides([args.setting] if args.setting else [])):
        return profile_steps(args)


def profile_steps(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    config = TrainConfig(steps=100, batch_size=args.batch_size, seq_len=args.seq_len, device="cuda", warmup=5,
                         corpus=CorpusConfig(seed=0, num_train=3000, num_val=40))
    trainer = Trainer(PiMoELM(LMConfig.gpu()), config)
    for _ in range(3):
        trainer.step()
    torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.ops else [])
    with profile(activities=activities, record_shapes=bool(args.ops)) as prof:
        records = [trainer.step() for _ in range(args.steps)]
    torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = _device_us(event)
        if device_us > 0 and event.device_type != torch.autograd.DeviceType.CPU and not _annotation(event):
            rows.append({"name": event.key, "calls": event.count // args.steps,
                         "us_per_step": device_us / args.steps})
    rows.sort(key=lambda row: -row["us_per_step"])
    total = sum(row["us_per_step"] for row in rows)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} [{args.setting or 'defaults'}]: batch "
          f"{args.batch_size} x {args.seq_len}, "
          f"step {sum(r.step_ms for r in records) / len(records):.1f} ms wall, {total / 1e3:.1f} ms of kernels per "
          f"step, {sum(row['calls'] for row in rows)} kernel launches per step")
    for row in rows[: args.top]:
        print(f"{row['us_per_step']:10.0f} us {100 * row['us_per_step'] / total:5.1f}%  x{row['calls']:<5d} "
              f"{row['name'][:110]}")
    ops = _ops_by_shape(prof, args.steps, args.ops) if args.ops else []
    for op in ops:
        print(f"{op['us_per_step']:10.0f} us  x{op['calls']:<5d} {op['name']} {op['shapes'][:100]}")
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "batch_size": args.batch_size, "seq_len": args.seq_len,
                                         "setting": args.setting or "defaults", "kernel_us_per_step": total, "rows": rows, "ops": ops}, indent=1))
    return 0


def _device_us(event) -> float:
    return getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)


def _annotation(event) -> bool:
    """A range the profiler draws over GPU work (`Optimizer.step#AdamW.step`, `ProfilerStep#2`) when CPU activity is
    on: its time is its kernels' again, so counting it would add them twice. Kernel names hold '#' too (PyTorch's
    reductions and copies are templated on `{lambda(float, float)#1}`), but never without a space or parenthesis."""
    return bool(getattr(event, "is_user_annotation", False)) or _RANGE_NAME.fullmatch(event.key) is not None


_RANGE_NAME = re.compile(r"[\w.]+#[\w.]+")


def _ops_by_shape(prof, steps: int, top: int) -> list[dict]:
    """aten ops by the GPU time their own kernels took, one row per (op, input shapes)."""
    ops = [{"name": event.key, "shapes": str(event.input_shapes), "calls": event.count // steps,
            "us_per_step": _device_us(event) / steps}
           for event in prof.key_averages(group_by_input_shape=True)
           if event.key.startswith("aten::") and _device_us(event) > 0]
    return sorted(ops, key=lambda op: -op["us_per_step"])[:top]


if __name__ == "__main__":
    raise SystemExit(main())
