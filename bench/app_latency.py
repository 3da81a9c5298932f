"""How long the routing lab takes to redraw when the temperature slider moves, for a 512-token text.

Times exactly the page's server-side path, stage by stage, with the model the app would use (the demo checkpoint if it
is there, else a fresh demo-size model):

    route      model.route_text(text, temperature, top_k)            (the engine)
    view       studio.routing_view.routing_view(...)                 (arrays, stats, accuracy, aux loss)
    figures    studio.routing_view.build_lab_figures(view)           (three chart specs and the token strip)
    serialise  json.dumps(spec) per chart                            (what the chart component does before sending)

Each timed call uses a different temperature, as a user dragging the slider would. The goal is a total under 300 ms
on this machine's CPU. Usage:  python bench/app_latency.py [--tokens 512] [--repeats 30] [--device cpu] [--threads N]

On a shared machine, torch's default of one intra-op thread per core can be far slower than one thread: a parallel
region waits for its slowest thread, and a thread that lost its core to another process stalls them all. --threads 1
shows the difference (the app takes the same setting from PIMOE_TORCH_THREADS).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.lm.model import LMConfig, PiMoELM  # noqa: E402
from pimoe.measure.metrics import measure_latency  # noqa: E402
from studio.presets import PRESETS  # noqa: E402
from studio.routing_view import build_lab_figures, routing_view  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "assets" / "pimoe-demo.safetensors"
GOAL_MS = 300.0


def load_model(device: str) -> tuple[PiMoELM, str]:
    if DEMO.is_file():
        from pimoe.lm.checkpoint import load_checkpoint

        return load_checkpoint(DEMO, device=device).eval(), f"demo checkpoint {DEMO.name}"
    torch.manual_seed(0)
    return PiMoELM(LMConfig.demo()).to(device).eval(), "fresh LMConfig.demo() model (no demo checkpoint found)"


def text_of(num_bytes: int) -> str:
    """The routing lab's mixed example repeated and cut to exactly num_bytes (it is ASCII: one token per byte)."""
    base = PRESETS["Mixed paragraph"] + " "
    return (base * (num_bytes // len(base) + 1))[:num_bytes]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, source = load_model(args.device)
    text = text_of(args.tokens)
    temperatures = itertools.cycle([0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0])
    stages: dict[str, float] = {}

    def redraw() -> None:
        started = time.perf_counter()
        routed = model.route_text(text, temperature=next(temperatures), top_k=args.top_k)
        routed_at = time.perf_counter()
        view = routing_view(routed, 0, 0.01)
        view_at = time.perf_counter()
        figures, _strip = build_lab_figures(view)
        figures_at = time.perf_counter()
        for figure in figures.values():
            json.dumps(figure)
        done = time.perf_counter()
        for name, seconds in (("route", routed_at - started), ("view", view_at - routed_at),
                              ("figures", figures_at - view_at), ("serialise", done - figures_at)):
            stages.setdefault(name, 0.0)
            stages[name] += seconds

    with torch.inference_mode():
        total = measure_latency(redraw, args.device, warmup=3, repeats=args.repeats)
    calls = 3 + total.repeats
    print(f"Routing lab redraw, {len(model.tokenizer.encode(text))} tokens, {source}")
    cpu = platform.processor() or platform.machine()
    print(f"device {args.device} ({cpu}, {torch.get_num_threads()} torch threads), torch {torch.__version__}, "
          f"{total.repeats} timed redraws after 3 warm-up")
    print(f"  total     median {total.median_ms:7.1f} ms   p95 {total.p95_ms:7.1f} ms   min {total.min_ms:7.1f} ms")
    for name, seconds in stages.items():
        print(f"  {name:<9} mean   {seconds / calls * 1e3:7.1f} ms")
    verdict = "meets" if total.median_ms <= GOAL_MS else "MISSES"
    print(f"median {verdict} the {GOAL_MS:.0f} ms goal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
