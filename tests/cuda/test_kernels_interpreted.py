"""The Triton kernels run on the CPU through Triton's interpreter, against the plain-torch versions.

Runs only where Triton is installed and TRITON_INTERPRET=1 was set before it was imported (a developer's check of
kernel logic without a GPU: `TRITON_INTERPRET=1 python -m pytest tests/cuda`); CI has no Triton and skips it, and
on a GPU tests/cuda/test_fast_path.py runs the same comparisons compiled. The interpreter multiplies bfloat16 as raw
bits, so bf16 is left to the GPU tests; float32 and float16 cover the logic. The benchmark-only backends
(bench/backends.py) are checked beside the engine's.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)
pytest.importorskip("triton")

from drawn_layers import build, draw  # noqa: E402
from routing_helpers import TYPED, assert_layouts_equal, fused_routing, make_system  # noqa: E402

from bench.backends import grouped_mm_forward, hybrid_forward  # noqa: E402
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig, register_expert_type  # noqa: E402
from pimoe.cuda.backends import fused_up_forward, triton_forward  # noqa: E402
from pimoe.cuda.grouped import torch_forward  # noqa: E402
from pimoe.cuda.layout import sort_by_expert_torch  # noqa: E402
from pimoe.cuda.ops.down_gemm import down_rows  # noqa: E402
from pimoe.cuda.ops.down_tma_gemm import down_tma_rows  # noqa: E402
from pimoe.cuda.ops.gather import gather_norm  # noqa: E402
from pimoe.cuda.ops.route import route_tokens  # noqa: E402
from pimoe.cuda.ops.sort import sort_by_expert  # noqa: E402
from pimoe.cuda.ops.up_act_gemm import up_act_gathered_rows, up_act_rows  # noqa: E402
from pimoe.cuda.packing import pack_experts  # noqa: E402
from pimoe.cuda.tuning import GemmConfig, Tuning, tuning_overrides  # noqa: E402

# 16-wide tiles fit the 32-wide test layers; no TMA (the interpreter's pointer loads), the library down GEMM
SMALL_TILES = Tuning(small_rows=1 << 30, up_small=GemmConfig(16, 16, 16, 4, 1), down_small=GemmConfig(16, 16, 16, 4, 1),
                     up_act=GemmConfig(16, 16, 16, 4, 1), up_act_gated=GemmConfig(16, 16, 16, 4, 1),
                     up_act_tma=False, mixed_width_down="library", triton_down_rows=0, down_tma=False)
# BN / BK 32 do not divide the 48-wide experts: the up GEMM's masked columns and the down GEMM's masked k
UNEVEN_TILES = SMALL_TILES.replace(up_small=GemmConfig(16, 32, 16, 4, 1), down_small=GemmConfig(16, 16, 32, 4, 1),
                                   up_act=GemmConfig(16, 32, 16, 4, 1), up_act_gated=GemmConfig(16, 32, 16, 4, 1))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("top_k", [1, 2])
def test_fused_router_reproduces_the_router_module(top_k: int) -> None:
    system = make_system(top_k=top_k, use_selection_bias=True)
    system.router.selection_bias[1] = 0.2
    x = torch.randn(45, 32)
    with torch.inference_mode():
        got = route_tokens(x, system.router.gate.weight, system.router.selection_bias, 0.7, top_k, True,
                           top_k > 1, 0.01, 1e-3, True, True)
        ref = system.router(x, temperature=0.7)
    assert torch.equal(got["expert_indices"], ref.expert_indices)
    assert torch.equal(got["tokens_per_expert"], ref.tokens_per_expert)
    for name in ("logits", "probs", "expert_weights", "entropy", "confidence"):
        torch.testing.assert_close(got[name], getattr(ref, name), rtol=1e-5, atol=1e-6)
    for name in ("load_balance_loss", "z_loss", "router_loss"):
        torch.testing.assert_close(got[name], getattr(ref, name), rtol=1e-5, atol=1e-7)


def test_fused_router_writes_each_tokens_own_position_without_a_launch_of_its_own(monkeypatch) -> None:
    from pimoe.cuda import fused_router

    monkeypatch.setattr(fused_router, "fused_route_applies", lambda router, x: True)  # the kernels, on the CPU
    system = make_system(top_k=2)
    x = torch.randn(45, 32)  # two router blocks, the second partly past T
    with torch.inference_mode():
        fields = route_tokens(x, system.router.gate.weight, None, 1.0, 2, True, True, 0.01, 1e-3, True, True,
                              write_positions=True)
        info = fused_router.fused_route(system.router, x, batch_shape=(5, 9))
    assert torch.equal(fields["token_positions"], torch.arange(45))
    assert torch.equal(info.token_positions, torch.arange(45)) and info.batch_shape == (5, 9)


def test_fused_router_on_half_precision_tensor_cores_picks_the_same_experts() -> None:
    system = make_system(top_k=2).to(torch.float16)
    x = torch.randn(45, 32).to(torch.float16)
    with torch.inference_mode(), tuning_overrides(router_native_dot=True):
        got = route_tokens(x, system.router.gate.weight, None, 1.0, 2, True, True, 0.01, 1e-3, True, True)
        ref = system.router(x)
    assert torch.equal(got["expert_indices"], ref.expert_indices)
    torch.testing.assert_close(got["probs"], ref.probs, rtol=1e-5, atol=1e-6)


def test_counting_sort_gives_the_stable_argsort_layout() -> None:
    system = make_system(top_k=2, capacity_factor=0.6)
    with torch.inference_mode():
        routing = system.router(torch.randn(70, 32))
    assert_layouts_equal(sort_by_expert(routing), sort_by_expert_torch(routing))


@pytest.mark.parametrize(("tokens", "num_experts", "top_k"), [(45, 8, 2), (1, 8, 1), (200, 6, 4), (97, 16, 2),
                                                              (33, 3, 3)])
def test_the_fused_routers_own_counts_replace_the_histogram_pass(monkeypatch, tokens, num_experts, top_k) -> None:
    from pimoe.cuda.ops import sort

    torch.manual_seed(tokens)
    config = PiMoEConfig(hidden_size=32, num_experts=num_experts, expert_types=("language",) * num_experts,
                         router=RouterConfig(top_k=top_k), expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config).eval()
    with torch.no_grad():
        routing = fused_routing(monkeypatch, system, torch.randn(tokens, 32))
    power_of_two_block = not (32 * top_k) & (32 * top_k - 1)  # 32-token router blocks of top_k assignments each
    expected = sort_by_expert_torch(routing)
    launches = []
    real_histogram = sort.histogram_kernel
    monkeypatch.setattr(sort, "histogram_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        launches.append(grid), real_histogram[grid])[1]})())
    assert_layouts_equal(sort_by_expert(routing), expected)
    assert len(launches) == (0 if power_of_two_block else 1)  # a block the place pass cannot take: its own pass
    # past the row limit the histogram pass runs, with the same layout
    assert_layouts_equal(sort_by_expert(routing, counted_rows=0), expected)
    assert len(launches) == (1 if power_of_two_block else 2)


def test_routing_edited_after_the_router_is_sorted_from_its_own_choices(monkeypatch) -> None:
    system = make_system(top_k=2)
    with torch.no_grad():
        routing = fused_routing(monkeypatch, system, torch.randn(45, 32))
        routing.expert_indices[:7] = torch.tensor([3, 5])  # in place: the counts the router kept no longer hold
        assert_layouts_equal(sort_by_expert(routing), sort_by_expert_torch(routing))
        replaced = fused_routing(monkeypatch, system, torch.randn(45, 32))
        replaced.expert_indices = replaced.expert_indices.flip(-1).roll(5, dims=0)
        assert_layouts_equal(sort_by_expert(replaced), sort_by_expert_torch(replaced))
        capped = fused_routing(monkeypatch, make_system(top_k=2, capacity_factor=0.6), torch.randn(45, 32))
        assert capped.dropped.any() and getattr(capped, "_router_counts", None) is None
        assert_layouts_equal(sort_by_expert(capped), sort_by_expert_torch(capped))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_kernel_backends_match_the_torch_grouped_forward(dtype, expert_types, capacity_factor) -> None:
    system = make_system(expert_types, top_k=2, capacity_factor=capacity_factor).to(dtype)
    x = torch.randn(45, 32).to(dtype)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, dtype, x.device)
        expected = torch_forward(x, routing, packed)
        results = {
            "triton": triton_forward(x, routing, packed, SMALL_TILES),
            "triton uneven": triton_forward(x, routing, packed, UNEVEN_TILES),
            "hybrid": hybrid_forward(x, routing, packed, SMALL_TILES),
            "hybrid uneven": hybrid_forward(x, routing, packed, UNEVEN_TILES),
            "grouped_mm": grouped_mm_forward(x, routing, packed, SMALL_TILES),
            "fused_up": fused_up_forward(x, routing, packed, SMALL_TILES),
            "fused_up uneven": fused_up_forward(x, routing, packed, UNEVEN_TILES),
            "fused_up small": fused_up_forward(x, routing, packed, SMALL_TILES.replace(triton_down_rows=1 << 30)),
            "fused_up small uneven": fused_up_forward(x, routing, packed,
                                                      UNEVEN_TILES.replace(triton_down_rows=1 << 30)),
            "fused_up triton down": fused_up_forward(x, routing, packed,
                                                     SMALL_TILES.replace(mixed_width_down="triton",
                                                                         down_large=GemmConfig(16, 16, 16, 4, 1))),
        }
    tolerance = 1e-5 if dtype == torch.float32 else 3e-3
    for name, result in results.items():
        assert relative_error(result, expected) < tolerance, name


# draws whose hidden size the kernels take (a multiple of 16), shrunk to what the interpreter runs in seconds
_DRAWN_SEEDS = [seed for seed in range(40) if draw(seed)["hidden"] % 16 == 0][:12]


@pytest.mark.parametrize("seed", _DRAWN_SEEDS)
def test_kernels_on_drawn_layers_match_the_torch_versions(monkeypatch, seed: int) -> None:
    config = draw(seed)
    config.update(hidden=min(config["hidden"], 144), width=min(config["width"], 300))
    system = build(config).eval()
    x = torch.randn(min(config["shape"][0] * config["shape"][1], 40), config["hidden"])
    with torch.inference_mode():
        fused = fused_routing(monkeypatch, system, x) if config["capacity"] is None else None
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        expected = torch_forward(x, routing, packed)
        results = {
            "triton": triton_forward(x, routing, packed, SMALL_TILES),
            "fused_up": fused_up_forward(x, routing, packed, SMALL_TILES.replace(triton_down_rows=1 << 30)),
            "fused_up uneven": fused_up_forward(x, routing, packed, UNEVEN_TILES.replace(triton_down_rows=1 << 30)),
        }
    for name, result in results.items():
        assert relative_error(result, expected) < 1e-5, (config, name)
    assert_layouts_equal(sort_by_expert(routing), sort_by_expert_torch(routing))
    if fused is not None:
        assert torch.equal(fused.expert_indices, routing.expert_indices), config
        torch.testing.assert_close(fused.expert_weights, routing.expert_weights, rtol=1e-5, atol=1e-6)
        assert_layouts_equal(sort_by_expert(fused), sort_by_expert_torch(fused))  # from the router's own counts


@pytest.mark.parametrize("backend", ["triton", "hybrid", "grouped_mm", "fused_up"])
def test_combine_adds_the_residual_in_the_same_pass(backend: str) -> None:
    system = make_system(TYPED, top_k=2).to(torch.float32)
    x = torch.randn(45, 32)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        forward = {"triton": triton_forward, "hybrid": hybrid_forward, "grouped_mm": grouped_mm_forward,
                   "fused_up": fused_up_forward}[backend]
        mixed, with_residual = (forward(x, routing, packed, SMALL_TILES, residual=r) for r in (False, True))
    torch.testing.assert_close(with_residual, x + mixed, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("even_n", [True, False])
def test_up_gemm_without_column_masks_advances_every_operand(even_n: bool) -> None:
    """Widths that are multiples of BN take the unmasked weight loads (EVEN_N), with several k steps and a gated
    expert: each of the gate and up halves must walk the whole hidden size."""
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=64, num_experts=8, expert_types=TYPED, router=RouterConfig(top_k=2),
                         expert=ExpertConfig(intermediate_size=64))
    system = PiMoESystem(config).eval()
    widths = [expert.width for expert in system.experts]
    assert all(w % 32 == 0 for w in widths) and any(e.gated for e in system.experts)
    tiles = Tuning(small_rows=1 << 30, up_small=GemmConfig(16, 32, 16, 4, 1), down_small=GemmConfig(16, 16, 16, 4, 1),
                   up_even_n=even_n)
    x = torch.randn(30, 64)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        expected = torch_forward(x, routing, packed)
        got = triton_forward(x, routing, packed, tiles)
    assert relative_error(got, expected) < 1e-5


def _nan_filled(empty):
    def allocate(*args, **kwargs):
        tensor = empty(*args, **kwargs)
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor
    return allocate


def _columns_read(layout, packed, pad_to: int | None) -> torch.Tensor:
    """(A, F) mask of the hidden columns a reader takes: each row's expert's width rounded up to pad_to (every
    column with None)."""
    experts = layout.sorted_expert.clamp(max=packed.num_experts - 1).long()
    widths = torch.tensor(packed.widths_host)[experts]
    ends = torch.full_like(widths, packed.max_width) if pad_to is None else (widths + pad_to - 1) // pad_to * pad_to
    return torch.arange(packed.max_width)[None, :] < ends[:, None]


@pytest.mark.parametrize("pad_to", [None, 16, 1], ids=["zeros everywhere", "zeros to 16", "no zeros"])
@pytest.mark.parametrize("use_tma", [False, True, "split"], ids=["pointers", "tma", "tma, gated apart"])
@pytest.mark.parametrize("expert_types", [TYPED, ("language",), ("mathematical",),
                                          ("mathematical", "language", "computation"),
                                          ("mathematical", "language", "wide")],
                         ids=["typed", "uniform", "all gated", "gated widest", "plain wider than the gated up rows"])
def test_up_gemm_with_activation_epilogue_matches_torch(use_tma: bool, expert_types, pad_to, monkeypatch) -> None:
    """Several k steps, row tiles that straddle experts and reach past the last row, a gated expert whose up half
    sits right after its gate rows (with TMA: the halves kernel, also where the gated expert's up rows are the pack's
    widest): the epilogue's hidden rows equal act(xs @ W1^T + b1) (gated: times the up half) and are zero past each
    expert's width as far as `pad_to` asks (the creative expert's 72 columns reach 80)."""
    from pimoe.cuda.grouped import _activate_rows, grouped_matmul

    register_expert_type("wide", activation="relu", width_multiplier=3.0)  # gated programs with zero tiles only
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=64, num_experts=8, expert_types=expert_types, router=RouterConfig(top_k=2),
                         expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config).eval()
    x = torch.randn(37, 64)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        layout = sort_by_expert_torch(routing)
        gathered = x[layout.sorted_token.long()]
        experts = layout.sorted_expert.clamp(max=7).long()
        pre = grouped_matmul(gathered, packed.w1, layout) + packed.b1[experts]
        expected = _activate_rows(pre, experts, packed)
        with monkeypatch.context() as patch:  # NaN where the kernel writes nothing, not a fresh page's zeros
            patch.setattr(torch, "empty", _nan_filled(torch.empty))
            # "split": the gated experts at their own tiles (BM 32: the grids' row bounds differ between launches)
            apart = dict(gated_cfg=GemmConfig(32, 32, 16, 4, 1), tokens=x.shape[0]) if use_tma == "split" else {}
            got = up_act_rows(gathered, layout, packed, GemmConfig(16, 32, 16, 4, 1), bool(use_tma), pad_to=pad_to,
                              **apart)
    kept = int(layout.offsets[-1])
    read = _columns_read(layout, packed, pad_to)[:kept]
    torch.testing.assert_close(got[:kept][read], expected[:kept][read], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("expert_types", [("language",), ("computation", "logical", "language", "creative")],
                         ids=["uniform", "plain widths 48-96"])
@pytest.mark.parametrize("tokens", [37, 3])
def test_up_gemm_reading_the_tokens_equals_it_over_gathered_rows(expert_types, tokens, monkeypatch) -> None:
    """The up GEMM that reads each sorted row from its token (no gathered copy, rows past an expert masked) writes
    what the TMA up GEMM writes over the gathered rows, wherever the down GEMM reads, for row tiles that straddle
    experts and a batch smaller than one tile."""
    torch.manual_seed(tokens)
    config = PiMoEConfig(hidden_size=64, num_experts=8, expert_types=expert_types, router=RouterConfig(top_k=2),
                         expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config).eval()
    x = torch.randn(tokens, 64)
    cfg = GemmConfig(16, 32, 16, 4, 1)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        layout = sort_by_expert(routing)
        expected = up_act_rows(gather_norm(x, layout, packed), layout, packed, cfg, True, pad_to=16)
        with monkeypatch.context() as patch:  # NaN where the kernel writes nothing
            patch.setattr(torch, "empty", _nan_filled(torch.empty))
            got = up_act_gathered_rows(x, layout, packed, cfg, pad_to=16, tokens=tokens)
    read = _columns_read(layout, packed, 16)
    torch.testing.assert_close(got[read], expected[read], rtol=1e-6, atol=1e-6)
    assert not got[read].isnan().any()


def test_up_gemm_reading_the_tokens_refuses_gated_or_normed_packs() -> None:
    for expert_types in (("mathematical", "language"), ("reasoning",)):
        system = make_system(expert_types)
        packed = pack_experts(system.experts, torch.float32, torch.device("cpu"))
        with torch.inference_mode():
            layout = sort_by_expert(system.router(torch.randn(5, 32)))
        with pytest.raises(ValueError, match="plain experts without norms"):
            up_act_gathered_rows(torch.randn(5, 32), layout, packed, GemmConfig(16, 16, 16, 4, 1))


def _down_gemm_case(expert_types):
    """A 37-token batch routed over 8 experts of hidden 64 (widths 48-96): its input, routing, pack, layout and the
    up GEMM's hidden rows (zero past every width), the inputs of the down GEMM."""
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=64, num_experts=8, expert_types=expert_types, router=RouterConfig(top_k=2),
                         expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config).eval()
    x = torch.randn(37, 64)
    with torch.inference_mode():
        routing = system.router(x)
        packed = pack_experts(system.experts, x.dtype, x.device)
        layout = sort_by_expert(routing)
        hidden_rows = up_act_rows(gather_norm(x, layout, packed), layout, packed, GemmConfig(16, 16, 16, 4, 1),
                                  use_tma=False)
    return x, routing, packed, layout, hidden_rows


