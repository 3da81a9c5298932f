"""`python -m bench.breakdown`: where the fast path's time goes, stage by stage, on this GPU.

Legend: T tokens, D hidden size, E experts, K experts per token, A = T * K, F padded hidden width.

Times each stage of both backends, the dense FFN's pieces and a plain GEMM of the same shape (the achievable ceiling)
with triton.testing.do_bench (CUDA events, L2 flushed before each run, median), sweeps Triton GEMM tile shapes, and
records what the installed torch offers for grouped matmul. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import torch

__all__ = ["environment", "main"]


def environment() -> dict:
    """What the numbers were measured with: versions, GPU, what torch offers for grouped matmul."""
    import triton

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "device_name": torch.cuda.get_device_name(), "date": dt.datetime.now(dt.timezone.utc).isoformat()}
    props = torch.cuda.get_device_properties(0)
    info["multiprocessors"] = props.multi_processor_count
    info["l2_mb"] = getattr(props, "L2_cache_size", 0) / 2**20
    info["has_grouped_mm"] = hasattr(torch, "_grouped_mm")
    info["has_F_grouped_mm"] = hasattr(torch.nn.functional, "grouped_mm")
    try:
        info["grouped_mm_schema"] = str(torch.ops.aten._grouped_mm.default._schema)
    except (AttributeError, RuntimeError) as error:
        info["grouped_mm_schema"] = f"unavailable: {error}"
    return info


def _ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _grouped_mm_layouts(a: torch.Tensor, w_out_in: torch.Tensor, offsets: torch.Tensor) -> dict:
    """Whether torch._grouped_mm takes B as a transposed (column-major) view and as a contiguous (E, K, N) copy."""
    result = {}
    for name, b in (("column_major_view", w_out_in.transpose(1, 2)),
                    ("row_major_copy", w_out_in.transpose(1, 2).contiguous())):
        try:
            torch._grouped_mm(a, b, offs=offsets)
            result[name] = _ms(lambda b=b: torch._grouped_mm(a, b, offs=offsets))
        except RuntimeError as error:
            result[name] = f"error: {str(error).splitlines()[0]}"
    return result


def _stages(system, tokens: int) -> dict:
    from bench.backends import grouped_mm_forward, hybrid_forward
    from pimoe.cuda.backends import triton_forward
    from pimoe.cuda.fused_router import fused_route
    from pimoe.cuda.ops.activate import activate_rows
    from pimoe.cuda.ops.down_gemm import down_rows
    from pimoe.cuda.ops.gather import gather_norm
    from pimoe.cuda.ops.row_stats import row_stats
    from pimoe.cuda.ops.sort import sort_by_expert
    from pimoe.cuda.ops.up_gemm import up_rows
    from pimoe.cuda.packing import pack_experts
    from pimoe.cuda.tuning import GemmConfig, active_tuning
    from pimoe.layer.reference import DenseFFN

    device = torch.device("cuda")
    hidden = system.hidden_size
    x = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    out: dict = {}
    tuning = active_tuning()
    with torch.inference_mode():
        routing = fused_route(system.router, x)
        packed = pack_experts(system.experts, x.dtype, device)
        out["module_router_ms"] = _ms(lambda: system.router(x))
        out["fused_router_ms"] = _ms(lambda: fused_route(system.router, x))
        out["sort_ms"] = _ms(lambda: sort_by_expert(routing))
        out["row_stats_ms"] = _ms(lambda: row_stats(x))
        out["triton_forward_ms"] = _ms(lambda: triton_forward(x, routing, packed, tuning))
        out["grouped_mm_forward_ms"] = _ms(lambda: grouped_mm_forward(x, routing, packed, tuning))
        out["hybrid_forward_ms"] = _ms(lambda: hybrid_forward(x, routing, packed, tuning))
        out["layer_ms"] = _ms(lambda: system(x[None]))
        delta = torch.randn_like(x)
        out["residual_add_ms"] = _ms(lambda: x + delta)

        layout = sort_by_expert(routing)
        assignments = routing.expert_indices.numel()
        small = assignments <= tuning.small_rows
        sweep = {}
        if small:  # weight-streaming sizes: narrow tiles and deep k give more loads in flight per SM
            shapes = ((64, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3),
                      (64, 64, 128, 4, 3), (64, 32, 128, 4, 4), (32, 64, 128, 4, 4), (64, 64, 64, 4, 5),
                      (128, 32, 128, 4, 4), (64, 128, 128, 8, 3))
        else:
            shapes = ((128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 8, 3), (128, 256, 64, 8, 3),
                      (64, 128, 64, 4, 3))
        configs = [GemmConfig(*c) for c in shapes]
        for cfg in configs:
            if packed.any_gated and cfg.bm * cfg.bn > 128 * 64 and cfg.warps == 8:
                continue  # spills (see Tuning.up_large_gated)
            try:
                sweep[f"up {cfg}"] = _ms(lambda cfg=cfg: up_rows(x, layout, packed, cfg))
            except Exception as error:  # noqa: BLE001 - a config that does not fit is a result, not a crash
                sweep[f"up {cfg}"] = f"error: {str(error).splitlines()[0][:120]}"
        h = up_rows(x, layout, packed, tuning.up_small if small else tuning.up_large)
        pre_rows = torch._grouped_mm(gather_norm(x, layout, packed), packed.w1.transpose(1, 2),
                                     offs=layout.offsets)
        for cfg in configs:
            for prologue, a in ((False, h), (True, pre_rows)):
                key = f"down{' +act' if prologue else ''} {cfg}"
                try:
                    sweep[key] = _ms(lambda cfg=cfg, a=a, prologue=prologue: down_rows(
                        a, layout, packed, cfg, prologue))
                except Exception as error:  # noqa: BLE001
                    sweep[key] = f"error: {str(error).splitlines()[0][:120]}"
        out["gemm_sweep_ms"] = sweep
        out["tuning_in_use"] = {"small": small, **{k: str(v) for k, v in vars(tuning).items()}}

        gathered = torch.randn(assignments, hidden, device=device, dtype=x.dtype)
        out["grouped_mm_up_layouts_ms"] = _grouped_mm_layouts(gathered, packed.w1, layout.offsets)
        pre = torch._grouped_mm(gathered, packed.w1.transpose(1, 2), offs=layout.offsets)
        hidden_rows = torch.randn(assignments, packed.max_width, device=device, dtype=x.dtype)
        out["grouped_mm_down_ms"] = _ms(lambda: torch._grouped_mm(hidden_rows, packed.w2.transpose(1, 2),
                                                                  offs=layout.offsets))
        out["grouped_mm_up_out_shape"] = list(pre.shape)
        acts = {}
        for rows, cols, warps in ((8, 256, 4), (16, 256, 8), (4, 256, 4), (8, 512, 8), (16, 128, 4), (32, 128, 8)):
            shape = tuning.replace(act_rows=rows, act_cols=cols, act_warps=warps)
            acts[f"{rows}x{cols} w{warps}"] = _ms(lambda shape=shape: activate_rows(pre, layout, packed, shape))
        out["activate_sweep_ms"] = acts
        out["torch_gelu_same_shape_ms"] = _ms(lambda: torch.nn.functional.gelu(pre))

        dense = DenseFFN.matching(system).to(device, torch.bfloat16).eval()
        up_out = dense.up(x)
        out["dense_up_linear_ms"] = _ms(lambda: dense.up(x))
        out["dense_gelu_ms"] = _ms(lambda: torch.nn.functional.gelu(up_out))
        act = torch.nn.functional.gelu(up_out)
        out["dense_down_linear_ms"] = _ms(lambda: dense.down(act))
        out["dense_total_ms"] = _ms(lambda: dense(x))
        out["dense_units"] = dense.up.out_features
        # The achievable ceiling: one plain GEMM with the layer's row count and the dense FFN's shapes.
        a = torch.randn(assignments, hidden, device=device, dtype=x.dtype)
        b = torch.randn(hidden, dense.up.out_features // system.router.top_k, device=device, dtype=x.dtype)
        out["plain_gemm_ms"] = _ms(lambda: a @ b)
        out["plain_gemm_flops"] = 2.0 * assignments * hidden * b.shape[1]
    return out


def main(argv: list[str] | None = None) -> int:
    from pimoe.measure.layer_bench import BenchConfig, _build_system

    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--tokens", default="512,65536")
    parser.add_argument("--expert-types", default="typed", help="typed (the seven built-in types) or a type name")
    from pimoe.output_paths import output_file
    parser.add_argument("--json", type=output_file("results file"), required=True)
    args = parser.parse_args(argv)
    types = BenchConfig().expert_types if args.expert_types == "typed" else (args.expert_types,)
    system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", expert_types=types))
    system = system.to("cuda", torch.bfloat16)
    system.dispatch = "cuda_fast"
    result = {"environment": environment(), "expert_types": list(types), "sizes": {}}
    for tokens in (int(t) for t in args.tokens.split(",")):
        result["sizes"][tokens] = _stages(system, tokens)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({tokens: {k: v for k, v in result["sizes"][tokens].items() if k.endswith("_ms")}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
