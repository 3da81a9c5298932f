"""The benchmark-only backends (bench/backends.py) through Triton's CPU interpreter, against the plain-torch forward.

Runs only where Triton is installed and TRITON_INTERPRET=1 was set before it was imported, as
tests/cuda/test_kernels_interpreted.py (whose tile shapes it borrows); float32 and float16 cover the logic.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)
pytest.importorskip("triton")

from bench.backends import grouped_mm_forward, hybrid_forward  # noqa: E402
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig  # noqa: E402
from pimoe.cuda.grouped import torch_forward  # noqa: E402
from pimoe.cuda.packing import pack_experts  # noqa: E402
from pimoe.cuda.tuning import GemmConfig, Tuning  # noqa: E402

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")
SMALL_TILES = Tuning(small_rows=1 << 30, down_small=GemmConfig(16, 16, 16, 4, 1))
# BK 32 does not divide the 48-wide experts: the down GEMM's masked k
UNEVEN_TILES = SMALL_TILES.replace(down_small=GemmConfig(16, 16, 32, 4, 1))


def make_system(expert_types=TYPED, **router_kwargs) -> PiMoESystem:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=8, expert_types=expert_types,
                         router=RouterConfig(**router_kwargs), expert=ExpertConfig(intermediate_size=48))
    return PiMoESystem(config).eval()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_bench_backends_match_the_torch_grouped_forward(dtype, expert_types, capacity_factor) -> None:
    system = make_system(expert_types, top_k=2, capacity_factor=capacity_factor).to(dtype)
    x = torch.randn(45, 32).to(dtype)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, dtype, x.device)
        expected = torch_forward(x, routing, packed)
        results = {
            "hybrid": hybrid_forward(x, routing, packed, SMALL_TILES),
            "hybrid uneven": hybrid_forward(x, routing, packed, UNEVEN_TILES),
            "grouped_mm": grouped_mm_forward(x, routing, packed, SMALL_TILES),
        }
    tolerance = 1e-5 if dtype == torch.float32 else 3e-3
    for name, result in results.items():
        assert relative_error(result, expected) < tolerance, name


@pytest.mark.parametrize("backend", ["hybrid", "grouped_mm"])
def test_bench_backends_add_the_residual_in_the_combine_pass(backend: str) -> None:
    system = make_system(TYPED, top_k=2).to(torch.float32)
    x = torch.randn(45, 32)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        forward = {"hybrid": hybrid_forward, "grouped_mm": grouped_mm_forward}[backend]
        mixed, with_residual = (forward(x, routing, packed, SMALL_TILES, residual=r) for r in (False, True))
    torch.testing.assert_close(with_residual, x + mixed, rtol=1e-6, atol=1e-6)
