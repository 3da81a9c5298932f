"""The fresh model the sidebar and live training build: the demo model's dimensions with the sidebar's expert set."""

from __future__ import annotations

import functools

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.lm.model import LMConfig

__all__ = ["MODEL_SIZES", "fresh_lm_config", "size_label"]

# name -> (base model, training batch size, training sequence length): the live page's choices; "gpu" is offered on a
# GPU only (a 70 M-parameter step takes seconds on a CPU and would hold up every other session of the server)
MODEL_SIZES = {"demo": (LMConfig.demo, 8, 64), "gpu": (LMConfig.gpu, 16, 256)}


def fresh_lm_config(expert_types: tuple[str, ...], num_experts: int, capacity_factor: float | None,
                    use_selection_bias: bool = False, size: str = "demo") -> LMConfig:
    """A model size of `MODEL_SIZES` (the demo's by default) with the sidebar's expert set (types round-robin)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    base = MODEL_SIZES[size][0]()
    moe = PiMoEConfig(
        hidden_size=base.moe.hidden_size,
        num_experts=num_experts,
        expert_types=expert_types,
        expert=ExpertConfig(intermediate_size=base.moe.expert.intermediate_size),
        router=RouterConfig(top_k=min(base.moe.router.top_k, num_experts), capacity_factor=capacity_factor,
                            use_selection_bias=use_selection_bias),
        residual=False,
    )
    return LMConfig(max_seq_len=base.max_seq_len, num_layers=base.num_layers, num_heads=base.num_heads, moe=moe,
                    attention_bias=base.attention_bias)


@functools.cache
def size_label(size: str) -> str:
    """The live page's name for a size: its parameter count (counted on the meta device, nothing allocated), width,
    depth and training batch, so the label cannot drift from the preset."""
    import torch

    from pimoe.lm.model import PiMoELM

    factory, batch_size, seq_len = MODEL_SIZES[size]
    config = factory()
    with torch.device("meta"):
        parameters = sum(p.numel() for p in PiMoELM(config).parameters())
    name = "demo" if size == "demo" else "GPU preset"
    return (f"{name} ({parameters / 1e6:.1f} M parameters, hidden {config.hidden_size} × {config.num_layers} layers, "
            f"batch {batch_size} × {seq_len})")
