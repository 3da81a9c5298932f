"""How much a busy Python thread slows a live-training step in the same process, per GIL switch interval.

The dashboard's training worker shares the server's GIL with every page's script run. A torch op releases the GIL and
must win it back afterwards; while another thread runs pure Python it only gets it back when that thread's switch
interval ends, once per op. This steps the dashboard's demo run alone, then beside a thread that runs Python without a
break, at each interval, and prints the step time and how much work the busy thread still got done.

    python bench/gil_convoy.py [--intervals 5,1,0.5,0.2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.training import RunSpec, TrainingRunner  # noqa: E402

TYPES = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default="5,1,0.5,0.2", help="switch intervals in ms")
    parser.add_argument("--seconds", type=float, default=3.0, help="at most this long per interval")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner = TrainingRunner(RunSpec(expert_types=TYPES, num_experts=8, device="cpu", temperature=1.0,
                                    load_balance_weight=0.01, adaptive=True), "1 + 1 = 2")
    runner.start()
    runner._build()  # noqa: SLF001 - the bench times steps, not the scheduler
    trainer = runner._trainer  # noqa: SLF001
    for _ in range(5):
        trainer.step()
    stop = threading.Event()
    loops = [0]

    def busy() -> None:
        while not stop.is_set():
            total = 0
            for i in range(1000):
                total += i * i
            loops[0] += 1

    def timed(seconds: float) -> tuple[float, float]:
        started, steps = time.perf_counter(), 0
        while time.perf_counter() - started < seconds and steps < 30:
            trainer.step()
            steps += 1
        elapsed = time.perf_counter() - started
        return elapsed / steps * 1e3, elapsed

    previous = sys.getswitchinterval()
    alone_ms, _ = timed(args.seconds)
    thread = threading.Thread(target=busy)
    stop.clear()
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join()
    busy_alone = loops[0]
    print(f"step alone {alone_ms:.1f} ms; the busy thread alone {busy_alone:.0f} loops/s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} thread)")
    for interval_ms in (float(v) for v in args.intervals.split(",")):
        sys.setswitchinterval(interval_ms / 1e3)
        loops[0] = 0
        stop.clear()
        thread = threading.Thread(target=busy)
        thread.start()
        step_ms, elapsed = timed(args.seconds)
        stop.set()
        thread.join()
        print(f"switch interval {interval_ms:g} ms: step {step_ms:7.1f} ms beside a busy thread, which kept "
              f"{loops[0] / elapsed / busy_alone:.0%} of its speed")
    sys.setswitchinterval(previous)
    runner.close()


if __name__ == "__main__":
    main()
