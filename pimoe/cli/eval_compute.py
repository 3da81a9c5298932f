"""`python -m pimoe eval-compute`: exact answers, extraction, hand-off precision/recall and latency of the computation
hand-off against plain generation and a multi-round tool-call baseline, on a seeded held-out problem set."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch

from pimoe.handoff.evaluation import ComputeEvalConfig, format_report, run_compute_eval, save_report, sweep_trigger
from pimoe.handoff.heldout_eval import heldout_handoff_report
from pimoe.handoff.problems import DEV_SEED, ProblemSetConfig, build_control_texts, build_problems
from pimoe.output_paths import writable_destination

DEFAULT_CHECKPOINT = Path("assets/pimoe-demo.safetensors")
SWEEP_LAYERS = ("0", "1", "mean")
SWEEP_THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)


def _layer(value: str) -> int | str:
    if value == "mean":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer must be an integer or 'mean', got {value!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = ComputeEvalConfig()
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--num-problems", type=int, default=defaults.num_problems)
    parser.add_argument("--num-controls", type=int, default=defaults.num_controls,
                        help="texts with '=' that ends no computation (they only count against precision)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="problem-set seed (the eval set by default)")
    parser.add_argument("--min-digits", type=int, default=defaults.min_digits)
    parser.add_argument("--max-digits", type=int, default=defaults.max_digits)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--layer", type=_layer, default=defaults.layer, help="trigger layer index or 'mean'")
    parser.add_argument("--no-seal", action="store_true",
                        help="let the model extend a spliced result with more digits (ablation)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a small shared CPU two threads wait on each other)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/compute-eval-<date>.json)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--heldout-count", type=int, default=30,
                        help="documents per held-out kind for hand-off precision/recall on text nobody tuned for "
                             "(pimoe.lm.heldout); 0 skips the held-out part")
    parser.add_argument("--sweep", action="store_true",
                        help=f"instead: trigger precision/recall per layer and threshold on the dev set (seed "
                             f"{DEV_SEED}), the set the default trigger was chosen on")


def _sweep(model, args: argparse.Namespace) -> int:
    config = ProblemSetConfig(seed=DEV_SEED, num_problems=args.num_problems, num_controls=args.num_controls,
                              min_digits=args.min_digits, max_digits=args.max_digits)
    texts = [p.reference for p in build_problems(config)] + build_control_texts(config)
    layers = [_layer(layer) for layer in SWEEP_LAYERS]
    print(f"dev set: seed {DEV_SEED}, {args.num_problems} problems + {args.num_controls} controls")
    print(f"{'layer':>5} {'threshold':>9} {'trigger P':>9} {'trigger R':>9} {'router P':>9} {'router R':>9}")
    for row in sweep_trigger(model, texts, layers, SWEEP_THRESHOLDS):
        cells = [row[k] for k in ("trigger_precision", "trigger_recall", "router_precision", "router_recall")]
        print(f"{row['layer']!s:>5} {row['threshold']:>9.2f} "
              + " ".join("      n/a" if v is None else f"{v:>9.3f}" for v in cells))
    return 0


def main(args: argparse.Namespace) -> int:
    from pimoe.lm.checkpoint import load_checkpoint
    from pimoe.lm.routing_eval import routing_report

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.heldout_count < 0:  # checked before minutes of evaluation, not after
        raise ValueError(f"--heldout-count must be >= 0, got {args.heldout_count}")
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = None if args.no_save or args.sweep else writable_destination(
        args.out or Path("bench/results") / f"compute-eval-{date}.json", "report")
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint, device=args.device)
    if args.sweep:
        return _sweep(model, args)
    config = ComputeEvalConfig(seed=args.seed, num_problems=args.num_problems, num_controls=args.num_controls,
                               min_digits=args.min_digits, max_digits=args.max_digits,
                               max_new_tokens=args.max_new_tokens, threshold=args.threshold, layer=args.layer,
                               seal_results=not args.no_seal)

    def progress(done: int, total: int, message: str) -> None:
        if done % 20 == 0 or done == total:
            print(f"  {message}", flush=True)

    report = run_compute_eval(model, config, progress=progress)
    if args.heldout_count:
        report.generalisation = {
            "routing": routing_report(model),
            "handoff": heldout_handoff_report(model, count=args.heldout_count, threshold=args.threshold,
                                              layer=args.layer),
        }
    print(format_report(report))
    if out is not None:
        print(f"saved {save_report(report, out)}")
    return 0
