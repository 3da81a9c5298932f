"""The LM's Triton LayerNorm (`pimoe.cuda.ops.layer_norm`) against torch's, and its backward at several rows per
program, on float32 rows of the GPU preset's shape (64 x 512 tokens, hidden 512). CUDA events, median of 50 calls.

    python bench/layer_norm_rows.py [--rows 32768] [--hidden 512]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pimoe.cuda.ops.layer_norm as layer_norm  # noqa: E402


def median_us(fn, calls: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(calls):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32_768)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args(argv)
    x = torch.randn(args.rows, args.hidden, device="cuda") * 2 + 1
    weight, bias = torch.randn(args.hidden, device="cuda"), torch.randn(args.hidden, device="cuda")
    dy = torch.randn_like(x)
    _, mean, rstd, _ = layer_norm.layer_norm_forward(x, weight, bias, 1e-5)
    print(torch.cuda.get_device_name(), torch.__version__, f"{args.rows} x {args.hidden} float32")
    print(f"forward  Triton {median_us(lambda: layer_norm.layer_norm_forward(x, weight, bias, 1e-5)):7.1f} us   torch "
          f"{median_us(lambda: torch.nn.functional.layer_norm(x, (args.hidden,), weight, bias, 1e-5)):7.1f} us")
    default = layer_norm.ROWS
    for rows in (8, 16, 32, 64, 128):
        layer_norm.ROWS = rows
        print(f"backward Triton, {rows:3d} rows per program {median_us(lambda: layer_norm.layer_norm_backward(dy, x, weight, mean, rstd)):7.1f} us"
              + ("  (default)" if rows == default else ""))
    layer_norm.ROWS = default
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]

    def torch_both() -> None:
        torch.nn.functional.layer_norm(leaves[0], (args.hidden,), leaves[1], leaves[2], 1e-5).backward(dy)

    print(f"torch forward + backward {median_us(torch_both):7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
