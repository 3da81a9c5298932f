"""studio.figures.hf builders as data, and studio.hf_view on a tiny random OLMoE."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.figures.hf import (
    build_class_specialization_figure,
    build_coactivation_figure,
    build_expert_path_figure,
    build_layer_load_figure,
    build_logprob_change_figure,
    build_routing_difference_figure,
    build_vocabulary_specialization_figure,
)

ABOUT = "tiny · cpu · float32 · 2026-12-06"


def test_expert_path_colours_by_top1_and_labels_every_chosen_expert():
    chosen = np.array([[[2, 0], [1, 3]], [[0, 1], [3, 2]]])  # (L=2, T=2, K=2)
    fig = build_expert_path_figure(["a", "b"], chosen, [0, 3], 4, about=ABOUT)
    heat = fig.data[0]
    np.testing.assert_array_equal(heat.z, [[2, 1], [0, 3]])
    assert heat.text[1][1] == "3,2" and list(heat.y) == ["layer 0", "layer 3"]
    assert ABOUT in fig.layout.title.text
    with pytest.raises(ValueError):
        build_expert_path_figure(["a"], chosen, [0, 3], 4, about=ABOUT)


def test_layer_load_is_relative_to_uniform_and_names_maxvio():
    fig = build_layer_load_figure([[0.5, 0.25, 0.25, 0.0]], [1.0], [2], about=ABOUT)
    np.testing.assert_allclose(fig.data[0].z, [[2.0, 1.0, 1.0, 0.0]])
    assert fig.data[0].y[0] == "layer 2 · MaxVio 1.00"


def test_specialisation_skips_absent_classes_and_draws_the_chance_line():
    share = np.array([[1.0, 0.0], [np.nan, np.nan]])
    fig = build_class_specialization_figure(share, ["number", "word"], 0.5, 0, about=ABOUT)
    assert [t.name for t in fig.data] == ["number"]
    assert fig.layout.shapes[0].y0 == 0.5


def test_vocabulary_figure_shows_each_entrys_favourite_expert():
    share = np.array([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]])
    fig = build_vocabulary_specialization_figure(["the", "7"], share, [5, 3], 2 / 3, 1, about=ABOUT)
    np.testing.assert_allclose(fig.data[0].y, [0.8, 1.0])
    assert list(fig.data[0].text) == ["E1", "E0"]
    assert fig.layout.shapes[0].y0 == 2 / 3


def test_vocabulary_figure_of_a_text_without_repeated_tokens_says_so():
    fig = build_vocabulary_specialization_figure([], np.zeros((0, 8)), [], 0.25, 0, about=ABOUT)
    assert len(fig.data[0].y) == 0
    assert "No token occurs twice" in fig.layout.annotations[-1].text


def test_counterfactual_figures_carry_their_values():
    fig = build_logprob_change_figure(["x", "y"], [-0.5, 0.25], about=ABOUT)
    np.testing.assert_allclose(fig.data[0].y, [-0.5, 0.25])
    diff = build_routing_difference_figure(["x", "y"], [[0, 2]], [1], 2, about=ABOUT)
    assert diff.data[0].zmax == 2
    assert build_coactivation_figure(np.eye(3), 1, about=ABOUT).data[0].z.shape == (3, 3)


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
    from hf_tiny import tiny_config
    from transformers import AutoModelForCausalLM

    from pimoe.hf import load_hf_moe
    from pimoe.hf.train_tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("olmoe_tok")
    tokenizer = build_tokenizer(["Ana has 12 apples. 3+4=7."] * 20, vocab_size=300)
    config = tiny_config("olmoe")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_hf_moe(folder, device="cpu", dtype=torch.float32)


def test_counterfactual_without_edits_changes_nothing_and_ablation_shows(tiny_with_tokenizer):
    from studio.hf_view import counterfactual, lab_view

    model = tiny_with_tokenizer
    same = counterfactual(model, "Ana has 12", 4)
    assert same.own_text == same.edited_text
    assert np.all(same.logprob_delta == 0) and same.differing.max() == 0
    popular = int(np.bincount(lab_view(model, "Ana has 12").chosen[0].ravel()).argmax())
    changed = counterfactual(model, "Ana has 12", 4, ablate=popular)
    assert changed.differing.max() > 0
    assert len(changed.tokens) == len(changed.logprob_delta) == 4

