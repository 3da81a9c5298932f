"""Adaptive routing: the controller's score, its knob rules, the bounded history, and the training-loop hook."""

from __future__ import annotations

import math
import re

import pytest
import torch

from pimoe import PiMoEConfig, PiMoESystem
from pimoe.adaptive.controller import (
    AdaptationConfig,
    AdaptiveController,
    LayerObservation,
    adaptation_series,
    performance_parts,
)
from pimoe.adaptive.layer import AdaptivePiMoE, allowed_expert_accuracy, calibrate_selection_bias
from pimoe.lm.train import StepRecord
from pimoe.measure.metrics import max_violation


def _skewed_system(seed: int = 0) -> tuple[PiMoESystem, torch.Tensor]:
    """A tiny layer whose router sends almost every token to expert 0 for inputs along `direction`."""
    torch.manual_seed(seed)
    system = PiMoESystem(PiMoEConfig.tiny()).eval()
    direction = torch.randn(32)
    direction /= direction.norm()
    with torch.no_grad():
        system.router.gate.weight[0] += 3.0 * direction
    return system, direction


def _batches(direction: torch.Tensor, seed: int = 1, shape: tuple[int, int] = (4, 32)):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(*shape, 32, generator=generator) + 2.0 * direction


def test_skewed_router_is_balanced_within_60_steps_and_history_shows_how() -> None:
    system, direction = _skewed_system()
    model = AdaptivePiMoE(system, AdaptationConfig(adaptation_rate=0.01, act_in_eval=True))
    batches = _batches(direction)
    violations = []
    with torch.inference_mode():
        for _ in range(60):
            _, info = model(next(batches), return_adaptation_info=True)
            violations.append(info["adaptation_info"]["max_violation"])
    assert sum(violations[:5]) / 5 > 0.8  # starts skewed: expert 0 holds about half of all top-2 assignments
    assert sum(violations[-10:]) / 10 < 0.35  # stated bound: mean MaxVio of steps 50-59 under 0.35

    history = model.adaptation_history
    assert [r.step for r in history] == list(range(60))
    first = history[0]
    assert first.adaptation_applied and first.performance_score < first.threshold
    assert any(re.search(r"expert 0 \(reasoning\) takes [\d.]+% of assignments \(mean 25.0%\) → bias -0\.0\d+", change)
               for change in first.changes), first.changes
    bias = system.router.selection_bias
    assert int(torch.argmin(bias)) == 0 and bias[0] < -0.1  # the overloaded expert was pushed down the most
    assert history[-1].selection_bias[0] == pytest.approx(bias.tolist())
    series = adaptation_series(history)
    assert series["steps"] == list(range(60)) and len(series["selection_bias"][0]) == 4
    assert series["selection_bias"][-1][0] < series["selection_bias"][0][0]


def test_no_adaptation_when_the_score_is_above_the_threshold() -> None:
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig.tiny()).eval()
    model = AdaptivePiMoE(system, AdaptationConfig(performance_threshold=0.3))
    with torch.inference_mode():
        for _ in range(5):
            _, info = model(torch.randn(4, 32, 32), return_adaptation_info=True)
            adaptation = info["adaptation_info"]
            assert adaptation["performance_score"] > 0.3
            assert adaptation["adaptation_applied"] is False and adaptation["changes"] == []
    assert torch.equal(system.router.selection_bias, torch.zeros(4))
    assert system.router.temperature == 1.0 and system.router.load_balance_weight == 0.01
    assert system.router.config.use_selection_bias is False


