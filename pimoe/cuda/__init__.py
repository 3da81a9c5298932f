"""The GPU fast path of the PiMoE layer: fused router, counting sort, grouped GEMMs over padded typed experts.

Modules: packing (padded weight stacks, cached), grouped (layout, backends, the plain-torch mirror), launch (Triton
launchers), kernels / gemm / act_gemm (Triton kernels), fused_router, fast_path (the dispatcher), graphs (CUDA-graph
replay), benchmarking / breakdown (GPU measurement helpers), testing (checks shared by the CPU and GPU tests),
train_path / train_ops / train_kernels (the differentiable path: torch custom ops for autograd, torch.compile and
CUDA graphs).

Importing this package registers, in `pimoe.layer.dispatch`:
    DISPATCHERS["cuda_fast"]        the fast path, backend chosen by device and dtype (`dispatch="auto"` resolves to it
                                    for CUDA inputs; `pimoe.dispatch.preferred_dispatch` imports this package lazily)
    DISPATCHERS["cuda_triton"], ["cuda_hybrid"], ["cuda_grouped_mm"], ["cuda_fused_up"]   one backend each, for benchmarks and tests
    ROUTERS[name]                   the fused router, used by PiMoESystem with each of those strategies
    FUSED_RESIDUAL                  each of them: PiMoESystem passes residual=True and the combine kernel adds x
Triton is imported only when a CUDA call reaches a kernel, so CPU machines never import it.

Autograd and torch.compile calls take the differentiable custom ops (`train_path`) with the module's router; live
dropout falls back to the sorted dispatch, with the reason logged.
No host sync on the unmasked path; an attention mask costs one (nonzero), and so does `PiMoESystem.check_finite`.
See docs/performance.md.
"""

from __future__ import annotations

from pimoe.cuda.fast_path import BACKENDS, choose_backend, fast_dispatch, make_fast_dispatch, uses_fast_path
from pimoe.cuda.fused_router import fused_route, fused_route_applies
from pimoe.cuda.graphs import GraphedPiMoE
from pimoe.cuda.packing import PackedExperts, pack_experts
from pimoe.layer.dispatch import DISPATCHERS, FUSED_RESIDUAL, ROUTERS

__all__ = [
    "BACKENDS",
    "GraphedPiMoE",
    "PackedExperts",
    "choose_backend",
    "fast_dispatch",
    "fused_route",
    "fused_route_applies",
    "make_fast_dispatch",
    "pack_experts",
    "register",
    "uses_fast_path",
]

FAST_STRATEGIES = {"cuda_fast": "auto", "cuda_triton": "triton", "cuda_hybrid": "hybrid",
                   "cuda_grouped_mm": "grouped_mm", "cuda_fused_up": "fused_up"}


def register() -> None:
    """Add the fast strategies and their router to the registries (idempotent; runs on import)."""
    for name, backend in FAST_STRATEGIES.items():
        DISPATCHERS.setdefault(name, fast_dispatch if backend == "auto" else make_fast_dispatch(backend))
        ROUTERS.setdefault(name, fused_route)
        FUSED_RESIDUAL.add(name)


register()
