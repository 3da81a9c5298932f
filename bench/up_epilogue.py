"""The up projection of the bench layer three ways, on the same sorted rows: torch._grouped_mm followed by the
activation pass (the "grouped_mm" backend), and the Triton up GEMM with bias and activation in its epilogue
(`pimoe.cuda.ops.up_act_gemm.up_act_rows`) with TMA loads and with pointer loads, over a sweep of tile shapes.
References measured in the same run: a cuBLAS GEMM of the same FLOPs, cuBLASLt's fused bias+GELU epilogue (torch._addmm_activation), torch's GELU
pass. triton.testing.do_bench (L2 flushed before each run, median); every variant is checked against the engine's
own result first. Prints µs and writes JSON.

    python bench/up_epilogue.py --tokens 512,65536 [--expert-types language] --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from triton.testing import do_bench

from bench.backends import STRATEGIES as BENCH_STRATEGIES
from bench.breakdown import environment
from pimoe.cuda.fused_router import fused_route
from pimoe.cuda.ops.activate import activate_rows
from pimoe.cuda.ops.gather import gather_norm
from pimoe.cuda.ops.launch_options import tma_available
from pimoe.cuda.ops.sort import sort_by_expert
from pimoe.cuda.ops.up_act_gemm import up_act_rows
from pimoe.cuda.ops.up_gemm import up_rows
from pimoe.cuda.packing import ACT_CODES, pack_experts
from pimoe.cuda.tuning import GemmConfig, active_tuning, tuning_overrides
from pimoe.measure.layer_bench import BenchConfig, _build_system
from pimoe.output_paths import output_file

# runs 1-2 of this sweep (H100, then H200; 65,536 tokens): TMA 128x128x64 w4/w8 s3 and 128x64x64 w4 s3 best at
# 810-820 µs; BK 128, four stages, two stages, 256-wide tiles slower; pointer loads 10% slower than TMA. A persistent
# variant (one program per SM walking the tiles, loop flattened, epilogue stored in halves) took 901 µs at best and
# was dropped (bench/results/up-epilogue-h200-20261127.json).
SWEEP = [GemmConfig(128, 128, 64, 4, 3), GemmConfig(128, 128, 64, 8, 3), GemmConfig(128, 128, 64, 4, 2),
         GemmConfig(128, 128, 64, 8, 2), GemmConfig(128, 256, 64, 8, 2), GemmConfig(256, 128, 64, 8, 2),
         GemmConfig(128, 64, 64, 4, 3)]
POINTER_SWEEP = [GemmConfig(128, 128, 64, 4, 3)]


def _name(cfg: GemmConfig) -> str:
    return f"{cfg.bm}x{cfg.bn}x{cfg.bk} w{cfg.warps} s{cfg.stages}"


def _us(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1e3


def sweep(system, tokens: int) -> dict:
    x = torch.randn(tokens, system.hidden_size, device="cuda", dtype=torch.bfloat16)
    out: dict = {}
    with torch.inference_mode():
        routing = fused_route(system.router, x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        layout = sort_by_expert(routing)
        gathered = gather_norm(x, layout, packed)
        kept = int(layout.offsets[-1])
        rows, width = gathered.shape[0], packed.max_width
        pre = torch._grouped_mm(gathered, packed.w1.transpose(1, 2), offs=layout.offsets)
        tuning = active_tuning()
        reference = activate_rows(pre, layout, packed, tuning)
        out["grouped_mm_up_us"] = _us(lambda: torch._grouped_mm(gathered, packed.w1.transpose(1, 2),
                                                                 offs=layout.offsets))
        out["activation_pass_us"] = _us(lambda: activate_rows(pre, layout, packed, tuning))
        out["gather_us"] = _us(lambda: gather_norm(x, layout, packed))
        out["fused_gather_up_kernel_us"] = _us(lambda: up_rows(
            x, layout, packed, tuning.up_small if rows <= tuning.small_rows else tuning.up_large))
        dense_w = torch.randn(width, system.hidden_size, device="cuda", dtype=torch.bfloat16) * 0.05
        dense_b = torch.zeros(width, device="cuda", dtype=torch.bfloat16)
        out["cublas_same_flops_us"] = _us(lambda: gathered @ dense_w.t())
        out["cublaslt_bias_gelu_us"] = _us(lambda: torch._addmm_activation(dense_b, gathered, dense_w.t(),
                                                                            use_gelu=True))
        out["torch_gelu_pass_us"] = _us(lambda: torch.nn.functional.gelu(pre))
        flops = 2.0 * kept * system.hidden_size * packed.w1.shape[1]
        out["up_flops"] = flops

        def attempt(run, expected):
            try:
                got = run()
                error = float((got[:kept].float() - expected[:kept].float()).norm() / expected[:kept].float().norm())
                if error > 1e-2:
                    return f"wrong: relative error {error:.2e}"
                us = _us(run)
                return {"us": us, "tflops": flops / us / 1e6, "rel_error": error}
            except Exception as error:  # a tile shape the compiler or the SM cannot take: record and go on
                return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"

        tma = tma_available(x.device)
        variants = {}
        for cfg in SWEEP if tma else []:
            variants[f"tma {_name(cfg)}"] = attempt(
                lambda cfg=cfg: up_act_rows(gathered, layout, packed, cfg, True), reference)
        for cfg in POINTER_SWEEP:
            variants[f"pointers {_name(cfg)}"] = attempt(
                lambda cfg=cfg: up_act_rows(gathered, layout, packed, cfg, False), reference)
        # the epilogue's share: the same GEMM with ReLU experts (a one-instruction activation)
        if not packed.any_gated:
            relu = dataclasses.replace(packed, act=torch.full_like(packed.act, ACT_CODES["relu"]),
                                       act_host=(ACT_CODES["relu"],) * packed.num_experts)
            experts = layout.sorted_expert.clamp(max=packed.num_experts - 1).long()
            relu_reference = torch.relu(pre.float() + packed.b1[experts])[:, :width].to(pre.dtype)
            for cfg in SWEEP[:2]:
                variants[f"relu tma {_name(cfg)}"] = attempt(
                    lambda cfg=cfg: up_act_rows(gathered, layout, relu, cfg, tma), relu_reference)
        out["up_act_variants"] = variants
    return out


def _parse(name: str) -> GemmConfig:
    """'tma 128x128x64 w4 s3' -> the GemmConfig."""
    parts = name.split()
    bm, bn, bk = (int(v) for v in parts[1].split("x"))
    return GemmConfig(bm, bn, bk, int(parts[2][1:]), int(parts[3][1:]))


def layer_with_best(result: dict, tokens: str, cfg: BenchConfig) -> dict:
    from pimoe.measure.layer_bench import run_layer_benchmark

    largest = max(result["sizes"], key=int)
    timed = {name: v["us"] for name, v in result["sizes"][largest]["up_act_variants"].items()
             if isinstance(v, dict) and name.split()[0] == "tma"}
    best = min(timed, key=timed.get)
    field = "up_act_gated" if "typed" in result["expert_types"] else "up_act"
    print(f"--- layer with the fastest up kernel at {largest} tokens: {best} ({timed[best]:.1f} µs)")
    bench_cfg = dataclasses.replace(cfg, dispatch="cuda_fused_up", compare=("cuda_grouped_mm",), graph=True,
                                    graph_max_tokens=65536, check=True, repeats=30, include_loop=False,
                                    rotate_bytes=128 * 2**20, shapes=tuple((1, int(t)) for t in tokens.split(",")))
    with tuning_overrides(**{field: _parse(best)}):
        rows, _ = run_layer_benchmark(bench_cfg, unregistered=BENCH_STRATEGIES)
    layer = {"up_kernel": best, "rows": [dataclasses.asdict(row) for row in rows]}
    for row in rows:
        extra = row.extra
        print(f"  {row.tokens:6d} tokens  fused_up eager / b2b / graphed / graphed b2b {row.layer_us:7.1f} / "
              f"{extra['layer_back_to_back_us']:7.1f} / {row.layer_graph_us:7.1f} / "
              f"{extra['layer_graph_back_to_back_us']:7.1f} µs   grouped_mm eager / graphed "
              f"{extra['cuda_grouped_mm_us']:7.1f} / {extra['cuda_grouped_mm_graph_us']:7.1f}   dense eager / b2b / "
              f"graphed / graphed b2b {row.dense_us:7.1f} / {extra['dense_back_to_back_us']:7.1f} / "
              f"{row.dense_graph_us:7.1f} / {extra['dense_graph_back_to_back_us']:7.1f}   "
              f"graphed ÷ dense {row.layer_graph_us / row.dense_graph_us:.3f}   rel err {row.rel_error:.2e}")
    return layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="512,65536")
    parser.add_argument("--expert-types", default="language", help="comma-separated; 'typed' for the default mix")
    parser.add_argument("--json", type=output_file("results file"))
    parser.add_argument("--layer-tokens", default="", help="then time the layer (cuda_fused_up with the fastest "
                        "shape found, cuda_grouped_mm, dense FFN; eager, back-to-back, graphed) at these sizes")
    args = parser.parse_args()
    types = None if args.expert_types == "typed" else tuple(args.expert_types.split(","))
    cfg = BenchConfig(device="cuda", dtype="bfloat16") if types is None else \
        BenchConfig(device="cuda", dtype="bfloat16", expert_types=types)
    system = _build_system(cfg).to("cuda", torch.bfloat16)
    result = {"environment": environment(), "expert_types": args.expert_types, "sizes": {}}
    for tokens in (int(t) for t in args.tokens.split(",")):
        sizes = sweep(system, tokens)
        result["sizes"][str(tokens)] = sizes
        print(f"--- {tokens} tokens, {args.expert_types}")
        for key, value in sizes.items():
            if key == "up_act_variants":
                for name, v in value.items():
                    print(f"  {name:34} " + (f"{v['us']:8.1f} µs {v['tflops']:6.0f} TFLOP/s" if isinstance(v, dict)
                                             else v))
            elif key != "up_flops":
                print(f"  {key:34} {value:8.1f} µs")
    if args.layer_tokens:
        result["layer"] = layer_with_best(result, args.layer_tokens, cfg)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
