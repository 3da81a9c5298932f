"""The differentiable fast path on the CPU: gradients equal the sorted dispatch's, the custom ops trace and compile.

The op's CPU implementation is the same code the GPU runs (torch._grouped_mm where it takes the dtype, else a loop
over experts), so these tests check the backward's arithmetic; tests/cuda/test_train_cuda.py repeats the parity on a
GPU and adds torch.compile with Inductor and CUDA-graph capture.
"""

from __future__ import annotations

import logging

import pytest
import torch

import pimoe.cuda  # noqa: F401  (registers cuda_fast)
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.cuda import fast_path, train_path
from pimoe.cuda.grouped import _TORCH_ACTS, sort_by_expert_torch
from pimoe.cuda.packing import ACT_CODES
from pimoe.cuda.train_ops import activation_grad, expert_mlp, gather_rows, grouped_weight_grad, moe_combine
from pimoe.layer.expert_types import known_expert_types

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical", "language")


def make_system(expert_types=TYPED, hidden=32, dtype=torch.float32, seed=0, **router_kwargs) -> PiMoESystem:
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=hidden, num_experts=len(expert_types), expert_types=expert_types,
                         router=RouterConfig(**router_kwargs), expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config)
    with torch.no_grad():  # norms away from their identity start, so the folded affine is exercised
        for expert in system.experts:
            for name in ("weight", "bias"):
                if (param := getattr(expert.norm, name, None)) is not None:
                    param.copy_(torch.randn_like(param) * 0.5 + (1.0 if name == "weight" else 0.0))
    return system.to(dtype)


def gradients(system: PiMoESystem, x: torch.Tensor, dispatch: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Output, input gradient and every parameter gradient of one backward through the layer with `dispatch`."""
    system.zero_grad(set_to_none=True)
    system.dispatch = dispatch
    x = x.detach().clone().requires_grad_()
    out, routing = system(x, return_routing_info=True)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    ((out * upstream).sum() + routing.router_loss).backward()
    return out.detach(), x.grad, {name: p.grad for name, p in system.named_parameters()}


def assert_same_gradients(system: PiMoESystem, x: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    out_ref, dx_ref, grads_ref = gradients(system, x, "sorted")
    out, dx, grads = gradients(system, x, "cuda_fast")
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(dx, dx_ref, atol=atol, rtol=rtol)
    for name, ref in grads_ref.items():
        assert (grads[name] is None) == (ref is None), name
        if ref is not None:
            torch.testing.assert_close(grads[name], ref, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("code", sorted(ACT_CODES.values()))
def test_activation_grad_matches_autograd(code: int) -> None:
    v = torch.linspace(-6, 6, 1001, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(_TORCH_ACTS[code](v).sum(), v)
    torch.testing.assert_close(activation_grad(code, v.detach()), expected, atol=1e-12, rtol=1e-10)


def test_weight_grad_sums_each_experts_rows_only() -> None:
    a, b = torch.randn(16, 8), torch.randn(16, 4)
    offsets = torch.tensor([4, 4, 12], dtype=torch.int32)  # expert 1 empty; rows 12.. dropped
    got = grouped_weight_grad(a, b, offsets)
    torch.testing.assert_close(got[0], a[:4].t() @ b[:4])
    assert torch.equal(got[1], torch.zeros(8, 4))
    torch.testing.assert_close(got[2], a[4:12].t() @ b[4:12])


def _library_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Spy on the library grouped GEMM (the real one still runs): the shapes of its first operand, per call."""
    from pimoe.cuda import train_ops

    calls: list[tuple[int, ...]] = []
    real = train_ops._library_grouped_mm

    def spy(a, b, offsets):
        calls.append(tuple(a.shape))
        return real(a, b, offsets)

    monkeypatch.setattr(train_ops, "_library_grouped_mm", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_odd_widths_take_the_library_on_padded_copies_with_the_loops_results(monkeypatch, dtype) -> None:
    """Hidden 13 and width 7 leave rows unaligned (a transposed weight's stride 13): the library takes zero-padded
    copies instead of a per-expert loop that reads the group ends on the host (which a CUDA graph capture refuses)."""
    from pimoe.cuda.train_ops import grouped_rows_matmul

    calls = _library_calls(monkeypatch)
    torch.manual_seed(0)
    xs, w1 = torch.randn(20, 13, dtype=dtype), torch.randn(3, 7, 13, dtype=dtype)  # w1 (E, N1, D) as the packs hold it
    dpre = torch.randn(20, 7, dtype=dtype)
    offsets = torch.tensor([6, 6, 17], dtype=torch.int32)  # expert 1 empty; rows 17.. dropped
    bounds = [(0, 6), (6, 6), (6, 17)]
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}

    up = grouped_rows_matmul(xs, w1.transpose(1, 2), offsets)
    grad = grouped_weight_grad(dpre, xs, offsets)
    assert up.shape == (20, 7) and up.is_contiguous() and grad.shape == (3, 7, 13) and grad.is_contiguous()
    assert calls == [(20, 16), (8, 20)], calls  # 13 -> 16 and 7 -> 8 columns (the weight gradient's a is transposed)
    for expert, (start, end) in enumerate(bounds):
        expected_up = xs[start:end].float() @ w1[expert].float().t()
        expected_grad = dpre[start:end].float().t() @ xs[start:end].float()
        torch.testing.assert_close(up[start:end].float(), expected_up, **tol)
        torch.testing.assert_close(grad[expert].float(), expected_grad, **tol)
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_hidden_no_multiple_of_eight_trains_without_reading_group_ends_on_the_host(monkeypatch) -> None:
    system = make_system(("language",) * 4, hidden=100, top_k=2)
    x = torch.randn(2, 9, 100)
    out_ref, dx_ref, grads_ref = gradients(system, x, "sorted")
    calls = _library_calls(monkeypatch)
    real_tolist = torch.Tensor.tolist

    def refuse_group_ends(t):
        if t.dtype in (torch.int32, torch.int64) and t.shape == (4,):
            raise AssertionError("the fast path read per-expert counts or group ends on the host")
        return real_tolist(t)

    monkeypatch.setattr(torch.Tensor, "tolist", refuse_group_ends)
    out, dx, grads = gradients(system, x, "cuda_fast")
    monkeypatch.undo()
    assert calls, "the training step never reached the library grouped GEMM"
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=0)
    for name, ref in grads_ref.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(("hidden", "width"), [(16, 1), (1, 4), (1, 1), (3, 5)])