def test_score_is_the_weighted_mean_of_the_measured_parts() -> None:
    config = AdaptationConfig(weights={"balance": 1.0, "max_violation": 1.0, "utilization": 2.0, "accuracy": 4.0},
                              latency_budget_ms=10.0)
    balanced = LayerObservation(torch.tensor([5.0, 5.0, 5.0, 5.0]), top_k=1)
    collapsed = LayerObservation(torch.tensor([20.0, 0.0, 0.0, 0.0]), top_k=1)
    assert performance_parts([balanced], config) == {"balance": 1.0, "max_violation": 1.0, "utilization": 1.0}
    parts = performance_parts([collapsed], config, latency_ms=20.0, accuracy=0.5)
    assert parts == pytest.approx({"balance": 0.0, "max_violation": 0.0, "utilization": 0.25, "accuracy": 0.5,
                                   "latency": 0.5})
    record = AdaptiveController(config).observe([collapsed], latency_ms=20.0, accuracy=0.5)
    # latency has weight 0 here (not in `weights`), so it is reported but not scored
    assert record.performance_score == pytest.approx((0 + 0 + 2 * 0.25 + 4 * 0.5) / (1 + 1 + 2 + 4))
    # a NaN accuracy (no labels) is left out rather than scored as 0
    assert "accuracy" not in performance_parts([balanced], config, accuracy=float("nan"))


def test_max_violation_part_is_normalised_by_the_worst_a_top_k_router_can_do() -> None:
    # top-2 over 4 experts: one expert can hold at most half the assignments, MaxVio = 4/2 - 1 = 1
    collapsed = LayerObservation(torch.tensor([8.0, 8.0, 0.0, 0.0]), top_k=2)
    assert performance_parts([collapsed], AdaptationConfig())["max_violation"] == pytest.approx(0.0)


def test_history_is_capped_at_history_size() -> None:
    controller = AdaptiveController(AdaptationConfig(history_size=5))
    for _ in range(12):
        controller.observe([[3.0, 1.0, 1.0, 1.0]])
    assert [r.step for r in controller.history] == [7, 8, 9, 10, 11]


def test_temperature_rises_when_routing_entropy_is_below_the_band() -> None:
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig.tiny()).eval()
    with torch.no_grad():
        system.router.gate.weight.mul_(50.0)  # near one-hot probabilities: entropy close to 0
    model = AdaptivePiMoE(system, AdaptationConfig(performance_threshold=1.0, temperature_step=0.1))
    system.router.train()  # the controller acts on routers in training mode only
    with torch.inference_mode():
        _, info = model(torch.randn(2, 16, 32), return_adaptation_info=True)
    adaptation = info["adaptation_info"]
    assert adaptation["normalized_entropy"] < 0.4
    assert system.router.temperature == pytest.approx(1.1)
    assert any("entropy" in change and "temperature 1 → 1.1" in change for change in adaptation["changes"])


def test_load_balance_weight_grows_under_imbalance_but_stays_within_bounds() -> None:
    system, direction = _skewed_system()
    config = AdaptationConfig(max_load_balance_weight=0.02, load_balance_factor=1.5)
    controller = AdaptiveController(config)
    system.router.train()
    batches = _batches(direction)
    weights = []
    with torch.inference_mode():
        for _ in range(4):
            _, routing = system(next(batches), return_routing_info=True)
            weights.append(controller.step(routing, [system.router]).load_balance_weight[0])
    assert weights == pytest.approx([0.015, 0.02, 0.02, 0.02])


