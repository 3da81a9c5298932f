"""Input checks name the problem instead of failing deep inside torch."""

import pytest
import torch

from pimoe.layer.validation import check_attention_mask, check_hidden_states


@pytest.mark.parametrize(("x", "message"), [
    ([1.0], "torch.Tensor"),
    (torch.zeros(4, 8), "3 dimensions"),
    (torch.zeros(1, 2, 7), "hidden size 7"),
    (torch.zeros(0, 2, 8), "empty"),
    (torch.zeros(1, 2, 8, dtype=torch.long), "floating-point"),
    (torch.full((1, 2, 8), float("inf")), "NaN or Inf"),
])
def test_bad_hidden_states_are_named(x, message):
    with pytest.raises(ValueError, match=message):
        check_hidden_states(x, 8)


def test_finite_check_can_be_skipped_for_sync_free_paths():
    check_hidden_states(torch.full((1, 2, 8), float("nan")), 8, check_finite=False)


@pytest.mark.parametrize(("mask", "message"), [
    (torch.ones(2, 3), r"\[2, 4\]"),
    (torch.full((2, 4), 2), "only 0 and 1"),
    ([[1, 1]], "torch.Tensor"),
])
def test_bad_attention_masks_are_named(mask, message):
    with pytest.raises(ValueError, match=message):
        check_attention_mask(mask, 2, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_an_input_in_another_dtype_than_the_layers_weights_is_named_with_the_fix(dtype):
    from pimoe import PiMoEConfig, PiMoESystem

    layer = PiMoESystem(PiMoEConfig(hidden_size=8, num_experts=4))
    with pytest.raises(ValueError, match=rf"input dtype {dtype} does not match the layer's torch.float32 weights"):
        layer(torch.randn(1, 3, 8).to(dtype))
    assert layer.to(dtype)(torch.randn(1, 3, 8).to(dtype)).dtype == dtype  # converted: it runs


def test_the_fast_paths_take_any_floating_input_dtype():
    """cuda_fast packs the experts' weights in the input's dtype (on the CPU too, through its torch mirror), so a
    float32 layer runs a bf16 input there: the dtype check must not refuse it."""
    from pimoe import PiMoEConfig, PiMoESystem

    layer = PiMoESystem(PiMoEConfig(hidden_size=8, num_experts=4))
    layer.dispatch = "cuda_fast"
    assert layer(torch.randn(1, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_autocast_may_hand_the_layer_another_dtype():
    from pimoe import PiMoEConfig, PiMoESystem

    layer = PiMoESystem(PiMoEConfig(hidden_size=8, num_experts=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(1, 3, 8, dtype=torch.bfloat16)).shape == (1, 3, 8)
