"""Correctness of the Triton backend at benchmark scale under tuning variants, on this GPU.

    python bench/check_variants.py [--tokens 512,2048]

For each variant of `pimoe.cuda.grouped.TUNING` listed below: the typed and uniform bench layers (d 512, E 8,
intermediate 2048, top-2, bf16), ‖y - y_ref‖ / ‖y_ref‖ of the experts' contribution against the float32 sorted
dispatch (`pimoe.cuda.benchmarking.float32_error`, NaN-poisoned allocator). Prints one line per case.
"""

from __future__ import annotations

import argparse

import torch

from pimoe.bench import BenchConfig, _build_system
from pimoe.cuda.benchmarking import float32_error
from pimoe.cuda.grouped import TUNING, GemmConfig

VARIANTS = {
    "default": {},
    "up_even_n off": {"up_even_n": False},
    "down bk64": {"down_small": GemmConfig(64, 64, 64, 4, 3)},
    "both old": {"up_even_n": False, "down_small": GemmConfig(64, 64, 64, 4, 3)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="512,2048")
    parser.add_argument("--dispatch", default="cuda_triton")
    args = parser.parse_args()
    saved = dict(TUNING)
    for types_label, types in (("typed", BenchConfig().expert_types), ("uniform", ("language",))):
        system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", expert_types=types))
        system = system.to("cuda", torch.bfloat16)
        system.dispatch = args.dispatch
        for name, overrides in VARIANTS.items():
            TUNING.clear()
            TUNING.update({**saved, **overrides})
            for tokens in (int(t) for t in args.tokens.split(",")):
                x = torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16)
                result = float32_error(system, x)
                print(f"{types_label:8} {name:14} {tokens:6} rel_error {result['rel_error']:.2e} "
                      f"(sorted bf16 {result['sorted_rel_error']:.2e})", flush=True)
        TUNING.clear()
        TUNING.update(saved)
        # as the bench does it: graph replays timed first, then the check
        from pimoe.cuda.benchmarking import time_graphed_layer

        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16)
            time_graphed_layer(system, [x], {"warmup": 2, "repeats": 5})
            result = float32_error(system, torch.randn_like(x))
            print(f"{types_label:8} {'after graph':14} {tokens:6} rel_error {result['rel_error']:.2e}", flush=True)


if __name__ == "__main__":
    main()
