"""Drawn configurations (`drawn_layers.draw`, `draw_lm`) inside a user's own plain `torch.cuda.graph`, and PiMoE-LM
configurations no hand-written test picked, trained on the fast path against the sorted dispatch.

Apart from test_generated_layers.py on purpose: a capture that fails leaves torch's CUDA generator unusable for the
rest of the process (pimoe.cuda.graph_safety), so each capture is probed for host syncs first, and a failure here
cannot take the other file's cases with it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from drawn_layers import build, build_lm, draw, draw_lm, relative

from pimoe.cuda.graph_safety import syncs_reported
from pimoe.cuda.graphs import capture_after_warmup
from pimoe.layer.reference import reference_forward

pytestmark = pytest.mark.gpu


def needs_kernels(config: dict) -> None:
    if config["hidden"] % 16:
        pytest.skip("hidden size not a multiple of 16: the sorted dispatch, which reads counts back to the host")


@pytest.mark.parametrize("seed", range(300, 312))
def test_a_drawn_layers_inference_replays_from_a_plain_cuda_graph(seed: int) -> None:
    config = draw(seed)
    needs_kernels(config)
    system = build(config).eval().to("cuda", torch.bfloat16)
    generator = torch.Generator().manual_seed(seed)
    first, second = (torch.randn(config["shape"], generator=generator).to("cuda", torch.bfloat16) for _ in range(2))
    static_x = first.clone()
    with torch.no_grad():
        system(static_x)  # the first call packs the experts: host-to-device copies, before any capture
        assert syncs_reported(system, lambda: system(static_x)) is None, config
        graph, static_out = capture_after_warmup(lambda: system(static_x))
        static_x.copy_(second)
        graph.replay()
        eager = system(second)
    assert relative(static_out, eager) < 1e-3, config
    reference = reference_forward(system.cpu().double(), second.cpu().double())
    assert relative(static_out, reference) < 1.5e-2, config


@pytest.mark.parametrize("seed", range(400, 410))
def test_a_drawn_layers_training_step_replays_from_a_plain_cuda_graph(seed: int) -> None:
    """Forward and backward under autocast over float32 weights, captured once, replayed on a new input: the
    gradients an eager twin computes for that input. Every drawn hidden size: training takes those the inference
    kernels do not (100: its grouped GEMMs on zero-padded copies, no host read)."""
    config = draw(seed)
    system = build(config, residual=True).to("cuda")
    twin = copy.deepcopy(system)
    generator = torch.Generator().manual_seed(seed)
    first, second, upstream = (torch.randn(config["shape"], generator=generator).to("cuda") for _ in range(3))
    static_x = first.clone().requires_grad_()

    def step(model, x):
        model.zero_grad(set_to_none=True)
        x.grad = None
        # NOTE: the autocast weight-cast cache must be off inside a capture (torch.cuda.make_graphed_callables' rule)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out, routing = model(x, return_routing_info=True)
        loss = (out.float() * upstream).sum() + routing.router_loss
        loss.backward()
        return loss

    graph, static_loss = capture_after_warmup(lambda: step(system, static_x))
    with torch.no_grad():
        static_x.copy_(second)
    graph.replay()
    eager_x = second.clone().requires_grad_()
    eager_loss = step(twin, eager_x)
    assert relative(static_loss.detach(), eager_loss.detach()) < 1e-2, config
    assert relative(static_x.grad, eager_x.grad) < 1e-2, config
    for (name, p), q in zip(system.named_parameters(), twin.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), (config, name)
        else:
            assert relative(p.grad, q.grad) < 2e-2, (config, name)


def lm_loss(model, ids):
    out = model(ids)
    logits = out.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)) + out.router_loss


@pytest.mark.parametrize("seed", range(500, 508))
def test_a_drawn_lm_trains_with_the_sorted_dispatchs_float32_gradients(seed: int) -> None:
    config = draw_lm(seed)
    model = build_lm(config).to("cuda")
    sorted_model = copy.deepcopy(model)
    for block in sorted_model.blocks:
        block.moe.dispatch = "sorted"
    ids = torch.randint(0, model.config.vocab_size, config["shape"], generator=torch.Generator().manual_seed(seed))
    ids = ids.to("cuda")
    losses = []
    for each in (model, sorted_model):
        loss = lm_loss(each, ids)
        loss.backward()
        losses.append(loss.detach())
    assert relative(losses[0], losses[1]) < 1e-5, config
    for (name, p), q in zip(model.named_parameters(), sorted_model.parameters(), strict=True):
        if q.grad is None:  # an expert no token reached: zeros from the stacked weights, None from the sorted dispatch
            assert p.grad is None or not p.grad.any(), (config, name)
        else:
            assert relative(p.grad, q.grad) < 1e-4, (config, name)


@pytest.mark.parametrize("seed", range(600, 606))
def test_a_drawn_lms_whole_training_step_replays_from_a_plain_cuda_graph(seed: int) -> None:
    """zero_grad + forward + backward + AdamW in one capture under autocast; each replay is one more step, as an
    eager twin's."""
    config = draw_lm(seed)
    model = build_lm(config).to("cuda")
    twin = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, config["shape"], generator=torch.Generator().manual_seed(seed))
    ids = ids.to("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3, capturable=True)

    def step(each, each_optimizer):
        each_optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = lm_loss(each, ids)
        loss.backward()
        each_optimizer.step()
        return loss

    graph, static_loss = capture_after_warmup(lambda: step(model, optimizer))
    for _ in range(2):  # the twin catches up with the two warm-up steps (the capture itself runs none)
        step(twin, twin_optimizer)
    for _ in range(3):
        graph.replay()
        twin_loss = step(twin, twin_optimizer)
        assert abs(float(static_loss) - float(twin_loss)) < 3e-2 * max(1.0, abs(float(twin_loss))), config
