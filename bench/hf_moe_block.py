"""One OLMoE-1B-7B MoE block (hidden 2048, 64 experts, intermediate 1024, top-8, random weights from the config):
PiMoE's block (checkpoint router + `cuda_fast` dispatch, bf16) against every experts implementation transformers
registers in its ExpertsInterface (eager, batched_mm, grouped_mm, and any kernel-hub ones that load), and PiMoE's own
entry in that interface (transformers' block and router, PiMoE's dispatch for the experts), same weights, same input,
at 512 and 4,096 tokens. CUDA events, median of --iters calls after --warmup; JSON to bench/results/.

    python bench/hf_moe_block.py                      # on the GPU (bf16)
    python bench/hf_moe_block.py --graphs             # plus every path replayed from a CUDA graph, where it captures
    python bench/hf_moe_block.py --device cpu --tiny  # smoke test: tiny dims, float32, CPU timers
    python bench/hf_moe_block.py --device cpu --dims 512 16 256 4 --tokens 1024  # other sizes

Each row also gives the largest |difference| from transformers' eager output, so a fast but wrong path shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from pimoe.cuda.graphs import capture_after_warmup  # noqa: E402
from pimoe.hf.block import RoutingSession  # noqa: E402
from pimoe.hf.convert import convert_block  # noqa: E402
from pimoe.hf.experts_interface import EXPERTS_IMPLEMENTATION, register_experts_implementation  # noqa: E402
from pimoe.hf.families import SUPPORTED_FAMILIES  # noqa: E402


def olmoe_config(tiny: bool, dims: tuple[int, int, int, int] | None = None):
    """OLMoE-1B-7B's block (hidden 2048, 64 experts, intermediate 1024, top-8), a tiny one, or `dims` (hidden,
    experts, intermediate, top-k)."""
    from transformers import OlmoeConfig

    hidden, experts, width, top_k = dims or ((64, 8, 32, 2) if tiny else (2048, 64, 1024, 8))
    return OlmoeConfig(hidden_size=hidden, intermediate_size=width, num_experts=experts, num_experts_per_tok=top_k,
                       num_hidden_layers=1)


def build_blocks(config, device: torch.device, dtype: torch.dtype):
    """(transformers' OlmoeSparseMoeBlock, the PiMoE block converted from it): the same weights."""
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    torch.manual_seed(0)
    block = OlmoeSparseMoeBlock(config)
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, config.initializer_range)
        block.gate.weight.normal_(0.0, 1.0 / config.hidden_size**0.5)  # decisive, uneven routing as trained ones
    block = block.to(device, dtype).eval()
    ours = convert_block(block, SUPPORTED_FAMILIES["olmoe"], config, 0, RoutingSession()).eval()
    if device.type == "cuda":  # as load_hf_moe does: the experts become views of the fast path's stacks
        from pimoe.cuda.packing import pack_experts_in_place

        pack_experts_in_place(ours.experts)
    return block, ours


