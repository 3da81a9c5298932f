"""Where an eager call's time goes on the GPU: host syncs (with the line that forces each), host time per call against
the GPU time of its kernels, and the torch ops that cost the most host time.

    python -m bench.host_profile [--case hf4096 --case fwd512 --case train8192] [--out FILE] [--python N]

With --python N, each case also runs N calls under cProfile and prints the Python functions with the most own time
(the host work between kernel launches: ours, Triton's launcher, torch's Python layers). For the training cases read
it with care: CUDA backward passes run on autograd's device thread, and Python 3.12's cProfile records every thread,
so own times inside the backward (custom-op wrappers, `run_backward`) mix waiting with work.

Cases: hf512 / hf4096 (one OLMoE-dim block, bench/hf_moe_block.py's build, bf16), fwd512 (PiMoESystem forward, hidden
512, 8 experts, top-2, bf16, inference mode: its automatic CUDA graph after the first calls; fwd512eager with those
off), live (one step of the Live training page's trainer: demo model, batch 8 x 64, bf16 autocast), train8192 / train65536 (the same layer's forward + backward).
For each: `host_us` is the wall time of enqueueing one call without a sync, `sync_us` the wall time with one,
`gpu_us` the sum of its kernels (profiler), `syncs` the host syncs torch's sync debug mode reports, with the frame
of ours that asked for each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _hf_case(tokens: int):
    from bench.hf_moe_block import build_blocks, olmoe_config

    _, ours = build_blocks(olmoe_config(tiny=False), torch.device("cuda"), torch.bfloat16)
    x = torch.randn(1, tokens, 2048, device="cuda", dtype=torch.bfloat16)

    def call():
        with torch.inference_mode():
            return ours(x)

    return call


TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical", "language")


def _system(train: bool, types: tuple[str, ...] = ("reasoning",) * 8):
    from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
    from pimoe.layer.system import PiMoESystem

    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=512, num_experts=8, expert_types=types,
                         router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=2048), residual=False)
    system = PiMoESystem(config).to("cuda", torch.bfloat16)
    system.dispatch = "cuda_fast"
    system.check_finite = False
    return system.train(train)


def _forward_case(tokens: int, types: tuple[str, ...] = ("reasoning",) * 8, auto_graphs: bool = True):
    system = _system(train=False, types=types)
    system.auto_cuda_graphs = auto_graphs
    x = torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16)

    def call():
        with torch.inference_mode():
            return system(x)

    return call


def _train_case(tokens: int):
    system = _system(train=True)
    x = torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    upstream = torch.randn_like(x)
    params = [p for p in system.parameters() if p.requires_grad]

    def call():
        for p in params:
            p.grad = None
        out = system(x)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(upstream)

    return call


def _live_case():
    from bench.live_training_rate import live_trainer

    trainer = live_trainer("cuda")
    return trainer.step


CASES = {"live": _live_case, "hf512": lambda: _hf_case(512), "hf4096": lambda: _hf_case(4096), "fwd512": lambda: _forward_case(512),
         "fwd512eager": lambda: _forward_case(512, auto_graphs=False),
         "typed512": lambda: _forward_case(512, TYPED), "train2048": lambda: _train_case(2048),
         "train8192": lambda: _train_case(8192), "train65536": lambda: _train_case(65536)}


def _syncs(call) -> list[str]:
    """Each sync torch reports in one call, with the innermost frame in pimoe/ or bench/ that led to it."""
    found = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        for item in caught:
            found.append(str(item.message)[:120])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if not found:
        return found
    # Locate the frames: run again with errors and keep the stack of the first one.
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except RuntimeError:
        frames = [f for f in traceback.extract_tb(sys.exc_info()[2]) if "/pimoe/" in f.filename or "/bench/" in f.filename]
        found.append("first at: " + " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1][:4]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return found


def _wall_us(call, sync: bool, repeats: int = 30) -> float:
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if sync:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return samples[len(samples) // 2]


def _profile(call, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            call()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 5
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    by_gpu = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return {"gpu_us": gpu,
            "top_host_us": [(e.key[:60], round(e.self_cpu_time_total / 5, 1), e.count // 5) for e in by_host],
            "top_gpu_us": [(e.key[:60], round(e.self_device_time_total / 5, 1), e.count // 5) for e in by_gpu]}


def profiled_calls(call, calls: int):
    """pstats.Stats of `calls` calls of `call` under cProfile, the device synchronised after them."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    torch.cuda.synchronize()
    return pstats.Stats(profiler)


def _python_profile(call, calls: int, top: int) -> dict[str, list[tuple[str, float, float, float]]]:
    """(function, own µs per call, cumulative µs per call, calls per call): the `top` functions by own time, and
    pimoe's `top` functions by cumulative time."""
    stats = profiled_calls(call, calls).stats
    rows = []
    for (filename, line, name), (_, ncalls, own, cumulative, _) in stats.items():
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        rows.append((f"{where}:{line} {name}"[:90], round(own / calls * 1e6, 1), round(cumulative / calls * 1e6, 1),
                     round(ncalls / calls, 1)))
    ours = sorted((row for row in rows if row[0].startswith(("cuda/", "layer/", "ops/", "pimoe/", "lm/"))),
                  key=lambda row: row[2], reverse=True)
    rows.sort(key=lambda row: row[1], reverse=True)
    return {"own": rows[:top], "pimoe_cumulative": ours[:top]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--python", type=int, default=0, metavar="N", help="also profile N calls with cProfile")
    parser.add_argument("--loop", type=int, default=0, metavar="N",
                        help="only run N calls of each case, unmeasured (for an outside sampler such as py-spy)")
    args = parser.parse_args(argv)
    results = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name in args.case or ["hf4096", "fwd512", "train8192"]:
        call = CASES[name]()
        for _ in range(5):
            call()
        torch.cuda.synchronize()
        if args.loop:
            for _ in range(args.loop):
                call()
            torch.cuda.synchronize()
            continue
        row = {"syncs": _syncs(call), "host_us": _wall_us(call, sync=False), "sync_us": _wall_us(call, sync=True)}
        row.update(_profile(call, args.top))
        if args.python:
            row["python"] = _python_profile(call, args.python, 3 * args.top)
        results[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "python"}, indent=1), flush=True)
        for title, table in row.get("python", {}).items():
            print(f"{name} python {title} (own µs, cumulative µs, calls per call):")
            for function, own, cumulative, ncalls in table:
                print(f"  {own:9.1f} {cumulative:9.1f} {ncalls:6.1f}  {function}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
