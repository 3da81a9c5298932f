"""The layer's automatic CUDA graphs for training calls: when a training call replays its forward and backward graphs,
and that what it returns and the gradients it leaves equal the eager call's.

Policy tests run on the CPU with a recording replayer in place of GraphedTraining; the GPU tests train the layer with
its graphs next to a copy with them off, step by step with the same optimiser, and compare outputs and gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.cuda.auto_graph import AutoGraphs
from pimoe.cuda.train_graph import AWAITING_BACKWARD, plain_training_call

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")


class RecordingTrainingReplayer:
    def __init__(self, system, **options) -> None:
        self.system, self.options, self.calls, self.queued = system, options, [], []

    def __call__(self, x, return_routing_info):
        self.calls.append(return_routing_info)
        if self.queued:
            return self.queued.pop(0)
        return torch.full_like(x, 3.0)


def make_auto(min_repeats=2):
    layer = torch.nn.Linear(2, 2)
    made = []

    def factory(owner, **options):
        made.append(RecordingTrainingReplayer(owner, **options))
        return made[-1]

    auto = AutoGraphs(layer, min_repeats=min_repeats, replayer=lambda owner, **options: (lambda x: x + 1),
                      sync_probe=lambda module, x: None, training_replayer=factory,
                      training_sync_probe=lambda module, x, routing: None)
    return layer, auto, made


def test_training_calls_count_apart_from_inference_and_by_what_they_return() -> None:
    _, auto, made = make_auto(min_repeats=2)
    x = torch.zeros(1, 4, 2)
    assert auto(x) is None and auto(x, training=True) is None
    assert auto(x, training=True, return_routing_info=True) is None, "a call with routing info counts on its own"
    assert torch.equal(auto(x, training=True), torch.full_like(x, 3.0))
    assert torch.equal(auto(x), x + 1)
    assert auto(x, training=True, return_routing_info=True) is not None
    assert made[0].calls == [False, True]
    stats = auto.stats()
    assert stats["training_replays"] == 2 and stats["replays"] == 1


def test_a_call_awaiting_its_backward_makes_the_next_one_eager_without_dropping_the_graph() -> None:
    _, auto, made = make_auto(min_repeats=2)
    x = torch.zeros(1, 3, 2)
    auto(x, training=True)
    assert auto(x, training=True) is not None
    made[0].queued.append(AWAITING_BACKWARD)
    assert auto(x, training=True) is None
    assert auto(x, training=True) is not None, "the graph is still good: the next call replays at once"
    made[0].queued.append(None)  # the layer changed since the capture
    assert auto(x, training=True) is None
    assert auto(x, training=True) is None, "a changed layer's shape must repeat again"
    assert auto(x, training=True) is not None


def test_cpu_training_calls_never_take_a_graph() -> None:
    system = PiMoESystem(PiMoEConfig(hidden_size=16, num_experts=4)).train()
    x = torch.randn(1, 3, 16, requires_grad=True)
    assert not plain_training_call(system, x, tuple(system.modules()))
    for _ in range(4):
        system(x).sum().backward()
    assert system._auto_graphs is None and x.grad is not None


# --- on the GPU -----------------------------------------------------------------------------------------------------


def cuda_system(expert_types=("language",), hidden=64, num_experts=8, intermediate=128, dtype=torch.bfloat16,
                residual=True, dropout=0.0) -> PiMoESystem:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=hidden, num_experts=num_experts, expert_types=expert_types, residual=residual,
                         router=RouterConfig(top_k=2, z_loss_weight=1e-3),
                         expert=ExpertConfig(intermediate_size=intermediate, dropout=dropout))
    system = PiMoESystem(config).train().to("cuda", dtype)
    system.check_finite = False
    return system


def pair(**options) -> tuple[PiMoESystem, PiMoESystem]:
    """The layer with its graphs and an identical copy with them off."""
    graphed = cuda_system(**options)
    eager = copy.deepcopy(graphed)
    eager.auto_cuda_graphs = False
    return graphed, eager


def training_replays(system: PiMoESystem) -> int:
    return system.cuda_graph_stats()["training_replays"]


def step(system, x, upstream, with_routing):
    """One forward and backward; returns (output, router loss or None, input grad, parameter grads)."""
    x = x.detach().clone().requires_grad_(True)
    if with_routing:
        out, routing = system(x, return_routing_info=True)
        loss = (out.float() * upstream.float()).sum() + routing.router_loss
        router_loss = routing.router_loss.detach()
    else:
        out = system(x)
        loss, router_loss = (out.float() * upstream.float()).sum(), None
    loss.backward()
    grads = [p.grad.clone() for p in system.parameters()]
    return out.detach(), router_loss, x.grad, grads


def assert_same(got, want, exact: bool) -> None:
    if exact:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("with_routing", [False, True], ids=["output", "routing-info"])
@pytest.mark.parametrize("expert_types", [("language",), TYPED], ids=["uniform", "typed"])
def test_training_steps_with_graphs_equal_eager_steps(expert_types, with_routing) -> None:
    graphed, eager = pair(expert_types=expert_types)
    optimisers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (graphed, eager)]
    exact = expert_types == ("language",)  # typed experts' norm backward sums rows with atomics: not bit-stable
    for _ in range(6):
        x = torch.randn(2, 48, 64, device="cuda", dtype=torch.bfloat16)
        upstream = torch.randn_like(x)
        results = []
        for module, optimiser in zip((graphed, eager), optimisers, strict=True):
            optimiser.zero_grad(set_to_none=True)
            results.append(step(module, x, upstream, with_routing))
            optimiser.step()
        (out, loss, x_grad, grads), (out_e, loss_e, x_grad_e, grads_e) = results
        assert_same(out, out_e, exact)
        assert_same(x_grad, x_grad_e, exact)
        if with_routing:
            assert_same(loss, loss_e, exact)
        for got, want in zip(grads, grads_e, strict=True):
            assert_same(got, want, exact)
    assert training_replays(graphed) >= 3, "the third call of the shape is captured, the later ones replay"
    assert graphed.cuda_graph_stats()["training_graphed_shapes"] == [((2, 48, 64), "torch.bfloat16")]
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):  # optimiser updates reach the graphs
        assert_same(p.detach(), q.detach(), exact)


@pytest.mark.gpu
def test_an_input_without_grad_replays_with_the_eager_parameter_gradients() -> None:
    """The first layer over frozen embeddings: only the layer's own parameters take gradients."""
    graphed, eager = pair()
    optimisers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (graphed, eager)]
    for _ in range(6):
        x = torch.randn(2, 32, 64, device="cuda", dtype=torch.bfloat16)
        upstream = torch.randn_like(x)
        grads = []
        for module, optimiser in zip((graphed, eager), optimisers, strict=True):
            optimiser.zero_grad(set_to_none=True)
            out, routing = module(x, return_routing_info=True)
            ((out.float() * upstream.float()).sum() + routing.router_loss).backward()
            grads.append([p.grad.clone() for p in module.parameters()])
            optimiser.step()
        for got, want in zip(*grads, strict=True):
            assert torch.equal(got, want)
    assert training_replays(graphed) >= 3