def test_widths_and_hidden_sizes_down_to_one_train_like_the_sorted_dispatch(hidden: int, width: int) -> None:
    """An (A, 1) operand has unit strides on both dimensions, which torch._grouped_mm refuses ("strides should be
    multiple of 16 bytes" was raised here): such operands go to the library as padded copies."""
    torch.manual_seed(hidden * 10 + width)
    system = PiMoESystem(PiMoEConfig(hidden_size=hidden, num_experts=3, expert_types=("language",) * 3,
                                     router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=width)))
    assert_same_gradients(system, torch.randn(2, 24, hidden), atol=1e-5)  # every expert gets tokens


@pytest.mark.parametrize("expert_type", known_expert_types())
def test_each_expert_type_gradients_equal_the_sorted_dispatch(expert_type: str) -> None:
    system = make_system((expert_type,) * 4, top_k=2)
    assert_same_gradients(system, torch.randn(2, 21, 32), atol=1e-5)


@pytest.mark.parametrize("expert_types", [("language",) * 4, TYPED], ids=["uniform", "typed"])
def test_stacks_padded_past_the_widest_expert_keep_the_gradients(monkeypatch, expert_types) -> None:
    """On CUDA the stacks pad the widest expert to a multiple of 8 (`packing.padded_width`: the library's grouped
    GEMM takes no other bf16 width); here the CPU pads past it too, so the padded columns' masking is checked against
    the sorted dispatch, for a uniform pack (which then is no longer "full") and a typed one."""
    widths = []
    monkeypatch.setattr(train_path, "padded_width", lambda width, device: widths.append(width) or -(-width // 8) * 8 + 8)
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=len(expert_types), expert_types=expert_types,
                                     router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=50)))
    assert_same_gradients(system, torch.randn(2, 21, 32), atol=1e-5)
    assert widths  # the stacks asked


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_typed_layer_gradients_equal_the_sorted_dispatch_float32(top_k: int) -> None:
    assert_same_gradients(make_system(top_k=top_k), torch.randn(3, 17, 32), atol=1e-5)


def test_float64_layer_gradients_equal_the_sorted_dispatch_to_float64_accuracy() -> None:
    """Norms, combine weights and bias sums in float64 on both paths (the RMSNorm expert once normalised in float32
    whatever its input, and the bias sums came back float32): agreement to 1e-12, not float32's 1e-7."""
    assert_same_gradients(make_system(top_k=2, dtype=torch.float64), torch.randn(2, 21, 32, dtype=torch.float64),
                          atol=1e-12)


