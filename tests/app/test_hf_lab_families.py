"""The routing lab on the families whose rules differ most from the shipped model's: PhiMoE's sparsemixer, DBRX's
flat experts and other layer path, Llama 4's top-1 with input-side weights and a dense layer, DeepSeek-V4's hash layer
left to transformers, LongCat-Flash's zero-computation experts, Nemotron-H's Mamba layers and latent experts, Gemma
4's router and experts called by the decoder layer itself.
Weights-only folders (token ids as text): every panel draws, and ablating a token's expert moves that token."""

import sys
from pathlib import Path

import pytest
from studio_apptest import array, figure, new_session
from test_hf_lab import CHARTS

sys.path.insert(0, str(Path(__file__).parents[1] / "hf"))  # the tiny-model builders of the HF tests
from hf_tiny import save_tiny  # noqa: E402

pytestmark = pytest.mark.app


# MoE layers PiMoE runs in each tiny model: Llama 4's first layer is dense, DeepSeek-V4's a hash layer, Nemotron-H has
# two MoE layers among five
ROUTED_LAYERS = {"phimoe": 2, "dbrx": 2, "llama4_text": 1, "deepseek_v4": 2, "longcat_flash": 2, "nemotron_h": 2,
                 "gemma4_text": 2}


@pytest.mark.parametrize("family", list(ROUTED_LAYERS))
def test_the_lab_runs_a_family_with_its_own_rule(tmp_path, family):
    save_tiny(family, tmp_path)
    at = new_session(source="hf")
    at.text_input(key="model.hf_source").set_value(str(tmp_path)).run()
    at.text_area(key="hf.text").set_value("5 6 7 8 9 10 11 12 5 6").run()
    assert not at.exception and not at.error
    assert all(figure(at, key) for key in CHARTS)
    path = array(figure(at, "hf.path")["data"][0]["z"])
    assert path.shape == (ROUTED_LAYERS[family], 10)
    assert array(figure(at, "hf.routing_diff")["data"][0]["z"]).max() == 0
    at.selectbox(key="hf.cf_ablate").set_value(int(path[0, 0])).run()  # the first token's first choice
    assert not at.exception and not at.error
    assert array(figure(at, "hf.routing_diff")["data"][0]["z"]).max() > 0
