"""Knowledge distillation from a PiMoE layer (the teacher) into a smaller one (the student).

Legend: B batch, S sequence, D hidden size (shared by teacher and student), T routed tokens, E experts.

The student learns the teacher's outputs (MSE or cosine distance) and, when both have the same number of experts, the
teacher's routing distribution (KL at a distillation temperature, Hinton et al. 2015). A student with a different number of
experts has no expert-to-expert correspondence with its teacher, so it learns from the outputs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem

__all__ = ["DISTILLATION_OUTPUT_LOSSES", "DistillationLoss", "DistillationTrainer", "distillation_loss",
           "output_distance"]

DISTILLATION_OUTPUT_LOSSES = ("mse", "cosine")


@dataclass
class DistillationLoss:
    """total = output + routing_weight * routing. routing_used is False when the routing term was skipped."""

    total: torch.Tensor
    output: torch.Tensor
    routing: torch.Tensor
    routing_used: bool


def distillation_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    student_routing: RoutingInfo | None = None,
    teacher_routing: RoutingInfo | None = None,
    distill_temperature: float = 2.0,
    routing_weight: float = 0.1,
    output_loss: str = "mse",
) -> DistillationLoss:
    """Distance of the student's outputs (B, S, D) from the teacher's, plus a routing term.

    output_loss: "mse" (mean squared error) or "cosine" (mean of 1 - cosine similarity over the hidden dimension).
    Routing term: KL(teacher || student) between softmax(logits / distill_temperature) of the two routers, times
    distill_temperature^2 so its gradient scale does not shrink as that temperature grows (Hinton et al. 2015, sec. 2). It is
    used only when both routings are given and have the same number of experts; otherwise it is zero and
    `routing_used` is False. Both routings must cover the same tokens (same inputs and attention mask).
    """
    if student_out.shape != teacher_out.shape:
        raise ValueError(f"student output {tuple(student_out.shape)} and teacher output {tuple(teacher_out.shape)} "
                         "differ in shape")
    if output_loss not in DISTILLATION_OUTPUT_LOSSES:
        raise ValueError(f"output_loss must be one of {DISTILLATION_OUTPUT_LOSSES}, got {output_loss!r}")
    if not distill_temperature > 0:
        raise ValueError(f"distill_temperature must be > 0, got {distill_temperature!r}")
    if not routing_weight >= 0:
        raise ValueError(f"routing_weight must be >= 0, got {routing_weight!r}")
    student32, teacher32 = student_out.float(), teacher_out.detach().float()
    if output_loss == "mse":
        out_term = F.mse_loss(student32, teacher32)
    else:
        out_term = (1.0 - F.cosine_similarity(student32, teacher32, dim=-1)).mean()

    routing_used = (student_routing is not None and teacher_routing is not None
                    and student_routing.num_experts == teacher_routing.num_experts)
    if routing_used:
        if student_routing.num_tokens != teacher_routing.num_tokens:
            raise ValueError(f"routings cover different tokens: student {student_routing.num_tokens}, "
                             f"teacher {teacher_routing.num_tokens}")
        student_log_probs = F.log_softmax(student_routing.logits.float() / distill_temperature, dim=-1)  # (T, E)
        teacher_log_probs = F.log_softmax(teacher_routing.logits.detach().float() / distill_temperature, dim=-1)
        route_term = F.kl_div(student_log_probs, teacher_log_probs, log_target=True,
                              reduction="batchmean") * distill_temperature**2
    else:
        route_term = out_term.new_zeros(())
    return DistillationLoss(total=out_term + routing_weight * route_term, output=out_term, routing=route_term,
                            routing_used=routing_used)


def _moe_contribution(system: PiMoESystem, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out - x if system.config.residual else out


@torch.no_grad()
def output_distance(student: PiMoESystem, teacher: PiMoESystem, x: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> float:
    """||student(x) - teacher(x)|| / ||teacher's MoE contribution|| on x (B, S, D), both in eval mode.

    The denominator is the teacher's output minus the residual input: with a residual layer the outputs share x, and
    dividing by ||teacher(x)|| would make any student look close.
    """
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        s_out = student(x, attention_mask)
        t_out = teacher(x, attention_mask)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    s_delta, t_delta = _moe_contribution(student, s_out, x).double(), _moe_contribution(teacher, t_out, x).double()
    return float(torch.linalg.vector_norm(s_delta - t_delta) / torch.linalg.vector_norm(t_delta).clamp_min(1e-12))


class DistillationTrainer:
    """Trains `student` to imitate a frozen `teacher` with AdamW.

    teacher: run under no_grad in eval mode (put there at construction). student: any PiMoESystem with the same
    hidden size (fewer experts, narrower experts, a different top_k). aux_weight: weight of the student's own router
    loss (load balancing and z-loss), so imitation does not collapse its routing onto a few experts.
    """

    def __init__(
        self,
        teacher: PiMoESystem,
        student: PiMoESystem,
        lr: float = 1e-3,
        distill_temperature: float = 2.0,
        routing_weight: float = 0.1,
        output_loss: str = "mse",
        aux_weight: float = 1.0,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
    ) -> None:
        for name, system in (("teacher", teacher), ("student", student)):
            if not isinstance(system, PiMoESystem):
                raise ValueError(f"{name} must be a PiMoESystem, got {type(system).__name__}")
        if teacher.hidden_size != student.hidden_size:
            raise ValueError(f"teacher hidden_size {teacher.hidden_size} and student hidden_size "
                             f"{student.hidden_size} must match")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if output_loss not in DISTILLATION_OUTPUT_LOSSES:
            raise ValueError(f"output_loss must be one of {DISTILLATION_OUTPUT_LOSSES}, got {output_loss!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        self.teacher = teacher.eval()
        self.student = student
        self.distill_temperature = distill_temperature
        self.routing_weight = routing_weight
        self.output_loss = output_loss
        self.aux_weight = aux_weight
        self.max_grad_norm = max_grad_norm
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
        self.steps = 0

    def _losses(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[DistillationLoss, RoutingInfo,
                                                                                       torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            t_out, t_routing = self.teacher(x, attention_mask, return_routing_info=True)
        s_out, s_routing = self.student(x, attention_mask, return_routing_info=True)
        parts = distillation_loss(s_out, t_out, s_routing, t_routing, self.distill_temperature, self.routing_weight,
                                  self.output_loss)
        return parts, s_routing, s_out, t_out

    def step(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, float | bool | int]:
        """One optimiser step on x (B, S, D). Returns the loss parts and this batch's relative distance (before the
        step) between the student's and the teacher's MoE contributions."""
        self.student.train()
        parts, s_routing, s_out, t_out = self._losses(x, attention_mask)
        loss = parts.total + self.aux_weight * s_routing.router_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.steps += 1
        with torch.no_grad():
            s_delta = _moe_contribution(self.student, s_out, x).double()
            t_delta = _moe_contribution(self.teacher, t_out, x).double()
            distance = float(torch.linalg.vector_norm(s_delta - t_delta)
                             / torch.linalg.vector_norm(t_delta).clamp_min(1e-12))
        return {
            "step": self.steps,
            "loss": float(loss.detach()),
            "output_loss": float(parts.output.detach()),
            "routing_loss": float(parts.routing.detach()),
            "routing_used": parts.routing_used,
            "router_loss": float(s_routing.router_loss.detach()),
            "distance": distance,
        }

    def evaluate(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, float | bool]:
        """Loss parts and relative distance on a held-out batch, student in eval mode, no update."""
        modes = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                parts, _, _, _ = self._losses(x, attention_mask)
        finally:
            self.student.train(modes)
        return {
            "output_loss": float(parts.output),
            "routing_loss": float(parts.routing),
            "routing_used": parts.routing_used,
            "distance": output_distance(self.student, self.teacher, x, attention_mask),
        }
