"""Reduced-precision copies of a PiMoE layer, and a measured comparison against the float original.

Legend: B batch, S sequence, D hidden size, T routed tokens, E experts, K experts per token, F expert width.

Three ways to shrink a layer, each a deep copy that leaves the original untouched:

- `quantize_dynamic_int8`: CPU. Every expert Linear becomes torch's dynamic-quantised Linear: int8 weights (one scale
  per output row), activations quantised to int8 per call, int8 x int8 -> int32 matrix products in FBGEMM/oneDNN.
- `quantize_weight_int8`: int8 weights with one scale per output row, multiplied by `torch._weight_int8pack_mm`, which
  dequantises inside the kernel. Runs on CUDA (bf16/fp16/fp32) and CPU. It halves weight bytes against bf16 but is
  slow at prefill-sized batches: on an H200 with torch 2.11, 4x256 and 4x4096 tokens of the bench preset took 10x and
  85x the bf16 layer's time. It is a storage saving, not a speed path; CPU speed comes from `quantize_dynamic_int8`.
- `cast_system`: bf16 / fp16 experts.

The router stays float32 in all three: it is tiny (E x D), and the engine computes its softmax in float32 by design,
so routing decisions move only when the router's *input* moves (in a stack of layers, or a bf16 input), never because
the router itself was rounded.
"""

from __future__ import annotations

import copy
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pimoe.layer.modes import evaluating
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem
from pimoe.measure.metrics import LatencyStats, measure_latency, measure_peak_memory

__all__ = [
    "Int8WeightOnlyLinear",
    "QuantizationReport",
    "cast_system",
    "compare_outputs",
    "count_int8_linears",
    "input_dtype",
    "measure_interleaved_latency",
    "quantize_dynamic_int8",
    "quantize_weight_int8",
    "routing_changes",
    "storage_bytes",
    "weight_int8_supported",
]

