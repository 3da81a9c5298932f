"""Training-step benchmark: forward + backward of the PiMoE layer against its baselines, same shapes, one run.

Contenders at each token count (T tokens, D hidden, E experts, K per token, F expert width):
    fast         the PiMoE layer, dispatch "cuda_fast" (on the GPU its grouped custom ops; on the CPU the same strategy
                 runs its plain-torch mirror)
    grouped_mm   argsort + torch._grouped_mm with autograd (pimoe.measure.grouped_mm_baseline), the layer's weights
    dense        a dense FFN as wide as the expert units one token activates (K x F): equal active parameters
    sorted       the PiMoE layer, dispatch "sorted" (one nn.Module call per expert), same weights as fast; optional
One timed step = grads set to None, forward, backward of a fixed upstream gradient, with the input requiring grad (as
inside a network); median and p95 of synchronised wall times (`measure_latency`) after warm-up. The experts are one
uniform type (default "language": GELU, no norm), because the grouped_mm baseline stacks one architecture.

Model FLOPs of a step (`pimoe.measure.flops`): the router GEMM (D x E) plus the two GEMMs of each of the K active
experts, 2 FLOPs per multiply-add, x3 for forward + backward (input and weight gradients); the dense FFN counts its own
two GEMMs. Activations, softmax, sorting and bias adds count nothing. MFU = model FLOPs / median step time / the card's
dense peak for the dtype (`peak_flops`); on the CPU or an unknown card there is no peak and MFU stays None.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pimoe.cuda.train_path import train_path_reason
from pimoe.devices import available_device
from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.expert_types import resolve_expert_type
from pimoe.layer.reference import DenseFFN
from pimoe.layer.system import PiMoESystem
from pimoe.measure.flops import ffn_flops, moe_layer_flops, peak_flops
from pimoe.measure.grouped_mm_baseline import GroupedMMBaseline
from pimoe.measure.layer_bench import DTYPES, device_description
from pimoe.measure.metrics import measure_latency

__all__ = ["CONTENDERS", "MAX_TOKENS", "MFU_COUNTING", "ContenderTiming", "TrainBenchConfig", "TrainStepRow",
           "run_train_benchmark", "training_step"]

CONTENDERS = ("fast", "grouped_mm", "dense", "sorted")
MAX_TOKENS = 65_536  # the largest size; more is a typo on a form, not a benchmark
MFU_COUNTING = ("model FLOPs per step = 3 x (router GEMM + 2 GEMMs per active expert), 2 FLOPs per multiply-add; "
                "the dense FFN counts its own 2 GEMMs; MFU = model FLOPs / median step time / the card's dense peak "
                "for the dtype")


@dataclass
class TrainBenchConfig:
    """What to time. Sizes are bounded so that a form cannot ask for an hour-long or out-of-memory sweep."""

    device: str = "cpu"
    dtype: str = "float32"
    hidden_size: int = 128
    num_experts: int = 8
    intermediate_size: int = 512
    top_k: int = 2
    expert_type: str = "language"
    tokens: tuple[int, ...] = (256, 1024)
    warmup: int = 2
    repeats: int = 10
    include_sorted: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name, high in (("hidden_size", 8192), ("num_experts", 256), ("intermediate_size", 65_536),
                           ("repeats", 1000)):
            _check_int(name, getattr(self, name), 1, high)
        _check_int("top_k", self.top_k, 1, self.num_experts)
        _check_int("warmup", self.warmup, 0, 100)
        self.tokens = tuple(self.tokens)
        if not self.tokens:
            raise ValueError("tokens must name at least one token count")
        for count in self.tokens:
            _check_int("each token count", count, 1, MAX_TOKENS)
        resolve_expert_type(self.expert_type)  # raises ValueError for an unknown type


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass
class ContenderTiming:
    """One contender at one token count: times in ms, or `error` saying why it could not run."""

    median_ms: float | None = None
    p95_ms: float | None = None
    tokens_per_s: float | None = None
    tflops: float | None = None  # achieved model TFLOP/s
    mfu: float | None = None  # in [0, 1]; None where the card's peak is unknown (the CPU, an unlisted card)
    error: str | None = None


@dataclass
class TrainStepRow:
    """One token count: each contender's timing, the model FLOPs of a step, and time ratios (> 1: slower)."""

    tokens: int
    model_gflop: float  # the MoE layer's step; the dense FFN's own is dense_gflop
    dense_gflop: float
    timings: dict[str, ContenderTiming] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def flat(self) -> dict[str, object]:
        """One flat record for tables, figures and CSV: tokens, fast_ms, fast_p95_ms, ..., fast_vs_dense, ..."""
        record: dict[str, object] = {"tokens": self.tokens, "model_gflop": self.model_gflop,
                                     "dense_gflop": self.dense_gflop}
        for name, timing in self.timings.items():
            record.update({f"{name}_{key}": value for key, value in asdict(timing).items()})
        record.update(self.ratios)
        return record


