"""The CUDA fast path on a GPU: equality with the float64 reference, no host sync, graph replays, automatic choice.

All tests here need CUDA (tests/conftest.py skips `gpu`-marked tests elsewhere). The benchmark-only backends
(`cuda_hybrid`, `cuda_grouped_mm`, bench/backends.py) run through the same checks as the engine's.
"""

from __future__ import annotations

import logging

import pytest
import torch

from bench.backends import STRATEGIES as BENCH_STRATEGIES
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.reference import reference_forward

pytestmark = pytest.mark.gpu

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")
TOLERANCE = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3, torch.float32: 1e-4}


def make_system(expert_types=TYPED, hidden=64, seed=0, residual=False, **router_kwargs) -> PiMoESystem:
    """residual=False by default: the checks measure the experts' contribution itself. With the residual, the bf16
    rounding of x + delta (relative to |x|) would be charged to delta, which is several times smaller."""
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=hidden, num_experts=8, expert_types=expert_types, residual=residual,
                         router=RouterConfig(**router_kwargs), expert=ExpertConfig(intermediate_size=128))
    system = PiMoESystem(config).eval()
    system.check_finite = False
    return system


def use_dispatch(system: PiMoESystem, name: str) -> None:
    """A registered strategy by name, or a benchmark-only one from bench/backends.py."""
    if name in BENCH_STRATEGIES:
        system.use_strategy(BENCH_STRATEGIES[name])
    else:
        system.dispatch = name


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm())


