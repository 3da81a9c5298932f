"""Quantised and cast copies really change the arithmetic, stay close to float, and are measured honestly."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pimoe import PiMoEConfig, PiMoESystem
from pimoe.optimize.quantize import (
    Int8WeightOnlyLinear,
    cast_system,
    compare_outputs,
    count_int8_linears,
    quantize_dynamic_int8,
    quantize_weight_int8,
    routing_changes,
    storage_bytes,
    weight_int8_supported,
)


@pytest.fixture(scope="module")
def system() -> PiMoESystem:
    torch.manual_seed(0)
    return PiMoESystem(PiMoEConfig.tiny()).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))


def test_dynamic_int8_replaces_every_expert_linear_with_int8_weights(system):
    quantized = quantize_dynamic_int8(system)
    assert count_int8_linears(quantized) == 2 * system.num_experts
    assert count_int8_linears(system) == 0  # the original is untouched
    for expert in quantized.experts:
        for layer in (expert.up, expert.down):
            weight, _ = layer._weight_bias()
            assert weight.dtype == torch.qint8
            assert weight.int_repr().dtype == torch.int8


def test_dynamic_int8_output_is_close_to_float_but_not_identical(system, x):
    report = compare_outputs(system, quantize_dynamic_int8(system), x, repeats=2, warmup=1)
    assert 0.0 < report.relative_delta_error < 0.05
    assert report.relative_error < report.relative_delta_error  # the shared residual input hides error
    assert report.max_abs_error > 0.0


def test_report_quotes_its_speedup_with_its_error(system, x):
    report = compare_outputs(system, quantize_dynamic_int8(system), x, repeats=2, warmup=1)
    claim = report.to_dict()["claim"]
    assert claim.startswith(f"{report.speedup:.2f}×") and f"{report.relative_error:.2e}" in claim
    assert f"MoE contribution {report.relative_delta_error:.2e}" in claim


def test_router_stays_float32_so_single_layer_routing_is_unchanged(system, x):
    quantized = quantize_dynamic_int8(system)
    assert type(quantized.router.gate) is nn.Linear
    assert quantized.router.gate.weight.dtype == torch.float32
    report = compare_outputs(system, quantized, x, repeats=2, warmup=1)
    assert report.top1_changed == 0 and report.topk_set_changed == 0


def test_int8_copy_stores_about_a_third_of_the_float_bytes(system, x):
    report = compare_outputs(system, quantize_dynamic_int8(system), x, repeats=2, warmup=1)
    # int8 weights are a quarter of float32; float biases, per-row scales and the float router add the rest.
    assert 0.25 < report.storage_ratio < 0.4


def test_storage_bytes_of_a_float_model_is_its_parameters_and_buffers(system):
    expected = sum(p.numel() * p.element_size() for p in system.parameters())
    expected += sum(b.numel() * b.element_size() for b in system.buffers())
    assert storage_bytes(system) == expected


def test_storage_bytes_counts_packed_int8_weight_scales_and_bias():
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with pytest.warns((DeprecationWarning, UserWarning)):
        layer = quantize_dynamic(nn.Sequential(nn.Linear(24, 10)), {nn.Linear: per_channel_dynamic_qconfig},
                                 dtype=torch.qint8)
    # 10 x 24 int8 weights, a float64 scale and an int64 zero point per row, a float32 bias.
    assert storage_bytes(layer) == 10 * 24 * 1 + 10 * 8 + 10 * 8 + 10 * 4


def test_cast_to_bfloat16_keeps_router_in_float32(system, x):
    cast = cast_system(system, "bfloat16")
    assert cast.router.gate.weight.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in cast.experts.parameters())
    out = cast(x.bfloat16())
    assert out.dtype == torch.bfloat16
    report = compare_outputs(system, cast, x, repeats=2, warmup=1)
    assert 0.0 < report.relative_delta_error < 0.1
    assert report.storage_ratio < 0.6


def test_cast_rejects_an_unknown_dtype(system):
    with pytest.raises(ValueError, match="dtype"):
        cast_system(system, "int4")
    with pytest.raises(ValueError, match="dtype"):
        cast_system(system, torch.int8)


def test_weight_only_linear_equals_a_float_linear_with_dequantised_weights():
    torch.manual_seed(0)
    linear = nn.Linear(32, 48)
    packed = Int8WeightOnlyLinear(linear)
    assert packed.weight_int8.dtype == torch.int8
    x = torch.randn(5, 7, 32)
    expected = F.linear(x, packed.dequantized_weight(), linear.bias)
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
    quantization_error = (packed.dequantized_weight() - linear.weight).abs().max()
    assert 0 < quantization_error <= linear.weight.abs().max() / 127 / 2 + 1e-6  # at most half an int8 step


def test_weight_only_int8_system_is_close_to_float(system, x):
    assert weight_int8_supported("cpu", torch.float32)
    quantized = quantize_weight_int8(system)
    assert count_int8_linears(quantized) == 2 * system.num_experts
    report = compare_outputs(system, quantized, x, repeats=2, warmup=1)
    assert 0.0 < report.relative_delta_error < 0.05
    assert report.storage_ratio < 0.4


@pytest.mark.gpu
def test_weight_only_int8_runs_on_cuda_in_bfloat16(system, x):
    if not weight_int8_supported("cuda", torch.bfloat16):
        pytest.skip("this torch build has no CUDA int8 weight-only kernel for bf16")
    reference = copy.deepcopy(system).cuda()
    quantized = quantize_weight_int8(reference, dtype=torch.bfloat16)
    report = compare_outputs(reference, quantized, x.cuda(), repeats=2, warmup=1)
    assert 0.0 < report.relative_delta_error < 0.1


@pytest.mark.gpu
@torch.no_grad()
def test_bfloat16_cast_gives_the_same_output_through_the_cuda_fast_path_and_sorted_dispatch(system, x):
    cast = cast_system(copy.deepcopy(system).cuda(), "bfloat16")
    x_cuda = x.cuda().bfloat16()
    fast = cast(x_cuda)
    cast.dispatch = "sorted"
    torch.testing.assert_close(fast.float(), cast(x_cuda).float(), rtol=2e-2, atol=2e-2)


def test_compare_outputs_counts_changed_routing_decisions(system, x):
    identical = compare_outputs(system, copy.deepcopy(system), x, repeats=2, warmup=1)
    assert identical.relative_error == 0.0 and identical.top1_changed == 0
    rerouted = copy.deepcopy(system)
    with torch.no_grad():
        rerouted.router.gate.weight.copy_(rerouted.router.gate.weight.flip(0))  # expert e now scores as E-1-e did
    report = compare_outputs(system, rerouted, x, repeats=2, warmup=1)
    assert report.top1_changed > 0
    assert report.topk_set_changed >= 1
    assert report.tokens == x.shape[0] * x.shape[1]


def test_routing_changes_ignore_the_order_within_the_top_k_set(system, x):
    _, routing = system(x, return_routing_info=True)
    swapped = copy.copy(routing)
    swapped.expert_indices = routing.expert_indices.flip(-1)
    changes = routing_changes(routing, swapped)
    assert changes["topk_set_changed"] == 0
    assert changes["top1_changed"] == routing.num_tokens  # top-2 distinct experts: every best choice moved


def test_compare_outputs_gives_the_models_their_training_mode_back(system, x):
    candidate = copy.deepcopy(system).train()
    compare_outputs(system, candidate, x, repeats=1, warmup=0)
    assert candidate.training and not system.training


def test_compare_outputs_rejects_bad_repeats(system, x):
    with pytest.raises(ValueError, match="repeats"):
        compare_outputs(system, system, x, repeats=0)
