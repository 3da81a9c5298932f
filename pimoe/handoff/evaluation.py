"""Evaluation of the computation hand-off: exact answers, extraction, trigger precision/recall and latency, all measured
in one run on a seeded held-out problem set (`pimoe.handoff.problems`).

Three ways to answer each prompt ("... so Ana has 123456+654321="), same model, same greedy decoding, same
`max_new_tokens`:
    plain        `PiMoELM.generate`: the language model alone.
    expert       `generate_with_computation`: the router's hand-off splices the exact result in one decoding pass.
    multi_round  `generate_multi_round`: generation stops at the hand-off, the expert is called as an external tool and
                 a second generate call re-reads prompt + partial output + result from scratch.

Definitions (docs/computation.md has the discussion):
    answer       the number right after the prompt's final '=' in the continuation; exact string match with the
                 reference answer (computed with Python ints, not by the expert).
    extraction   `extract_expression(prompt).expression` equals the reference expression, as written.
    hand-off     the expert run handed off at the prompt's final '=' with the reference expression.
    precision / recall   teacher-forced: trigger positions on the reference texts (problems and controls) against the
                 labels (every '=' that ends an arithmetic expression, from `find_expressions`). Reported for the full
                 trigger and for each of its two gates alone ('=' routed to computation; expression extracted).
    latency      wall time of one call that produces the continuation, device synchronised; median and p95 over the
                 problems. The three methods run back to back on each problem, in rotating order, so machine load
                 falls on all of them alike.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pimoe.handoff.decode import (
    DEFAULT_LAYER,
    DEFAULT_THRESHOLD,
    HandoffTrigger,
    TriggerCandidate,
    generate_multi_round,
    generate_with_computation,
    label_positions,
    trigger_candidates,
)
from pimoe.handoff.expert import ComputationExpert
from pimoe.handoff.extract import extract_expression
from pimoe.handoff.problems import EVAL_SEED, ComputeProblem, ProblemSetConfig, build_control_texts, build_problems
from pimoe.lm.model import PiMoELM
from pimoe.measure.layer_bench import device_description
from pimoe.turns import turn_point, without_turns

__all__ = [
    "METHODS",
    "ComputeEvalConfig",
    "ComputeEvalReport",
    "MethodResult",
    "TriggerScore",
    "answer_of",
    "format_report",
    "latest_report",
    "run_compute_eval",
    "save_report",
    "score_trigger",
    "summary_rows",
    "sweep_trigger",
    "trigger_rows",
]

METHODS = ("plain", "expert", "multi_round")
_TRIGGER_NAMES = {"trigger": "router + extraction", "router": "router gate only", "extraction": "extraction only"}
_ANSWER = re.compile(r"[ \t]*([-−]?[0-9]+(?:\.[0-9]+)?(?:/[0-9]+)?)")


def answer_of(continuation: str) -> str | None:
    """The number a continuation starts with (the answer to a prompt that ends with '='), or None."""
    match = _ANSWER.match(continuation)
    return match.group(1).replace("−", "-") if match else None


# ---------------------------------------------------------------------------------------------------------------------
# Trigger precision and recall


@dataclass(frozen=True)
class TriggerScore:
    """Counts and rates of one trigger variant over a set of texts. precision is NaN when nothing fired."""

    fired: int
    labels: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.fired if self.fired else math.nan

    @property
    def recall(self) -> float:
        return self.true_positives / self.labels if self.labels else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": _finite_or_none(self.precision), "recall": _finite_or_none(self.recall)}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def score_trigger(candidates: Sequence[Sequence[TriggerCandidate]], labels: Sequence[Iterable[int]],
                  trigger: HandoffTrigger, expert_types: Sequence[str]) -> dict[str, TriggerScore]:
    """Precision/recall counts of the trigger on teacher-forced candidates (one list per text) against the label
    positions of the same texts: "trigger" (both gates), "router" (a '=' routed to computation, no extraction) and
    "extraction" (an expression extracted, no router)."""
    counts = {name: [0, 0, 0] for name in ("trigger", "router", "extraction")}
    for text_candidates, text_labels in zip(candidates, labels, strict=True):
        wanted = set(text_labels)
        if text_candidates:
            probs = torch.stack([c.probs for c in text_candidates], dim=1)  # (L, P, E)
            routed = trigger.router_fires(probs, expert_types).tolist()
        else:
            routed = []
        for candidate, router_ok in zip(text_candidates, routed, strict=True):
            extracted = candidate.expression is not None
            for name, fired in (("trigger", router_ok and extracted), ("router", router_ok),
                                ("extraction", extracted)):
                if fired:
                    counts[name][0] += 1
                    counts[name][2] += candidate.position in wanted
        for name in counts:
            counts[name][1] += len(wanted)
    return {name: TriggerScore(fired=f, labels=n, true_positives=tp) for name, (f, n, tp) in counts.items()}


def sweep_trigger(model: PiMoELM, texts: Sequence[str], layers: Sequence[int | str],
                  thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Trigger precision/recall for every (layer, threshold) on `texts`, from one teacher-forced read per text.
    Use a dev set: choosing the trigger on the eval set would overstate it."""
    candidates = [trigger_candidates(model, text) for text in texts]
    labels = [label_positions(text) for text in texts]
    rows = []
    for layer in layers:
        for threshold in thresholds:
            trigger = HandoffTrigger(threshold=threshold, layer=layer)
            trigger.check_model(model)
            scores = score_trigger(candidates, labels, trigger, model.expert_types)
            rows.append({"layer": layer, "threshold": threshold,
                         **{f"{name}_{key}": value for name, score in scores.items()
                            for key, value in score.as_dict().items() if key in ("precision", "recall")}})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The evaluation run