@pytest.mark.parametrize("block_k", [16, 32])
def test_down_gemm_with_tma_loads_reads_no_column_past_the_padded_width(block_k: int) -> None:
    """The contract `up_act_rows(pad_to=BK)` relies on: NaN in every hidden column past an expert's width rounded up
    to the down GEMM's BK leaves its output unchanged."""
    _, _, packed, layout, hidden_rows = _down_gemm_case(TYPED)
    tile = GemmConfig(16, 16, block_k, 4, 1)
    with torch.inference_mode():
        expected = down_tma_rows(hidden_rows, layout, packed, tile)
        poisoned = hidden_rows.masked_fill(~_columns_read(layout, packed, block_k), float("nan"))
        got = down_tma_rows(poisoned, layout, packed, tile)
    kept = int(layout.offsets[-1])
    assert torch.isnan(poisoned[:kept]).any()
    torch.testing.assert_close(got[:kept], expected[:kept], rtol=0, atol=0)


@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
def test_down_gemm_with_tma_loads_matches_the_pointer_load_one(expert_types) -> None:
    """Row tiles that straddle experts and reach past the last row, several k steps, experts of different widths
    (each reduced over its own width): the TMA down GEMM gives the pointer-load one's bias-and-weight rows."""
    _, _, packed, layout, hidden_rows = _down_gemm_case(expert_types)
    tile = GemmConfig(16, 16, 16, 4, 1)
    with torch.inference_mode():
        expected = down_rows(hidden_rows, layout, packed, tile, prologue_act=False)
        got = down_tma_rows(hidden_rows, layout, packed, tile)
    kept = int(layout.offsets[-1])
    torch.testing.assert_close(got[:kept], expected[:kept], rtol=1e-5, atol=1e-5)


