"""Typed experts packed into equal-shape, zero-padded weight stacks for grouped matrix products.

Legend: E experts, D hidden size, F = the widest expert's intermediate width, N1 = the widest up projection (F, or 2F
for a gated expert), F_e / N1_e one expert's own widths.

A grouped GEMM wants one (E, out, in) stack. Each expert's up rows beyond N1_e and down columns beyond F_e are zero, with
zero bias, so a padded unit's pre-activation is exactly 0 and its (zero) down column adds exactly 0: padding is exact
whatever the activation. Gated experts keep the layout `PiMoEExpert.up` already has, gate rows [0, F_e) then up rows
[F_e, 2 F_e), so one kernel reads both halves with the expert's own offset.

The pack is cached per experts module and rebuilt when any parameter's storage or version counter changes (an
optimiser step, `load_state_dict`, `.to()`), so a caller never sees stale weights. `pack_experts(..., force=True)`
rebuilds on demand.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pimoe.layer.expert_types import ACTIVATIONS
from pimoe.layer.experts import RMSNorm

__all__ = ["ACT_CODES", "NORM_CODES", "PackedExperts", "pack_experts", "pack_experts_in_place", "packed_key",
           "padded_width"]

ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}  # gelu 0, gelu_tanh 1, relu 2, silu 3, tanh 4
NORM_CODES = {"none": 0, "layernorm": 1, "rmsnorm": 2}


@dataclass
class PackedExperts:
    """Zero-padded weight stacks plus per-expert codes, all on one device.

    w1: (E, N1, D) up projections in nn.Linear layout (out, in). b1: (E, N1).
    w2: (E, D, F) down projections in nn.Linear layout. b2: (E, D).
    widths / gated / act / norm: (E,) int32 on the device; the same values as Python tuples in *_host.
    norm_weight / norm_bias: (E, D) (ones / zeros for experts without a norm). eps: (E,).
    b1, b2, norm_weight, norm_bias and eps are float32 (float64 for a float64 model): the kernels add them to float32
    accumulators, as nn.Linear's epilogue and the norms do.
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    widths: torch.Tensor
    gated: torch.Tensor
    act: torch.Tensor
    norm: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    eps: torch.Tensor
    widths_host: tuple[int, ...]
    gated_host: tuple[bool, ...]
    act_host: tuple[int, ...]
    norm_host: tuple[int, ...]
    key: tuple
    # whether any expert has a bias: the plain-torch mirror skips adding the zero stacks b1 / b2 otherwise (two
    # (A, N) gathers and adds, a fifth of its time on a checkpoint's bias-free experts on a CPU)
    any_bias: bool = True

    @property
    def num_experts(self) -> int:
        return self.w1.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.w1.shape[2]

    @property
    def max_width(self) -> int:
        """F: the widest expert's intermediate width (the padded hidden width)."""
        return self.w2.shape[2]

    @property
    def any_norm(self) -> bool:
        return any(self.norm_host)

    @property
    def any_gated(self) -> bool:
        return any(self.gated_host)

    @property
    def all_gated(self) -> bool:
        return all(self.gated_host)

    def padded_flops_per_row(self) -> int:
        """Multiply-adds x 2 one routed row costs when every expert is padded to (N1, F)."""
        return 2 * self.hidden_size * (self.w1.shape[1] + self.max_width)


def _norm_code(norm: nn.Module) -> int:
    if isinstance(norm, nn.LayerNorm):
        return NORM_CODES["layernorm"]
    if isinstance(norm, RMSNorm):
        return NORM_CODES["rmsnorm"]
    if isinstance(norm, nn.Identity):
        return NORM_CODES["none"]
    raise ValueError(f"cannot pack expert norm {type(norm).__name__}; supported: LayerNorm, RMSNorm, Identity")


def packed_key(experts: Sequence[nn.Module], dtype: torch.dtype, device: torch.device) -> tuple:
    """What the pack depends on: target dtype/device and every parameter's storage and version counter.

    Parameters created under torch.inference_mode have no version counter; for them only the storage counts, so an
    in-place edit of such a weight needs `pack_experts(..., force=True)`. This runs on every call (and before every
    graph replay), hence the flat comprehensions: the first version cost ~20 µs of host time per call.
    """
    tensors = _packed_tensors(experts)
    try:
        state = tuple([(p.data_ptr(), p._version) for p in tensors])
    except RuntimeError:  # an inference tensor: reading its version counter raises
        state = tuple([(p.data_ptr(), None if p.is_inference() else p._version) for p in tensors])
    return (dtype, device, state)


