"""The bias-gradient column sums (`pimoe.cuda.ops.segment_sums.segment_column_sums`) at other tile shapes.

The GPU preset's training step sums, per layer and width class, dpre (the narrow class: 5 experts of 1,024 columns,
~5/8 of the 65,536 rows of its buffer; the wide one: 3 experts of 2,048 columns, ~3/8) and the combine's row
gradients (512 columns): one read of the kept rows each, so each shape should run near the card's memory bandwidth.
This times every (tile rows, block rows, block columns, warps) candidate on those shapes as calls captured in one CUDA
graph and replayed back to back (as inside the step's graph: timed eagerly, ten calls back to back were bound by the
host's two Triton launches per call, ~68 µs whatever the tiles, H100 2026-12-07), and prints µs per call and GB/s over
the rows read, so `TILE_ROWS` / `BLOCK_ROWS` / `BLOCK_COLS` can be set from a measurement.

    python bench/segment_sums_tiles.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.small_gemms import time_alone  # noqa: E402
from pimoe.cuda.ops.segment_sums import BLOCK_COLS, BLOCK_ROWS, TILE_ROWS, segment_column_sums  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402

DEFAULT = (TILE_ROWS, BLOCK_ROWS, BLOCK_COLS, 4)
CANDIDATES = [(256, 32, 128, 4), (256, 16, 256, 4), (512, 32, 128, 4), (512, 64, 64, 4), (128, 32, 128, 4),
              (256, 32, 256, 8), (512, 32, 256, 8), (1024, 32, 128, 4), (256, 64, 128, 8), (128, 16, 256, 4)]
# (buffer rows, kept rows, columns, experts): the preset's narrow and wide dpre, and a class's 512-wide row gradients
SHAPES = [(65_536, 40_960, 1024, 5), (65_536, 24_576, 2048, 3), (65_536, 40_960, 512, 5), (65_536, 24_576, 512, 3)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args(argv)
    results = []
    for buffer_rows, kept, width, experts in SHAPES:
        rows = torch.randn(buffer_rows, width, device="cuda", dtype=torch.bfloat16)
        # uneven groups, as routing gives: expert e holds a share growing with e
        shares = torch.arange(1, experts + 1, dtype=torch.float64)
        ends = (shares.cumsum(0) / shares.sum() * kept).round().to(torch.int32).cuda()
        expected = torch.stack([rows[int(s):int(e)].float().sum(0) for s, e in
                                zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)])
        for tiles in [DEFAULT, *[t for t in CANDIDATES if t != DEFAULT]]:
            tile_rows, block_rows, block_cols, warps = tiles
            got = segment_column_sums(rows, ends, tile_rows, block_rows, block_cols, warps)
            error = float((got - expected).abs().max() / expected.abs().max())

            us = time_alone(lambda rows=rows, ends=ends, tiles=tiles: segment_column_sums(rows, ends, *tiles))
            row = {"shape": [buffer_rows, kept, width, experts], "tiles": list(tiles), "us": us,
                   "gbs": kept * width * rows.element_size() / us / 1e3, "max_rel_error": error}
            results.append(row)
            print(f"kept {kept:6d} x {width:4d}  tiles {tiles!s:>20}  {us:7.1f} us  {row['gbs']:6.0f} GB/s  "
                  f"err {error:.1e}", flush=True)
    totals = {}
    for row in results:
        totals[tuple(row["tiles"])] = totals.get(tuple(row["tiles"]), 0.0) + row["us"]
    best = min(totals, key=totals.get)
    print(f"sum over the shapes: default {DEFAULT} {totals[DEFAULT]:.1f} us, fastest {best} {totals[best]:.1f} us")
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "results": results, "totals_us": {str(k): v for k, v in totals.items()}},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
