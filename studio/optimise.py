"""The optimisation page's measurements: a PiMoE layer and realistic inputs, its quantised / pruned variants measured
against it, the optimisation report, and an ONNX export. Each variant is a copy; the shared model is never touched.

Legend: B batch, S sequence, D hidden size.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.system import PiMoESystem
from pimoe.lm.data import CorpusConfig, generate_corpus
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.optimize import onnx_export, prune
from pimoe.optimize import quantize as quantization
from pimoe.original import enhanced

__all__ = ["ERROR_THRESHOLD", "bench_layer", "compare_variants", "layer_from_model", "onnx_bytes", "optimisation_report",
           "presentation_rows"]


def layer_from_model(model: PiMoELM, layer: int, windows: int = 4) -> tuple[PiMoESystem, torch.Tensor]:
    """A copy of the model's PiMoE layer `layer` and the hidden states (B=windows, S=max_seq_len, D) that reach it on
    corpus text, so quantisation and pruning are judged on the inputs the layer really sees."""
    model = _copy_model(model)
    captured: list[torch.Tensor] = []
    moe = model.blocks[layer].moe
    handle = moe.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    width = model.config.max_seq_len
    corpus = generate_corpus(CorpusConfig(seed=1, num_train=8 * windows, num_val=0))
    text = " ".join(corpus.train).encode("ascii", "ignore")[: windows * width].decode("ascii")
    try:
        model.route_text(text)
    finally:
        handle.remove()
    return moe.eval(), captured[0]


def _copy_model(model: PiMoELM) -> PiMoELM:
    """A private copy of a model: rebuilt from its config and weights (its token-type mapping is immutable and shared).

    NOTE: not copy.deepcopy, which fails on the mapping's read-only MappingProxyType fields."""
    clone = PiMoELM(LMConfig.from_dict(model.config.to_dict()), mapping=model.mapping)
    clone.load_state_dict(model.state_dict())
    return clone.to(model.device).eval().requires_grad_(False)


def bench_layer(expert_types: tuple[str, ...], num_experts: int, top_k: int, hidden_size: int, device: str,
                batch: int = 4, seq: int = 128, seed: int = 0) -> tuple[PiMoESystem, torch.Tensor]:
    """A seeded benchmark-size layer (expert width 4 × hidden) and a standard-normal input batch (B, S, D)."""
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=hidden_size, num_experts=num_experts, expert_types=expert_types,
                         router=RouterConfig(top_k=min(top_k, num_experts)),
                         expert=ExpertConfig(intermediate_size=4 * hidden_size))
    system = PiMoESystem(config).to(device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed + 1)
    return system, torch.randn(batch, seq, hidden_size, generator=generator).to(device)


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _quantize(system: PiMoESystem) -> tuple[PiMoESystem, str]:
    device = system.router.gate.weight.device
    if device.type == "cpu":
        return quantization.quantize_dynamic_int8(system), "int8 dynamic (CPU)"
    if quantization.weight_int8_supported(device, torch.bfloat16):
        return quantization.quantize_weight_int8(system, torch.bfloat16), "int8 weights, bf16 activations"
    raise ValueError(f"this torch build has no int8 kernel for {device}")


def _row(name: str, report: Any, parameters: int) -> dict[str, Any]:
    return {
        "variant": name,
        "median ms": report.candidate_latency.median_ms,
        "p95 ms": report.candidate_latency.p95_ms,
        "peak MB": report.candidate_peak_mb,
        "weights MB": report.candidate_storage_bytes / 2**20,
        "parameters": parameters,
        "speed-up": report.speedup,
        "relative error": report.relative_error,
        "MoE Δ error": report.relative_delta_error,
        "top-1 changed": report.top1_changed,
        "top-k set changed": report.topk_set_changed,
        "tokens": report.tokens,
    }


