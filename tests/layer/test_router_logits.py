"""The router's gate product: float32 logits from a bf16 tensor-core GEMM on CUDA, the float32 product elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pimoe.layer.router_logits import router_logits


def test_cpu_and_float32_inputs_take_the_float32_product() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(33, 16, dtype=torch.bfloat16), torch.randn(5, 16, dtype=torch.bfloat16)
    logits = router_logits(x, weight)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, F.linear(x.float(), weight.float()), atol=0, rtol=0)


@pytest.mark.gpu
def test_bf16_cuda_logits_and_gradients_match_the_float32_product() -> None:
    """The bf16 GEMM multiplies the same bf16 values with float32 accumulation: logits equal the float32 product up to
    summation order; gradients differ only by the upstream gradient's rounding to bf16 (relative error ~2^-9)."""
    torch.manual_seed(0)
    x = torch.randn(4096, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (0.05 * torch.randn(8, 512, device="cuda")).to(torch.bfloat16).requires_grad_()
    upstream = torch.randn(4096, 8, device="cuda")
    logits = router_logits(x, weight)
    assert logits.dtype == torch.float32
    (logits * upstream).sum().backward()
    x_ref, weight_ref = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    reference = F.linear(x_ref, weight_ref)
    (reference * upstream.double()).sum().backward()
    torch.testing.assert_close(logits.double(), reference, atol=1e-4, rtol=1e-5)
    for got, want in ((x.grad, x_ref.grad), (weight.grad, weight_ref.grad)):
        assert got.dtype == torch.bfloat16
        error = float((got.double() - want).norm() / want.norm())
        assert error < 8e-3, error  # bf16 output rounding (2^-9) plus the upstream's
