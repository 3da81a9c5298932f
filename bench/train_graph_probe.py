"""Which training calls of a PiMoE layer can be captured as CUDA graphs, and does a failed capture leave the device's
random generator usable? Calls `GraphedTraining` directly (past the layer's own rules) for each case and prints what
happened: replayed and equal to eager, or the capture's error, then whether `torch.randn` still works on the device.

    python bench/train_graph_probe.py [--tokens 96] [--hidden 64]
"""

from __future__ import annotations

import argparse
import copy
import traceback

import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.cuda.train_graph import GraphedTraining


def layer(hidden: int, dtype: torch.dtype, typed: bool) -> PiMoESystem:
    torch.manual_seed(0)
    types = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical") if typed \
        else ("language",)
    config = PiMoEConfig(hidden_size=hidden, num_experts=8, expert_types=types,
                         router=RouterConfig(top_k=2, z_loss_weight=1e-3),
                         expert=ExpertConfig(intermediate_size=2 * hidden))
    system = PiMoESystem(config).train().to("cuda", dtype)
    system.check_finite, system.auto_cuda_graphs = False, False
    return system


def case(name: str, system: PiMoESystem, x_requires_grad: bool, routing: bool, tokens: int) -> None:
    eager = copy.deepcopy(system)
    graphed = GraphedTraining(system)
    dtype = next(system.parameters()).dtype
    try:
        for _ in range(3):
            x = torch.randn(1, tokens, system.config.hidden_size, device="cuda", dtype=dtype)
            x.requires_grad_(x_requires_grad)
            result = graphed(x, return_routing_info=routing)
            out = result[0] if routing else result
            out.float().square().sum().backward()
            x_e = x.detach().clone().requires_grad_(x_requires_grad)
            ref = eager(x_e, return_routing_info=routing)
            ref = ref[0] if routing else ref
            ref.float().square().sum().backward()
        torch.cuda.synchronize()
        error = (out.float() - ref.float()).abs().max().item()
        grad_error = max((p.grad.float() - q.grad.float()).abs().max().item()
                         for p, q in zip(system.parameters(), eager.parameters(), strict=True) if p.grad is not None)
        outcome = f"replayed; max |out - eager| {error:.2e}, max |grad - eager| {grad_error:.2e} (3 steps accumulated)"
    except Exception as error:  # the point is to see which error a capture meets
        lines = traceback.format_exception_only(type(error), error)
        outcome = "FAILED: " + " ".join(line.strip() for line in lines)[:400]
    try:
        torch.randn(4, device="cuda")
        torch.cuda.synchronize()
        rng = "randn ok"
    except Exception as error:
        rng = f"randn FAILED: {str(error)[:160]}"
    print(f"{name:<44} {outcome} | {rng}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    for typed in (False, True):
        for dtype in (torch.bfloat16, torch.float32):
            for x_grad in (True, False):
                for routing in (False, True):
                    name = (f"{'typed' if typed else 'uniform'} {str(dtype)[6:]} x.requires_grad={x_grad} "
                            f"routing={routing}")
                    case(name, layer(args.hidden, dtype, typed), x_grad, routing, args.tokens)


if __name__ == "__main__":
    main()
