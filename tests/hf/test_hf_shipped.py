"""The shipped assets/hf-tiny-qwen3-moe: loads offline, equals transformers, and `python -m pimoe inspect` reads it."""

import json
from pathlib import Path

import pytest
import torch

from pimoe.cli.commands import main as cli_main
from pimoe.hf import load_hf_moe

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "hf-tiny-qwen3-moe"


@pytest.fixture(scope="module")
def shipped():
    return load_hf_moe(SHIPPED, device="cpu")


def test_shipped_model_equals_transformers_and_has_its_tokenizer(shipped):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(SHIPPED, dtype=torch.float32).eval()
    ids = shipped.encode("Ana has 12 apples and buys 7 more. 12+7=19")
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    torch.testing.assert_close(shipped.trace(ids).logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert shipped.family.model_type == "qwen3_moe" and shipped.dtype == torch.float32
    assert shipped.tokenizer.decode(ids[0]) == "Ana has 12 apples and buys 7 more. 12+7=19"


def test_shipped_model_continues_arithmetic(shipped):
    out = shipped.generate(shipped.encode("12+7="), max_new_tokens=3)
    assert len(out.step_routing) == 3 and out.trace.routing[0].num_tokens == out.sequences.shape[1]


def test_inspect_prints_per_layer_summary_and_writes_the_trace(tmp_path, capsys):
    out = tmp_path / "trace.json"
    code = cli_main(["inspect", str(SHIPPED), "--text", "If 3>5 then Ben wins.", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "MaxVio" in printed and "top experts" in printed
    data = json.loads(out.read_text())
    assert data["family"] == "Qwen3-MoE" and data["moe_layers"] == [0, 1, 2, 3]
    layer = data["layers"][0]
    tokens = len(data["tokens"][0])
    assert len(layer["expert_indices"]) == tokens and len(layer["expert_indices"][0]) == data["top_k"]
    assert abs(sum(layer["load"]) - 1.0) < 1e-6
    assert {"model", "device", "dtype", "date", "edits"} <= set(data)


def test_inspect_refuses_an_out_path_that_is_a_folder_before_loading(tmp_path, capsys, monkeypatch):
    import pimoe.hf.loading as loading

    def fail(*args, **kwargs):
        raise AssertionError("the model loaded before --out was checked")

    monkeypatch.setattr(loading, "load_hf_moe", fail)
    assert cli_main(["inspect", str(SHIPPED), "--text", "hi", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_inspect_warns_past_the_models_positions_and_not_before(capsys):
    cli_main(["inspect", str(SHIPPED), "--text", "If 3>5 then Ben wins."])
    assert "warning" not in capsys.readouterr().err
    long_text = "Ana has 12 apples. " * 60  # ~7 tokens per sentence against the shipped model's 256 positions
    assert cli_main(["inspect", str(SHIPPED), "--text", long_text]) == 0
    captured = capsys.readouterr()
    tokens = int(captured.out.split(" tokens")[0].rsplit(", ", 1)[1])
    assert tokens > 256
    assert f"warning: {tokens} tokens exceed the model's 256 positions" in captured.err


def test_inspect_routes_the_first_max_tokens_of_a_long_text_and_says_so(tmp_path, capsys):
    out = tmp_path / "trace.json"
    assert cli_main(["inspect", str(SHIPPED), "--text", "Ana has 12 apples. " * 40, "--max-tokens", "50",
                     "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: routing the first 50 of " in captured.err and ", 50 tokens" in captured.out
    assert len(json.loads(out.read_text())["tokens"][0]) == 50
    assert cli_main(["inspect", str(SHIPPED), "--ids", "5 6 7", "--max-tokens", "2"]) == 0
    assert ", 2 tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["inspect", str(SHIPPED), "--text", "hi", "--max-tokens", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_inspect_routes_typed_token_ids_and_refuses_bad_ones(tmp_path, capsys):
    out = tmp_path / "trace.json"
    assert cli_main(["inspect", str(SHIPPED), "--ids", "5, 6 7 300", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["layers"][0]["expert_indices"].__len__() == 4
    assert cli_main(["inspect", str(SHIPPED), "--ids", "5 x"]) == 2
    assert "token ids must be integers below 512" in capsys.readouterr().err
    assert cli_main(["inspect", str(SHIPPED), "--ids", "5 512"]) == 2
    assert "token id 512 is past the model's vocabulary of 512" in capsys.readouterr().err


def test_inspect_bad_source_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["inspect", str(tmp_path / "missing"), "--text", "hi"]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_inspect_applies_per_layer_edits(tmp_path):
    out = tmp_path / "trace.json"
    assert cli_main(["inspect", str(SHIPPED), "--text", "12+7=19", "--ablate", "1", "--force", "2:5", "--top-k", "3",
                     "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["edits"]["ablate"] == {"0": [1], "1": [1], "2": [1], "3": [1]}
    assert data["edits"]["force"] == {"2": [5]}
    layer2 = data["layers"][2]["expert_indices"]
    assert all(row[0] == 5 and 1 not in row and len(row) == 3 for row in layer2)


def test_inspect_bad_edit_is_a_clear_error(capsys):
    assert cli_main(["inspect", str(SHIPPED), "--text", "hi", "--ablate", "x:1"]) == 2
    assert "LAYER:EXPERT" in capsys.readouterr().err


def test_retraining_the_shipped_model_checks_its_folder_before_training(tmp_path, monkeypatch):
    import pimoe.hf.train_tiny as train_tiny

    def must_not_start(*args, **kwargs):
        raise AssertionError("the corpus was built before the output folder was checked")

    monkeypatch.setattr(train_tiny, "generate_corpus", must_not_start)
    (tmp_path / "blocker").write_text("a file where a folder would go")
    with pytest.raises(ValueError, match="blocker is a file"):
        train_tiny.train_tiny(tmp_path / "blocker" / "model", steps=1)
