"""Training and inference agree: the differentiable op's forward equals the Triton inference kernels' (interpreter).

Runs only with TRITON_INTERPRET=1 set before Triton is imported (see test_kernels_interpreted.py). The training path
itself has no Triton kernel (its GEMMs are torch._grouped_mm); this checks that a model trained through it computes
the function the inference kernels serve, so a trained checkpoint behaves the same at inference time.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)
pytest.importorskip("triton")

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig  # noqa: E402
from pimoe.cuda import launch  # noqa: E402
from pimoe.cuda.grouped import GemmConfig  # noqa: E402
from pimoe.cuda.packing import pack_experts  # noqa: E402
from pimoe.cuda.train_path import train_dispatch  # noqa: E402
from pimoe.layer.expert_types import known_expert_types  # noqa: E402

# Mixed widths, gating and activations in one pack. Left to the GPU tests (tests/cuda/test_train_cuda.py): packs that
# mix norms and packs of the creative type: under Triton 3.9's interpreter the inference up GEMM raises a TypeError
# inside the interpreter on both (test_kernels_interpreted.py's typed cases fail the same way there), so they say
# nothing about the training op.
MIXED = ("computation", "mathematical", "logical", "language")
INTERPRETABLE = [name for name in known_expert_types() if name != "creative"]
TILES = {"small_rows": 1 << 30, "up_small": GemmConfig(16, 16, 16, 4, 1), "down_small": GemmConfig(16, 16, 16, 4, 1),
         "up_act": GemmConfig(16, 16, 16, 4, 1), "up_act_gated": GemmConfig(16, 16, 16, 4, 1), "up_act_tma": False,
         "mixed_width_down": "library", "triton_down_rows": 0, "down_tma": False}


@pytest.mark.parametrize("expert_types", [MIXED] + [(name,) * 4 for name in INTERPRETABLE],
                         ids=["mixed", *INTERPRETABLE])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_training_forward_equals_the_inference_kernels(expert_types, capacity_factor) -> None:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=len(expert_types), expert_types=expert_types,
                         router=RouterConfig(top_k=2, capacity_factor=capacity_factor),
                         expert=ExpertConfig(intermediate_size=32))  # every width a multiple of 16
    system = PiMoESystem(config)
    x = torch.randn(45, 32, requires_grad=True)
    routing = system.router(x)
    trained = train_dispatch(x, routing, system.experts)
    assert trained.requires_grad
    with torch.no_grad():
        packed = pack_experts(system.experts, torch.float32, x.device)
        plain = x.detach()
        for name, served in {"triton": launch.triton_forward(plain, routing, packed, TILES),
                             "fused_up": launch.fused_up_forward(plain, routing, packed, TILES)}.items():
            torch.testing.assert_close(served, trained.detach(), atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