def test_gelu_of_the_kernels_is_as_accurate_as_torchs_float32_gelu() -> None:
    """The kernels' GELU (a Chebyshev fit of erfc instead of libdevice's erff) against float64."""
    from pimoe.cuda.testing import kernel_gelu_error

    error = kernel_gelu_error(torch.device("cpu"), rows=64)
    assert error["max_abs"] < 1e-6, error
    assert error["max_rel_core"] < 1e-5, error


@pytest.mark.parametrize("expert_types, use_tma, rows, expected", [
    (("mathematical",), True, 10_000, ("up_act_all_gated", None)),
    (("mathematical",), True, 100, ("up_act_all_gated", None)),
    (("mathematical",), False, 10_000, ("up_act_gated", None)),
    (("mathematical",), False, 100, ("up_act_gated_small", None)),
    (TYPED, True, 1_000, ("up_act_gated", None)), (TYPED, True, 100, ("up_act_gated_small", None)),
    (TYPED, True, 5_000, ("up_act", "up_act_all_gated")),
    (TYPED, False, 5_000, ("up_act_gated", None)),
    (("language",), True, 5_000, ("up_act", None)), (("language",), True, 100, ("up_act_small", None))])
def test_up_gemm_tiles_follow_the_pack_the_loader_and_the_row_count(expert_types, use_tma, rows, expected) -> None:
    """An all-gated pack (every Hugging Face family) keeps 64 hidden columns per program in the TMA halves kernel
    (BN 128); the pointer-load kernel holds two (BM, BN) accumulators and keeps the narrower gated tiles; up to
    `triton_down_rows` rows the small shapes serve; from `up_act_split_rows` rows a mixed pack's gated experts take a
    TMA launch of their own."""
    from pimoe.cuda.backends import _up_act_configs

    packed = pack_experts(make_system(expert_types).experts, torch.float32, torch.device("cpu"))
    # every shape distinct, so the test tells which field was read
    shapes = {name: GemmConfig(16 * (i + 1), 16, 16, 4, 1) for i, name in enumerate(
        ("up_act", "up_act_small", "up_act_gated", "up_act_gated_small", "up_act_all_gated"))}
    tuning = Tuning(triton_down_rows=500, up_act_split_rows=5_000).replace(**shapes)
    got = _up_act_configs(packed, tuning, use_tma, rows)
    assert got == tuple(None if name is None else getattr(tuning, name) for name in expected)
