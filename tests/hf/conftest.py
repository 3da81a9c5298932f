"""Shared tiny saved checkpoints for the hf tests (built from config classes, no download)."""

import pytest
import torch
from hf_tiny import save_tiny


@pytest.fixture(scope="session")
def olmoe_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("olmoe")
    save_tiny("olmoe", folder)
    return folder


@pytest.fixture(scope="session")
def olmoe(olmoe_folder):
    from pimoe.hf import load_hf_moe

    return load_hf_moe(olmoe_folder, device="cpu", dtype=torch.float32)
