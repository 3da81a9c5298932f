"""The preset ablation (bench/preset_ablation.py) checked on the CPU, so its GPU run cannot fail on the script."""

from __future__ import annotations

import json

import pytest

from bench.preset_ablation import apply_variant, main, parse_variant
from pimoe.lm.model import LMConfig


def test_variants_parse_to_the_fields_types() -> None:
    assert parse_variant("") == {}
    assert parse_variant("attention_bias=0, dropout=0.25,num_layers=3") == {
        "attention_bias": False, "dropout": 0.25, "num_layers": 3}


def test_width_variants_reach_the_moe_layer_and_the_rest_stays() -> None:
    preset = LMConfig.gpu()
    wide = apply_variant(preset, parse_variant("hidden_size=1024,intermediate_size=512,num_heads=16,num_layers=4"))
    assert (wide.hidden_size, wide.moe.intermediate_size, wide.num_heads, wide.num_layers) == (1024, 512, 16, 4)
    assert wide.moe.expert_types == preset.moe.expert_types and wide.moe.router == preset.moe.router
    assert wide.attention_bias == preset.attention_bias and wide.max_seq_len == preset.max_seq_len
    assert apply_variant(preset, {}) == preset


def test_a_width_the_heads_do_not_divide_is_refused_before_training(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--variant", "hidden_size=33"])
    assert "divisible" in capsys.readouterr().err


@pytest.mark.parametrize("text, named", [("attention_bias=2", "attention_bias"), ("heads=4", "heads"),
                                         ("num_layers=two", "num_layers"), ("moe=1", "moe"), ("dropout", "dropout")])
def test_a_bad_variant_names_its_problem(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_variant(text)


def test_each_variant_trains_from_the_same_start_and_reports_its_row(tmp_path) -> None:
    out = tmp_path / "ablation.json"
    common = ["--preset", "tiny", "--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-size", "2",
              "--seq-len", "16", "--num-train", "20", "--num-val", "4", "--json", str(out)]
    assert main([*common, "--variant", "", "--variant", "attention_bias=0", "--variant", ""]) == 0
    first, without_bias, again = json.loads(out.read_text())["rows"]
    assert first["variant"] == {} and without_bias["variant"] == {"attention_bias": False}
    assert without_bias["parameters"] < first["parameters"]
    # same seed, corpus and batches: the preset trained twice lands on the same loss
    assert first["val_lm_loss"] == pytest.approx(again["val_lm_loss"], abs=1e-6)
    assert first["val_lm_loss"] != pytest.approx(without_bias["val_lm_loss"], abs=1e-6)
    assert first["unigram_loss"] == again["unigram_loss"] > 0
    assert 0 <= first["routing_accuracy"] <= 1 and first["mfu"] is None


def test_cuda_on_a_machine_without_it_is_refused_before_training(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["--device", "cuda", "--steps", "1"])
    assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--cuda-graph", "--steps", "1"])
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err
