"""Expert types: built-in architectures differ, custom types register, round-robin assignment."""

from __future__ import annotations

from enum import Enum

import pytest
import torch

import pimoe
from pimoe import ExpertType, PiMoEConfig, PiMoEExpert
from pimoe.layer.expert_types import expert_spec


def test_builtin_types_have_the_architectures_the_description_lists() -> None:
    reasoning = PiMoEExpert(16, ExpertType.REASONING, 32)
    computation = PiMoEExpert(16, ExpertType.COMPUTATION, 32)
    mathematical = PiMoEExpert(16, ExpertType.MATHEMATICAL, 32)
    logical = PiMoEExpert(16, ExpertType.LOGICAL, 32)
    assert isinstance(reasoning.norm, torch.nn.LayerNorm) and reasoning.activation == "gelu"
    assert computation.width == 64 and computation.activation == "relu"
    assert mathematical.gated and mathematical.activation == "silu" and mathematical.up.out_features == 64
    assert logical.activation == "tanh"


def test_experts_of_different_types_compute_different_functions_from_equal_weights() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    outs = {}
    for expert_type in ("language", "logical", "reasoning"):
        torch.manual_seed(1)
        outs[expert_type] = PiMoEExpert(16, expert_type, 32)(x)
    assert not torch.allclose(outs["language"], outs["logical"])
    assert not torch.allclose(outs["language"], outs["reasoning"])


def test_seed_custom_enum_types_work_after_registration() -> None:
    class CustomExpertType(Enum):
        SCIENTIFIC = "scientific"
        FINANCIAL = "financial"

    pimoe.register_expert_type(CustomExpertType.SCIENTIFIC, activation="silu", width_multiplier=1.5, norm="layernorm")
    pimoe.register_expert_type(CustomExpertType.FINANCIAL, activation="relu")
    system = pimoe.create_pimoe_system(hidden_size=16, num_experts=3,
                                       expert_types=[CustomExpertType.SCIENTIFIC, CustomExpertType.FINANCIAL])
    assert system.expert_types == ["scientific", "financial", "scientific"]
    assert system.experts[0].width == round(4 * 16 * 1.5)
    assert system(torch.randn(1, 4, 16)).shape == (1, 4, 16)


def test_unregistered_custom_type_is_rejected_with_its_name() -> None:
    with pytest.raises(ValueError, match="unknown expert type 'medical'"):
        PiMoEConfig(expert_types=("medical",))


def test_builtin_type_cannot_be_redefined() -> None:
    with pytest.raises(ValueError, match="built-in"):
        pimoe.register_expert_type("computation", activation="tanh")


def test_a_too_long_name_is_refused_with_the_limit() -> None:
    from pimoe.layer.expert_types import MAX_TYPE_NAME

    pimoe.register_expert_type("x" * MAX_TYPE_NAME, activation="gelu")
    with pytest.raises(ValueError, match=f"at most {MAX_TYPE_NAME} characters, got {MAX_TYPE_NAME + 1}"):
        pimoe.register_expert_type("x" * (MAX_TYPE_NAME + 1), activation="gelu")


def test_the_process_wide_registry_is_bounded_but_known_names_can_be_redefined(monkeypatch) -> None:
    from pimoe.layer import expert_types

    monkeypatch.setattr(expert_types, "_custom_specs", {})
    for index in range(expert_types.MAX_CUSTOM_TYPES):
        pimoe.register_expert_type(f"custom{index}", activation="gelu")
    with pytest.raises(ValueError, match=f"{expert_types.MAX_CUSTOM_TYPES} custom expert types are registered"):
        pimoe.register_expert_type("one_more", activation="gelu")
    pimoe.register_expert_type("custom0", activation="tanh")  # replacing one adds nothing
    assert expert_spec("custom0").activation == "tanh"


def test_bad_spec_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        pimoe.register_expert_type("broken", activation="swish")


def test_more_experts_than_types_assigns_round_robin() -> None:
    config = PiMoEConfig(num_experts=5, expert_types=("logical", "computation"))
    assert config.assigned_expert_types == ["logical", "computation", "logical", "computation", "logical"]


def test_expert_config_activation_overrides_every_type() -> None:
    system = pimoe.create_pimoe_system(hidden_size=8, num_experts=3, expert_config={"activation": "tanh"})
    assert {e.activation for e in system.experts} == {"tanh"}
    assert expert_spec("computation").activation == "relu"
