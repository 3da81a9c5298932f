"""AdaptivePiMoE: a PiMoE layer whose router knobs an AdaptiveController tunes after every call, and a one-off fit of
the selection bias to a calibration batch. The controller itself lives in `pimoe.adaptive`.

Legend: B batch, S sequence, D hidden size, E experts.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pimoe.adaptive.controller import AdaptationConfig, AdaptationRecord, AdaptiveController, _check_number
from pimoe.layer.config import PiMoEConfig
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem
from pimoe.measure.metrics import max_violation

__all__ = ["AdaptivePiMoE", "allowed_expert_accuracy", "calibrate_selection_bias"]


def allowed_expert_accuracy(routing: RoutingInfo, allowed_experts: torch.Tensor) -> float:
    """Share of labelled routed tokens whose top-1 expert is one of the token's allowed experts; NaN without labels.

    allowed_experts: (B, S, E) bool, as `TypeToExpertMapping.allowed_experts` returns; all-False rows are unlabelled.
    """
    batch, seq = routing.batch_shape
    allowed = allowed_experts.reshape(batch * seq, -1).to(routing.top1.device)[routing.token_positions].bool()
    labelled = allowed.any(dim=-1)
    count = int(labelled.sum())
    if count == 0:
        return float("nan")
    hit = allowed.gather(1, routing.top1.unsqueeze(1)).squeeze(1)
    return float((hit & labelled).sum()) / count


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AdaptivePiMoE(nn.Module):
    """A PiMoESystem whose router knobs are tuned after every call by an AdaptiveController.

    The changes decided on a call take effect from the next call: the output returned is always the one computed with
    the knobs the call started with.
    """

    def __init__(self, system: PiMoESystem | PiMoEConfig | None = None,
                 config: AdaptationConfig | None = None) -> None:
        super().__init__()
        if system is None or isinstance(system, PiMoEConfig):
            system = PiMoESystem(system)
        self.system = system
        self.controller = AdaptiveController(config)

    @property
    def adaptation_config(self) -> AdaptationConfig:
        return self.controller.config

    @property
    def adaptation_history(self) -> list[AdaptationRecord]:
        return list(self.controller.history)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        allowed_experts: torch.Tensor | None = None,
        return_adaptation_info: bool = False,
        return_routing_info: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """x: (B, S, D) -> (B, S, D); with return_adaptation_info / return_routing_info also an info dict:
        {'adaptation_info': record dict (performance_score, adaptation_applied, parts, changes, knobs...),
         'latency_ms': this call's synchronised wall time, 'routing_info': RoutingInfo}.

        allowed_experts: optional (B, S, E) bool token-type labels; they add routing accuracy to the score.
        """
        device = x.device
        _synchronize(device)
        started = time.perf_counter()
        output, routing = self.system(x, attention_mask=attention_mask, return_routing_info=True,
                                      allowed_experts=allowed_experts)
        _synchronize(device)
        latency_ms = (time.perf_counter() - started) * 1e3
        accuracy = None if allowed_experts is None else allowed_expert_accuracy(routing, allowed_experts)
        self.controller.observe(routing, latency_ms=latency_ms, accuracy=accuracy)
        record = self.controller.apply([self.system.router])
        if not (return_adaptation_info or return_routing_info):
            return output
        info: dict[str, Any] = {"adaptation_info": record.to_dict(), "latency_ms": latency_ms}
        if return_routing_info:
            info["routing_info"] = routing
        return output, info


@torch.no_grad()
def calibrate_selection_bias(system: PiMoESystem, calibration: torch.Tensor, steps: int = 200, rate: float = 0.05,
                             target_max_violation: float = 0.05, max_bias: float = 1.0) -> dict[str, Any]:
    """Fit the router's selection bias to a calibration batch (B, S, D): DeepSeek-V3's sign rule with per-expert
    step sizes that grow by 1.2 while an expert's sign holds and halve when it flips (Rprop, Riedmiller & Braun 1993).

    On a fixed batch a constant step either crawls (too small for a router that is 0.9 sure) or oscillates around
    balance (too large); adaptive steps do neither. The bias is centred (top-k ignores a common shift) and clamped to
    [-max_bias, max_bias]; the bias with the lowest measured MaxVio is kept. Stops once MaxVio <= target_max_violation.
    Only the router runs (experts do not affect routing), so each step is one (T, D) x (D, E) product.
    Turns `use_selection_bias` on if that lowered MaxVio. Returns MaxVio before and after, steps taken and the bias.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    _check_number("rate", rate, low=0.0, low_open=True)
    router = system.router
    tokens = calibration.reshape(-1, system.hidden_size).to(router.gate.weight.device)
    was_on = router.config.use_selection_bias
    original = router.selection_bias.detach().clone()
    before = max_violation(router(tokens).selected_per_expert)  # the router as configured
    router.config = replace(router.config, use_selection_bias=True)
    bias = original.double().cpu()
    step_size = torch.full_like(bias, rate)
    last_sign = torch.zeros_like(bias)

    def measure(candidate: torch.Tensor) -> tuple[float, torch.Tensor]:
        router.selection_bias.copy_(candidate.to(router.selection_bias))
        loads = router(tokens).selected_per_expert.double().cpu()
        return max_violation(loads), loads

    best_violation, loads = measure(bias)
    best_bias, taken = bias.clone(), 0
    while taken < steps and best_violation > target_max_violation:
        taken += 1
        sign = torch.sign(loads.mean() - loads)
        step_size = torch.where(sign * last_sign > 0, step_size * 1.2, torch.where(sign * last_sign < 0,
                                                                                    step_size / 2, step_size))
        last_sign = sign
        bias = bias + step_size * sign
        bias = (bias - bias.mean()).clamp(-max_bias, max_bias)
        violation, loads = measure(bias)
        if violation < best_violation:
            best_violation, best_bias = violation, bias.clone()
    if best_violation >= before:  # it did not help: leave the router as it was
        router.selection_bias.copy_(original)
        router.config = replace(router.config, use_selection_bias=was_on)
        best_violation = before
    else:
        router.selection_bias.copy_(best_bias.to(router.selection_bias))
    return {
        "max_violation_before": before,
        "max_violation_after": best_violation,
        "steps": taken,
        "tokens": int(tokens.shape[0]),
        "selection_bias": router.selection_bias.detach().cpu().tolist(),
        "use_selection_bias": router.config.use_selection_bias,
    }