def test_norms_of_one_kind_with_different_eps_take_the_general_formula() -> None:
    system = make_system(("reasoning", "reasoning", "analytical", "language"), top_k=2)
    system.experts[1].norm.eps = 0.5  # large enough to change the result
    assert_same_gradients(system, torch.randn(2, 21, 32), atol=1e-5)
    from pimoe.cuda.train_path import train_pack

    assert train_pack(system.experts, torch.float32, torch.device("cpu")).meta.eps_by_code is None


def test_gradients_with_capacity_drops_and_masked_tokens() -> None:
    system = make_system(top_k=2, capacity_factor=0.6)
    x = torch.randn(2, 30, 32)
    out, routing = system(x, return_routing_info=True)
    assert routing.dropped.any(), "the test needs dropped assignments"
    assert_same_gradients(system, x, atol=1e-5)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 20:] = 0
    for dispatch in ("sorted", "cuda_fast"):
        system.dispatch = dispatch
        x_req = x.clone().requires_grad_()
        system(x_req, attention_mask=mask).sum().backward()
        if dispatch == "sorted":
            ref = x_req.grad
    torch.testing.assert_close(x_req.grad, ref, atol=1e-5, rtol=0)


def test_gradients_without_biases_and_without_gating() -> None:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=8, expert_types=TYPED, router=RouterConfig(top_k=2, use_gating=False),
                         expert=ExpertConfig(intermediate_size=48, bias=False))
    assert_same_gradients(PiMoESystem(config), torch.randn(2, 19, 32), atol=1e-5)


def test_bfloat16_gradients_within_bf16_tolerance() -> None:
    system = make_system(top_k=2)
    x = torch.randn(2, 24, 32)
    _, dx64, grads64 = gradients(make_system(top_k=2, dtype=torch.float64), x.double(), "sorted")
    _, dx, grads = gradients(system.to(torch.bfloat16), x.bfloat16(), "cuda_fast")
    rel = float((dx.double() - dx64).norm() / dx64.norm())
    assert rel < 2e-2, rel
    for name, ref in grads64.items():
        err = float((grads[name].double() - ref).norm() / ref.norm().clamp_min(1e-12))
        assert err < 3e-2, (name, err)


def test_training_call_takes_the_differentiable_path_and_inference_keeps_the_kernels(monkeypatch) -> None:
    system = make_system()
    system.dispatch = "cuda_fast"
    calls = []
    real_train, real_grouped = fast_path.train_dispatch, fast_path.grouped_forward
    monkeypatch.setattr(fast_path, "train_dispatch", lambda *a, **k: calls.append("train") or real_train(*a, **k))
    monkeypatch.setattr(fast_path, "grouped_forward", lambda *a, **k: calls.append("grouped") or real_grouped(*a, **k))
    x = torch.randn(2, 9, 32)
    system(x.requires_grad_())
    with torch.no_grad():
        system(x)
    assert calls == ["train", "grouped"]


def test_live_dropout_falls_back_visibly(caplog) -> None:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=32, num_experts=8, expert_types=TYPED, expert=ExpertConfig(intermediate_size=48,
                                                                                               dropout=0.1))
    system = PiMoESystem(config).train()
    system.dispatch = "cuda_fast"
    train_path._LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="pimoe.cuda.train_path"):
        torch.manual_seed(3)
        got = system(torch.randn(1, 8, 32, requires_grad=True))
    assert "live dropout p=0.1" in caplog.text
    assert got.requires_grad
    assert not fast_path.uses_fast_path(torch.randn(4, 32, requires_grad=True), system.experts)
    system.eval()  # dropout off: the differentiable path serves it
    assert fast_path.uses_fast_path(torch.randn(4, 32, requires_grad=True), system.experts)


