"""Devices checked against the machine before a run builds anything (`pimoe.devices.available_device`)."""

from __future__ import annotations

import pytest
import torch

from pimoe.devices import available_device
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.train import TrainConfig, Trainer


def test_the_cpu_is_always_there() -> None:
    assert available_device("cpu") == torch.device("cpu")


def test_a_name_torch_does_not_know_is_named() -> None:
    with pytest.raises(ValueError, match="'tpu' is not a valid torch device"):
        available_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_named_error_not_an_assertion_inside_torch() -> None:
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        available_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        Trainer(PiMoELM(LMConfig.tiny()), TrainConfig(steps=1, batch_size=2, seq_len=16, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_index_past_the_visible_ones_is_named() -> None:
    with pytest.raises(ValueError, match="visible"):
        available_device(f"cuda:{torch.cuda.device_count()}")