@dataclass(frozen=True)
class ComputeEvalConfig:
    """seed / num_problems / num_controls / min_digits / max_digits: the problem set (`ProblemSetConfig`).
    max_new_tokens: continuation length for every method (spliced tokens count). threshold / layer: the trigger.
    seal_results: see `generate_with_computation`. warmup: untimed calls of each method before timing."""

    seed: int = EVAL_SEED
    num_problems: int = 140
    num_controls: int = 30
    min_digits: int = 3
    max_digits: int = 6
    max_new_tokens: int = 16
    threshold: float = DEFAULT_THRESHOLD
    layer: int | str = DEFAULT_LAYER
    seal_results: bool = True
    warmup: int = 2

    def __post_init__(self) -> None:
        self.problem_set()  # validates the set's fields
        HandoffTrigger(threshold=self.threshold, layer=self.layer)
        for name, low in (("max_new_tokens", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

    def problem_set(self) -> ProblemSetConfig:
        return ProblemSetConfig(seed=self.seed, num_problems=self.num_problems, num_controls=self.num_controls,
                                min_digits=self.min_digits, max_digits=self.max_digits)


@dataclass
class MethodResult:
    """One method over the problem set. correct: per problem. latency_ms: per problem, in problem order.
    forward_passes / tokens_through_model: model forward calls and input tokens they read, per problem (counted)."""

    name: str
    correct: list[bool]
    latency_ms: list[float]
    forward_passes: list[int]
    tokens_through_model: list[int]
    continuations: list[str]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latency_ms)
        return {
            "accuracy": self.accuracy,
            "latency_median_ms": statistics.median(ordered),
            "latency_p95_ms": ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))],
            "latency_mean_ms": statistics.fmean(ordered),
            "forward_passes_mean": statistics.fmean(self.forward_passes),
            "tokens_through_model_mean": statistics.fmean(self.tokens_through_model),
        }