def poison_allocator(device: torch.device, megabytes: int = 256) -> None:
    """Fill freed blocks of the caching allocator with NaN, so an unwritten output element shows up."""
    block = torch.full((megabytes * 2**20 // 4,), float("nan"), device=device)
    del block


def check_against_reference(system: PiMoESystem, dtype: torch.dtype, mask=None, batch=3, seq=37) -> None:
    x64 = torch.randn(batch, seq, system.hidden_size, dtype=torch.float64)
    cuda_system = system.to("cuda", dtype)
    x = x64.to("cuda", dtype)
    cuda_mask = None if mask is None else mask.to("cuda")
    poison_allocator(x.device)
    with torch.inference_mode():
        out = cuda_system(x, attention_mask=cuda_mask)
    assert torch.isfinite(out).all(), "an output element was never written"
    # float64 reference from the same (rounded) weights and inputs
    ref = reference_forward(cuda_system.cpu().double(), x.cpu().double(), attention_mask=mask)
    error = relative_error(out, ref)
    assert error < TOLERANCE[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dispatch", ["cuda_fast", "cuda_triton", "cuda_hybrid", "cuda_grouped_mm", "cuda_fused_up"])
@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
def test_each_backend_matches_float64_reference_per_dtype(dtype, dispatch, expert_types) -> None:
    if dispatch in ("cuda_hybrid", "cuda_grouped_mm", "cuda_fused_up") and dtype != torch.bfloat16:
        pytest.skip("torch._grouped_mm takes bf16")
    system = make_system(expert_types, top_k=2, capacity_factor=0.7)
    use_dispatch(system, dispatch)
    check_against_reference(system, dtype)


@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("case", ["balanced", "skewed", "capacity", "masked"])
def test_bf16_fast_path_matches_float64_reference(expert_types, top_k, case) -> None:
    system = make_system(expert_types, top_k=top_k, capacity_factor=0.5 if case == "capacity" else None,
                         use_selection_bias=case == "skewed")
    if case == "skewed":
        system.router.selection_bias[0] = 1.0
    mask = None
    if case == "masked":
        mask = torch.ones(3, 37)
        mask[1, 20:] = 0
    system.dispatch = "cuda_fast"
    check_against_reference(system, torch.bfloat16, mask=mask)


def test_large_batch_spans_many_tiles_per_expert() -> None:
    system = make_system(hidden=128, top_k=2)
    system.dispatch = "cuda_fast"
    check_against_reference(system, torch.bfloat16, batch=4, seq=2048)


@pytest.mark.parametrize("case", ["balanced", "skewed", "capacity"])
def test_gated_experts_in_a_launch_of_their_own_match_the_reference(case: str) -> None:
    """`Tuning.up_act_split_rows` 0 forces the two up launches (plain experts, gated ones) at any size; a skewed
    router puts most rows on one expert, so one class's grid holds many rows and the other's few."""
    from pimoe.cuda.tuning import tuning_overrides

    system = make_system(top_k=2, capacity_factor=0.5 if case == "capacity" else None,
                         use_selection_bias=case == "skewed")
    if case == "skewed":
        system.router.selection_bias[2] = 1.0  # the gated "mathematical" expert
    system.dispatch = "cuda_fast"
    with tuning_overrides(up_act_split_rows=0):
        check_against_reference(system, torch.bfloat16, batch=4, seq=301)


@pytest.mark.parametrize("expert_types", [("language",), ("computation", "logical", "language", "creative"), TYPED],
                         ids=["uniform", "plain widths", "typed"])
@pytest.mark.parametrize("case", ["balanced", "skewed", "capacity"])
@pytest.mark.parametrize("tokens", [1, 301, 1500])
def test_up_gemm_reading_rows_from_the_tokens_matches_the_reference(expert_types, case, tokens) -> None:
    """`Tuning.up_gather_rows` forces the up GEMM that reads its rows from the tokens (no gather pass) at any size;
    packs with gated experts or norms keep the gathered copy."""
    from pimoe.cuda.tuning import tuning_overrides

    system = make_system(expert_types, top_k=2, capacity_factor=0.5 if case == "capacity" else None,
                         use_selection_bias=case == "skewed")
    if case == "skewed":
        system.router.selection_bias[1] = 1.0
    system.dispatch = "cuda_fast"
    with tuning_overrides(up_gather_rows=1 << 30):
        check_against_reference(system, torch.bfloat16, batch=1, seq=tokens)


def test_launch_shapes_past_the_gpus_shared_memory_run_in_fewer_stages(caplog) -> None:
    """Eight stages of the small up and down tiles need 262 and 393 KB, past any GPU's block (227 KB on Hopper): the
    launches run in the most stages that fit, say so once, and compute the same layer."""
    from pimoe.cuda.tuning import GemmConfig, tuning_overrides

    system = make_system(("language",), hidden=256, top_k=2)
    system.dispatch = "cuda_fast"
    deep = dict(up_act_small=GemmConfig(128, 128, 64, 8, 8), down_tma_small=GemmConfig(128, 64, 128, 8, 8))
    with caplog.at_level(logging.WARNING, logger="pimoe.cuda.ops.launch_options"), tuning_overrides(**deep):
        check_against_reference(system, torch.bfloat16, batch=1, seq=300)
    assert "pipeline stages need more shared memory" in caplog.text


def test_fused_router_gives_the_modules_routing() -> None:
    system = make_system(top_k=2).to("cuda", torch.bfloat16)
    from pimoe.cuda import fused_route

    x = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = system.router(x)
        got = fused_route(system.router, x)
    assert torch.equal(got.expert_indices, ref.expert_indices)
    assert torch.equal(got.tokens_per_expert, ref.tokens_per_expert)
    torch.testing.assert_close(got.expert_weights, ref.expert_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.load_balance_loss, ref.load_balance_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.z_loss, ref.z_loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("dispatch", "capacity_factor"),
                         [("cuda_fast", None), ("cuda_fast", 0.8), ("cuda_hybrid", None), ("cuda_grouped_mm", None),
                          ("cuda_fused_up", None)])
def test_unmasked_forward_never_syncs_with_the_host(dispatch, capacity_factor) -> None:
    system = make_system(top_k=2, capacity_factor=capacity_factor).to("cuda", torch.bfloat16)
    use_dispatch(system, dispatch)
    x = torch.randn(2, 100, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        system(x)  # compile kernels, pack weights
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, routing = system(x, return_routing_info=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out.shape == x.shape and routing.num_tokens == 200


def test_graph_replays_equal_eager_calls_and_follow_weight_updates() -> None:
    from pimoe.cuda import GraphedPiMoE

    system = make_system(top_k=2, residual=True).to("cuda", torch.bfloat16)
    graphed = GraphedPiMoE(system)
    with torch.inference_mode():
        for _ in range(3):
            x = torch.randn(2, 50, 64, device="cuda", dtype=torch.bfloat16)
            assert torch.equal(graphed(x), system(x))
        with torch.no_grad():
            system.experts[3].down.bias.add_(0.5)
        x = torch.randn(2, 50, 64, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(graphed(x), system(x)), "a weight update must reach the graph"
        system.router.temperature = 0.3
        assert torch.equal(graphed(x), system(x)), "a router setting must reach the graph"


def test_graph_replayed_before_its_check_survives_replaced_and_freed_weights() -> None:
    """The replay is issued before the weight check: when a parameter was replaced (its old storage freed and the
    cache emptied), that first replay must read nothing freed, and the result must come from the new weights."""
    from pimoe.cuda import GraphedPiMoE

    system = make_system(top_k=2, residual=True).to("cuda", torch.bfloat16)
    graphed = GraphedPiMoE(system, clone_output=False)
    x = torch.randn(2, 50, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        graphed(x)
    expert = system.experts[2]
    expert.up.weight = torch.nn.Parameter(torch.randn_like(expert.up.weight))
    system.router.gate.weight = torch.nn.Parameter(torch.randn_like(system.router.gate.weight))
    with torch.inference_mode():
        system(x)  # repacks: the old pack is dropped from the cache
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    with torch.inference_mode():
        for _ in range(2):
            got = graphed(x).clone()
            torch.cuda.synchronize()
            assert torch.equal(got, system(x))


def test_auto_dispatch_picks_the_fast_path_for_an_eval_model_on_cuda() -> None:
    system = make_system(top_k=2).to("cuda").eval()
    x = torch.randn(1, 16, 64, device="cuda")
    assert system.dispatch == "auto"
    assert system.choose_dispatch(x) == "cuda_fast"
    with torch.inference_mode():
        fast = system(x)
    system.dispatch = "sorted"
    with torch.inference_mode():
        slow = system(x)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_auto_backend_follows_size_and_dtype() -> None:
    from pimoe.cuda import choose_backend
    from pimoe.cuda.tuning import active_tuning

    tuning = active_tuning()
    x = torch.empty(4, 64, device="cuda", dtype=torch.bfloat16)
    large = tuning.switch_rows + 1
    assert choose_backend(x, "auto", tuning.switch_rows) == tuning.small_backend == "fused_up"
    assert choose_backend(x, "auto", large) == tuning.large_backend == "fused_up"
    assert choose_backend(x.float(), "auto", large) == "triton"


def test_kernel_gelu_is_as_accurate_as_torchs_float32_gelu() -> None:
    from pimoe.cuda.testing import kernel_gelu_error

    error = kernel_gelu_error(torch.device("cuda"))
    assert error["max_abs"] < 1e-6, error
    assert error["max_rel_core"] < 1e-5, error


def test_training_on_cuda_still_backpropagates() -> None:
    system = make_system(top_k=2).to("cuda").train()
    out = system(torch.randn(2, 8, 64, device="cuda"))
    out.pow(2).mean().backward()
    assert system.router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dispatch", ["cuda_fast", "cuda_triton", "cuda_grouped_mm", "cuda_fused_up"])
def test_residual_added_in_the_combine_pass_equals_x_plus_the_mixture(dispatch: str) -> None:
    system = make_system(("language",), hidden=128, residual=True).to("cuda", torch.bfloat16)
    use_dispatch(system, dispatch)
    mixture_only = make_system(("language",), hidden=128, residual=False).to("cuda", torch.bfloat16)
    use_dispatch(mixture_only, dispatch)
    x = torch.randn(2, 300, 128, device="cuda", dtype=torch.bfloat16)
    poison_allocator(x.device)
    with torch.inference_mode():
        fused = system(x)
        separate = x.float() + mixture_only(x).float()
    assert torch.isfinite(fused).all()
    # one bf16 rounding of x + y against two: within a unit in the last place of |x + y|
    torch.testing.assert_close(fused.float(), separate, rtol=1e-2, atol=1e-2)


def test_tensor_core_router_picks_the_modules_experts_at_full_width() -> None:
    system = make_system(hidden=512, top_k=2).to("cuda", torch.bfloat16)
    from pimoe.cuda import fused_route

    x = torch.randn(8192, 512, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = system.router(x)
        got = fused_route(system.router, x)
    assert torch.equal(got.expert_indices, ref.expert_indices)
    torch.testing.assert_close(got.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.probs, ref.probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dispatch", ["cuda_triton", "cuda_grouped_mm", "cuda_fused_up"])
@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
def test_benchmark_sized_layer_matches_float32(dispatch: str, expert_types) -> None:
    """The benchmark's shapes (d 512, widths 2048-4096, eight k steps per tile): the small test layers above run one
    k step, which once hid a gated weight pointer that never advanced."""
    from pimoe.measure.graph_timing import float32_error

    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=512, num_experts=8, expert_types=expert_types,
                         expert=ExpertConfig(intermediate_size=2048))
    system = PiMoESystem(config).eval().to("cuda", torch.bfloat16)
    use_dispatch(system, dispatch)
    result = float32_error(system, torch.randn(1, 512, 512, device="cuda", dtype=torch.bfloat16))
    assert result["rel_error"] < 1e-2, result
