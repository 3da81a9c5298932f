"""Structured pruning: remove whole intermediate neurons from each expert, so its matrices really get smaller.

Legend: B batch, S sequence, D hidden size, T tokens, E experts, F an expert's width (intermediate neurons),
F' the neurons it keeps, N calibration tokens routed to one expert.

Neuron j of an expert is row j of `up` (rows j and F + j for gated experts, whose `up` fuses gate and up), and column j
of `down`. Removing it deletes those rows and that column: `up` becomes a (F' or 2F', D) Linear, `down` a (D, F') one,
and the expert's `width` becomes F'. Norm weights are never touched: they scale the expert's input, not a neuron.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pimoe.layer.experts import PiMoEExpert
from pimoe.layer.system import PiMoESystem
from pimoe.layer.validation import check_hidden_states
from pimoe.optimize.quantize import QuantizationReport, compare_outputs

__all__ = ["IMPORTANCE_KINDS", "PruneReport", "neuron_importance", "prune_experts", "shrink_expert"]

IMPORTANCE_KINDS = ("magnitude", "activation")


@torch.no_grad()
def neuron_importance(expert: PiMoEExpert, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """(F,) how much each intermediate neuron can contribute to the expert's output; lowest is pruned first.

    Without tokens (magnitude): ||up row|| * ||down column||. A gated neuron computes act(g.x) * (u.x), bilinear in its
    gate and up rows, so its up-side factor is ||g|| * ||u||: either row at zero silences it.
    With tokens (N, D) (activation): mean |activation| over the tokens * ||down column||, the neuron's average
    contribution on data the expert actually sees.
    """
    down_norm = expert.down.weight.float().norm(dim=0)  # (F,)
    if tokens is not None:
        return expert.hidden(tokens).float().abs().mean(dim=0) * down_norm
    up_rows = expert.up.weight.float()
    if expert.gated:
        gate_rows, value_rows = up_rows.split(expert.width, dim=0)
        up_norm = gate_rows.norm(dim=1) * value_rows.norm(dim=1)
    else:
        up_norm = up_rows.norm(dim=1)
    return up_norm * down_norm


@torch.no_grad()
def shrink_expert(expert: PiMoEExpert, keep: torch.Tensor) -> None:
    """Keep only the neurons `keep` (ascending indices into 0..F-1) of `expert`, replacing its Linear layers in place."""
    keep = keep.to(expert.up.weight.device)
    width = expert.width
    up_rows = torch.cat([keep, keep + width]) if expert.gated else keep
    up = _new_linear(expert.up, expert.up.in_features, up_rows.numel())
    up.weight.copy_(expert.up.weight[up_rows])
    if up.bias is not None:
        up.bias.copy_(expert.up.bias[up_rows])
    down = _new_linear(expert.down, keep.numel(), expert.down.out_features)
    down.weight.copy_(expert.down.weight[:, keep])
    if down.bias is not None:
        down.bias.copy_(expert.down.bias)
    expert.up, expert.down, expert.width = up, down, int(keep.numel())


def _new_linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=like.bias is not None, device=like.weight.device,
                     dtype=like.weight.dtype)


@dataclass
class PruneReport:
    """What pruning removed and what it measurably cost and saved.

    widths_*: each expert's intermediate width. importance_sources: per expert, the criterion actually used
    ("activation" falls back to "magnitude" for an expert no calibration token was routed to). evaluated_on: the batch
    the comparison ran on. comparison: errors, latencies, memory and storage of the pruned copy against the original.
    removed_neurons: per expert, the indices (into its original width) that were removed.
    A pruned layer's widths live in its weights, not in `config.expert.intermediate_size`.
    """

    amount: float
    importance: str
    parameters_before: int
    parameters_after: int
    widths_before: list[int]
    widths_after: list[int]
    importance_sources: list[str]
    evaluated_on: str
    comparison: QuantizationReport
    removed_neurons: list[list[int]] = field(default_factory=list)

    @property
    def parameters_removed(self) -> int:
        return self.parameters_before - self.parameters_after

    @property
    def relative_error(self) -> float:
        return self.comparison.relative_error

    @property
    def latency_before_ms(self) -> float:
        return self.comparison.reference_latency.median_ms

    @property
    def latency_after_ms(self) -> float:
        return self.comparison.candidate_latency.median_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "amount": self.amount,
            "importance": self.importance,
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "parameters_removed": self.parameters_removed,
            "widths_before": list(self.widths_before),
            "widths_after": list(self.widths_after),
            "importance_sources": list(self.importance_sources),
            "evaluated_on": self.evaluated_on,
            "relative_error": self.relative_error,
            "latency_before_ms": self.latency_before_ms,
            "latency_after_ms": self.latency_after_ms,
            "comparison": self.comparison.to_dict(),
        }


def prune_experts(
    system: PiMoESystem,
    amount: float,
    calibration: torch.Tensor | None = None,
    importance: str = "magnitude",
    repeats: int = 10,
    evaluation: torch.Tensor | None = None,
    warmup: int = 3,
) -> tuple[PiMoESystem, PruneReport]:
    """A copy of `system` with floor(amount * F) of each expert's F intermediate neurons removed, and a report.

    amount: share of neurons to remove, in [0, 1); every expert keeps at least one.
    calibration: (B, S, D) tokens. Needed for importance="activation" (each expert is scored on the calibration tokens
        the router sends to it).
    evaluation: (B, S, D) batch the report's errors and latencies are measured on; default the calibration batch,
        else a seeded random (4, 64, D) batch. Pass held-out data to judge activation importance fairly.
    repeats / warmup: timed and untimed calls per model for the report's latencies.
    """
    if not isinstance(system, PiMoESystem):
        raise ValueError(f"expected a PiMoESystem, got {type(system).__name__}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a number in [0, 1), got {amount!r}")
    if importance not in IMPORTANCE_KINDS:
        raise ValueError(f"importance must be one of {IMPORTANCE_KINDS}, got {importance!r}")
    if calibration is not None:
        check_hidden_states(calibration, system.hidden_size)
    elif importance == "activation":
        raise ValueError("importance='activation' needs calibration tokens (a (batch, seq, hidden) tensor)")
    if evaluation is not None:
        check_hidden_states(evaluation, system.hidden_size)

    pruned = copy.deepcopy(system)
    routed = _tokens_per_expert(pruned, calibration) if importance == "activation" else [None] * system.num_experts
    widths_before = [expert.width for expert in pruned.experts]
    removed, sources = [], []
    for expert, tokens in zip(pruned.experts, routed, strict=True):
        scores = neuron_importance(expert, tokens)
        sources.append("activation" if tokens is not None else "magnitude")
        drop = math.floor(amount * expert.width)
        order = torch.argsort(scores, stable=True)
        removed.append(sorted(order[:drop].tolist()))
        shrink_expert(expert, order[drop:].sort().values)

    x_eval, evaluated_on = _evaluation_batch(system, calibration, evaluation)
    comparison = compare_outputs(system, pruned, x_eval, repeats=repeats, warmup=warmup)
    report = PruneReport(
        amount=float(amount),
        importance=importance,
        parameters_before=_count_parameters(system),
        parameters_after=_count_parameters(pruned),
        widths_before=widths_before,
        widths_after=[expert.width for expert in pruned.experts],
        importance_sources=sources,
        evaluated_on=evaluated_on,
        comparison=comparison,
        removed_neurons=removed,
    )
    return pruned, report


@torch.no_grad()
def _tokens_per_expert(system: PiMoESystem, calibration: torch.Tensor) -> list[torch.Tensor | None]:
    """For each expert, the calibration tokens (N, D) the router assigns to it (None where it gets none)."""
    tokens = calibration.reshape(-1, system.hidden_size).to(system.router.gate.weight.device)
    routing = system.router(tokens)
    assigned = ~routing.dropped
    out: list[torch.Tensor | None] = []
    for expert_id in range(system.num_experts):  # a loop over a handful of experts, not over tokens
        hit = ((routing.expert_indices == expert_id) & assigned).any(dim=-1)
        out.append(tokens[hit] if bool(hit.any()) else None)
    return out


def _evaluation_batch(system: PiMoESystem, calibration: torch.Tensor | None,
                      evaluation: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    weight = system.router.gate.weight
    if evaluation is not None:
        return evaluation, f"evaluation batch {tuple(evaluation.shape)}"
    if calibration is not None:
        return calibration, f"calibration batch {tuple(calibration.shape)}"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, system.hidden_size, generator=generator).to(weight.device)
    return x, f"seeded random batch {tuple(x.shape)}"


def _count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
