"""Launch shapes and switches of the CUDA fast path, each with the measurement that chose it (docs/performance.md).

`active_tuning()` is what the fast path reads; `tuning_overrides(**fields)` changes fields for the length of a `with`
block (benchmarks sweeping a shape, tests forcing a path). Launchers take a `Tuning`, never a loose dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["GemmConfig", "Tuning", "active_tuning", "parse_overrides", "tuning_overrides"]

# "auto" picks one of these for bf16 (the other backends of the grouped forward are dtype-bound or CPU-only)
_AUTO_BACKENDS = ("triton", "fused_up")


@dataclass(frozen=True)
class GemmConfig:
    """One Triton GEMM launch shape: BM x BN tiles, BK deep, warps, software-pipeline stages."""

    bm: int
    bn: int
    bk: int
    warps: int
    stages: int


@dataclass(frozen=True)
class Tuning:
    """Every launch shape and switch of the fast path. `small_*` shapes serve up to `small_rows` sorted rows.

    `up_large_gated` is for packs with a gated expert: its tiles carry two accumulators, and at 128 x 128 the compiler
    spills (ptxas: 255 registers + 152 bytes of stack; 128 x 64: 196, none). Timings behind the choices:
    docs/performance.md.
    """

    # "auto" on bf16: `small_backend` up to `switch_rows` sorted rows (A = T * K), `large_backend` above; both are
    # "fused_up" now, the knobs stay for benchmarks. H100: with the activation in the up GEMM's epilogue the uniform
    # layer takes 1571 µs at 65,536 tokens against 1718 for "grouped_mm" (run 6), the typed one 2664 against 3274
    # (run 7: tiles past a narrow expert's width skip their FLOPs). At 512 tokens (1024 rows), each GEMM alone in a
    # graph (bench/results/small-gemms-*-h100-20261127-run14.json): the up GEMM over pre-gathered rows with TMA loads
    # 13.2 µs against 22.7 for the "triton" backend's, which gathers with pointer loads (2048 tokens: 34.6 against
    # 62.5); the layer 59.7 -> 50.6 µs graphed back to back (runs 13 and 15).
    switch_rows: int = 2048
    small_backend: str = "fused_up"
    large_backend: str = "fused_up"
    # bf16/fp16 router logits on the tensor cores (exact products, float32 sums) instead of float32 FMA:
    # 204 -> 36 µs at 65,536 tokens and 23 -> 5 µs at 512 on an H100 (bench/kernel_profile.py).
    router_native_dot: bool = True
    # bf16 tokens under autocast over a float32 gate: from this many tokens the gate product runs as bf16 GEMMs
    # against the gate's exact three-piece bf16 split (`pimoe.layer.router_logits`) instead of three float32 SIMT
    # GEMMs; 0 turns it off. PiMoE-LM's router reads float32 tokens (its ln2 keeps float32), so the GPU preset never
    # takes it: its H100 profile still has the three SIMT GEMMs (preset-profile-64x512-h100-20261207-session21.json).
    # Below this many tokens the split's extra launches cost more host time than the SIMT GEMMs take.
    router_split_rows: int = 8192
    # the activation pass (ops.activate, run by bench/backends.py's grouped_mm backend and the GELU check):
    # BR x BC elements per program
    act_rows: int = 8
    act_cols: int = 256
    act_warps: int = 4
    # drop the column mask of the up GEMM's weight loads when every width is a multiple of BN
    up_even_n: bool = True
    small_rows: int = 4096
    up_small: GemmConfig = GemmConfig(64, 64, 64, 4, 3)
    # BK 128: 21.6 vs 29.3 µs at 512 tokens, 46 vs 44 at 2048 (H100, L2 flushed; bench/results/breakdown-*-h100-*)
    down_small: GemmConfig = GemmConfig(64, 64, 128, 4, 3)
    up_large: GemmConfig = GemmConfig(128, 128, 64, 8, 3)
    up_large_gated: GemmConfig = GemmConfig(128, 64, 64, 8, 3)
    # 128 x 256: 0.55 vs 0.62 ms at 65,536 uniform (H200, run 1); as fused_up's down GEMM for the typed pack 2337 vs
    # 2363 µs per layer (H100, mixed-down-typed-65536-h100-20261127.json)
    down_large: GemmConfig = GemmConfig(128, 256, 64, 8, 3)
    # the "fused_up" backend's up GEMM (bias and activation in the epilogue); TMA loads where the GPU has them
    # 804 µs at 65,536 uniform on an H100 (H200: 823), 128x64 w4: 835 (814); packs with a gated expert (two
    # accumulators per tile): 128x64 w4 1386 µs, 128x128 w8 1489, the others 1846-5524
    # (bench/results/up-epilogue-*-h100-20261127-run5.json, -run7.json)
    up_act: GemmConfig = GemmConfig(128, 128, 64, 8, 3)
    up_act_gated: GemmConfig = GemmConfig(128, 64, 64, 4, 3)
    # packs whose every expert is gated (the Hugging Face families): BN 128 gives each program two (128, 64) products
    # and 64 hidden columns, the work split these packs had under `up_act_gated` before the halves kernel
    up_act_all_gated: GemmConfig = GemmConfig(128, 128, 64, 4, 3)
    # the same two up GEMMs up to `triton_down_rows` sorted rows, where the weights' bytes, not the FLOPs, set the time
    up_act_small: GemmConfig = GemmConfig(128, 128, 64, 8, 3)
    up_act_gated_small: GemmConfig = GemmConfig(128, 64, 64, 4, 3)
    up_act_tma: bool = True
    # from this many sorted rows (with TMA), a pack of plain and gated experts takes two up launches, the plain experts
    # at `up_act`, the gated ones at `up_act_all_gated`, instead of one halves launch at `up_act_gated` for all. Typed
    # pack, graphed back to back on an H100 (bench/tile_sweep.py, tile-sweep-typed-*-h100-20261207*.json): 65,536
    # tokens (131,072 rows) 2,085-2,088 µs in four runs against 2,097-2,126 in six; slower below, where the second
    # launch's fixed cost outweighs the plain tiles' gain: 32,768 tokens 1,080 against 1,063-1,065, 8,192 315 / 309,
    # 2,048 137 / 130, 512 83 / 71
    up_act_split_rows: int = 131_072
    # the fused_up backend's down GEMM for packs of mixed widths: "library" (torch._grouped_mm over the padded width)
    # or "triton" (each expert over its own width): typed layer 2619 -> 2337 µs at 65,536 tokens, 672 -> 627 at
    # 16,384, graphed back to back on an H100 (bench/results/mixed-down-typed-*-h100-20261127.json)
    mixed_width_down: str = "triton"
    # fused_up's down GEMM is the Triton one up to this many rows: 14.0 µs against torch._grouped_mm's 16.2 at 1024
    # rows, 40.5 against 28.5 at 4096 (small-gemms-*-h100-20261127-run14.json)
    triton_down_rows: int = 2048
    # fused_up's down GEMM with TMA loads where the GPU has them, for every size: 11.8 µs against 13.7 (pointer
    # loads) and 16.2 (torch._grouped_mm) at 1024 rows, 25.2 / 32.5 / 28.6 at 4096, 485 / 640 / 508 at 131,072
    # (uniform, each GEMM alone in a graph; small-gemms-*-h100-20261127-run17.json); `down_tma_small` up to
    # `triton_down_rows` rows
    down_tma: bool = True
    # 4 stages (196 KB of shared memory) since 2026-12-07: 512 tokens, graphed back to back on an H100
    # (tile-sweep-*-512-h100-20261207-run3.json), uniform 48.2 µs against 49.2-49.9 (the GEMM 12.6 against 14.5),
    # typed 67.0 against 69.9-70.0 (19.7 against 23.5); 2,048 tokens 86.9 against 86.7-87.1
    down_tma_small: GemmConfig = GemmConfig(128, 64, 128, 8, 4)
    down_tma_large: GemmConfig = GemmConfig(128, 256, 64, 8, 3)
    # the bandwidth-bound passes around the GEMMs: rows per program of the gather (without and with an expert norm,
    # whose float32 temporaries take twice the registers), tokens x columns per program of the combine, their warps
    gather_rows: int = 8
    gather_norm_rows: int = 4
    gather_warps: int = 4
    combine_tokens: int = 32
    combine_cols: int = 128
    combine_warps: int = 4
    # up to `combine_small_rows` assignments the combine takes `combine_small_tokens` tokens per program, four times
    # the programs: 512 tokens 2.3 µs against 3.5 (layer 48.7 against 49.2-49.9 back to back), 2,048 tokens 3.4
    # against 4.5 (85.7 against 86.7-87.1; H100, tile-sweep-uniform-512-2048-h100-20261207-run3.json)
    combine_small_tokens: int = 8
    combine_small_rows: int = 4096
    # up to this many sorted rows, a pack of plain experts without norms (with TMA) reads its rows from the tokens
    # inside the up GEMM (`up_act_gathered_rows`) instead of a gathered copy: one pass fewer. 2,048 tokens top-2,
    # back to back 84.8 µs against 87.4 / 88.0 (the gather pass 2.4 µs gone, the up GEMM 36.9 against 35.1); 512
    # tokens 47.1 against 46.9 / 48.3 (H100, tile-sweep-uniform-512-2048-h100-20261207-run4.json); not measured above
    up_gather_rows: int = 4096
    # the counting sort takes the fused router's per-block choice counts as its histogram (one launch fewer) up to
    # this many assignments; above, the place pass, whose every program reads every block's counts, gets its own
    # larger blocks from the histogram pass
    router_counts_rows: int = 8192
    # the fused router's reduction (counts, losses) inside the place pass's first program where the sort takes the
    # router's counts, for callers that ask for it (the fast layer): one launch fewer per call
    defer_router_reduction: bool = True
    # programmatic dependent launch between the Triton kernels (Hopper and newer; ops.launch_options.pdl_options)
    pdl: bool = True
    # training a float32 (or float16) model on CUDA, where torch._grouped_mm takes bf16 only: the expert GEMMs and
    # their weight gradients as Triton kernels that read the group ends on the device (`ops.grouped_rows`: no host
    # sync, so a whole-step CUDA graph captures them) instead of a loop over experts reading them on the host. Off
    # until measured on a GPU: written 2026-12-08 and checked in Triton's interpreter only
    grouped_rows_kernels: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value, expected = getattr(self, field.name), type(field.default)
            # exact types: bool is an int, and a switch given 1 or a row count given True is a slip
            if type(value) is not expected:
                raise ValueError(f"Tuning.{field.name} must be a {expected.__name__}, got {value!r}")
        for name in ("small_backend", "large_backend"):
            if getattr(self, name) not in _AUTO_BACKENDS:
                raise ValueError(f"Tuning.{name} must be one of {_AUTO_BACKENDS}, got {getattr(self, name)!r}")
        if self.mixed_width_down not in ("library", "triton"):
            raise ValueError(f"Tuning.mixed_width_down must be 'library' or 'triton', got {self.mixed_width_down!r}")

    def replace(self, **fields) -> Tuning:
        """A copy with `fields` changed; an unknown name raises a ValueError listing the known ones."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown tuning field(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **fields)


