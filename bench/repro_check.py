"""Is training reproducible from a seed? Each setting trains the same model twice from one seed and compares the two
runs' losses and parameters bit for bit, to find which kernels make GPU training order-dependent.

Two 400-step graphed runs of the GPU preset from seed 0 ended 0.13 nats apart (2026-12-07, H100): a user comparing two
settings cannot tell a small effect from that noise. Candidates: the attention backward (cuDNN's and flash's
accumulate dQ across blocks in no fixed order), torch's float scatter and index kernels, split-K GEMMs. Each setting
switches one off.

    python bench/repro_check.py [--preset gpu] [--device cuda] [--steps 30] [--batch-size 16] [--seq-len 256]
        [--cuda-graph] [--settings default,sdpa=math,sdpa=efficient,deterministic] [--json PATH]

Settings: "default"; "sdpa=NAME" keeps scaled_dot_product_attention on one backend (cudnn, flash, efficient, math);
"deterministic" runs under `torch.use_deterministic_algorithms(True, warn_only=True)` (torch's kernels that have a
deterministic variant take it; the rest warn). On a CPU every setting should reproduce exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

# cuBLAS picks reproducible reduction orders only with a fixed workspace, set before it is first used
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_preset_steps import SDPA_BACKENDS, attention_backend  # noqa: E402
from bench.training_runs import add_run_arguments, run_device, run_heading, write_rows  # noqa: E402
from pimoe.lm.data import CorpusConfig  # noqa: E402
from pimoe.lm.model import PiMoELM  # noqa: E402
from pimoe.lm.recipe import model_config_for  # noqa: E402
from pimoe.lm.train import TrainConfig, Trainer  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402


def setting_context(setting: str):
    """The context a setting trains in (module docstring); a ValueError names an unknown one."""
    if setting == "default":
        return contextlib.nullcontext()
    if setting == "deterministic":
        return _deterministic()
    name, _, backend = setting.partition("=")
    if name == "sdpa" and backend in SDPA_BACKENDS:
        return attention_backend(backend)
    raise ValueError(f"unknown setting {setting!r}: expected default, deterministic or sdpa=one of "
                     f"{sorted(SDPA_BACKENDS)}")


@contextlib.contextmanager
def _deterministic():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train_once(args, device: torch.device) -> tuple[list[float], torch.Tensor]:
    """One run from the seed: every step's loss and all parameters flattened (float32, on the CPU)."""
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, device=str(device),
                         warmup=min(5, args.steps), seed=args.seed, cuda_graph=args.cuda_graph,
                         corpus=CorpusConfig(seed=args.seed, num_train=args.num_train, num_val=8))
    torch.manual_seed(args.seed)
    model = PiMoELM(model_config_for(args.preset, args.seq_len))
    trainer = Trainer(model, config)
    losses = [trainer.step().loss for _ in range(args.steps)]
    params = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
    return losses, params


def compare(first: tuple[list[float], torch.Tensor], second: tuple[list[float], torch.Tensor]) -> dict:
    """How far two runs of one setting drifted apart."""
    (losses_a, params_a), (losses_b, params_b) = first, second
    differing = [i for i, (a, b) in enumerate(zip(losses_a, losses_b, strict=True)) if a != b]
    return {"bitwise_equal": not differing and torch.equal(params_a, params_b),
            "first_differing_step": differing[0] if differing else None,
            "steps_differing": len(differing),
            "last_loss": [losses_a[-1], losses_b[-1]],
            "max_loss_difference": max((abs(a - b) for a, b in zip(losses_a, losses_b, strict=True)), default=0.0),
            "max_parameter_difference": float((params_a - params_b).abs().max()),
            "parameters_differing": int((params_a != params_b).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, steps=30, batch_size=16, seq_len=256, num_train=2_000)
    parser.add_argument("--settings", default="default,sdpa=math,sdpa=efficient,deterministic")
    parser.add_argument("--json", type=output_file("--json"), help="write every setting's row here")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    try:
        for setting in settings:
            setting_context(setting)
    except ValueError as error:
        parser.error(str(error))
    device, card = run_device(parser, args)
    print(f"{run_heading(args, card)}, {'graphed' if args.cuda_graph else 'eager'}", flush=True)
    rows = []
    for setting in settings:
        try:
            with setting_context(setting):
                row = {"setting": setting, **compare(train_once(args, device), train_once(args, device))}
        except Exception as error:  # one setting failing (a backend this card lacks) must not hide the others
            row = {"setting": setting, "error": f"{type(error).__name__}: {error}"}
            print(f"{setting}: failed: {row['error']}", flush=True)
        else:
            print(f"{setting}: {'bitwise equal' if row['bitwise_equal'] else 'differ'}; first differing step "
                  f"{row['first_differing_step']}, max loss difference {row['max_loss_difference']:.3g}, max "
                  f"parameter difference {row['max_parameter_difference']:.3g} "
                  f"({row['parameters_differing']:,} parameters differ)", flush=True)
        rows.append(row)
    if args.json:
        write_rows(args.json, args, card, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