_CAST_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dynamic_linear_type() -> type[nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return DynamicQuantizedLinear


def quantize_dynamic_int8(system: PiMoESystem, per_channel: bool = True) -> PiMoESystem:
    """An eval-mode CPU copy whose expert Linear layers (up and down) run int8 dynamic quantisation.

    per_channel: one weight scale per output row (default) rather than one per matrix; rows of an expert's up
    projection differ in norm by several times, and a shared scale would spend most int8 levels on the largest.
    The router, the norms and the activations stay float32. The copy is for inference: it has no gradients.
    """
    # NOTE: torch.ao.quantization warns that it is deprecated in favour of torchao. torchao 0.18's int8 dynamic
    # config ran *slower* than float32 in eager mode on CPU when measured (it needs torch.compile), while this path
    # calls FBGEMM's int8 GEMM directly and runs faster than float32 (bench/optimizations.py); so the warning is
    # silenced, not acted on. If a torch release removes torch.ao.quantization, this import fails loudly.
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    _check_system(system)
    model = copy.deepcopy(system).float().cpu().eval()
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        for expert in model.experts:
            quantize_dynamic(expert, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    model.dispatch = "sorted"  # device fast paths read float `.weight`s; sorted calls each expert's own forward
    return model


class Int8WeightOnlyLinear(nn.Module):
    """A Linear whose weight is stored as int8 rows with one float scale per row (symmetric, zero point 0).

    forward: (..., in_features) -> (..., out_features) through `torch._weight_int8pack_mm`, which reads the int8
    weight and applies the row scales inside the kernel; no float copy of the weight is kept.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach().float()  # (out, in)
        # Symmetric per-row scale: 127 levels each side; clamp_min keeps all-zero rows (pruned neurons) finite.
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) the float weight this layer multiplies by."""
        return self.weight_int8.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales.to(flat.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 per-row scales"


def weight_int8_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs `_weight_int8pack_mm` for activations of `dtype` on `device` (tried once)."""
    device = torch.device(device)
    try:
        x = torch.ones(2, 64, device=device, dtype=dtype)
        weight = torch.ones(32, 64, device=device, dtype=torch.int8)
        out = torch._weight_int8pack_mm(x, weight, torch.ones(32, device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    return bool(torch.allclose(out.float(), torch.full((2, 32), 64.0, device=device)))


def quantize_weight_int8(system: PiMoESystem, dtype: torch.dtype | str | None = None) -> PiMoESystem:
    """An eval-mode copy whose expert Linear weights are int8 with per-row scales (weight-only quantisation).

    dtype: the activations' dtype (default: the system's own). Slower than the float layer it replaces in the
    measurements in this module's docstring, on CPU and CUDA alike: use it to halve weight memory, and
    `quantize_dynamic_int8` for CPU speed. Raises ValueError where this torch build lacks the kernel for the device
    and dtype.
    """
    _check_system(system)
    model = cast_system(system, dtype) if dtype is not None else copy.deepcopy(system).eval()
    device = model.router.gate.weight.device
    act_dtype = input_dtype(model)
    if not weight_int8_supported(device, act_dtype):
        raise ValueError(f"torch {torch.__version__} has no int8 weight-only matmul for {act_dtype} on {device}")
    for expert in model.experts:
        expert.up = Int8WeightOnlyLinear(expert.up)
        expert.down = Int8WeightOnlyLinear(expert.down)
    # NOTE: the CUDA fast path packs the experts' float `.weight`s into its own kernels; only the sorted dispatch
    # calls each expert's forward, and so the int8 kernel.
    model.dispatch = "sorted"
    return model


def cast_system(system: PiMoESystem, dtype: torch.dtype | str) -> PiMoESystem:
    """An eval-mode copy with experts in `dtype` (float32, bfloat16 or float16) and the router kept in float32.

    Feed it inputs of `dtype`; RMSNorm and the router compute in float32 whatever the input.
    """
    _check_system(system)
    if isinstance(dtype, str):
        if dtype not in _CAST_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_CAST_DTYPES)}, got {dtype!r}")
        dtype = _CAST_DTYPES[dtype]
    if dtype not in _CAST_DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(_CAST_DTYPES)}, got {dtype!r}")
    model = copy.deepcopy(system).to(dtype).eval()
    model.router.float()
    return model


def count_int8_linears(module: nn.Module) -> int:
    """How many Linear layers of `module` hold int8 weights (dynamic-quantised or weight-only)."""
    dynamic = _dynamic_linear_type()
    return sum(isinstance(m, (dynamic, Int8WeightOnlyLinear)) for m in module.modules())


def storage_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers, shared tensors counted once.

    Dynamic-quantised Linear layers keep their weight in a packed object that is neither a parameter nor a buffer;
    for those the int8 weight, its scales and zero points, and the float bias are counted at their element sizes.
    """
    seen: set[int] = set()
    total = 0

    def add(tensor: torch.Tensor | None) -> None:
        nonlocal total
        if tensor is None or tensor.numel() == 0:
            return
        if not tensor.is_quantized:  # quantized tensors come fresh from _weight_bias() and are never shared
            if tensor.data_ptr() in seen:
                return
            seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()

    for tensor in list(module.parameters()) + list(module.buffers()):
        add(tensor)
    dynamic = _dynamic_linear_type()
    for sub in module.modules():
        if isinstance(sub, dynamic):
            weight, bias = sub._weight_bias()
            add(weight)  # qint8: element_size 1
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                add(weight.q_per_channel_scales())
                add(weight.q_per_channel_zero_points())
            else:
                total += 8 + 8  # one float64 scale and one int64 zero point
            add(bias)
    return total


def routing_changes(reference: RoutingInfo, candidate: RoutingInfo) -> dict[str, float | int]:
    """How many tokens changed their top-1 expert, and how many their whole set of K experts (order ignored)."""
    if reference.expert_indices.shape != candidate.expert_indices.shape:
        raise ValueError(f"routings cover different assignments: {tuple(reference.expert_indices.shape)} vs "
                         f"{tuple(candidate.expert_indices.shape)}")
    tokens = reference.num_tokens
    top1 = int((reference.top1 != candidate.top1).sum())
    ref_sets = reference.expert_indices.sort(dim=-1).values
    cand_sets = candidate.expert_indices.to(ref_sets.device).sort(dim=-1).values
    topk = int((ref_sets != cand_sets).any(dim=-1).sum())
    return {
        "tokens": tokens,
        "top1_changed": top1,
        "topk_set_changed": topk,
        "top1_changed_fraction": top1 / tokens if tokens else 0.0,
        "topk_set_changed_fraction": topk / tokens if tokens else 0.0,
    }


@dataclass
class QuantizationReport:
    """A measured comparison of a candidate (quantised, cast or pruned) layer against its reference.

    relative_error: ||out - ref|| / ||ref|| over the layer output. With a residual layer the output contains the input,
    which the candidate reproduces exactly, so relative_delta_error (the same over out - x, the MoE contribution alone)
    is the stricter figure. Latencies in ms, peak memory in MB (method says how), storage in bytes.
    """

    reference_latency: LatencyStats
    candidate_latency: LatencyStats
    reference_peak_mb: float
    candidate_peak_mb: float
    memory_method: str
    reference_storage_bytes: int
    candidate_storage_bytes: int
    relative_error: float
    relative_delta_error: float
    max_abs_error: float
    tokens: int
    top1_changed: int
    topk_set_changed: int
    candidate_int8_linears: int

    @property
    def speedup(self) -> float:
        """Reference median time / candidate median time; > 1 means the candidate is faster."""
        return self.reference_latency.median_ms / self.candidate_latency.median_ms

    @property
    def storage_ratio(self) -> float:
        """Candidate bytes / reference bytes."""
        return self.candidate_storage_bytes / self.reference_storage_bytes

    @property
    def claim(self) -> str:
        """The speed-up quoted with its output error (`pimoe.optimize.report.speedup_claim`)."""
        from pimoe.optimize.report import speedup_claim

        return speedup_claim(self.speedup, self.relative_error, self.relative_delta_error, self.top1_changed,
                             self.tokens)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["reference_latency"] = self.reference_latency.to_dict()
        out["candidate_latency"] = self.candidate_latency.to_dict()
        out["speedup"] = self.speedup
        out["storage_ratio"] = self.storage_ratio
        out["claim"] = self.claim
        return out


def compare_outputs(
    reference: PiMoESystem,
    candidate: PiMoESystem,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    repeats: int = 20,
    warmup: int = 3,
) -> QuantizationReport:
    """Run both layers on x (B, S, D) and measure how far apart, how fast and how large they are.

    Each model gets x in its own dtype (the dtype of its router-free expert parameters); errors are computed in
    float64 against the reference's output. Both run in eval mode and get their own modes back afterwards.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if reference.hidden_size != candidate.hidden_size:
        raise ValueError(f"hidden sizes differ: reference {reference.hidden_size}, candidate {candidate.hidden_size}")
    x_ref = x.to(input_dtype(reference))
    x_cand = x.to(input_dtype(candidate))
    device = x.device
    with evaluating(reference, candidate), torch.no_grad():
        ref_out, ref_routing = reference(x_ref, attention_mask, return_routing_info=True)
        cand_out, cand_routing = candidate(x_cand, attention_mask, return_routing_info=True)
        ref_lat, cand_lat = measure_interleaved_latency(
            [lambda: reference(x_ref, attention_mask), lambda: candidate(x_cand, attention_mask)],
            device, warmup=warmup, repeats=repeats)
        ref_mem = measure_peak_memory(lambda: reference(x_ref, attention_mask), device)
        cand_mem = measure_peak_memory(lambda: candidate(x_cand, attention_mask), device)

    ref64, cand64 = ref_out.double(), cand_out.double()
    # Each delta subtracts the model's own input, so a bf16 candidate is not charged for the rounding of x itself.
    ref_delta = ref64 - x_ref.double() if reference.config.residual else ref64
    cand_delta = cand64 - x_cand.double() if candidate.config.residual else cand64
    changes = routing_changes(ref_routing, cand_routing)
    return QuantizationReport(
        reference_latency=ref_lat,
        candidate_latency=cand_lat,
        reference_peak_mb=float(ref_mem["peak_mb"]),
        candidate_peak_mb=float(cand_mem["peak_mb"]),
        memory_method=str(ref_mem["method"]),
        reference_storage_bytes=storage_bytes(reference),
        candidate_storage_bytes=storage_bytes(candidate),
        relative_error=_relative(cand64 - ref64, ref64),
        relative_delta_error=_relative(cand_delta - ref_delta, ref_delta),
        max_abs_error=float((cand64 - ref64).abs().max()),
        tokens=int(changes["tokens"]),
        top1_changed=int(changes["top1_changed"]),
        topk_set_changed=int(changes["topk_set_changed"]),
        candidate_int8_linears=count_int8_linears(candidate),
    )


def measure_interleaved_latency(fns: list[Callable[[], object]], device: torch.device | str = "cpu", *,
                                warmup: int = 3, repeats: int = 20) -> list[LatencyStats]:
    """Time several functions call by call in turn (a, b, a, b, ...), each call synchronised by `measure_latency`.

    Taking turns exposes every function to the same machine load; timing one after the other would charge a burst of
    load on a shared machine to whichever function happened to run during it.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, own in zip(fns, samples, strict=True):
            own.append(measure_latency(fn, device, warmup=0, repeats=1).median_ms)
    return [_latency_stats(own) for own in samples]


def _latency_stats(samples: list[float]) -> LatencyStats:
    ordered = sorted(samples)
    p95_index = min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))
    return LatencyStats(median_ms=statistics.median(ordered), p95_ms=ordered[p95_index],
                        mean_ms=statistics.fmean(ordered), min_ms=ordered[0], repeats=len(ordered))


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> float:
    denominator = float(torch.linalg.vector_norm(ref))
    numerator = float(torch.linalg.vector_norm(diff))
    if denominator == 0.0:
        return 0.0 if numerator == 0.0 else math.inf
    return numerator / denominator


def input_dtype(system: PiMoESystem) -> torch.dtype:
    """The dtype a system's inputs should have: its experts' floating parameters (float32 once quantised)."""
    for param in system.experts.parameters():
        if param.is_floating_point():
            return param.dtype
    for buffer in system.experts.buffers():
        if buffer.is_floating_point():
            return buffer.dtype
    return torch.float32


def _check_system(system: PiMoESystem) -> None:
    if not isinstance(system, PiMoESystem):
        raise ValueError(f"expected a PiMoESystem, got {type(system).__name__}")

