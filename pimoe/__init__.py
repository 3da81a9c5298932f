"""PiMoE: token-level Mixture-of-Experts routing over typed experts."""

from .config import ExpertConfig, PiMoEConfig, RouterConfig
from .expert_types import ExpertSpec, ExpertType, expert_spec, known_expert_types, register_expert_type
from .experts import PiMoEExpert
from .router import TokenLevelRouter
from .routing import RoutingInfo
from .system import PiMoESystem, create_pimoe_system

__all__ = [
    "ExpertConfig",
    "ExpertSpec",
    "ExpertType",
    "PiMoEConfig",
    "PiMoEExpert",
    "PiMoESystem",
    "RouterConfig",
    "RoutingInfo",
    "TokenLevelRouter",
    "create_pimoe_system",
    "expert_spec",
    "known_expert_types",
    "register_expert_type",
]
