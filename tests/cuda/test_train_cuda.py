"""Training on the CUDA fast path: gradient parity, no host sync, torch.compile(fullgraph=True), plain CUDA graphs.

All tests need CUDA (tests/conftest.py skips `gpu`-marked tests elsewhere). The CPU tests of the same op are in
test_train_path.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from drawn_layers import grads_of

import pimoe.cuda  # noqa: F401
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.cuda import fast_path
from pimoe.lm.model import LMConfig, PiMoELM

pytestmark = pytest.mark.gpu

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical", "language")
DEVICE = "cuda"


def make_system(expert_types=TYPED, hidden=64, seed=0, residual=True, **router_kwargs) -> PiMoESystem:
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=hidden, num_experts=len(expert_types), expert_types=expert_types,
                         residual=residual, router=RouterConfig(top_k=2, **router_kwargs),
                         expert=ExpertConfig(intermediate_size=128))
    return PiMoESystem(config)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_float32_gradients_equal_the_sorted_dispatch(capacity_factor) -> None:
    system = make_system(capacity_factor=capacity_factor).to(DEVICE)
    x = torch.randn(3, 41, 64, device=DEVICE)
    ref = grads_of(system, x, "sorted")
    got = grads_of(system, x, "cuda_fast")
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    assert got[2].keys() == ref[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("expert_types", [TYPED, ("language",) * 8], ids=["typed", "uniform"])
def test_bf16_autocast_gradients_are_as_close_to_float64_as_the_sorted_dispatchs(expert_types) -> None:
    """bf16 tolerance, measured: under autocast both paths round GEMM inputs and weight gradients to bf16; the fast
    path's error against float64 must stay within a small factor of the sorted dispatch's own."""
    system = make_system(expert_types)
    x = torch.randn(4, 64, 64)
    ref = grads_of(system.double().to(DEVICE), x.double().to(DEVICE), "sorted")
    system.float()
    sorted_bf16 = grads_of(system, x.to(DEVICE), "sorted", autocast=True)
    fast_bf16 = grads_of(system, x.to(DEVICE), "cuda_fast", autocast=True)
    for index, label in ((0, "output"), (1, "input grad")):
        assert relative(fast_bf16[index], ref[index]) <= 1.5 * relative(sorted_bf16[index], ref[index]) + 5e-3, label
    for name in ref[2]:
        fast_error, sorted_error = relative(fast_bf16[2][name], ref[2][name]), relative(sorted_bf16[2][name], ref[2][name])
        assert fast_error <= 1.5 * sorted_error + 5e-3, (name, fast_error, sorted_error)


def test_training_takes_the_differentiable_path_on_cuda(monkeypatch) -> None:
    system = make_system().to(DEVICE, torch.bfloat16)
    calls = []
    real = fast_path.train_dispatch
    monkeypatch.setattr(fast_path, "train_dispatch", lambda *a, **k: calls.append(1) or real(*a, **k))
    system(torch.randn(2, 16, 64, device=DEVICE, dtype=torch.bfloat16)).sum().backward()
    assert calls == [1]
    assert system.experts[0].up.weight.grad is not None


def test_bf16_training_step_reads_nothing_back_to_the_host() -> None:
    system = make_system().to(DEVICE, torch.bfloat16)
    system.check_finite = False
    x = torch.randn(4, 128, 64, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    system(x).float().square().mean().backward()  # warm-up: Triton and cuBLAS set-up, the pack's constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, routing = system(x, return_routing_info=True)
        (out.float().square().mean() + routing.router_loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_float32_training_through_the_grouped_rows_kernels_matches_and_reads_nothing_back() -> None:
    """torch._grouped_mm takes bf16 only on CUDA; with `grouped_rows_kernels` a float32 layer's expert GEMMs run as
    Triton kernels (`ops.grouped_rows`): gradients as the sorted dispatch's, and no host sync in the step."""
    from pimoe.cuda.tuning import tuning_overrides

    system = make_system().to(DEVICE)
    x = torch.randn(3, 41, 64, device=DEVICE)
    ref = grads_of(system, x, "sorted")
    with tuning_overrides(grouped_rows_kernels=True):
        got = grads_of(system, x, "cuda_fast")
        for name in ref[2]:
            torch.testing.assert_close(got[2][name], ref[2][name], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
        system.check_finite = False
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, routing = system(x.clone().requires_grad_(), return_routing_info=True)
            (out.square().mean() + routing.router_loss).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_float32_trainer_with_a_whole_step_graph_through_the_grouped_rows_kernels() -> None:
    from pimoe.cuda.tuning import tuning_overrides

    with tuning_overrides(grouped_rows_kernels=True):
        eager, graphed = twin_trainers(steps=8, warmup=2, num_train=128, base={"precision": "float32"},
                                       cuda_graph=True)
        for index in range(7):
            want, got = eager.step(), graphed.step()
            assert abs(got.loss - want.loss) < 1e-3 * abs(want.loss), index
    assert graphed._step_graph.captures == 1 and graphed._step_graph.replays == 4


def test_compiled_layer_fullgraph_forward_and_training_step_match_eager() -> None:
    system = make_system().to(DEVICE, torch.bfloat16)
    x = torch.randn(4, 128, 64, device=DEVICE, dtype=torch.bfloat16)
    eager = grads_of(system, x, "cuda_fast")
    compiled = torch.compile(system, fullgraph=True)
    with torch.no_grad():
        out = compiled(x)
    assert relative(out.double().cpu(), eager[0]) < 1e-2
    system.zero_grad(set_to_none=True)
    x_req = x.clone().requires_grad_()
    out, routing = compiled(x_req, return_routing_info=True)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    ((out * upstream).sum() + routing.router_loss).backward()
    assert relative(x_req.grad.double().cpu(), eager[1]) < 2e-2
    for name, p in system.named_parameters():
        assert relative(p.grad.double().cpu(), eager[2][name]) < 2e-2, name


def lm_loss(model, ids):
    out = model(ids)
    logits = out.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)) + out.router_loss


