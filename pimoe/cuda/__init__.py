"""The GPU fast path of the PiMoE layer: fused router, counting sort, grouped GEMMs over padded typed experts.

Modules: packing (padded weight stacks, cached), layout (expert order, plain-torch sort), grouped (backend choice and
the plain-torch mirror), backends (the Triton backends "triton" and "fused_up"), ops/ (one Triton op per module: kernels
and launcher), tuning (launch shapes, a frozen `Tuning`), fused_router, fast_path (the dispatcher), graphs (CUDA-graph
replay), testing (checks shared by the CPU and GPU tests), train_path / train_ops and ops/train_* (the differentiable
path: torch custom ops for autograd, torch.compile and CUDA graphs). Benchmark-only backends and measuring scripts live
in bench/.

Its strategies (`cuda_fast` and one per engine backend) are registered in `pimoe.layer.strategies`.
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
    "uses_fast_path",
]
