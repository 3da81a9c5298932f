"""Training options for the GPU: the bf16 autocast precision, the GPU-size preset, tokens/s and MFU reporting."""

from __future__ import annotations

import pytest
import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.recipe import PRESETS, format_throughput, run_throughput
from pimoe.lm.train import StepRecord, TrainConfig
from pimoe.measure.flops import lm_flops_per_token, mfu, moe_layer_flops, peak_bf16_flops


def test_precision_auto_is_bf16_on_cuda_and_float32_on_cpu() -> None:
    assert TrainConfig(device="cuda").autocast_bf16
    assert not TrainConfig(device="cpu").autocast_bf16
    assert TrainConfig(device="cpu", precision="bf16").autocast_bf16
    assert not TrainConfig(device="cuda", precision="float32").autocast_bf16
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")


def test_gpu_preset_has_tens_of_millions_of_parameters_and_kernel_friendly_shapes() -> None:
    config = PRESETS["gpu"]()
    assert config == LMConfig.gpu()
    model = PiMoELM(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 20e6 <= parameters <= 99e6, parameters
    widths = [e.width for e in model.blocks[0].moe.experts]
    assert config.hidden_size % 64 == 0 and all(w % 64 == 0 for w in widths)


def test_layer_flops_count_the_router_and_top_k_experts_three_times_for_training() -> None:
    config = PiMoEConfig(hidden_size=16, num_experts=4, expert_types=("language",) * 4,
                         router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=32))
    system = PiMoESystem(config)
    per_token_forward = 2 * (16 * 4 + 2 * (16 * 32 + 32 * 16))
    assert moe_layer_flops(system, 10, training=False) == pytest.approx(10 * per_token_forward)
    assert moe_layer_flops(system, 10) == pytest.approx(30 * per_token_forward)


def test_lm_flops_per_token_follow_6n_plus_attention() -> None:
    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny())
    config = model.config
    d = config.hidden_size
    expert_mean = sum(e.up.weight.numel() + e.down.weight.numel() for e in model.blocks[0].moe.experts) / 4
    per_layer = 4 * d * d + d * 4 + 2 * expert_mean
    expected = 6 * (config.num_layers * per_layer + d * config.vocab_size) + 12 * config.num_layers * d * 64
    assert lm_flops_per_token(model, 64) == pytest.approx(expected)


def test_peak_lookup_and_mfu() -> None:
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_bf16_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert peak_bf16_flops("NVIDIA H200") == pytest.approx(989.4e12)
    assert peak_bf16_flops("cpu") is None
    assert mfu(989.4e12 * 0.5, 1.0, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert mfu(1.0, 1.0, "cpu") is None


def _record(step: int, tokens: int, ms: float) -> StepRecord:
    return StepRecord(step=step, loss=0.0, lm_loss=0.0, load_balance_loss=0.0, z_loss=0.0, supervised_loss=0.0, load=[],
                      routing_accuracy=0.0, routing_accuracy_per_layer=[], tokens_per_s=tokens / (ms / 1e3),
                      step_ms=ms, lr=0.0, temperature=1.0, load_balance_weight=0.0, selection_bias=[])


def test_throughput_skips_warm_up_steps_and_has_no_mfu_on_cpu() -> None:
    model = PiMoELM(LMConfig.tiny())
    records = [_record(1, 100, 1000.0)] + [_record(i, 100, 10.0) for i in range(2, 12)]
    stats = run_throughput(records, model, TrainConfig(device="cpu", seq_len=32))
    assert stats["timed_steps"] == 6  # min(5, 11 // 2) = 5 warm-up steps left out
    assert stats["tokens_per_s"] == pytest.approx(10_000.0)
    assert stats["mfu"] is None


@pytest.mark.parametrize(("precision", "peak_dtype", "peak"), [("auto", "bfloat16", 989.4e12),
                                                             ("bf16", "bfloat16", 989.4e12),
                                                             ("float32", "float32", 67.0e12)])
def test_mfu_is_taken_against_the_peak_of_the_precision_the_step_ran_in(monkeypatch, precision, peak_dtype,
                                                                        peak) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    model = PiMoELM(LMConfig.tiny())
    records = [_record(i, 1000, 10.0) for i in range(12)]
    stats = run_throughput(records, model, TrainConfig(device="cuda", seq_len=32, precision=precision))
    assert stats["peak_dtype"] == peak_dtype and stats["peak_tflops"] == pytest.approx(peak / 1e12)
    assert stats["mfu"] == pytest.approx(lm_flops_per_token(model, 32) * 100_000 / peak)
    assert f"of the {peak_dtype} peak" in format_throughput(stats)
