"""Expert types and the architecture each one gets.

A type is a name plus an `ExpertSpec` (activation, width multiplier, input norm, gating). The seven built-in types follow
the original description: REASONING uses LayerNorm + GELU, COMPUTATION a twice-as-wide ReLU network, MATHEMATICAL a gated
SiLU (SwiGLU), LOGICAL Tanh, and the rest GELU variants. Users add their own types with `register_expert_type`, or pass
members of any `enum.Enum` whose values are strings (the seed's `CustomExpertType` example) after registering a spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "ExpertSpec",
    "ExpertType",
    "expert_spec",
    "expert_type_name",
    "known_expert_types",
    "register_expert_type",
    "resolve_expert_type",
]

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "tanh")
NORMS = (None, "layernorm", "rmsnorm")


class ExpertType(str, Enum):
    """The built-in expert types. Values are the lower-case names used in configs, checkpoints and the UI."""

    REASONING = "reasoning"
    COMPUTATION = "computation"
    MATHEMATICAL = "mathematical"
    LOGICAL = "logical"
    LANGUAGE = "language"
    CREATIVE = "creative"
    ANALYTICAL = "analytical"


@dataclass(frozen=True)
class ExpertSpec:
    """Architecture of one expert type.

    activation: one of ACTIVATIONS. width_multiplier: intermediate width relative to the configured intermediate_size.
    norm: None, "layernorm" or "rmsnorm", applied to the expert's input. gated: SwiGLU-style `act(x W_g) * (x W_u)`.
    """

    activation: str = "gelu"
    width_multiplier: float = 1.0
    norm: str | None = None
    gated: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {ACTIVATIONS}")
        if not (0.0 < self.width_multiplier <= 16.0):
            raise ValueError(f"width_multiplier must be in (0, 16], got {self.width_multiplier!r}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")


_BUILTIN_SPECS: dict[str, ExpertSpec] = {
    "reasoning": ExpertSpec("gelu", 1.0, "layernorm", description="multi-step reasoning: LayerNorm, then GELU"),
    "computation": ExpertSpec("relu", 2.0, None, description="precise arithmetic: twice the width, ReLU"),
    "mathematical": ExpertSpec("silu", 1.0, None, gated=True, description="symbolic maths: gated SiLU (SwiGLU)"),
    "logical": ExpertSpec("tanh", 1.0, None, description="formal logic: saturating Tanh"),
    "language": ExpertSpec("gelu", 1.0, None, description="natural language: plain GELU"),
    "creative": ExpertSpec("gelu_tanh", 1.5, None, description="generation: wider, tanh-approximated GELU"),
    "analytical": ExpertSpec("gelu", 1.0, "rmsnorm", description="pattern analysis: RMSNorm, then GELU"),
}
_custom_specs: dict[str, ExpertSpec] = {}


MAX_TYPE_NAME = 48
MAX_CUSTOM_TYPES = 64


def expert_type_name(expert_type: ExpertType | Enum | str) -> str:
    """The canonical lower-case name of a type given as a built-in member, a custom Enum member or a string."""
    if isinstance(expert_type, Enum):
        value = expert_type.value
        return str(value).lower() if isinstance(value, str) else expert_type.name.lower()
    if isinstance(expert_type, str):
        return expert_type.strip().lower()
    raise ValueError(f"expert type must be an ExpertType, an Enum member or a string, got {type(expert_type).__name__}")


def register_expert_type(name: ExpertType | Enum | str, spec: ExpertSpec | None = None, **spec_fields) -> str:
    """Add (or replace) a custom expert type. Returns its canonical name.

    `register_expert_type(CustomExpertType.SCIENTIFIC, activation="silu", width_multiplier=1.5, norm="layernorm")`
    """
    key = expert_type_name(name)
    if not key or not key.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"expert type name must be letters, digits, '_' or '-', got {key!r}")
    if len(key) > MAX_TYPE_NAME:
        raise ValueError(f"expert type name must be at most {MAX_TYPE_NAME} characters, got {len(key)}")
    if key in _BUILTIN_SPECS:
        raise ValueError(f"{key!r} is a built-in expert type and cannot be redefined")
    # NOTE: the registry is process-wide (a dashboard's users share it), so it is bounded
    if key not in _custom_specs and len(_custom_specs) >= MAX_CUSTOM_TYPES:
        raise ValueError(f"{MAX_CUSTOM_TYPES} custom expert types are registered already: reuse one of them")
    _custom_specs[key] = spec if spec is not None else ExpertSpec(**spec_fields)
    return key


def known_expert_types() -> list[str]:
    """Built-in type names in declaration order, then custom ones in registration order."""
    return list(_BUILTIN_SPECS) + list(_custom_specs)


def resolve_expert_type(expert_type: ExpertType | Enum | str) -> str:
    """Canonical name of a known type; ValueError naming the type otherwise."""
    key = expert_type_name(expert_type)
    if key not in _BUILTIN_SPECS and key not in _custom_specs:
        raise ValueError(
            f"unknown expert type {key!r}; known types are {known_expert_types()} "
            "(add your own with pimoe.register_expert_type)"
        )
    return key


def expert_spec(expert_type: ExpertType | Enum | str) -> ExpertSpec:
    """The architecture spec of a known type."""
    key = resolve_expert_type(expert_type)
    return _BUILTIN_SPECS.get(key) or _custom_specs[key]