def test_update_adapts_a_two_layer_stack_from_training_step_records() -> None:
    torch.manual_seed(0)
    layers = [PiMoESystem(PiMoEConfig.tiny()).eval() for _ in range(2)]
    direction = torch.randn(32, generator=torch.Generator().manual_seed(5))
    direction /= direction.norm()
    with torch.no_grad():
        for layer in layers:
            layer.router.gate.weight[0] += direction  # both layers favour expert 0 (p ~ 0.7) along one direction
    routers = [layer.router.train() for layer in layers]  # as in a training loop; the rest stays deterministic
    controller = AdaptiveController(AdaptationConfig(adaptation_rate=0.02))
    batches = _batches(direction, seed=2)
    worst = []
    for step in range(1, 41):
        with torch.inference_mode():
            hidden, routings = next(batches), []
            for layer in layers:
                hidden, routing = layer(hidden, return_routing_info=True)
                routings.append(routing)
        loads = [(r.tokens_per_expert.double() / r.tokens_per_expert.sum()).tolist() for r in routings]
        worst.append(max(max_violation(torch.tensor(shares)) for shares in loads))
        record = StepRecord(
            step=step, loss=float(sum(r.router_loss for r in routings)), lm_loss=0.0,
            load_balance_loss=float(sum(r.load_balance_loss for r in routings)), z_loss=float(sum(r.z_loss for r in routings)),
            supervised_loss=0.0, load=loads, routing_accuracy=float("nan"), routing_accuracy_per_layer=[math.nan] * 2,
            tokens_per_s=1.0, step_ms=1.0, lr=1e-3, temperature=routers[0].temperature,
            load_balance_weight=routers[0].load_balance_weight,
            selection_bias=[r.selection_bias.tolist() for r in routers],
        )
        entry = controller.update(record, routers)
        assert entry["step"] == step and "accuracy" not in entry["parts"]
        assert len(entry["selection_bias"]) == 2 and len(entry["load_balance_weight"]) == 2
        assert entry["max_violation"] == pytest.approx(worst[-1])
    assert sum(worst[:3]) / 3 > 0.7
    assert sum(worst[-10:]) / 10 < 0.45  # stated bound: mean worst-layer MaxVio of steps 31-40
    for router in routers:
        assert int(torch.argmin(router.selection_bias)) == 0
        assert router.load_balance_weight > 0.01  # raised while MaxVio exceeded the target
        assert router.temperature == 1.0  # StepRecords carry no entropy, so the temperature rule stays idle
    with pytest.raises(ValueError, match="1 routers for a StepRecord with 2 layers"):
        controller.update(record, routers[:1])


def test_allowed_expert_accuracy_counts_only_labelled_tokens() -> None:
    torch.manual_seed(0)
    system = PiMoESystem(PiMoEConfig.tiny()).eval()
    _, routing = system(torch.randn(1, 10, 32), return_routing_info=True)
    allowed = torch.nn.functional.one_hot(routing.top1, 4).bool().view(1, 10, 4).clone()
    allowed[0, :3] = torch.roll(allowed[0, :3], 1, dims=-1)  # three labels point at a different expert
    allowed[0, -2:] = False  # two tokens unlabelled
    assert allowed_expert_accuracy(routing, allowed) == pytest.approx(5 / 8)
    assert math.isnan(allowed_expert_accuracy(routing, torch.zeros(1, 10, 4, dtype=torch.bool)))


def test_calibrate_selection_bias_balances_a_held_out_batch() -> None:
    system, direction = _skewed_system()
    batches = _batches(direction, shape=(4, 64))
    result = calibrate_selection_bias(system, next(batches))
    assert result["max_violation_before"] > 0.8 and result["max_violation_after"] < 0.1
    with torch.inference_mode():
        _, held_out = system(next(batches), return_routing_info=True)
    assert max_violation(held_out.selected_per_expert) < 0.2


@pytest.mark.parametrize(("field", "value"), [
    ("performance_threshold", 1.5), ("adaptation_rate", -0.1), ("history_size", 0), ("entropy_low", float("nan")),
])
def test_adaptation_config_rejects_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AdaptationConfig(**{field: value})