@dataclass
class ComputeEvalReport:
    """Everything one `run_compute_eval` measured; `to_dict` is the JSON written by the command."""

    config: ComputeEvalConfig
    methods: dict[str, MethodResult]
    extraction_rate: float
    handoff_rate: float
    expert_accuracy_when_extracted: float
    trigger: dict[str, TriggerScore]
    per_kind: dict[str, dict[str, float]]
    failures: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    # Held-out text (`pimoe.lm.routing_eval.routing_report`, `pimoe.handoff.heldout_eval.heldout_handoff_report`):
    # {"routing": ..., "handoff": ...}, empty when not measured.
    generalisation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "summary": {name: result.summary() for name, result in self.methods.items()},
            "extraction_rate": self.extraction_rate,
            "handoff_rate": self.handoff_rate,
            "expert_accuracy_when_extracted": _finite_or_none(self.expert_accuracy_when_extracted),
            "trigger": {name: score.as_dict() for name, score in self.trigger.items()},
            "per_kind": self.per_kind,
            "failures": self.failures,
            "meta": self.meta,
            "generalisation": self.generalisation,
        }


class _ForwardCounter:
    """Counts the model's forward passes and the tokens they read.

    NOTE: the hook sits on the token embedding, which every forward pass calls exactly once through `__call__`;
    `PiMoELM.step` calls `model.forward` directly, so a hook on the model itself would never run.
    """

    def __init__(self, model: PiMoELM) -> None:
        self.calls = 0
        self.tokens = 0
        self.handle = model.tok_emb.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1
        self.tokens += int(args[0].numel())

    def snapshot(self) -> tuple[int, int]:
        return self.calls, self.tokens


