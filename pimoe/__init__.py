"""PiMoE: token-level Mixture-of-Experts routing over typed experts.

The names below are the original description's API; everything else lives in its room: `pimoe.layer` (the MoE
layer), `pimoe.lm` (PiMoE-LM), `pimoe.adaptive`, `pimoe.handoff`, `pimoe.optimize`, `pimoe.measure`,
`pimoe.parallel`, `pimoe.original`, `pimoe.cuda`, `pimoe.cli` (docs/architecture.md).
"""

from pimoe.adaptive.controller import AdaptationConfig, AdaptiveController
from pimoe.adaptive.layer import AdaptivePiMoE
from pimoe.hf.loading import load_hf_moe
from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.expert_types import ExpertSpec, ExpertType, expert_spec, known_expert_types, register_expert_type
from pimoe.layer.experts import PiMoEExpert
from pimoe.layer.options import RoutingOptions
from pimoe.layer.router import TokenLevelRouter
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem, create_pimoe_system
from pimoe.original.demo import DemoConfig, PiMoEDemo, run_pimoe_demo
from pimoe.original.enhanced import EnhancedPiMoEIntegration, create_enhanced_pimoe_integration
from pimoe.original.selftest import run_all_tests

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
    "RoutingOptions",
    "TokenLevelRouter",
    "create_enhanced_pimoe_integration",
    "create_pimoe_system",
    "expert_spec",
    "known_expert_types",
    "load_hf_moe",
    "register_expert_type",
    "run_all_tests",
    "run_pimoe_demo",
]
