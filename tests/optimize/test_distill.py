"""Distillation moves a smaller student towards a frozen teacher, with a routing term only where experts correspond."""

import copy

import pytest
import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem
from pimoe.optimize.distill import DistillationTrainer, distillation_loss, output_distance


@pytest.fixture(scope="module")
def teacher() -> PiMoESystem:
    torch.manual_seed(0)
    return PiMoESystem(PiMoEConfig.tiny()).eval()


def _student(num_experts: int, intermediate_size: int, seed: int = 1) -> PiMoESystem:
    torch.manual_seed(seed)
    return PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=num_experts, expert_types=("language", "reasoning"),
                                   expert=ExpertConfig(intermediate_size=intermediate_size)))


def _batch(generator: torch.Generator, batch: int = 8, seq: int = 16) -> torch.Tensor:
    return torch.randn(batch, seq, 32, generator=generator)


@pytest.mark.parametrize("num_experts", [2, 4], ids=["fewer-experts", "same-experts"])
def test_student_distance_to_teacher_falls_on_held_out_data(teacher, num_experts):
    student = _student(num_experts, intermediate_size=48)  # narrower than the teacher's 128
    teacher_state = copy.deepcopy(teacher.state_dict())
    trainer = DistillationTrainer(teacher, student, lr=3e-3)
    held_out = _batch(torch.Generator().manual_seed(123))
    before = trainer.evaluate(held_out)
    train_data = torch.Generator().manual_seed(0)
    for _ in range(50):
        last = trainer.step(_batch(train_data))
    after = trainer.evaluate(held_out)
    assert after["distance"] < 0.75 * before["distance"]
    assert after["output_loss"] < before["output_loss"]
    assert last["routing_used"] is (num_experts == teacher.num_experts)
    for name, tensor in teacher.state_dict().items():  # the teacher is frozen
        assert torch.equal(tensor, teacher_state[name]), name


def test_identical_student_has_zero_loss_and_distance(teacher):
    x = _batch(torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, routing = teacher(x, return_routing_info=True)
    for kind in ("mse", "cosine"):
        parts = distillation_loss(out, out, routing, routing, output_loss=kind)
        assert parts.routing_used
        assert float(parts.total) == pytest.approx(0.0, abs=1e-6)
    assert output_distance(copy.deepcopy(teacher), teacher, x) == 0.0


@torch.no_grad()
def test_routing_term_is_positive_when_routers_disagree_and_skipped_when_experts_differ(teacher):
    x = _batch(torch.Generator().manual_seed(6))
    t_out, t_routing = teacher(x, return_routing_info=True)
    other = copy.deepcopy(teacher)
    other.router.gate.weight.copy_(other.router.gate.weight.flip(0))
    s_out, s_routing = other(x, return_routing_info=True)
    same_count = distillation_loss(s_out, t_out, s_routing, t_routing, routing_weight=0.5)
    assert same_count.routing_used and float(same_count.routing) > 0
    assert float(same_count.total) == pytest.approx(float(same_count.output + 0.5 * same_count.routing))

    small = _student(2, 48)
    s_out, s_routing = small(x, return_routing_info=True)
    different_count = distillation_loss(s_out, t_out, s_routing, t_routing)
    assert not different_count.routing_used and float(different_count.routing) == 0.0


def test_distillation_rejects_mismatched_shapes_and_settings(teacher):
    x = _batch(torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(x, x[:, :4])
    with pytest.raises(ValueError, match="output_loss"):
        distillation_loss(x, x, output_loss="l1")
    with pytest.raises(ValueError, match="hidden_size"):
        DistillationTrainer(teacher, PiMoESystem(PiMoEConfig(hidden_size=16, num_experts=2)))
    with pytest.raises(ValueError, match="lr"):
        DistillationTrainer(teacher, _student(2, 48), lr=0.0)