def _timed(fn: Callable[[str], Any], prompt: str, device: torch.device, counter: _ForwardCounter
           ) -> tuple[Any, float, int, int]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    calls, tokens = counter.snapshot()
    with without_turns():  # a turn handed to other work inside would be counted as this answer's latency
        started = time.perf_counter()
        result = fn(prompt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    return result, elapsed_ms, counter.calls - calls, counter.tokens - tokens


def _method_calls(model: PiMoELM, config: ComputeEvalConfig, expert: ComputationExpert
                  ) -> dict[str, Callable[[str], Any]]:
    options = {"expert": expert, "max_new_tokens": config.max_new_tokens, "threshold": config.threshold,
               "layer": config.layer, "seal_results": config.seal_results}
    return {
        "plain": lambda prompt: model.generate(prompt, max_new_tokens=config.max_new_tokens),
        "expert": lambda prompt: generate_with_computation(model, prompt, **options),
        "multi_round": lambda prompt: generate_multi_round(model, prompt, **options),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _per_kind(problems: Sequence[ComputeProblem], methods: dict[str, MethodResult],
              extracted: Sequence[bool]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(p.kind for p in problems):
        rows = [i for i, p in enumerate(problems) if p.kind == kind]
        out[kind] = {"problems": len(rows), "extraction": sum(extracted[i] for i in rows) / len(rows),
                     **{name: sum(result.correct[i] for i in rows) / len(rows) for name, result in methods.items()}}
    return out


def run_compute_eval(model: PiMoELM, config: ComputeEvalConfig | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> ComputeEvalReport:
    """Run the three methods on every problem and the teacher-forced trigger on every reference and control text.

    progress(done, total, message) is called after each problem. The model is put in eval mode and left unchanged.
    """
    config = config or ComputeEvalConfig()
    trigger = HandoffTrigger(threshold=config.threshold, layer=config.layer)
    trigger.check_model(model)
    problems = build_problems(config.problem_set())
    controls = build_control_texts(config.problem_set())
    expert = ComputationExpert()
    device = model.device
    load_before = _load_average()
    started = time.perf_counter()
    model.eval()

    calls = _method_calls(model, config, expert)
    for _ in range(config.warmup):
        for call in calls.values():
            call(problems[0].prompt)

    results = {name: MethodResult(name, [], [], [], [], []) for name in METHODS}
    handed_off: list[bool] = []
    counter = _ForwardCounter(model)
    try:
        for index, problem in enumerate(problems):
            order = METHODS[index % 3:] + METHODS[: index % 3]
            for name in order:
                out, elapsed_ms, passes, tokens = _timed(calls[name], problem.prompt, device, counter)
                result = results[name]
                result.correct.append(answer_of(out.text) == problem.answer)
                result.latency_ms.append(elapsed_ms)
                result.forward_passes.append(passes)
                result.tokens_through_model.append(tokens)
                result.continuations.append(out.text)
                if name == "expert":
                    handed_off.append(any(h.position == out.prompt_length - 1 and h.expression == problem.expression
                                          and h.spliced for h in out.handoffs))
            if progress is not None:
                progress(index + 1, len(problems), f"problem {index + 1}/{len(problems)}")
            turn_point()
    finally:
        counter.handle.remove()
    generation_s = time.perf_counter() - started

    extracted = [(found := extract_expression(p.prompt)) is not None and found.expression == p.expression
                 for p in problems]
    texts = [p.reference for p in problems] + controls
    candidates = [trigger_candidates(model, text) for text in texts]
    scores = score_trigger(candidates, [label_positions(text) for text in texts], trigger, model.expert_types)
    when_extracted = [results["expert"].correct[i] for i, ok in enumerate(extracted) if ok]

    failures = [{"kind": p.kind, "prompt": p.prompt, "answer": p.answer, "expert": results["expert"].continuations[i],
                 "extracted": extracted[i]}
                for i, p in enumerate(problems) if not results["expert"].correct[i]]
    meta = {
        **device_description(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "generation_wall_s": round(generation_s, 2),
        "total_wall_s": round(time.perf_counter() - started, 2),
        "num_controls": len(controls),
        "checkpoint": model.checkpoint_metadata.get("command"),
    }
    if device.type == "cpu":
        meta["device_name"] = _cpu_name()
    return ComputeEvalReport(
        config=config,
        methods=results,
        extraction_rate=sum(extracted) / len(problems),
        handoff_rate=sum(handed_off) / len(problems),
        expert_accuracy_when_extracted=sum(when_extracted) / len(when_extracted) if when_extracted else math.nan,
        trigger=scores,
        per_kind=_per_kind(problems, results, extracted),
        failures=failures,
        meta=meta,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1%}"


def format_report(report: ComputeEvalReport) -> str:
    """The report as a plain-text table."""
    meta, cfg = report.meta, report.config
    lines = [
        f"Computation hand-off on {meta['device_name']} ({meta['device']}, {meta.get('threads', '?')} threads, "
        f"torch {meta['torch']}), {meta['date']}, load average {meta['load_average_before']} -> "
        f"{meta['load_average_after']}",
        f"{cfg.num_problems} problems (seed {cfg.seed}, operands {cfg.min_digits}-{cfg.max_digits} digits) + "
        f"{cfg.num_controls} control texts; trigger: layer {cfg.layer}, threshold {cfg.threshold}; "
        f"max_new_tokens {cfg.max_new_tokens}",
        "",
        f"{'method':<12} {'exact answers':>13} {'median ms':>10} {'p95 ms':>8} {'forwards':>9} {'tokens read':>12}",
    ]
    for name, result in report.methods.items():
        s = result.summary()
        lines.append(f"{name:<12} {s['accuracy']:>13.1%} {s['latency_median_ms']:>10.1f} {s['latency_p95_ms']:>8.1f} "
                     f"{s['forward_passes_mean']:>9.1f} {s['tokens_through_model_mean']:>12.0f}")
    lines += [
        "",
        f"extraction rate {report.extraction_rate:.1%} · hand-off at the answer {report.handoff_rate:.1%} · "
        f"expert accuracy where extracted {_pct(report.expert_accuracy_when_extracted)}",
        "",
        f"{'trigger (teacher-forced)':<26} {'fired':>6} {'labels':>7} {'precision':>10} {'recall':>8}",
    ]
    for key, score in report.trigger.items():
        lines.append(f"{_TRIGGER_NAMES[key]:<26} {score.fired:>6} {score.labels:>7} {_pct(score.precision):>10} "
                     f"{_pct(score.recall):>8}")
    lines += ["", f"{'kind':<15} {'n':>4} {'extraction':>11} " + " ".join(f"{m:>12}" for m in report.methods)]
    for kind, row in report.per_kind.items():
        lines.append(f"{kind:<15} {row['problems']:>4} {row['extraction']:>11.1%} "
                     + " ".join(f"{row[m]:>12.1%}" for m in report.methods))
    if report.generalisation:
        lines += ["", format_generalisation(report.generalisation)]
    lines.append(f"\nwall time {meta['total_wall_s']} s")
    return "\n".join(lines)


def format_generalisation(generalisation: dict[str, Any]) -> str:
    """Routing accuracy in- and out-of-template beside its baselines, and hand-off precision/recall on held-out text,
    as plain text (the "generalisation" part of the report)."""
    lines = ["Routing accuracy = agreement of the top-1 expert type with a rule-based regex tagger's label (digits and",
             "operators -> computation, letters -> language, English logic words -> logical): how well the router",
             "imitates the tagger, not whether a token needs computation. Baselines: all-language = send every token",
             "to the text's most common type; chance k/E = each expert's share when routing ignores the text.",
             f"{'text':<22} {'accuracy':>9} {'all-language':>13} {'chance k/E':>11}  beats all-language"]
    routing = generalisation.get("routing", {})
    for part, title in (("in_template", "in-template"), ("out_of_template", "out-of-template")):
        if part not in routing:
            continue
        summary = routing[part]
        lines.append(f"{title} (mean over {len(summary['texts'])} texts): accuracy {summary['mean_accuracy']:.3f}, "
                     f"min {summary['min_accuracy']:.3f}, all-language {summary['mean_all_language']:.3f}, "
                     f"chance {summary['chance']:.3f}")
        for text in summary["texts"]:
            lines.append(f"  {text['name']:<20} {text['accuracy']:>9.3f} {text['all_language']:>13.3f} "
                         f"{text['chance']:>11.3f}  {'yes' if text['beats_baseline'] else 'NO'}")
    handoff = generalisation.get("handoff")
    if handoff:
        lines += ["", "hand-off on held-out text (7-12 digit operands, powers, percentages, prices, thousands, "
                      "German; controls: assignments, '==', dates, phones, times, ranges, versions):",
                  f"  hand-off precision {_pct(handoff['precision'])} recall {_pct(handoff['recall'])} "
                  f"({handoff['hits']} of {handoff['labels']} labels, {handoff['fired']} fired) · router alone "
                  f"precision {_pct(handoff['router_precision'])} recall {_pct(handoff['router_recall'])}"]
    return "\n".join(lines)


def save_report(report: ComputeEvalReport, path: str | Path) -> Path:
    """Write the report's JSON to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def latest_report(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest `compute-eval-*.json` in `directory` (by name: the date is in it) and its content, or None when
    there is none. ValueError when that file is not a report."""
    paths = sorted(Path(directory).glob("compute-eval-*.json"))
    if not paths:
        return None
    try:
        data = json.loads(paths[-1].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{paths[-1]} is not a readable evaluation report: {error}") from None
    if not isinstance(data, dict) or not {"summary", "trigger", "meta"} <= set(data):
        raise ValueError(f"{paths[-1]} is not an evaluation report (no summary, trigger and meta)")
    return paths[-1], data


def summary_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method of a report dict (`ComputeEvalReport.to_dict`), for a table."""
    return [{"method": name, "exact answers": row["accuracy"], "median ms": row["latency_median_ms"],
             "p95 ms": row["latency_p95_ms"], "forward passes": row["forward_passes_mean"],
             "tokens read": row["tokens_through_model_mean"]} for name, row in data["summary"].items()]


def trigger_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trigger variant of a report dict: fired, labels, precision, recall (None where undefined)."""
    return [{"trigger": _TRIGGER_NAMES.get(key, key), "fired": row["fired"], "labels": row["labels"],
             "precision": row["precision"], "recall": row["recall"]} for key, row in data["trigger"].items()]
