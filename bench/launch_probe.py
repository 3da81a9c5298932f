"""What one CUDA op costs the host on this machine, and the router's small kernels at 65,536 tokens x 8 experts.

    python bench/launch_probe.py

Prints: the CUDA / torch environment variables (a CUDA_LAUNCH_BLOCKING would make every eager number a sum of
kernel times), host µs per tiny add_ (launch cost), a Python-loop speed reference, and CUDA-event times of
torch.topk against argmax and of the float32 gate product against torch.mm(..., out_dtype=torch.float32) — the
measurements behind `pimoe.layer.router.top_k_indices` and `pimoe.layer.router_logits`.
"""

from __future__ import annotations

import os
import time
import timeit

import torch
import torch.nn.functional as F


def cuda_us(fn, repeats: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats * 1e3


def main() -> int:
    print({k: v for k, v in os.environ.items() if k.startswith(("CUDA_LAUNCH", "TORCH", "PYTORCH"))})
    print("card", torch.cuda.get_device_name(), "torch", torch.__version__, "cpus", os.cpu_count())
    x = torch.zeros(16, device="cuda")
    for calls in (10, 1000):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            x.add_(1)
        host = time.perf_counter() - start
        torch.cuda.synchronize()
        total = time.perf_counter() - start
        print(f"add_ x{calls}: host {host / calls * 1e6:.1f} µs/op, with sync {total / calls * 1e6:.1f} µs/op")
    print("python loop, 1e6 integer adds:", round(timeit.timeit("a += 1", "a = 0", number=1_000_000), 4), "s")
    probs = torch.rand(65536, 8, device="cuda").softmax(-1)
    print("topk k=2, 65,536 x 8:", round(cuda_us(lambda: torch.topk(probs, 2, dim=-1)), 1), "µs")
    print("argmax, 65,536 x 8:", round(cuda_us(lambda: probs.argmax(-1)), 1), "µs")
    tokens = torch.randn(65536, 512, device="cuda", dtype=torch.bfloat16)
    gate = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
    print("float32 gate product:", round(cuda_us(lambda: F.linear(tokens.float(), gate.float())), 1), "µs")
    mixed = torch.mm(tokens, gate.t(), out_dtype=torch.float32)
    print("bf16 mm, float32 out:", round(cuda_us(lambda: torch.mm(tokens, gate.t(), out_dtype=torch.float32)), 1),
          "µs; largest difference", (mixed - F.linear(tokens.float(), gate.float())).abs().max().item())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