def _packed_tensors(experts: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The parameters a pack is built from, read straight from the modules' dicts: `Module.parameters()` and
    `Module.__getattr__` cost more per call than the GPU work of a small batch."""
    return [p for expert in experts for name in ("up", "down", "norm")
            for p in expert._modules[name]._parameters.values() if p is not None]


_CACHE: weakref.WeakKeyDictionary[nn.Module, PackedExperts] = weakref.WeakKeyDictionary()


@torch.no_grad()
def pack_experts(experts: nn.ModuleList | Sequence[nn.Module], dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, *, force: bool = False) -> PackedExperts:
    """The padded stacks for `experts` in `dtype` on `device` (defaults: the experts' own), cached per module."""
    first = next(iter(experts))
    dtype = dtype or first.up.weight.dtype
    device = torch.device(device) if device is not None else first.up.weight.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = packed_key(experts, dtype, device)
    cacheable = isinstance(experts, nn.Module)
    if cacheable and not force:
        cached = _CACHE.get(experts)
        if cached is not None and cached.key == key:
            return cached
    packed = _build(list(experts), dtype, device, key)
    if cacheable:
        _CACHE[experts] = packed
    return packed


def padded_width(width: int, device: torch.device) -> int:
    """The width a stack pads its widest expert to: a multiple of 8 on CUDA, so every 16-bit row of the stacks and of
    the (A, F) hidden rows starts on a 16-byte boundary, as TMA descriptors and torch._grouped_mm require; elsewhere
    the widest width itself. The padded columns are zero weights and zero biases, masked like any narrower expert's.
    Why (2026-12-07, drawn layers on an H100): inference against float64 failed in exactly the bf16 cases whose widest
    expert was no multiple of 8 (12; 1,500, a creative expert at 1.5x), and a training step of width 100 fell to the
    per-expert loop that reads group ends on the host, which a CUDA-graph capture refuses. The cause is read from
    which cases failed (the log was cut); the padded packs have not run on a GPU yet."""
    return -(-width // 8) * 8 if torch.device(device).type == "cuda" else width


@torch.no_grad()
def pack_experts_in_place(experts: nn.ModuleList) -> PackedExperts:
    """Pack `experts` once and make their weights views of the pack, so the weights exist once, not twice.

    For frozen experts of one width (a checkpoint's MoE layer: every expert F wide, no bias, no norm) the padded stacks
    hold exactly the experts' weights; pointing `up.weight` / `down.weight` at slices of them frees the originals (when
    nothing else holds them) and the cached pack stays valid, since its key is taken after the swap. Experts of
    different widths, with biases or norms, or that require grad are packed the ordinary way and left unchanged.
    """
    packed = pack_experts(experts)
    # a pack padded past the experts' own width (`padded_width`) cannot hand its slices back as their weights
    uniform = len(set(packed.widths_host)) == 1 and not packed.any_norm and packed.max_width == packed.widths_host[0] \
        and packed.w1.shape[1] == experts[0].up.out_features
    plain = all(e.up.bias is None and e.down.bias is None and not e.up.weight.requires_grad for e in experts)
    if not (uniform and plain):
        return packed
    for index, expert in enumerate(experts):
        expert.up.weight = nn.Parameter(packed.w1[index], requires_grad=False)
        expert.down.weight = nn.Parameter(packed.w2[index], requires_grad=False)
    packed.key = packed_key(experts, packed.w1.dtype, packed.w1.device)
    _CACHE[experts] = packed
    return packed


def _build(experts: list[nn.Module], dtype: torch.dtype, device: torch.device, key: tuple) -> PackedExperts:
    num_experts = len(experts)
    hidden = experts[0].hidden_size
    widths = [e.width for e in experts]
    up_widths = [e.up.out_features for e in experts]
    max_width, max_up = padded_width(max(widths), device), padded_width(max(up_widths), device)
    # Biases and norm parameters in the accumulation dtype: float32, or float64 for a float64 model.
    acc = torch.promote_types(dtype, torch.float32)
    w1 = torch.zeros(num_experts, max_up, hidden, dtype=dtype, device=device)
    b1 = torch.zeros(num_experts, max_up, dtype=acc, device=device)
    w2 = torch.zeros(num_experts, hidden, max_width, dtype=dtype, device=device)
    b2 = torch.zeros(num_experts, hidden, dtype=acc, device=device)
    norm_weight = torch.ones(num_experts, hidden, dtype=acc, device=device)
    norm_bias = torch.zeros(num_experts, hidden, dtype=acc, device=device)
    eps = torch.zeros(num_experts, dtype=acc)
    act_codes, norm_codes = [], []
    for e, expert in enumerate(experts):
        if expert.activation not in ACT_CODES:
            raise ValueError(f"cannot pack activation {expert.activation!r}; supported: {sorted(ACT_CODES)}")
        act_codes.append(ACT_CODES[expert.activation])
        norm_codes.append(_norm_code(expert.norm))
        w1[e, : up_widths[e]] = expert.up.weight
        w2[e, :, : widths[e]] = expert.down.weight
        if expert.up.bias is not None:
            b1[e, : up_widths[e]] = expert.up.bias
        if expert.down.bias is not None:
            b2[e] = expert.down.bias
        norm = expert.norm
        if getattr(norm, "weight", None) is not None:
            norm_weight[e] = norm.weight
        if getattr(norm, "bias", None) is not None:
            norm_bias[e] = norm.bias
        eps[e] = float(getattr(norm, "eps", 0.0))

    def ints(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32).to(device)

    return PackedExperts(
        w1=w1, b1=b1, w2=w2, b2=b2,
        widths=ints(widths), gated=ints([int(e.gated) for e in experts]), act=ints(act_codes), norm=ints(norm_codes),
        norm_weight=norm_weight, norm_bias=norm_bias, eps=eps.to(device),
        widths_host=tuple(widths), gated_host=tuple(bool(e.gated) for e in experts), act_host=tuple(act_codes),
        norm_host=tuple(norm_codes), key=key,
        any_bias=any(e.up.bias is not None or e.down.bias is not None for e in experts),
    )
