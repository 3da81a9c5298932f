"""Does the adaptive controller cost routing accuracy on the dashboard's demo run? Trains the live-training page's run
(fresh demo-size model, supervised routing) with the controller off, with the dashboard's bounded controller, and with
the controller's unbounded defaults, and prints the final routing accuracy (mean of the last 50 steps) of each.

    python bench/controller_accuracy.py --steps 600
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from pimoe.adaptive.controller import AdaptationConfig, AdaptiveController
from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import PiMoELM
from pimoe.lm.train import TrainConfig, Trainer
from studio.fresh_model import fresh_lm_config
from studio.sidebar import DEFAULT_EXPERT_TYPES
from studio.training import CONTROLLER_LIMITS


def train(steps: int, adaptation: AdaptationConfig | None) -> tuple[float, float]:
    torch.manual_seed(0)
    model = PiMoELM(fresh_lm_config(DEFAULT_EXPERT_TYPES, 8, None, use_selection_bias=adaptation is not None))
    config = TrainConfig(steps=2000, batch_size=8, seq_len=64, corpus=CorpusConfig(seed=0, num_train=2000, num_val=100))
    trainer = Trainer(model, config, controller=AdaptiveController(adaptation) if adaptation else None)
    records = [trainer.step() for _ in range(steps)]
    tail = [r.routing_accuracy for r in records[-50:] if not math.isnan(r.routing_accuracy)]
    return sum(tail) / len(tail), max(r.load_balance_weight for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    variants = {
        "controller off": None,
        "dashboard controller (bounded, accuracy guard)": AdaptationConfig(balance_within_types=True,
                                                                             **CONTROLLER_LIMITS),
        "unbounded defaults (max weight 1.0, no guard)": AdaptationConfig(balance_within_types=True,
                                                                           max_accuracy_drop=None),
    }
    print(f"{args.steps} steps, batch 8 x 64 tokens, CPU, {torch.get_num_threads()} torch threads")
    for name, adaptation in variants.items():
        started = time.perf_counter()
        accuracy, weight = train(args.steps, adaptation)
        print(f"{name:50s} accuracy {accuracy:.3f}  max load-balance weight {weight:.4g}  "
              f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
