"""Checks shared by the interpreter tests and the GPU tests."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

__all__ = ["kernel_gelu_error"]


def kernel_gelu_error(device: torch.device, rows: int = 4096) -> dict[str, float]:
    """The activation pass's GELU over a grid of [-12, 12] in float32, against float64 torch: max abs error, and max
    relative error where |x| < 6 (below that GELU's value underflows towards 0 and only the absolute error counts)."""
    from pimoe.cuda.ops.activate import activate_rows
    from pimoe.cuda.packing import pack_experts
    from pimoe.cuda.tuning import active_tuning
    from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
    from pimoe.layer.system import PiMoESystem

    config = PiMoEConfig(hidden_size=32, num_experts=1, expert_types=("language",), router=RouterConfig(top_k=1),
                         expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config).eval().to(device)
    packed = pack_experts(system.experts, torch.float32, device)
    packed = dataclasses.replace(packed, b1=torch.zeros_like(packed.b1))
    width = packed.max_width
    x = torch.linspace(-12.0, 12.0, rows * width, device=device).view(rows, width)
    layout = SimpleNamespace(sorted_expert=torch.zeros(rows, dtype=torch.int32, device=device))
    with torch.inference_mode():
        got = activate_rows(x, layout, packed, active_tuning()).double()
    ref = torch.nn.functional.gelu(x.double())
    error = (got - ref).abs()
    core = (x.abs() < 6) & (ref != 0)
    return {"max_abs": float(error.max()), "max_rel_core": float((error[core] / ref[core].abs()).max())}
