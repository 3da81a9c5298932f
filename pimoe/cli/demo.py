"""`python -m pimoe demo`: the original description's scenarios (basic, enhanced, adaptive) with measured results."""

from __future__ import annotations

import argparse
from pathlib import Path

from pimoe.original.demo import DemoConfig, format_summary, run_pimoe_demo


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--num-experts", type=int, default=defaults.num_experts)
    parser.add_argument("--sequence-length", type=int, default=defaults.sequence_length)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--num-iterations", type=int, default=defaults.num_iterations,
                        help="timed calls per scenario (the enhanced scenario makes this many before and after "
                             "optimising)")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N")
    parser.add_argument("--skewed", action="store_true",
                        help="inputs share a direction the router favours one expert for, so balancing has work to do")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save", type=Path, nargs="?", const=True, default=None, metavar="PATH",
                        help="write the results as JSON (to PATH, or runs/demo-<time>.json)")
    parser.add_argument("--series", action="store_true", help="keep per-iteration series in the saved results")


def main(args: argparse.Namespace) -> int:
    config = DemoConfig(
        hidden_size=args.hidden_size, num_experts=args.num_experts, sequence_length=args.sequence_length,
        batch_size=args.batch_size, num_iterations=args.num_iterations, device=args.device,
        skewed_inputs=args.skewed, seed=args.seed, enable_visualization=args.series,
        save_results=args.save is not None, results_path=args.save if isinstance(args.save, Path) else None,
    )
    print(format_summary(run_pimoe_demo(config)))
    return 0
