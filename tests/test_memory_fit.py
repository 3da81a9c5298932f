"""Sizes asked for on the command line are checked against free memory before anything is allocated."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe import cli
from pimoe.layer.config import ExpertConfig, PiMoEConfig
from pimoe.layer.expert_types import known_expert_types
from pimoe.layer.system import PiMoESystem
from pimoe.memory_fit import available_bytes, check_fits, weight_bytes


def small_layer() -> PiMoESystem:
    return PiMoESystem(PiMoEConfig(hidden_size=24, num_experts=3, expert=ExpertConfig(intermediate_size=40)))


def test_weight_bytes_on_the_meta_device_equal_the_built_modules() -> None:
    built = small_layer()
    tensors = [*built.parameters(), *built.buffers()]
    parameters, size = weight_bytes(small_layer)
    assert parameters == sum(p.numel() for p in built.parameters()) > 0
    assert size == sum(t.numel() * t.element_size() for t in tensors)
    _, half = weight_bytes(small_layer, torch.bfloat16)
    floating = sum(t.numel() for t in tensors if t.is_floating_point())
    assert size - half == 2 * floating  # float32 -> bf16 halves only the floating-point tensors


def test_a_module_larger_than_the_free_memory_is_refused_with_its_numbers() -> None:
    _, size = weight_bytes(small_layer)
    check_fits(small_layer, "cpu", "the layer", free=size)  # exactly fits
    with pytest.raises(ValueError, match=r"the layer: 0\.0 M parameters, whose weights need .* GiB; cpu has"):
        check_fits(small_layer, "cpu", "the layer", free=size - 1)
    with pytest.raises(ValueError, match="and its input"):
        check_fits(small_layer, "cpu", "the layer", input_bytes=1, free=size)


def test_the_host_reports_some_free_memory() -> None:
    assert 0 < available_bytes(torch.device("cpu")) < 2**60


@pytest.mark.parametrize("argv", [
    ["export", "--onnx", "{tmp}/huge.onnx", "--hidden-size", "1000000", "--num-experts", "64"],
    ["demo", "--hidden-size", "200000", "--num-iterations", "1"],
    ["demo", "--hidden-size", "64", "--batch-size", "100000", "--sequence-length", "100000"],
    ["bench", "--hidden-size", "64", "--tokens", "100000000000", "--json", "{tmp}/bench.json"],
])
def test_commands_refuse_sizes_no_machine_has_before_allocating(argv, tmp_path, capsys) -> None:
    code = cli.main([a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert "GiB free. Choose smaller sizes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_training_batch_no_machine_holds_is_refused_before_the_corpus_is_read() -> None:
    from pimoe.lm.data import CorpusConfig
    from pimoe.lm.model import LMConfig, PiMoELM
    from pimoe.lm.train import TrainConfig, Trainer

    config = TrainConfig(steps=1, batch_size=10**9, seq_len=64, corpus=CorpusConfig(seed=0, num_train=16, num_val=4))
    with pytest.raises(ValueError, match=r"a batch of 1,000,000,000 x 64 tokens needs at least .* GiB .* Lower the"):
        Trainer(PiMoELM(LMConfig.tiny()), config)


def test_the_training_bound_counts_activations_per_token_and_four_copies_of_the_weights() -> None:
    from pimoe.memory_fit import check_training_fits

    model = torch.nn.Linear(10, 10).to("meta")  # 110 float32 parameters, on no real device: 4 x 440 bytes to come
    needed = 4 * 440 + 2 * 3 * 4 * (3 * 7 + 16 * 5 * 2)  # batch 2 x 3 tokens, vocab 7, hidden 5, 2 layers
    check_training_fits(model, 2, 3, 7, 5, 2, torch.device("cpu"), free=needed)
    with pytest.raises(ValueError, match="Lower the batch size"):
        check_training_fits(model, 2, 3, 7, 5, 2, torch.device("cpu"), free=needed - 1)


def test_weights_already_on_the_device_are_not_counted_against_its_free_memory_again() -> None:
    from pimoe.memory_fit import check_training_fits

    model = torch.nn.Linear(10, 10)  # on the CPU: three more copies to come, not four
    check_training_fits(model, 1, 1, 1, 1, 1, torch.device("cpu"), free=3 * 440 + 4 * (3 + 16))
    with pytest.raises(ValueError):
        check_training_fits(model, 1, 1, 1, 1, 1, torch.device("cpu"), free=3 * 440 + 4 * (3 + 16) - 1)


@settings(max_examples=25, deadline=None)
@given(hidden=st.integers(1, 48), experts=st.integers(2, 8), width=st.integers(1, 96),
       types=st.lists(st.sampled_from(known_expert_types()[:7]), min_size=1, max_size=8),
       dtype=st.sampled_from([None, torch.bfloat16, torch.float64]))
def test_weight_bytes_equal_the_built_layer_for_drawn_configs(hidden, experts, width, types, dtype) -> None:
    config = PiMoEConfig(hidden_size=hidden, num_experts=experts, expert_types=tuple(types),
                         expert=ExpertConfig(intermediate_size=width))
    built = PiMoESystem(config)
    tensors = [*built.parameters(), *built.buffers()]
    expected = sum(t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
                   for t in tensors)
    assert weight_bytes(lambda: PiMoESystem(config), dtype) == (sum(p.numel() for p in built.parameters()), expected)


def test_copies_count_and_every_device_is_asked() -> None:
    parameters, size = weight_bytes(small_layer)
    check_fits(small_layer, ["cpu", torch.device("cpu")], "two copies", copies=2, free=2 * size)
    with pytest.raises(ValueError, match=rf"two copies: {2 * parameters / 1e6:,.1f} M parameters"):
        check_fits(small_layer, ["cpu"], "two copies", copies=2, free=2 * size - 1)