def training_step(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> Callable[[], None]:
    """A callable doing one training step of `module` on `x`: grads reset to None, forward, backward of `upstream`."""
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(upstream)

    return step


def _contenders(cfg: TrainBenchConfig, device: torch.device, dtype: torch.dtype) -> dict[str, nn.Module | str]:
    """Each contender's module, or the reason it cannot be built here."""
    torch.manual_seed(cfg.seed)
    config = PiMoEConfig(hidden_size=cfg.hidden_size, num_experts=cfg.num_experts,
                         expert_types=(cfg.expert_type,) * cfg.num_experts, router=RouterConfig(top_k=cfg.top_k),
                         expert=ExpertConfig(intermediate_size=cfg.intermediate_size), residual=False)
    fast = PiMoESystem(config).to(device=device, dtype=dtype)
    fast.dispatch = "cuda_fast"
    fast.check_finite = False  # a benchmark times the layer, not the input check's device sync
    fast.auto_cuda_graphs = False  # every step eager: the sweep compares the kernels and host work of one step
    contenders: dict[str, nn.Module | str] = {"fast": fast}
    try:
        contenders["grouped_mm"] = GroupedMMBaseline(fast)
    except ValueError as error:
        contenders["grouped_mm"] = str(error)
    contenders["dense"] = DenseFFN.matching(fast).to(device=device, dtype=dtype)
    if cfg.include_sorted:
        sorted_layer = copy.copy(fast)  # shares the weights; only the strategy differs
        sorted_layer.dispatch = "sorted"
        contenders["sorted"] = sorted_layer
    return contenders


def _time(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor, cfg: TrainBenchConfig, flops: float,
          peak: float | None) -> ContenderTiming:
    try:
        stats = measure_latency(training_step(module, x, upstream), x.device, warmup=cfg.warmup, repeats=cfg.repeats)
    except Exception as error:  # one contender failing (no grouped_mm kernel, out of memory) must not lose the rest
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        return ContenderTiming(error=f"{type(error).__name__}: {error}"[:300])
    seconds = stats.median_ms / 1e3
    return ContenderTiming(median_ms=stats.median_ms, p95_ms=stats.p95_ms, tokens_per_s=x.shape[1] / seconds,
                           tflops=flops / seconds / 1e12, mfu=None if peak is None else flops / seconds / peak)


def _ratios(timings: dict[str, ContenderTiming]) -> dict[str, float]:
    ms = {name: t.median_ms for name, t in timings.items() if t.median_ms is not None}
    pairs = (("fast", "dense"), ("fast", "grouped_mm"), ("grouped_mm", "dense"), ("sorted", "dense"))
    return {f"{a}_vs_{b}": ms[a] / ms[b] for a, b in pairs if a in ms and b in ms}


def _relative_error(fast: nn.Module, baseline: nn.Module, x: torch.Tensor) -> float:
    """||baseline(x) - fast(x)|| / ||fast(x)|| in float32: the two contenders compute the same function."""
    with torch.no_grad():
        want, got = fast(x).float(), baseline(x).float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def run_train_benchmark(cfg: TrainBenchConfig, progress: Callable[[int, int, str], None] | None = None
                        ) -> tuple[list[TrainStepRow], dict]:
    """Time one training step of every contender at each of `cfg.tokens`.

    progress: optional callable(done, total, message) for progress bars.
    Returns the rows (ascending tokens) and a metadata dict: device and card, dtype, date, torch, the configuration,
    the peak used for MFU (None: unknown), whether the fast contender took the fast path, and the grouped_mm
    baseline's relative error against the layer on the first input.
    """
    device = available_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but torch sees no CUDA device")
    dtype = DTYPES[cfg.dtype]
    contenders = _contenders(cfg, device, dtype)
    fast, dense = contenders["fast"], contenders["dense"]
    meta = {**device_description(device), "dtype": cfg.dtype,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": {**asdict(cfg), "dense_intermediate_size": dense.up.out_features},
            "mfu_counting": MFU_COUNTING, "fast_path": train_path_reason(list(fast.experts)) or "taken"}
    peak = peak_flops(meta["device_name"], dtype) if device.type == "cuda" else None
    meta["peak_tflops"] = None if peak is None else peak / 1e12
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    tokens_sorted = sorted(set(cfg.tokens))
    total, done, rows = len(tokens_sorted) * len(contenders), 0, []
    for tokens in tokens_sorted:
        shape = (1, tokens, cfg.hidden_size)
        x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype).requires_grad_(True)
        upstream = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        if isinstance(contenders["grouped_mm"], nn.Module) and "grouped_mm_rel_error" not in meta:
            try:
                meta["grouped_mm_rel_error"] = _relative_error(fast, contenders["grouped_mm"], x)
            except Exception as error:  # the timing below records the same failure in the row
                meta["grouped_mm_rel_error"] = f"{type(error).__name__}: {error}"[:300]
        row = TrainStepRow(tokens=tokens, model_gflop=moe_layer_flops(fast, tokens) / 1e9,
                           dense_gflop=ffn_flops(dense, tokens) / 1e9)
        for name, module in contenders.items():
            if progress:
                progress(done, total, f"{tokens} tokens: {name}")
            flops = (row.dense_gflop if name == "dense" else row.model_gflop) * 1e9
            row.timings[name] = (ContenderTiming(error=module) if isinstance(module, str)
                                 else _time(module, x, upstream, cfg, flops, peak))
            done += 1
        row.ratios = _ratios(row.timings)
        rows.append(row)
    if progress:
        progress(total, total, "done")
    return rows, meta
