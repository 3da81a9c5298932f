"""The layer's automatic CUDA graphs: when a plain inference call replays one, and that a replay equals the eager call.

The policy tests run on the CPU with a recording replayer in place of GraphedPiMoE (the graph itself is tested on the
GPU below and in test_fast_path.py); the GPU tests compare the layer with its graphs against the same layer with them
off, bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle

import pytest
import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.cuda.auto_graph import AutoGraphs, plain_inference_call

TYPED = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")


class RecordingReplayer:
    """Stands in for GraphedPiMoE: returns a marker tensor, or what the test queued (None: weights changed; an
    exception: the capture failed)."""

    def __init__(self, system, **options) -> None:
        self.system, self.options, self.calls, self.queued = system, options, 0, []

    def __call__(self, x):
        self.calls += 1
        if self.queued:
            outcome = self.queued.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return torch.full_like(x, 7.0)


def make_auto(min_repeats=3, max_tokens=8192):
    system = torch.nn.Linear(2, 2)
    made = []

    def factory(owner, **options):
        made.append(RecordingReplayer(owner, **options))
        return made[-1]

    auto = AutoGraphs(system, min_repeats=min_repeats, max_tokens=max_tokens, replayer=factory,
                      sync_probe=lambda layer, x: None)  # the real probe needs CUDA; tested on the GPU below
    return system, auto, made


def test_a_shape_replays_from_its_min_repeats_th_call_and_shapes_count_apart() -> None:
    _, auto, made = make_auto(min_repeats=3)
    a, b = torch.zeros(1, 4, 2), torch.zeros(2, 4, 2)
    assert auto(a) is None and auto(b) is None and auto(a) is None
    assert not made, "nothing is captured before a shape has come min_repeats times"
    assert torch.equal(auto(a), torch.full_like(a, 7.0))
    assert auto(b) is None, "b has come twice"
    assert auto(b) is not None and auto.replays == 2
    assert made[0].options["clone_output"] is True and made[0].options["recapture"] is False


def test_changed_weights_send_the_shape_back_to_counting() -> None:
    _, auto, made = make_auto(min_repeats=2)
    x = torch.zeros(1, 3, 2)
    auto(x)
    assert auto(x) is not None
    made[0].queued.append(None)  # the graph found its weights changed
    assert auto(x) is None
    assert auto(x) is None, "the shape must come min_repeats times again with the new weights"
    assert auto(x) is not None


def test_a_failed_capture_is_logged_once_and_that_shape_stays_eager(caplog) -> None:
    _, auto, made = make_auto(min_repeats=1)
    x, other = torch.zeros(1, 5, 2), torch.zeros(1, 6, 2)
    made_error = RuntimeError("operation not permitted when stream is capturing")
    auto(torch.zeros(1, 1, 2))  # builds the replayer
    made[0].queued.append(made_error)
    with caplog.at_level(logging.WARNING, logger="pimoe.cuda.auto_graph"):
        assert auto(x) is None
    assert "not permitted" in caplog.text and "(1, 5, 2)" in caplog.text
    calls = made[0].calls
    assert auto(x) is None and made[0].calls == calls, "a failed shape is not tried again"
    assert auto(other) is not None, "other shapes still replay"
    stats = auto.stats()
    assert stats["replays"] == 2 and list(stats["failed"]) == ["(1, 5, 2)"] and "not permitted" in stats["failed"]["(1, 5, 2)"]


def test_a_shape_whose_call_syncs_is_never_captured_and_probed_once(caplog) -> None:
    system = torch.nn.Linear(2, 2)
    made, probed = [], []

    def probe(layer, x):
        probed.append(tuple(x.shape))
        return "called a synchronizing CUDA operation" if x.shape[1] == 3 else None

    auto = AutoGraphs(system, min_repeats=1, replayer=lambda owner, **options: made.append(1) or (lambda x: x),
                      sync_probe=probe)
    with caplog.at_level(logging.WARNING, logger="pimoe.cuda.auto_graph"):
        assert auto(torch.zeros(1, 3, 2)) is None and auto(torch.zeros(1, 3, 2)) is None
    assert not made and probed == [(1, 3, 2)] and "reads back to the host" in caplog.text
    assert auto(torch.zeros(1, 4, 2)) is not None and auto(torch.zeros(1, 4, 2)) is not None
    assert probed == [(1, 3, 2), (1, 4, 2)], "a shape is probed before its first capture only"


def test_input_checks_run_before_a_replay_and_their_error_propagates() -> None:
    _, auto, made = make_auto(min_repeats=1)

    def reject():
        raise ValueError("input contains NaN or Inf values")

    with pytest.raises(ValueError, match="NaN"):
        auto(torch.zeros(1, 2, 2), before_replay=reject)
    assert auto(torch.zeros(1, 2, 2)) is not None, "a rejected input neither marks the shape failed nor wedges the lock"


def test_large_inputs_and_calls_made_while_replaying_run_eagerly() -> None:
    inner = []

    def factory(owner, **options):
        def replay(x):
            inner.append(auto(x))  # the replayer calls the layer again, as GraphedPiMoE's capture does
            return torch.ones_like(x)
        return replay

    layer = torch.nn.Linear(2, 2)  # AutoGraphs holds its layer weakly
    auto = AutoGraphs(layer, min_repeats=1, max_tokens=16, replayer=factory, sync_probe=lambda module, x: None)
    assert auto(torch.zeros(2, 9, 2)) is None and not inner
    assert auto(torch.zeros(1, 1, 2)) is not None and inner == [None]


def test_copies_of_a_layer_carry_no_graphs() -> None:
    system, auto, _ = make_auto()
    assert auto.owned_by(system) and not auto.owned_by(torch.nn.Linear(2, 2))
    assert copy.deepcopy(auto) is None
    assert pickle.loads(pickle.dumps(auto)) is None


def test_cpu_calls_are_never_plain_inference_calls() -> None:
    system = PiMoESystem(PiMoEConfig(hidden_size=16, num_experts=4)).eval()
    with torch.no_grad():
        assert not plain_inference_call(system, torch.zeros(1, 3, 16))
        system(torch.zeros(1, 3, 16))
    assert system._auto_graphs is None
    assert system.cuda_graph_stats() == {"replays": 0, "graphed_shapes": [], "training_replays": 0,
                                         "training_graphed_shapes": [], "failed": {}}
    assert copy.deepcopy(system).auto_cuda_graphs is True


# --- on the GPU -----------------------------------------------------------------------------------------------------


def cuda_system(residual=True, expert_types=TYPED, hidden=64, num_experts=8, intermediate=128,
                dtype=torch.bfloat16) -> PiMoESystem:
    torch.manual_seed(0)
    config = PiMoEConfig(hidden_size=hidden, num_experts=num_experts, expert_types=expert_types, residual=residual,
                         router=RouterConfig(top_k=2), expert=ExpertConfig(intermediate_size=intermediate))
    return PiMoESystem(config).eval().to("cuda", dtype)


def call_repeatedly(system: PiMoESystem, x: torch.Tensor, times: int = 4) -> None:
    """Enough plain calls of one shape for the layer to capture it (the third) and replay it."""
    with torch.no_grad():
        for _ in range(times):
            system(x)


def eager(system: PiMoESystem, x: torch.Tensor) -> torch.Tensor:
    system.auto_cuda_graphs = False
    try:
        return system(x)
    finally:
        system.auto_cuda_graphs = True


def replays(system: PiMoESystem) -> int:
    return 0 if system._auto_graphs is None else system._auto_graphs.replays


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("expert_types", [TYPED, ("language",)], ids=["typed", "uniform"])
def test_repeated_calls_replay_a_graph_equal_to_the_eager_call(mode, expert_types) -> None:
    system = cuda_system(expert_types=expert_types)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with context():
        for _ in range(6):
            x = torch.randn(2, 40, 64, device="cuda", dtype=torch.bfloat16)
            got = system(x)
            assert torch.equal(got, eager(system, x))
            assert got.data_ptr() != system(x).data_ptr(), "each call returns its own tensor"
    assert replays(system) >= 3
    assert system.cuda_graph_stats()["graphed_shapes"] == [((2, 40, 64), "torch.bfloat16")]
    system.clear_cuda_graphs()
    assert system.cuda_graph_stats()["replays"] == 0
    with context():
        x = torch.randn(2, 40, 64, device="cuda", dtype=torch.bfloat16)
        for _ in range(4):
            assert torch.equal(system(x), eager(system, x))
    assert replays(system) >= 1, "after clearing, a repeated shape is captured again"


@pytest.mark.gpu
def test_weight_and_setting_changes_reach_the_next_call() -> None:
    system = cuda_system()
    x = torch.randn(1, 50, 64, device="cuda", dtype=torch.bfloat16)
    call_repeatedly(system, x)
    with torch.no_grad():
        before = replays(system)
        system.experts[3].down.bias.add_(0.5)
        assert torch.equal(system(x), eager(system, x)), "a weight update must reach the output"
        system.router.temperature = 0.3
        assert torch.equal(system(x), eager(system, x)), "a router setting must reach the output"
        for _ in range(4):
            assert torch.equal(system(x), eager(system, x))
    assert replays(system) > before, "with the weights still again, replays resume"


@pytest.mark.gpu
def test_calls_a_graph_would_change_run_eagerly() -> None:
    system = cuda_system()
    x = torch.randn(1, 30, 64, device="cuda", dtype=torch.bfloat16)
    # The fast path reads the experts' packed weights without calling the modules, so their hooks do not fire even
    # eagerly; a hook still keeps the layer off graphs, for the strategies that do call them.
    handle = system.experts[0].register_forward_hook(lambda module, args, out: None)
    with torch.no_grad():
        for _ in range(5):
            assert torch.equal(system(x), eager(system, x))
    handle.remove()
    assert replays(system) == 0, "a hook on an expert keeps the layer eager"
    out = system(x)  # autograd on: the output must carry a graph
    assert out.requires_grad and replays(system) == 0
    system.check_finite = True
    with torch.no_grad():
        for _ in range(4):
            system(x)
        assert replays(system) > 0
        with pytest.raises(ValueError, match="NaN or Inf"):
            system(torch.full_like(x, float("nan")))
        replayed = replays(system)
        handle = system.router.gate.register_forward_pre_hook(lambda module, args: None)
        for _ in range(3):
            system(x)
        handle.remove()
    assert replays(system) == replayed, "a hook added after the capture stops the replays"


@pytest.mark.gpu
def test_a_shallow_copy_with_other_settings_does_not_replay_the_originals_graph() -> None:
    system = cuda_system()
    x = torch.randn(1, 30, 64, device="cuda", dtype=torch.bfloat16)
    call_repeatedly(system, x)
    with torch.no_grad():
        view = copy.copy(system)
        view.config = dataclasses.replace(system.config, residual=False)
        for _ in range(4):
            assert torch.equal(view(x), eager(view, x))
        assert not torch.equal(view(x), system(x))
    assert pickle.loads(pickle.dumps(system))._auto_graphs is None


@pytest.mark.gpu
@pytest.mark.parametrize("num_experts", [64, 96])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_layers_past_the_fused_routers_reach_still_equal_eager_calls(num_experts, dtype) -> None:
    """Above 63 experts the router module runs instead of the fused kernels; float32 takes other GEMMs."""
    system = cuda_system(residual=True, expert_types=("language",), num_experts=num_experts, intermediate=64,
                         dtype=dtype)
    x = torch.randn(1, 48, 64, device="cuda", dtype=dtype)
    with torch.no_grad():
        for _ in range(5):
            assert torch.equal(system(x), eager(system, x))
    stats = system.cuda_graph_stats()
    assert stats["replays"] > 0 or stats["failed"], stats


@pytest.mark.gpu
def test_a_call_that_syncs_is_found_before_a_capture_and_the_process_keeps_working(caplog) -> None:
    from pimoe.layer.dispatch import sorted_dispatch
    from pimoe.layer.strategies import DispatchStrategy

    def syncing_dispatch(x, routing, experts):  # claims to be graph-safe but reads back to the host
        if float(x.float().abs().sum()) < 0:
            raise AssertionError("unreachable")
        return sorted_dispatch(x, routing, experts)

    system = cuda_system()
    system.use_strategy(DispatchStrategy("syncing", syncing_dispatch, "test", graph_safe=True))
    x = torch.randn(1, 30, 64, device="cuda", dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="pimoe.cuda.auto_graph"), torch.no_grad():
        for _ in range(5):
            assert torch.equal(system(x), eager(system, x))
    failed = system.cuda_graph_stats()["failed"]
    assert "reads back to the host" in failed["(1, 30, 64)"] and "run eagerly" in caplog.text
    healthy = cuda_system()
    with torch.no_grad():
        for _ in range(4):
            y = torch.randn(1, 30, 64, device="cuda", dtype=torch.bfloat16)
            assert torch.equal(healthy(y), eager(healthy, y))
    torch.cuda.synchronize()
    assert healthy.cuda_graph_stats()["replays"] > 0, "a later capture in the same process still works"