@pytest.mark.gpu
def test_routing_info_of_a_replay_is_the_calls_own() -> None:
    graphed, eager = pair()
    x = torch.randn(1, 32, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    infos = []
    for _ in range(5):
        _, routing = graphed(x, return_routing_info=True)
        routing.router_loss.backward()
        infos.append(routing)
    _, want = eager(x, return_routing_info=True)
    assert training_replays(graphed) >= 2
    for name in ("probs", "expert_indices", "expert_weights", "tokens_per_expert", "router_loss"):
        assert torch.equal(getattr(infos[-1], name), getattr(want, name)), name
    assert infos[-1].batch_shape == want.batch_shape and infos[-1].expert_types == want.expert_types
    assert infos[-1].probs.data_ptr() != infos[-2].probs.data_ptr(), "each call returns its own tensors"
    want.router_loss.backward()
    assert [p.grad is None for p in graphed.parameters()] == [q.grad is None for q in eager.parameters()], \
        "the experts' weights, reached only by the unused output, keep no gradient as eagerly"


@pytest.mark.gpu
def test_two_forwards_before_one_backward_give_the_eager_gradients() -> None:
    graphed, eager = pair()
    for _ in range(4):  # the shape is captured
        graphed(torch.randn(1, 32, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)).sum().backward()
    before = training_replays(graphed)
    graphed.zero_grad(set_to_none=True)
    a, b = (torch.randn(1, 32, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    (graphed(a).float().sum() + 2 * graphed(b).float().sum()).backward()
    (eager(a).float().sum() + 2 * eager(b).float().sum()).backward()
    assert training_replays(graphed) == before + 1, "the second call, with the first awaiting its backward, ran eagerly"
    for p, q in zip(graphed.parameters(), eager.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.gpu
def test_a_kept_graph_differentiated_after_a_later_call_raises_instead_of_returning_wrong_gradients() -> None:
    graphed = cuda_system()
    x = torch.randn(1, 16, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for _ in range(4):
        graphed(x).sum().backward()
    first = graphed(x).sum()
    first.backward(retain_graph=True)
    graphed(x).sum().backward()
    assert training_replays(graphed) >= 3
    with pytest.raises(RuntimeError, match="retain_graph"):
        first.backward()
    out = graphed(x).float().sum()
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(out, x, create_graph=True)


@pytest.mark.gpu
def test_training_calls_a_graph_would_change_run_eagerly() -> None:
    x = torch.randn(1, 24, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def replays_after(system, call, times=5) -> int:
        for _ in range(times):
            call(system)
        return training_replays(system)

    assert replays_after(cuda_system(), lambda s: s(x).sum().backward()) > 0
    frozen = cuda_system().requires_grad_(False)
    assert replays_after(frozen, lambda s: s(x.detach())) == 0, "nothing to differentiate: no training graph"
    x32 = x.detach().float().requires_grad_(True)
    assert replays_after(cuda_system(dtype=torch.float32), lambda s: s(x32).sum().backward()) == 0
    system = cuda_system()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert replays_after(system, lambda s: s(x).float().sum().backward()) == 0
    assert replays_after(cuda_system(dropout=0.1), lambda s: s(x).sum().backward()) == 0
    hooked = cuda_system()
    hooked.experts[0].register_full_backward_hook(lambda *args: None)
    assert replays_after(hooked, lambda s: s(x).sum().backward()) == 0
    for reentrant in (True, False):
        call = lambda s, reentrant=reentrant: checkpoint(s, x, use_reentrant=reentrant).sum().backward()  # noqa: E731
        assert replays_after(cuda_system(), call) == 0


@pytest.mark.gpu
def test_setting_and_freezing_changes_reach_the_next_training_calls() -> None:
    graphed, eager = pair()
    x = torch.randn(1, 40, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def both():
        results = []
        for module in (graphed, eager):
            module.zero_grad(set_to_none=True)
            out, routing = module(x, return_routing_info=True)
            (out.float().sum() + routing.router_loss).backward()
            results.append((out.detach(), [None if p.grad is None else p.grad.clone() for p in module.parameters()]))
        (out, grads), (out_e, grads_e) = results
        assert torch.equal(out, out_e)
        for got, want in zip(grads, grads_e, strict=True):
            assert (got is None and want is None) or torch.equal(got, want)

    for _ in range(4):
        both()
    assert training_replays(graphed) > 0
    for module in (graphed, eager):
        module.router.temperature = 0.5
        module.router.load_balance_weight = 0.1
    for _ in range(4):
        both()
    for module in (graphed, eager):
        module.router.gate.weight.requires_grad_(False)
    for _ in range(4):
        both()
    assert graphed.router.gate.weight.grad is None


class FakeGraph:
    """Stands in for a captured CUDA graph on the CPU: replay() runs the recorded work."""

    def __init__(self, work) -> None:
        self.work, self.replays = work, 0

    def replay(self) -> None:
        self.replays += 1
        self.work()


def doubling_entry():
    """A training entry whose 'graphs' compute out = 2 x and, backward, dx = 2 dout, with no parameters."""
    from pimoe.cuda.train_graph import _Entry

    static_input, out, grad_out, grad_in = (torch.zeros(3) for _ in range(4))
    forward = FakeGraph(lambda: out.copy_(2 * static_input))
    backward = FakeGraph(lambda: grad_in.copy_(2 * grad_out))
    return _Entry(forward, backward, static_input, (out,), (grad_out,), grad_in, (), None, (), state=())


def test_a_replayed_call_is_differentiable_and_its_backward_checks_its_generation() -> None:
    from pimoe.cuda.train_graph import _ReplayTraining

    entry = doubling_entry()
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (out,) = _ReplayTraining.apply(entry, x)
    assert torch.equal(out, 2 * x.detach()) and out.data_ptr() != entry.outputs[0].data_ptr()
    assert entry.awaiting_backward(), "the call's node is alive and its backward has not run"
    out.backward(torch.ones(3), retain_graph=True)
    assert torch.equal(x.grad, torch.full((3,), 2.0)) and not entry.awaiting_backward()
    (later,) = _ReplayTraining.apply(entry, x.detach().requires_grad_())
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.backward(torch.ones(3))
    del later
    assert not entry.awaiting_backward(), "a call whose outputs are gone awaits nothing"
    (again,) = _ReplayTraining.apply(entry, x)
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(again.sum(), x, create_graph=True)


def test_inputs_reached_only_by_outputs_without_a_gradient_get_none_as_eagerly() -> None:
    """Router loss alone: the experts' weights, reached only by the unused layer output, keep .grad None (zeros would
    let an optimiser decay them)."""
    from pimoe.cuda.train_graph import _Entry, _ReplayTraining

    static_input, out, aux, grad_out, grad_aux, grad_in, grad_w, grad_v = (torch.zeros(3) for _ in range(8))
    forward = FakeGraph(lambda: None)

    def backward_work() -> None:
        grad_in.copy_(2 * grad_out)
        grad_w.copy_(grad_out)
        grad_v.copy_(grad_aux)

    entry = _Entry(forward, FakeGraph(backward_work), static_input, (out, aux), (grad_out, grad_aux), grad_in,
                   (grad_w, grad_v), None, (), state=(), reach=(frozenset({0, 1}), frozenset({2})))
    x, w, v = (torch.zeros(3, requires_grad=True) for _ in range(3))
    _, aux_out = _ReplayTraining.apply(entry, x, w, v)
    aux_out.backward(torch.ones(3))
    assert x.grad is None and w.grad is None, "only the unused output reaches the input and w"
    assert torch.equal(v.grad, torch.ones(3)) and torch.equal(grad_out, torch.zeros(3)), "its buffer was zeroed"

    out_now, aux_now = _ReplayTraining.apply(entry, x, w, v)
    (out_now.sum() + aux_now.sum()).backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0)) and torch.equal(w.grad, torch.ones(3))


def test_router_losses_reach_the_input_and_the_gate_but_not_the_experts() -> None:
    """What a capture records for a backward of the router loss alone (on the CPU, where the layer runs the same
    autograd graph shape): the input and the gate weight get gradients, the experts' weights none."""
    from pimoe.cuda.train_graph import _flat_outputs, _fresh_leaves, reached_inputs

    config = PiMoEConfig(hidden_size=16, num_experts=4, expert_types=("language",),
                         router=RouterConfig(top_k=2, z_loss_weight=1e-3), expert=ExpertConfig(intermediate_size=32))
    system = PiMoESystem(config).train()
    x = torch.randn(1, 8, 16, requires_grad=True)
    with _fresh_leaves(system) as leaves:
        names = ["input"] + [name for name, p in system.named_parameters() if p.requires_grad]
        outputs = _flat_outputs(system(x, return_routing_info=True))[0]
        reach = reached_inputs(outputs, [x, *leaves])
    assert len(reach[0]) == len(names), "the layer output reaches every input"
    router_only = {names[i] for r in reach[1:] for i in r}
    assert "input" in router_only and any("gate" in name for name in router_only)
    assert not any("experts" in name for name in router_only), router_only
    assert all(isinstance(p, torch.nn.Parameter) for p in system.parameters()), "the parameters are put back"
