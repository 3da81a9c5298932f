"""Benchmark results as tables and CSV files, every row labelled with where and when it was measured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import pandas as pd

from pimoe.measure.train_bench import CONTENDERS

from .figures.training_step import CONTENDER_LABELS, format_mfu

__all__ = ["EVAL_COLUMNS", "LAYER_COLUMNS", "METHOD_WORDS", "SYSTEM_COLUMNS", "TRIGGER_COLUMNS", "exact_answers_line",
           "handoff_rows", "in_words", "measured_on", "method_rows", "results_csv", "results_frame", "train_step_table"]

LAYER_COLUMNS = {
    "batch": "batch", "seq": "seq", "tokens": "tokens",
    "layer_us": "layer median µs", "layer_p95_us": "layer p95 µs", "layer_tokens_per_s": "tokens/s",
    "layer_peak_mb": "layer peak MB", "loop_us": "loop median µs", "loop_p95_us": "loop p95 µs",
    "dense_us": "dense median µs", "dense_p95_us": "dense p95 µs", "dense_peak_mb": "dense peak MB",
    "speedup_vs_loop": "× faster than loop", "time_vs_dense": "time ÷ dense", "max_violation": "MaxVio",
}
SYSTEM_COLUMNS = {
    "system": "system", "tokens": "tokens", "latency_median_ms": "median ms", "latency_p95_ms": "p95 ms",
    "tokens_per_s": "tokens/s", "peak_mb": "peak MB", "model_mb": "model MB",
    "expert_utilization": "expert utilisation", "load_balance_score": "load balance", "max_violation": "MaxVio",
}
_DECIMALS = {"µs": 1, "tokens/s": 0, "MB": 2, "ms": 3, "×": 2, "÷": 2, "MaxVio": 3, "load balance": 3,
             "utilisation": 2}
_LABEL_KEYS = ("device", "device_name", "dtype", "date", "torch")


def _as_dict(row: Any) -> dict[str, Any]:
    return asdict(row) if is_dataclass(row) else dict(row)


def measured_on(meta: Mapping[str, Any]) -> str:
    """"NVIDIA H100 (cuda, bfloat16), 2026-11-27T12:00:00+00:00, torch 2.13"-style label of a result."""
    return (f"{meta.get('device_name', '?')} ({meta.get('device', '?')}, {meta.get('dtype', '?')}), "
            f"{meta.get('date', '?')}, torch {meta.get('torch', '?')}")


def results_frame(rows: Sequence[Any], columns: Mapping[str, str]) -> pd.DataFrame:
    """The chosen columns of benchmark rows (dataclasses or dicts), renamed and rounded for display (the CSV keeps
    full precision)."""
    records = [_as_dict(r) for r in rows]
    frame = pd.DataFrame.from_records(records)
    present = [c for c in columns if c in frame.columns]
    frame = frame[present].rename(columns=columns)
    for column in frame.columns:
        digits = next((d for unit, d in _DECIMALS.items() if unit in column), None)
        if digits is not None:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").round(digits)
    return frame


def results_csv(rows: Sequence[Any], meta: Mapping[str, Any]) -> bytes:
    """Every field of every row plus the device / dtype / date / torch labels, as UTF-8 CSV."""
    records = []
    for row in rows:
        record = {key: meta.get(key) for key in _LABEL_KEYS}
        record.update({k: v for k, v in _as_dict(row).items() if not isinstance(v, (dict, list))})
        records.append(record)
    return pd.DataFrame.from_records(records).to_csv(index=False).encode("utf-8")


EVAL_COLUMNS = {"method": "Method", "exact answers": "Exact answers", "median ms": "Time per answer (ms, median)",
                "p95 ms": "Time per answer (ms, p95)", "forward passes": "Model passes per answer",
                "tokens read": "Tokens read per answer"}
TRIGGER_COLUMNS = {"trigger": "Trigger", "fired": "Times it fired", "labels": "'=' that should fire",
                   "precision": "Precision (fired correctly)", "recall": "Recall ('=' caught)"}


METHOD_WORDS = {"plain": "plain generation", "expert": "one-pass hand-off", "multi_round": "multi-round tool call"}


def method_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows of a compute evaluation with each method named in words."""
    return [{**row, "method": METHOD_WORDS.get(row["method"], row["method"])} for row in rows]


def exact_answers_line(data: dict[str, Any]) -> str:
    """Each method's share of exact answers in a compute-evaluation report dict, in one line."""
    return " · ".join(f"{METHOD_WORDS.get(name, name)} {row['accuracy']:.0%}" for name, row in data["summary"].items())


def in_words(rows: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """The same rows with the columns renamed from field names to words a reader knows (unknown keys stay)."""
    return [{names.get(key, key): value for key, value in row.items()} for row in rows]


def handoff_rows(handoffs: list[Any]) -> list[dict[str, Any]]:
    """One row per hand-off of a generation (pimoe.handoff.decode.Handoff), in words: what was computed, what came
    back or why the expert declined, and how sure the router was."""
    return [{
        "Expression": h.expression,
        "Result": "declined" if h.declined_reason else h.result_text,
        "Why declined": h.declined_reason or "",
        "Router's computation probability at '='": round(float(h.router_probability), 3),
        "Where the '=' was": "end of the prompt" if h.in_prompt else "generated",
        "Token position": h.position,
    } for h in handoffs]


def _time_ratio(record: Mapping[str, Any], name: str, against: str) -> float | None:
    """Median step time of `name` over that of `against` in one record; None where either did not run."""
    own, other = record.get(f"{name}_median_ms"), record.get(f"{against}_median_ms")
    return own / other if own is not None and other else None


def train_step_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The training-step sweep's flat records (`TrainStepRow.flat()`) as one row per token count and contender, in
    words: times, throughput, MFU ("n/a — peak unknown" where no peak is known), the engine's time ratios, and why a
    contender did not run."""
    table = []
    for record in sorted(records, key=lambda r: r["tokens"]):
        for name in CONTENDERS:
            if f"{name}_median_ms" not in record:
                continue  # not part of this sweep (the sorted dispatch is optional)
            ran = record[f"{name}_median_ms"] is not None
            table.append({
                "tokens": record["tokens"], "contender": CONTENDER_LABELS[name],
                "median ms": record[f"{name}_median_ms"], "p95 ms": record[f"{name}_p95_ms"],
                "tokens/s": record[f"{name}_tokens_per_s"], "TFLOP/s": record[f"{name}_tflops"],
                "MFU": format_mfu(record[f"{name}_mfu"]) if ran else "",
                "time ÷ dense": _time_ratio(record, name, "dense"),
                "time ÷ grouped_mm": _time_ratio(record, name, "grouped_mm"),
                "did not run because": record.get(f"{name}_error") or "",
            })
    frame = pd.DataFrame.from_records(table)
    for column, digits in (("median ms", 3), ("p95 ms", 3), ("tokens/s", 0), ("TFLOP/s", 4), ("time ÷ dense", 2),
                           ("time ÷ grouped_mm", 2)):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round(digits)
    return frame
