"""Size a checkpoint from its config before loading it, and decide where it goes.

The parameter count comes from building the model on the meta device (shapes only, no memory), so it is exact for
every family without per-family formulas. On CUDA the fast path packs each MoE layer's experts into stacks
(`pimoe.cuda.packing.pack_experts_in_place`) that then hold the only copy, one layer at a time: the peak is the
weights plus one layer's routed experts, which the estimate adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pimoe.memory_fit import available_bytes

__all__ = ["Placement", "count_parameters", "plan_placement"]

# Activations, KV cache and allocator slack on top of the weights, as a share of the weights.
HEADROOM = 0.15
GIB = 1024**3


@dataclass(frozen=True)
class Placement:
    """Where the model goes. device_map: None (all on `device`) or "auto" with max_memory over several GPUs."""

    device: torch.device
    num_parameters: int
    expert_parameters: int
    bytes_needed: int
    bytes_available: int
    device_map: str | None = None
    max_memory: dict | None = None

    def describe(self) -> str:
        where = f"{len(self.max_memory)} GPUs" if self.max_memory else str(self.device)
        return (f"{self.num_parameters / 1e6:,.1f} M parameters, {self.bytes_needed / GIB:.2f} GiB needed, "
                f"{self.bytes_available / GIB:.2f} GiB free on {where}")


def count_parameters(config) -> tuple[int, int]:
    """(all parameters, routed-expert parameters) of the causal LM `config` describes, built on the meta device (a
    multimodal model that loads whole: all of it)."""
    from pimoe.hf.causal_lm import causal_lm_from_config
    from pimoe.hf.families import family_for, language_model_config

    try:
        with torch.device("meta"):
            model = causal_lm_from_config(config)
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError, KeyError, ArithmeticError) as error:
        # a negative or zero size ("hidden_size": -5, 0) fails inside transformers' constructors; on the meta
        # device nothing was allocated, and the user gets the config's fault, not a stack of torch internals
        raise ValueError(f"the config describes no model transformers can build: {type(error).__name__}: "
                         f"{error}") from None
    total = sum(p.numel() for p in model.parameters())
    family = family_for(language_model_config(config))
    # JetMoE's stacks sit on the block itself (input_linear / output_linear), the others' under its `experts`
    stacks = ("input_linear", "output_linear") if family.experts_kind == "parallel_linear" else ("experts",)
    routed = tuple(f".{family.block_attr}.{name}." for name in stacks)
    experts = sum(p.numel() for name, p in model.named_parameters() if any(part in name for part in routed))
    return total, experts


def plan_placement(config, dtype: torch.dtype, device: torch.device, *,
                   free_bytes: dict[int, int] | None = None) -> Placement:
    """Check the model fits `device` in `dtype`; several visible GPUs together when one is not enough.

    free_bytes: {gpu index: free bytes} to plan against instead of querying CUDA (tests). ValueError with the numbers
    when it does not fit anywhere: nothing has been loaded at that point.
    """
    from pimoe.hf.families import family_for, language_model_config

    total, experts = count_parameters(config)
    config = language_model_config(config)
    item = torch.empty((), dtype=dtype).element_size()
    layers = max(1, getattr(config, "num_hidden_layers", 1))
    # one layer's routed experts held twice while they are packed (GPU) or copied out of DBRX's flat matrices
    copied = device.type == "cuda" or family_for(config).experts_kind == "flat_glu"
    packing = experts // layers if copied else 0
    needed = int((total + packing) * item * (1 + HEADROOM))
    if device.type != "cuda":
        available = available_bytes(device)
        placement = Placement(device, total, experts, needed, available)
        if needed > available:
            raise ValueError(f"model too big for the CPU: {placement.describe()}; nothing was loaded")
        return placement
    if free_bytes is None:
        free_bytes = {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
    index = device.index if device.index is not None else 0
    one = free_bytes.get(index, 0)
    if needed <= one:
        return Placement(device, total, experts, needed, one)
    together = sum(free_bytes.values())
    placement = Placement(device, total, experts, needed, together,
                          "auto" if len(free_bytes) > 1 else None,
                          {i: int(free / (1 + HEADROOM)) for i, free in free_bytes.items()} if len(free_bytes) > 1
                          else None)
    if len(free_bytes) > 1 and needed <= together:
        return placement
    raise ValueError(f"model too big for {device} ({one / GIB:.2f} GiB free): {placement.describe()}; "
                     "nothing was loaded")