def test_custom_ops_pass_opcheck() -> None:
    # no capacity drops for expert_mlp: rows past the groups are unspecified (whatever torch._grouped_mm left), and
    # opcheck compares every output element between eager and traced runs
    system = make_system(("reasoning", "computation", "mathematical", "creative"), hidden=16, top_k=2)
    x = torch.randn(12, 16)
    layout = sort_by_expert_torch(system.router(x))
    pack = train_path.train_pack(system.experts, torch.float32, x.device)
    meta = pack.meta
    args = (x[layout.sorted_token].requires_grad_(), layout.sorted_expert.clamp(max=3), layout.offsets,
            pack.w1.detach().requires_grad_(), pack.b1.detach().requires_grad_(), pack.w2.detach().requires_grad_(),
            meta.widths, meta.gated, meta.act, meta.act_codes, meta.any_gated, meta.full, meta.aligned)
    result = torch.library.opcheck(expert_mlp, args)
    assert set(result.values()) == {"SUCCESS"}, result
    system.router.config = RouterConfig(top_k=2, capacity_factor=0.8)
    routing = system.router(x)
    assert routing.dropped.any()
    layout = sort_by_expert_torch(routing)
    rows = torch.randn(layout.position.shape[0], 16, requires_grad=True)
    args = (rows, layout.position, layout.offsets, routing.expert_indices,
            routing.expert_weights.detach().requires_grad_(), pack.b2.detach().requires_grad_(), torch.float32)
    result = torch.library.opcheck(moe_combine, args)
    assert set(result.values()) == {"SUCCESS"}, result
    args = (x.clone().requires_grad_(), layout.sorted_token, layout.position, layout.offsets)
    result = torch.library.opcheck(gather_rows, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_compiled_layer_fullgraph_matches_eager() -> None:
    system = make_system(top_k=2)
    system.dispatch = "cuda_fast"
    x = torch.randn(2, 13, 32)
    _, dx_ref, grads_ref = gradients(system, x, "cuda_fast")
    compiled = torch.compile(system, fullgraph=True, backend="aot_eager")
    system.zero_grad(set_to_none=True)
    x_req = x.clone().requires_grad_()
    out, routing = compiled(x_req, return_routing_info=True)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    ((out * upstream).sum() + routing.router_loss).backward()
    torch.testing.assert_close(x_req.grad, dx_ref, atol=1e-6, rtol=0)
    for name, p in system.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[name], atol=1e-6, rtol=0)


def test_compiled_lm_fullgraph_trains() -> None:
    from pimoe.lm.model import LMConfig, PiMoELM

    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny())
    for block in model.blocks:
        block.moe.dispatch = "cuda_fast"
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(ids)
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                             ids[:, 1:].reshape(-1)) + out.router_loss
    loss.backward()
    expert_grad = model.blocks[0].moe.experts[0].up.weight.grad
    gate_grad = model.blocks[0].moe.router.gate.weight.grad
    assert expert_grad is not None and expert_grad.abs().sum() > 0
    assert gate_grad is not None and gate_grad.abs().sum() > 0


def test_rows_past_the_groups_never_reach_outputs_or_gradients(monkeypatch) -> None:
    """torch._grouped_mm on CUDA leaves rows past the last group unwritten: poison them and the results must hold."""
    from pimoe.cuda import train_ops

    real = train_ops.grouped_rows_matmul

    def poisoned(a, b, offsets):
        out = real(a, b, offsets)
        rows = torch.arange(out.shape[0]).unsqueeze(-1)
        return torch.where(rows >= offsets[-1], torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(train_ops, "grouped_rows_matmul", poisoned)
    system = make_system(top_k=2, capacity_factor=0.5)
    x = torch.randn(2, 30, 32)
    assert system(x, return_routing_info=True)[1].dropped.any()
    assert_same_gradients(system, x, atol=1e-5)


def test_eager_training_skips_the_dispatcher_and_compile_traces_the_custom_ops() -> None:
    """Eager calls take the autograd.Functions (no custom-op round trips); torch.compile's graph holds the custom ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class PimoeOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func).startswith("pimoe."):
                self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    system = make_system(top_k=2)
    system.dispatch = "cuda_fast"
    x = torch.randn(2, 7, 32, requires_grad=True)
    with PimoeOps() as eager:
        system(x).sum().backward()
    assert eager.seen == []

    traced: list[str] = []

    def recording_backend(graph_module, example_inputs):
        traced.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    torch._dynamo.reset()
    torch.compile(system, fullgraph=True, backend=recording_backend)(x).sum().backward()
    assert {"pimoe.gather_rows.default", "pimoe.expert_mlp.default", "pimoe.moe_combine.default"} <= set(traced), traced


@pytest.mark.parametrize("rows, experts, height, width, expected", [
    (65_536, 5, 1024, 512, True),    # the GPU preset's narrow class: 80 tiles on 132 SMs
    (65_536, 3, 512, 2048, True),    # its wide class's down-projection gradient: 96 tiles
    (131_072, 8, 2048, 512, False),  # eight uniform experts of 2,048: 256 tiles, enough to fill the card
    (16_384, 8, 512, 2048, False),
    (4_096, 5, 1024, 512, False),    # too few rows to cut
])
def test_weight_gradients_split_only_when_the_experts_tiles_leave_sms_idle(rows, experts, height, width, expected):
    from pimoe.cuda.train_ops import splits_weight_grads

    assert splits_weight_grads(rows, experts, height, width, 4096, sm_count=132) is expected
    assert not splits_weight_grads(rows, experts, height, width, 0, sm_count=132)  # split_rows 0: never