_DEFAULTS = Tuning()
_active = _DEFAULTS


def active_tuning() -> Tuning:
    """The tuning the fast path runs with now (the defaults above unless a `tuning_overrides` block is open)."""
    return _active


@contextmanager
def tuning_overrides(**fields) -> Iterator[Tuning]:
    """Run the block with `fields` of the active tuning changed (validated by name and type); restored on exit.

    For benchmarks and tests, on one thread: the fast path reads the active tuning at each call, and a CUDA graph
    captured inside the block keeps the launch shapes it was captured with.
    """
    global _active
    previous = _active
    _active = previous.replace(**fields)
    try:
        yield _active
    finally:
        _active = previous


def parse_overrides(items: Iterable[str]) -> dict:
    """`FIELD=VALUE` strings (a benchmark's command line) -> fields for `tuning_overrides`: a launch shape as
    BMxBNxBKxWARPSxSTAGES (128x128x64x8x3), a switch as 0 or 1, a count as an integer, a choice as its name. Each
    item may hold several, comma-separated; an empty item changes nothing. Unknown fields and malformed values raise
    a ValueError naming them."""
    defaults = Tuning()
    fields: dict = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, value = part.partition("=")
            if not sep or not hasattr(defaults, name):
                raise ValueError(f"expected FIELD=VALUE with a Tuning field, got {part!r}")
            current = getattr(defaults, name)
            try:
                if isinstance(current, GemmConfig):
                    numbers = [int(n) for n in value.split("x")]
                    if len(numbers) != 5:
                        raise ValueError
                    fields[name] = GemmConfig(*numbers)
                elif isinstance(current, bool):
                    fields[name] = {"0": False, "1": True}[value]
                elif isinstance(current, int):
                    fields[name] = int(value)
                else:
                    fields[name] = value
            except (KeyError, ValueError):
                raise ValueError(f"{name}={value!r}: expected {type(current).__name__}"
                                 f"{' as BMxBNxBKxWARPSxSTAGES' if isinstance(current, GemmConfig) else ''}") from None
    defaults.replace(**fields)  # the record's own checks: choices, types
    return fields

