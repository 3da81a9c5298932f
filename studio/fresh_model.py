"""The fresh model the sidebar and live training build: the demo model's dimensions with the sidebar's expert set."""

from __future__ import annotations

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.lm.model import LMConfig

__all__ = ["fresh_lm_config"]


def fresh_lm_config(expert_types: tuple[str, ...], num_experts: int, capacity_factor: float | None,
                    use_selection_bias: bool = False) -> LMConfig:
    """The demo model's dimensions with the sidebar's expert set (types assigned round-robin)."""
    base = LMConfig.demo()
    moe = PiMoEConfig(
        hidden_size=base.moe.hidden_size,
        num_experts=num_experts,
        expert_types=expert_types,
        expert=ExpertConfig(intermediate_size=base.moe.expert.intermediate_size),
        router=RouterConfig(top_k=min(base.moe.router.top_k, num_experts), capacity_factor=capacity_factor,
                            use_selection_bias=use_selection_bias),
        residual=False,
    )
    return LMConfig(max_seq_len=base.max_seq_len, num_layers=base.num_layers, num_heads=base.num_heads, moe=moe)