def implementations() -> list[str]:
    """transformers' own experts implementations, then PiMoE's registered one (the checkpoint's router and block,
    PiMoE's dispatch for the routed experts: `pimoe.hf.experts_interface`)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    theirs = sorted(name for name in ALL_EXPERTS_FUNCTIONS.keys() if name != EXPERTS_IMPLEMENTATION)
    return ["eager", *theirs, register_experts_implementation()]


def row_name(implementation: str) -> str:
    if implementation == EXPERTS_IMPLEMENTATION:
        return "pimoe experts in transformers' block"
    return f"transformers {implementation}"


def time_calls(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Per-call milliseconds: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return times


def capture_graph(fn, device: torch.device):
    """`fn` captured in a CUDA graph (after warm-up on a side stream); returns (replay, output of the capture)."""
    graph, out = capture_after_warmup(fn, warmups=3, device=device)
    return graph.replay, out


def _graph_row(fn, device: torch.device, warmup: int, iters: int, reference: torch.Tensor) -> dict:
    """The same call replayed from a CUDA graph (launch overhead gone); an error row when it cannot be captured."""
    try:
        replay, out = capture_graph(fn, device)
        replay()
        return _row(time_calls(replay, device, warmup, iters), out, reference)
    except Exception as error:  # data-dependent shapes or host syncs make capture fail
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}


@torch.inference_mode()
def run(device: torch.device, dtype: torch.dtype, tiny: bool, token_counts: list[int], warmup: int,
        iters: int, graphs: bool = False, dims: tuple[int, int, int, int] | None = None) -> dict:
    config = olmoe_config(tiny, dims)
    hf_block, pimoe_block = build_blocks(config, device, dtype)
    results = {}
    for tokens in token_counts:
        x = torch.randn(1, tokens, config.hidden_size, device=device, dtype=dtype)
        config._experts_implementation = "eager"
        reference = hf_block(x).float()
        rows = {}
        for name in implementations():
            config._experts_implementation = name
            try:
                out = hf_block(x)
                times = time_calls(lambda x=x: hf_block(x), device, warmup, iters)
            except Exception as error:  # kernel-hub implementations need a download or a specific GPU
                rows[row_name(name)] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
                continue
            rows[row_name(name)] = _row(times, out, reference)
            if graphs and device.type == "cuda":
                rows[f"{row_name(name)} (CUDA graph)"] = _graph_row(lambda x=x: hf_block(x), device, warmup,
                                                                    iters, reference)
        config._experts_implementation = "eager"
        out = pimoe_block(x)
        rows["pimoe"] = _row(time_calls(lambda x=x: pimoe_block(x), device, warmup, iters), out, reference)
        if graphs and device.type == "cuda":
            rows["pimoe (CUDA graph)"] = _graph_row(lambda x=x: pimoe_block(x), device, warmup, iters, reference)
        for mode in ("", " (CUDA graph)"):  # eager against eager, graph against graph
            theirs = [r["median_ms"] for n, r in rows.items()
                      if n.startswith("transformers") and ("graph" in n) == bool(mode) and "median_ms" in r]
            for name in ("pimoe", row_name(EXPERTS_IMPLEMENTATION)):
                ours = rows.get(f"{name}{mode}", {})
                if "median_ms" in ours and theirs:
                    ours["speedup_vs_fastest_transformers"] = round(min(theirs) / ours["median_ms"], 3)
        results[str(tokens)] = rows
        print(f"{tokens} tokens:")
        for name, row in rows.items():
            print(f"  {name:40s} " + (f"{row['median_ms']:8.3f} ms  max|diff| {row['max_abs_diff_vs_eager']:.2e}"
                                      if "median_ms" in row else row["error"]))
    return {
        "benchmark": "bench/hf_moe_block.py", "date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__, "transformers": _tf_version(),
        "dims": {"hidden": config.hidden_size, "experts": config.num_experts, "intermediate": config.intermediate_size,
                 "top_k": config.num_experts_per_tok},
        "pimoe_dispatch": "auto (cuda_fast on CUDA)", "warmup": warmup, "iters": iters, "results": results,
    }


def _row(times: list[float], out: torch.Tensor, reference: torch.Tensor) -> dict:
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "max_abs_diff_vs_eager": float((out.float() - reference).abs().max())}


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny dims, for a CPU smoke test")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--graphs", action="store_true", help="also time each path replayed from a CUDA graph")
    parser.add_argument("--dims", type=int, nargs=4, metavar=("HIDDEN", "EXPERTS", "INTERMEDIATE", "TOP_K"),
                        help="the block's sizes instead of OLMoE-1B-7B's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    report = run(device, dtype, args.tiny, args.tokens, args.warmup, args.iters, args.graphs,
                 tuple(args.dims) if args.dims else None)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    out = args.out or Path("bench/results") / f"hf-moe-block-{device.type}{'-tiny' if args.tiny else ''}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
