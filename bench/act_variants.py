"""The activation pass at 65,536 tokens (uniform bench layer, bf16): the engine's kernel against flat variants and
torch's GELU over the same buffer, triton.testing.do_bench (L2 flushed, median). Prints µs per pass."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from pimoe.cuda.fused_router import fused_route
from pimoe.cuda.ops.activate import activate_rows
from pimoe.cuda.ops.gather import gather_norm
from pimoe.cuda.ops.jit import apply_activation
from pimoe.cuda.ops.sort import sort_by_expert
from pimoe.cuda.packing import pack_experts
from pimoe.cuda.tuning import active_tuning
from pimoe.measure.layer_bench import BenchConfig, _build_system


@triton.jit
def flat_act_kernel(p_ptr, sorted_expert_ptr, b1_ptr, h_ptr, total, F, E, BLOCK: tl.constexpr, ACT: tl.constexpr,
                    BIAS: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    v = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if BIAS:
        row = offs // F
        col = offs - row * F
        expert = tl.minimum(tl.load(sorted_expert_ptr + row, mask=ok, other=0), E - 1)
        v += tl.load(b1_ptr + expert * F + col, mask=ok, other=0.0)
    tl.store(h_ptr + offs, apply_activation(v, ACT).to(h_ptr.dtype.element_ty), mask=ok)


def main() -> None:
    system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", expert_types=("language",)))
    system = system.to("cuda", torch.bfloat16)
    x = torch.randn(65536, 512, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        routing = fused_route(system.router, x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        layout = sort_by_expert(routing)
        pre = torch._grouped_mm(gather_norm(x, layout, packed), packed.w1.transpose(1, 2),
                                offs=layout.offsets)
        reference = activate_rows(pre, layout, packed, active_tuning())
        rows, width = pre.shape
        out = torch.empty_like(pre)
        results = {"engine activate_rows": do_bench(lambda: activate_rows(pre, layout, packed, active_tuning()),
                                                    return_mode="median"),
                   "torch gelu": do_bench(lambda: torch.nn.functional.gelu(pre), return_mode="median")}
        for block in (1024, 2048, 4096):
            for bias in (True, False):
                def run(block=block, bias=bias):
                    flat_act_kernel[(triton.cdiv(rows * width, block),)](
                        pre, layout.sorted_expert, packed.b1, out, rows * width, width, packed.num_experts,
                        BLOCK=block, ACT=0, BIAS=bias, num_warps=4)
                run()
                if bias:
                    kept = int(layout.offsets[-1])
                    assert torch.equal(out[:kept], reference[:kept]), "flat kernel differs"
                results[f"flat {block} bias={bias}"] = do_bench(run, return_mode="median")
    for name, ms in results.items():
        print(f"{name:28} {ms * 1e3:8.1f} µs")


if __name__ == "__main__":
    main()
