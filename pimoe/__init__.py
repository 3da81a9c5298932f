"""PiMoE: token-level Mixture-of-Experts routing over typed experts.

The names below are the original description's API; everything else lives in its own module (`pimoe.model`,
`pimoe.train`, `pimoe.quantize`, `pimoe.cuda`, `pimoe.distributed`, ...).
"""

from .adaptive import AdaptationConfig, AdaptiveController
from .adaptive_layer import AdaptivePiMoE
from .config import ExpertConfig, PiMoEConfig, RouterConfig
from .demo import DemoConfig, PiMoEDemo, run_pimoe_demo
from .enhanced import EnhancedPiMoEIntegration, create_enhanced_pimoe_integration
from .expert_types import ExpertSpec, ExpertType, expert_spec, known_expert_types, register_expert_type
from .experts import PiMoEExpert
from .router import TokenLevelRouter
from .routing import RoutingInfo
from .selftest import run_all_tests
from .system import PiMoESystem, create_pimoe_system

__all__ = [
    "AdaptationConfig",
    "AdaptiveController",
    "AdaptivePiMoE",
    "DemoConfig",
    "EnhancedPiMoEIntegration",
    "ExpertConfig",
    "ExpertSpec",
    "ExpertType",
    "PiMoEConfig",
    "PiMoEDemo",
    "PiMoEExpert",
    "PiMoESystem",
    "RouterConfig",
    "RoutingInfo",
    "TokenLevelRouter",
    "create_enhanced_pimoe_integration",
    "create_pimoe_system",
    "expert_spec",
    "known_expert_types",
    "register_expert_type",
    "run_all_tests",
    "run_pimoe_demo",
]
