"""The training path's activation kernel (`pimoe.cuda.ops.train_activate.act_kernel`) at other tile shapes.

At 65,536 tokens (top-2: 131,072 rows, intermediate 2048, bf16) the forward pass moves pre in and hidden out (1 GB)
and the backward (the forward's hidden kept) pre and dh in, dpre out (1.5 GB): both should run near the card's memory
bandwidth. This
times each (rows, columns, warps) tile with CUDA events (median of the repeats, device synchronised) and prints the
achieved GB/s, so the default `TILES` can be set from a measurement rather than a guess.

    python bench/act_tiles.py [--rows 131072] [--width 2048] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.cuda.ops.train_activate import TILES, act_backward, act_forward  # noqa: E402
from pimoe.cuda.packing import ACT_CODES  # noqa: E402
from pimoe.measure.metrics import measure_latency  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402

CANDIDATES = [(16, 128, 4), (32, 128, 4), (16, 256, 4), (32, 256, 8), (64, 128, 8), (8, 512, 4), (64, 256, 8),
              (128, 128, 8), (32, 64, 4)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=131_072)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args(argv)
    device = "cuda"
    rows, width, experts = args.rows, args.width, args.experts
    gen = torch.Generator(device=device).manual_seed(0)
    pre = torch.randn(rows, width, device=device, dtype=torch.bfloat16, generator=gen)
    dh = torch.randn(rows, width, device=device, dtype=torch.bfloat16, generator=gen)
    b1 = torch.randn(experts, width, device=device, generator=gen) * 0.1
    offsets = (torch.arange(1, experts + 1, device=device) * (rows // experts)).to(torch.int32)
    row_expert = torch.arange(rows, device=device) // (rows // experts)
    widths = torch.full((experts,), width, dtype=torch.int32, device=device)
    gated = torch.zeros(experts, dtype=torch.int32, device=device)
    act = torch.full((experts,), ACT_CODES["gelu"], dtype=torch.int32, device=device)
    codes = [ACT_CODES["gelu"]]
    kept = torch.empty_like(pre)  # the forward's hidden, which the training path keeps for the backward
    element = pre.element_size()
    results = []
    for tiles in [TILES, *[t for t in CANDIDATES if t != TILES]]:
        def forward(tiles=tiles):
            act_forward(pre, b1, row_expert, widths, gated, act, offsets, width, codes, False, tiles=tiles, full=True)

        def backward(tiles=tiles):
            act_backward(pre, b1, dh, row_expert, widths, gated, act, offsets, codes, False, True, tiles=tiles,
                         hidden=kept)

        fwd = measure_latency(forward, device, warmup=5, repeats=args.repeats).median_ms
        bwd = measure_latency(backward, device, warmup=5, repeats=args.repeats).median_ms
        row = {"tiles": list(tiles), "forward_us": fwd * 1e3, "backward_us": bwd * 1e3,
               "forward_gbs": 2 * rows * width * element / fwd / 1e6,
               "backward_gbs": 3 * rows * width * element / bwd / 1e6}
        results.append(row)
        print(f"tiles {tiles!s:>15}  forward {row['forward_us']:8.1f} us {row['forward_gbs']:7.0f} GB/s   "
              f"backward {row['backward_us']:8.1f} us {row['backward_gbs']:7.0f} GB/s", flush=True)
    best = min(results, key=lambda r: r["forward_us"] + r["backward_us"])
    print(f"fastest forward + backward: tiles {tuple(best['tiles'])} (default now {TILES})")
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "rows": rows, "width": width, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