def compare_variants(system: PiMoESystem, x: torch.Tensor, *, quantize: bool, prune_amount: float | None,
                     importance: str = "magnitude", repeats: int = 10) -> tuple[list[dict[str, Any]], str]:
    """Measure the original layer and each requested variant on x: latency, peak memory, weight bytes, parameters,
    output error against the original and how many tokens changed their routing. Returns the rows and how peak memory
    was measured. Parameters count weights whatever their precision (quantisation stores them in fewer bytes)."""
    compare = quantization.compare_outputs
    parameters = _parameters(system)
    rows: list[dict[str, Any]] = []
    reference_report = None
    pruned = None
    if prune_amount:
        pruned, prune_report = prune.prune_experts(system, prune_amount, calibration=x, importance=importance,
                                                   repeats=repeats)
        reference_report = prune_report.comparison
        rows.append(_row(f"pruned {prune_amount:.0%} ({importance})", reference_report, prune_report.parameters_after))
    if quantize:
        quantized, how = _quantize(system)
        report = compare(system, quantized, x, repeats=repeats)
        reference_report = reference_report or report
        rows.append(_row(f"quantised: {how}", report, parameters))
        if pruned is not None:
            both, _ = _quantize(pruned)
            rows.append(_row("pruned + quantised", compare(system, both, x, repeats=repeats), _parameters(pruned)))
    if reference_report is None:
        reference_report = compare(system, copy.deepcopy(system), x, repeats=repeats)
    original = _row("original (float)", reference_report, parameters)
    original.update({"median ms": reference_report.reference_latency.median_ms,
                     "p95 ms": reference_report.reference_latency.p95_ms,
                     "peak MB": reference_report.reference_peak_mb,
                     "weights MB": reference_report.reference_storage_bytes / 2**20,
                     "speed-up": 1.0, "relative error": 0.0, "MoE Δ error": 0.0, "top-1 changed": 0,
                     "top-k set changed": 0})
    return [original, *rows], reference_report.memory_method


def optimisation_report(system: PiMoESystem, x: torch.Tensor, calls: int = 20) -> dict[str, Any]:
    """`get_optimization_report()` of the layer wrapped in EnhancedPiMoEIntegration after `calls` measured calls."""
    integration = enhanced.EnhancedPiMoEIntegration(copy.deepcopy(system))
    with torch.inference_mode():
        for _ in range(calls):
            integration(x)
    return integration.get_optimization_report()


def onnx_bytes(system: PiMoESystem) -> bytes:
    """The layer exported to ONNX (float32, dynamic batch and sequence axes), as file bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = onnx_export.export_onnx(system, Path(folder) / "pimoe-layer.onnx")
        return path.read_bytes()


ERROR_THRESHOLD = 0.05  # relative output error above which a speed-up is flagged: the layer no longer computes the same
PEAK_SPREAD = 0.02  # peak memory within 2 % across rows measures the process, not the variant: the column goes


def presentation_rows(rows: list[dict[str, Any]], threshold: float = ERROR_THRESHOLD) -> tuple[list[dict], str | None]:
    """The variants table in a user's words: every speed-up next to its output error, errors above `threshold`
    flagged, and peak memory only when it differs between rows. Returns the rows and a note when a column was left
    out (None otherwise)."""
    base_ms = rows[0]["median ms"]
    peaks = [row["peak MB"] for row in rows]
    show_peak = max(peaks) - min(peaks) > PEAK_SPREAD * max(max(peaks), 1e-9)
    out = []
    for row in rows:
        error = row["relative error"]
        shown = {
            "Variant": row["variant"],
            "Time per call (ms, median)": row["median ms"],
            "Time per call (ms, p95)": row["p95 ms"],
            "Speed-up": base_ms / row["median ms"] if row["median ms"] > 0 else float("nan"),
            "Output error": error,
            "Error check": "original" if row is rows[0] else (
                f"⚠ above {threshold:.0%}" if error > threshold else f"ok (≤ {threshold:.0%})"),
            "Weights (MB)": row["weights MB"],
            "Parameters": row["parameters"],
            "Tokens with a new top expert": f"{row['top-1 changed']} of {row['tokens']}",
            "Tokens with a new expert set": f"{row['top-k set changed']} of {row['tokens']}",
        }
        if show_peak:
            shown["Peak memory (MB)"] = row["peak MB"]
        out.append(shown)
    note = None if show_peak else (f"Peak memory is not shown: it measured {min(peaks):.1f}–{max(peaks):.1f} MB for "
                                   "every variant, the size of the process rather than of the variant. The weights "
                                   "column shows what each variant stores.")
    return out, note