def small_lm() -> PiMoELM:
    torch.manual_seed(0)
    config = LMConfig.demo()
    return PiMoELM(config).to(DEVICE)


def test_compiled_lm_fullgraph_training_step_under_autocast() -> None:
    model = small_lm()
    for block in model.blocks:
        block.moe.check_finite = False
    ids = torch.randint(0, model.config.vocab_size, (4, 64), device=DEVICE)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = lm_loss(compiled, ids)
        ref_loss = lm_loss(reference, ids)
    loss.backward()
    ref_loss.backward()
    assert abs(float(loss) - float(ref_loss)) < 2e-2
    got = model.blocks[0].moe.experts[2].up.weight.grad
    want = reference.blocks[0].moe.experts[2].up.weight.grad
    assert relative(got.double().cpu(), want.double().cpu()) < 5e-2


def capture_training_step(model, ids, optimizer):
    """Warm up on a side stream, then capture zero_grad + forward + backward + optimizer step in one plain graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                loss = lm_loss(model, ids)
            loss.backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        # NOTE: the autocast weight-cast cache must be off inside a capture (torch.cuda.make_graphed_callables' rule)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            static_loss = lm_loss(model, ids)
        static_loss.backward()
        optimizer.step()
    return graph, static_loss


def test_plain_cuda_graph_captures_an_lm_training_step() -> None:
    model = small_lm()
    for block in model.blocks:
        block.moe.check_finite = False
    twin = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, (4, 64), device=DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3, capturable=True)
    graph, static_loss = capture_training_step(model, ids, optimizer)
    # the twin takes the same number of eager steps: 3 warm-ups + 1 inside the capture... the capture does not
    # execute, so 3 warm-up steps; then each replay is one more step on both
    for _ in range(3):
        twin_optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lm_loss(twin, ids).backward()
        twin_optimizer.step()
    for _ in range(3):
        graph.replay()
        twin_optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            twin_loss = lm_loss(twin, ids)
        twin_loss.backward()
        twin_optimizer.step()
        assert abs(float(static_loss) - float(twin_loss)) < 3e-2
    assert torch.isfinite(static_loss)


def test_plain_cuda_graph_captures_the_layer_forward_and_a_training_step() -> None:
    system = make_system().to(DEVICE, torch.bfloat16)
    x = torch.randn(2, 256, 64, device=DEVICE, dtype=torch.bfloat16)
    # inference forward (the Triton inference kernels)
    system.eval()
    with torch.no_grad():
        expected = system(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = system(x)
        graph.replay()
    torch.testing.assert_close(static_out, expected, atol=2e-2, rtol=2e-2)
    # training step: forward + backward + SGD through the differentiable op
    system.train()
    optimizer = torch.optim.SGD(system.parameters(), lr=1e-2)
    x_req = x.clone().requires_grad_()

    def step():
        optimizer.zero_grad(set_to_none=False)
        out, routing = system(x_req, return_routing_info=True)
        loss = out.float().square().mean() + routing.router_loss
        loss.backward()
        optimizer.step()
        return loss

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    twin = copy.deepcopy(system)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=1e-2)
    train_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(train_graph):
        static_loss = step()
    for _ in range(2):
        train_graph.replay()
        twin_optimizer.zero_grad()
        out, routing = twin(x.clone().requires_grad_(), return_routing_info=True)
        twin_loss = out.float().square().mean() + routing.router_loss
        twin_loss.backward()
        twin_optimizer.step()
        assert abs(float(static_loss) - float(twin_loss)) < 2e-2 * max(1.0, abs(float(twin_loss)))


def twin_trainers(steps: int, warmup: int, num_train: int, base: dict | None = None, **option):
    """A demo trainer with `base` settings (eager by default) and an identical one (same seed, data and settings)
    with `option` on as well."""
    from pimoe.lm.data import CorpusConfig
    from pimoe.lm.train import TrainConfig, Trainer

    config = dict(steps=steps, batch_size=4, seq_len=64, device=DEVICE, warmup=warmup,
                  corpus=CorpusConfig(seed=0, num_train=num_train, num_val=8), **(base or {}))
    trainers = []
    for extra in ({}, option):
        torch.manual_seed(0)
        trainers.append(Trainer(PiMoELM(LMConfig.demo()), TrainConfig(**config, **extra)))
    return trainers


def test_trainer_with_compiled_blocks_tracks_the_eager_trainer() -> None:
    eager, compiled = twin_trainers(steps=4, warmup=1, num_train=64, compile=True)
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in compiled.model.blocks)
    for _ in range(4):
        want, got = eager.step(), compiled.step()
        assert math.isfinite(got.loss)
        assert abs(got.loss - want.loss) < 3e-2 * abs(want.loss)


def test_trainer_with_a_whole_step_graph_tracks_the_eager_trainer() -> None:
    eager, graphed = twin_trainers(steps=12, warmup=2, num_train=128, cuda_graph=True)
    for index in range(10):
        if index == 7:  # a setting the graph baked in: dropped, warmed up and captured again
            for trainer in (eager, graphed):
                trainer.set_temperature(0.7)
        want, got = eager.step(), graphed.step()
        assert math.isfinite(got.loss)
        assert abs(got.loss - want.loss) < 3e-2 * abs(want.loss), index
        assert abs(got.routing_accuracy - want.routing_accuracy) < 0.05, index
        assert got.lr == want.lr
    step_graph = graphed._step_graph
    assert step_graph.captures == 1 and step_graph.replays == 4  # steps 4-7 replayed; 8-10 warm up again
    for p, q in zip(graphed.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0.05, atol=5e-3)


def test_compiled_blocks_inside_a_whole_step_graph_track_the_compiled_trainer() -> None:
    # against compiled blocks run eagerly, not the eager model: Inductor's fusions round differently, and AdamW turns
    # a near-zero gradient's rounding into a full step of either sign (0.016 on a rarely seen byte's embedding)
    compiled, both = twin_trainers(steps=8, warmup=2, num_train=128, base={"compile": True}, cuda_graph=True)
    for index in range(7):
        want, got = compiled.step(), both.step()
        assert math.isfinite(got.loss)
        assert abs(got.loss - want.loss) < 1e-2 * abs(want.loss), index
    assert both._step_graph.captures == 1 and both._step_graph.replays == 4  # steps 4-7: the capture replays too
    for p, q in zip(both.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0.05, atol=5e-3)


@pytest.mark.parametrize("hidden", [96, 512])
def test_fast_layer_norm_matches_torch_on_cuda_under_autocast(hidden) -> None:
    from pimoe.cuda.layer_norm import FastLayerNorm

    torch.manual_seed(0)
    fast = FastLayerNorm(hidden).to(DEVICE)
    with torch.no_grad():
        fast.weight.normal_()
        fast.bias.normal_()
    plain = torch.nn.LayerNorm(hidden).to(DEVICE)
    plain.load_state_dict(fast.state_dict())
    x = (torch.randn(3, 77, hidden, device=DEVICE) * 2 + 1).requires_grad_()
    upstream = torch.randn(3, 77, hidden, device=DEVICE)
    results = []
    for norm in (fast, plain):
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = norm(x)
        (y * upstream).sum().backward()
        results.append((y.detach(), x.grad.clone(), norm.weight.grad.clone(), norm.bias.grad.clone()))
    assert results[0][0].dtype == torch.float32  # as autocast's own LayerNorm: float32 in, float32 out
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fast_layer_norm_add_forward_and_autocast_output_match_the_plain_modules_on_cuda() -> None:
    """add_forward: (x + delta, norm) of a bf16 branch in one pass, gradients to x, delta and the affine as plain
    torch gives them; autocast_output: under autocast the bf16 an autocast Linear would cast the output to."""
    from pimoe.cuda.layer_norm import FastLayerNorm

    torch.manual_seed(0)
    fast = FastLayerNorm(512, autocast_output=True).to(DEVICE)
    with torch.no_grad():
        fast.weight.normal_()
        fast.bias.normal_()
    plain = torch.nn.LayerNorm(512).to(DEVICE)
    plain.load_state_dict(fast.state_dict())
    x = (torch.randn(3, 77, 512, device=DEVICE) * 2 + 1).requires_grad_()
    delta = torch.randn(3, 77, 512, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    up_y, up_h = torch.randn(3, 77, 512, device=DEVICE), torch.randn(3, 77, 512, device=DEVICE)
    results = []
    for fused in (True, False):
        for t in (x, delta, fast.weight, fast.bias, plain.weight, plain.bias):
            t.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fused:
                h, y = fast.add_forward(x, delta)
            else:
                h = x + delta
                y = plain(h).to(torch.bfloat16)
        ((y.float() * up_y).sum() + (h * up_h).sum()).backward()
        norm = fast if fused else plain
        results.append((h.detach(), y.detach(), x.grad.clone(), delta.grad.clone(), norm.weight.grad.clone(),
                        norm.bias.grad.clone()))
    assert results[0][0].dtype == torch.float32 and results[0][1].dtype == torch.bfloat16
    assert results[0][3].dtype == torch.bfloat16
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16
    assert fast(x).dtype == torch.float32  # outside autocast: the module's own dtype