def test_controller_rejects_routers_that_do_not_match_the_observation() -> None:
    controller = AdaptiveController()
    controller.observe([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="3 loads"):
        controller.apply([PiMoESystem(PiMoEConfig.tiny()).router])


def test_score_weighted_only_on_unmeasured_parts_is_no_score_and_no_adaptation() -> None:
    system, direction = _skewed_system()
    controller = AdaptiveController(AdaptationConfig(weights={"latency": 1.0}))  # no latency budget: never measured
    with torch.inference_mode():
        _, routing = system(next(_batches(direction)), return_routing_info=True)
    record = controller.observe([routing])
    assert math.isnan(record.performance_score)
    assert not record.adaptation_applied


def test_within_types_balancing_leaves_label_driven_imbalance_alone_and_evens_out_one_type() -> None:
    from pimoe import RouterConfig, TokenLevelRouter
    from pimoe.adaptive.controller import layer_max_violation

    types = ("language", "computation", "language", "logical")
    # language tokens dominate (as prose does under type labels), and expert 0 takes all of them from expert 2
    shares = torch.tensor([0.70, 0.20, 0.00, 0.10], dtype=torch.float64)
    layer = LayerObservation(shares, top_k=1, expert_types=types)
    assert layer_max_violation(layer, within_types=False) == pytest.approx(0.70 / 0.25 - 1)
    assert layer_max_violation(layer, within_types=True) == pytest.approx(0.70 / 0.35 - 1)
    even = LayerObservation(torch.tensor([0.35, 0.20, 0.35, 0.10], dtype=torch.float64), 1, expert_types=types)
    assert layer_max_violation(even, within_types=True) == pytest.approx(0.0)
    assert layer_max_violation(even, within_types=False) > 0.3  # across types it would still look unbalanced

    router = TokenLevelRouter(8, 4, RouterConfig(top_k=1, use_selection_bias=True), list(types))
    controller = AdaptiveController(AdaptationConfig(balance_within_types=True, performance_threshold=1.0,
                                                     adaptive_steps=False))
    controller.observe([layer])
    controller.apply([router])
    bias = router.selection_bias
    assert bias[2] > bias[0], "the idle language expert gains on the overloaded one"
    assert bias[1] == pytest.approx(bias[3]), "single-expert types get no balancing push"


def test_controller_changes_nothing_in_eval_mode() -> None:
    system, direction = _skewed_system()  # eval mode
    model = AdaptivePiMoE(system, AdaptationConfig(performance_threshold=1.0))
    before = (system.router.load_balance_weight, system.router.temperature, system.router.selection_bias.clone())
    with torch.inference_mode():
        _, info = model(next(_batches(direction)), return_adaptation_info=True)

    assert info["adaptation_info"]["adaptation_applied"]  # it scored the step as poor...
    assert "eval mode: the controller changes nothing" in info["adaptation_info"]["changes"]  # ...and left it alone
    assert (system.router.load_balance_weight, system.router.temperature) == before[:2]
    assert torch.equal(system.router.selection_bias, before[2])


def test_load_balance_weight_never_moves_in_eval_mode_even_when_acting_there() -> None:
    system, direction = _skewed_system()
    controller = AdaptiveController(AdaptationConfig(act_in_eval=True, load_balance_factor=2.0))
    with torch.inference_mode():
        _, routing = system(next(_batches(direction)), return_routing_info=True)
        record = controller.step(routing, [system.router])
    assert record.load_balance_weight == [0.01]  # no gradient flows in eval mode, so the weight would do nothing
    assert system.router.selection_bias.abs().sum() > 0  # the loss-free bias did act


def test_accuracy_guard_lowers_the_load_balance_weight_once_accuracy_falls() -> None:
    system, direction = _skewed_system()
    system.router.train()
    controller = AdaptiveController(AdaptationConfig(max_accuracy_drop=0.05, accuracy_smoothing=1.0,
                                                     load_balance_factor=2.0))
    batches = _batches(direction)
    weights, changes = [], []
    with torch.inference_mode():
        for accuracy in (0.9, 0.9, 0.7, 0.7):  # accuracy falls by 0.2 after two steps
            _, routing = system(next(batches), return_routing_info=True)
            record = controller.step(routing, [system.router], accuracy=accuracy)
            weights.append(record.load_balance_weight[0])
            changes.append(record.changes)
    assert weights[1] > weights[0] > 0.01  # imbalance raises the weight while accuracy holds
    assert weights[2] < weights[1] and weights[3] < weights[2]  # the guard turns it down once accuracy fell
    assert any("accuracy guard" in change for change in changes[2])
