"""The training-step benchmark on the CPU: every contender timed, ratios from the measured times, MFU only where a peak
is known, and the grouped_mm baseline computing the layer's function and gradients (what makes the comparison fair)."""

from __future__ import annotations

import pytest
import torch

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.system import PiMoESystem
from pimoe.measure.flops import ffn_flops, moe_layer_flops, peak_flops
from pimoe.measure.grouped_mm_baseline import GroupedMMBaseline
from pimoe.measure.train_bench import (
    CONTENDERS,
    MAX_TOKENS,
    TrainBenchConfig,
    _time,
    run_train_benchmark,
    training_step,
)

TINY = {"hidden_size": 32, "num_experts": 4, "intermediate_size": 64, "warmup": 1, "repeats": 2}


@pytest.fixture(scope="module")
def sweep():
    calls = []
    rows, meta = run_train_benchmark(TrainBenchConfig(**TINY, tokens=(64, 16)),
                                     progress=lambda done, total, message: calls.append((done, total, message)))
    return rows, meta, calls


def test_every_contender_is_timed_at_every_token_count_in_ascending_order(sweep) -> None:
    rows, meta, _ = sweep
    assert [row.tokens for row in rows] == [16, 64]
    for row in rows:
        assert set(row.timings) == set(CONTENDERS)
        for name, timing in row.timings.items():
            assert timing.error is None, f"{name}: {timing.error}"
            assert 0 < timing.median_ms <= timing.p95_ms
            assert timing.tokens_per_s == pytest.approx(row.tokens / (timing.median_ms / 1e3))
    assert meta["device"] == "cpu" and meta["dtype"] == "float32" and meta["fast_path"] == "taken"
    assert meta["config"]["dense_intermediate_size"] == 2 * 64  # top-2 of experts 64 wide


def test_ratios_are_the_measured_times_divided(sweep) -> None:
    rows, _, _ = sweep
    for row in rows:
        ms = {name: t.median_ms for name, t in row.timings.items()}
        assert row.ratios["fast_vs_dense"] == pytest.approx(ms["fast"] / ms["dense"])
        assert row.ratios["fast_vs_grouped_mm"] == pytest.approx(ms["fast"] / ms["grouped_mm"])
        assert row.ratios["grouped_mm_vs_dense"] == pytest.approx(ms["grouped_mm"] / ms["dense"])
        flat = row.flat()
        assert flat["fast_median_ms"] == ms["fast"] and flat["fast_vs_dense"] == row.ratios["fast_vs_dense"]


def test_model_flops_count_router_and_active_experts_three_times(sweep) -> None:
    rows, _, _ = sweep
    hidden, experts, width, top_k = 32, 4, 64, 2
    per_token = 6 * (hidden * experts + top_k * 2 * hidden * width)
    for row in rows:
        assert row.model_gflop * 1e9 == pytest.approx(per_token * row.tokens)
        assert row.dense_gflop * 1e9 == pytest.approx(6 * 2 * hidden * top_k * width * row.tokens)
        fast = row.timings["fast"]
        assert fast.tflops == pytest.approx(row.model_gflop * 1e9 / (fast.median_ms / 1e3) / 1e12)


def test_mfu_is_none_on_the_cpu_and_flops_over_peak_on_a_known_card(sweep) -> None:
    rows, meta, _ = sweep
    assert meta["peak_tflops"] is None
    assert all(t.mfu is None for row in rows for t in row.timings.values())
    system = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4, expert_types=("language",) * 4, residual=False))
    x = torch.randn(1, 8, 32, requires_grad=True)
    timing = _time(system, x, torch.randn_like(x), TrainBenchConfig(**TINY), flops=1e6, peak=1e9)
    assert timing.mfu == pytest.approx(1e6 / (timing.median_ms / 1e3) / 1e9)


def test_progress_counts_every_contender_then_done(sweep) -> None:
    _, _, calls = sweep
    assert [done for done, _, _ in calls] == list(range(9))
    assert all(total == 8 for _, total, _ in calls)
    assert calls[0][2] == "16 tokens: fast" and calls[-1][2] == "done"


def test_a_contender_that_cannot_run_says_why_and_the_others_still_run() -> None:
    rows, meta = run_train_benchmark(TrainBenchConfig(**TINY, tokens=(8,), expert_type="reasoning",
                                                      include_sorted=False))
    (row,) = rows
    assert "norm" in row.timings["grouped_mm"].error and row.timings["grouped_mm"].median_ms is None
    assert row.timings["fast"].median_ms > 0 and row.timings["dense"].median_ms > 0
    assert "fast_vs_grouped_mm" not in row.ratios and "fast_vs_dense" in row.ratios
    assert "sorted" not in row.timings and "grouped_mm_rel_error" not in meta


