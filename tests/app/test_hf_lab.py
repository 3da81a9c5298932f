"""The routing lab on a Hugging Face model: the shipped Qwen3-MoE folder loads, every panel draws, edits show, and a
bad folder leaves the current model in place."""

import numpy as np
import pytest
from studio_apptest import array, figure, metric, new_session

from studio.hf_lab import DEFAULT_TEXT

pytestmark = pytest.mark.app

CHARTS = ("hf.path", "hf.load", "hf.coactivation", "hf.specialization", "hf.vocabulary", "hf.logprob",
          "hf.routing_diff")


@pytest.fixture(scope="module")
def hf_app():
    return new_session(source="hf")


def test_shipped_model_shows_every_panel(hf_app):
    assert not hf_app.exception and not hf_app.error
    model = hf_app.session_state["_settings"].hf_model
    device, dtype = str(model.device), str(model.dtype).removeprefix("torch.")  # cpu / float32, or cuda:0 / bfloat16
    for key in CHARTS:
        title = figure(hf_app, key)["layout"]["title"]["text"]
        assert "hf-tiny-qwen3-moe" in title and device in title and dtype in title  # model, device, dtype, date
    tokens = int(metric(hf_app, "Tokens"))
    chosen = array(figure(hf_app, "hf.path")["data"][0]["z"])
    assert chosen.shape == (4, tokens)
    load = array(figure(hf_app, "hf.load")["data"][0]["customdata"])
    np.testing.assert_allclose(load.sum(axis=1), 1.0, atol=1e-6)
    own, edited = (c.value for c in hf_app.code)
    assert own == edited  # no edit yet: the same continuation
    assert array(figure(hf_app, "hf.routing_diff")["data"][0]["z"]).max() == 0


def test_ablating_an_expert_changes_the_routing_and_the_log_probs(hf_app):
    hf_app.selectbox(key="hf.cf_ablate").set_value(1).run()
    assert not hf_app.exception
    assert array(figure(hf_app, "hf.routing_diff")["data"][0]["z"]).max() > 0
    assert np.abs(array(figure(hf_app, "hf.logprob")["data"][0]["y"])).max() > 0
    hf_app.selectbox(key="hf.cf_ablate").set_value(None).run()


def test_a_text_without_repeated_tokens_draws_every_panel(hf_app):
    hf_app.text_area(key="hf.text").set_value("Hi").run()
    assert not hf_app.exception and not hf_app.error
    assert all(figure(hf_app, key) for key in CHARTS)
    hf_app.text_area(key="hf.text").set_value(DEFAULT_TEXT).run()


def test_bad_folder_is_explained_and_the_model_stays(hf_app):
    hf_app.text_input(key="model.hf_source").set_value("/nonexistent/folder").run()
    assert not hf_app.exception
    assert any("Could not load" in e.value and "Still using" in e.value for e in hf_app.error)
    assert figure(hf_app, "hf.path")  # the lab still draws, from the model already in use


def test_a_folder_without_a_tokenizer_takes_token_ids(tmp_path):
    from transformers import AutoModelForCausalLM, OlmoeConfig

    config = OlmoeConfig(vocab_size=101, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=24, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)  # weights and config only
    at = new_session(source="hf")
    at.text_input(key="model.hf_source").set_value(str(tmp_path)).run()
    assert any("no tokenizer" in info.value for info in at.info)
    assert any("no tokenizer: token ids must be integers below 101" in e.value for e in at.error)  # English is not ids
    at.text_area(key="hf.text").set_value("5, 6 7 8 9 10 11 12").run()
    assert not at.exception and not at.error
    assert array(figure(at, "hf.path")["data"][0]["z"]).shape == (2, 8)
    at.text_area(key="hf.text").set_value("5 6 999").run()
    assert any("token id 999 is past the model's vocabulary of 101" in e.value for e in at.error)