@pytest.mark.parametrize("bad, message", [
    ({"tokens": ()}, "at least one"),
    ({"tokens": (0,)}, "token count"),
    ({"tokens": (MAX_TOKENS + 1,)}, "token count"),
    ({"tokens": (True,)}, "token count"),
    ({"top_k": 5}, "top_k"),
    ({"hidden_size": 10**6}, "hidden_size"),
    ({"dtype": "float8"}, "dtype"),
    ({"expert_type": "nonsense"}, "nonsense"),
])
def test_absurd_sizes_are_rejected_with_a_message_naming_them(bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainBenchConfig(**{**TINY, **bad})


def _uniform_layer(top_k: int, residual: bool, dispatch: str) -> PiMoESystem:
    torch.manual_seed(1)
    system = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4, expert_types=("language",) * 4,
                                     router=RouterConfig(top_k=top_k, temperature=0.7),
                                     expert=ExpertConfig(intermediate_size=64), residual=residual))
    system.dispatch = dispatch
    return system


def _grads(module, x, upstream) -> tuple[torch.Tensor, torch.Tensor]:
    training_step(module, x, upstream)()
    return module(x).detach(), x.grad.clone()


@pytest.mark.parametrize("dispatch", ["cuda_fast", "sorted"])
@pytest.mark.parametrize("top_k, residual", [(2, False), (1, True), (3, False)])
def test_grouped_mm_baseline_matches_the_layer_output_and_gradients(dispatch, top_k, residual) -> None:
    layer = _uniform_layer(top_k, residual, dispatch)
    baseline = GroupedMMBaseline(layer)
    x = torch.randn(1, 40, 32, requires_grad=True)
    upstream = torch.randn(1, 40, 32)
    out, x_grad = _grads(layer, x, upstream)
    base_out, base_x_grad = _grads(baseline, x, upstream)

    torch.testing.assert_close(base_out, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base_x_grad, x_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(baseline.gate.grad, layer.router.gate.weight.grad, atol=1e-5, rtol=1e-5)
    for e, expert in enumerate(layer.experts):
        torch.testing.assert_close(baseline.w1.grad[e], expert.up.weight.grad.t(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(baseline.b1.grad[e], expert.up.bias.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(baseline.w2.grad[e], expert.down.weight.grad.t(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(baseline.b2.grad[e], expert.down.bias.grad, atol=1e-5, rtol=1e-5)


def test_the_equality_check_catches_a_baseline_with_one_wrong_weight() -> None:
    layer = _uniform_layer(2, False, "sorted")
    baseline = GroupedMMBaseline(layer)
    with torch.no_grad():
        baseline.w2[3, 0, 0] += 0.5
    x = torch.randn(1, 40, 32)
    assert not torch.allclose(baseline(x), layer(x), atol=1e-5, rtol=1e-5)


def test_baseline_refuses_typed_experts_with_the_reason() -> None:
    typed = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4, expert_types=("language", "computation")))
    with pytest.raises(ValueError, match="one width and activation"):
        GroupedMMBaseline(typed)


def test_dense_peak_per_dtype_and_card() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA L40S", torch.bfloat16) == pytest.approx(362e12)  # not L4's: "L4" is in "L40S"
    assert peak_flops("NVIDIA L4", torch.bfloat16) == pytest.approx(121e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32) == pytest.approx(67e12)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # float32 matmuls on TF32 tensor cores
        assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32) == pytest.approx(494.7e12)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert peak_flops("x86_64", torch.float32) is None and peak_flops("NVIDIA H100", torch.float64) is None


def test_flop_helpers_agree_with_the_gemm_shapes() -> None:
    layer = _uniform_layer(2, False, "sorted")
    assert moe_layer_flops(layer, 10) == 6 * (32 * 4 + 2 * (32 * 64 * 2)) * 10
    from pimoe.layer.reference import DenseFFN

    assert ffn_flops(DenseFFN(32, 128), 10, training=False) == 2 * (2 * 32 * 128) * 10


def test_training_step_resets_gradients_each_step() -> None:
    layer = _uniform_layer(2, False, "cuda_fast")
    x = torch.randn(1, 12, 32, requires_grad=True)
    step = training_step(layer, x, torch.randn(1, 12, 32))
    step()
    once = (x.grad.clone(), layer.router.gate.weight.grad.clone())
    step()
    torch.testing.assert_close(x.grad, once[0])
    torch.testing.assert_close(layer.router.gate.weight.grad, once[1])
