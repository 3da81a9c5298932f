"""Checkpoints: exact round trips, single-file uploads, clear errors for broken files, and the shipped demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pimoe.lm.checkpoint import METADATA_KEY, load_checkpoint, load_checkpoint_bytes, save_checkpoint
from pimoe.lm.data import CorpusConfig, LMDataset, generate_corpus
from pimoe.lm.metrics import RoutingTally
from pimoe.lm.model import LMConfig, PiMoELM

DEMO = Path(__file__).resolve().parents[2] / "assets" / "pimoe-demo.safetensors"


def make_model() -> PiMoELM:
    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny())
    model.set_router_options(temperature=0.7, supervised_weight=0.3)
    model.routers[1].top_k = 1  # a per-layer change the checkpoint must keep
    model.routers[0].selection_bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    return model.eval()


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_checkpoint(make_model(), tmp_path / "model.safetensors", metadata={"seed": 0, "note": "test"})


def outputs(model: PiMoELM) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(40).view(2, 20) + 40
    out = model(ids, return_routing_info=True)
    return out.logits, torch.cat([r.expert_indices.reshape(-1) for r in out.routing])


def test_round_trip_gives_identical_outputs(saved: Path) -> None:
    original = make_model()
    loaded = load_checkpoint(saved)
    logits, experts = outputs(original)
    loaded_logits, loaded_experts = outputs(loaded)
    assert torch.equal(logits, loaded_logits)
    assert torch.equal(experts, loaded_experts)
    assert [r.config for r in loaded.routers] == [r.config for r in original.routers]
    assert loaded.checkpoint_metadata == {"seed": 0, "note": "test"}
    assert saved.with_suffix(".json").is_file()


def test_single_file_upload_uses_the_config_in_the_safetensors_metadata(saved: Path) -> None:
    loaded = load_checkpoint_bytes(saved.read_bytes(), None, name="model.safetensors")
    assert torch.equal(outputs(loaded)[0], outputs(make_model())[0])


def test_json_config_next_to_the_weights_is_optional(saved: Path) -> None:
    saved.with_suffix(".json").unlink()
    assert torch.equal(outputs(load_checkpoint(saved))[0], outputs(make_model())[0])


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"nothing\.safetensors does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_invalid_json_config_is_named(saved: Path) -> None:
    saved.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json is not valid JSON"):
        load_checkpoint(saved)


def test_config_with_a_bad_value_is_named(saved: Path) -> None:
    path = saved.with_suffix(".json")
    document = json.loads(path.read_text())
    document["config"]["num_heads"] = 5
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"model\.json has an invalid model config: .*divisible"):
        load_checkpoint(saved)


def test_truncated_weights_are_reported_as_truncated(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated"):
        load_checkpoint(saved)
    saved.write_bytes(data[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a safetensors file"):
        load_checkpoint(saved)


def test_corrupt_header_is_reported(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[8:24] = b"\xff" * 16
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors has a corrupt safetensors header"):
        load_checkpoint(saved)


def _rewrite_tensors(path: Path, change) -> None:
    """Re-save the weights with `change(tensors)` applied, keeping the embedded config."""
    model = load_checkpoint(path)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    change(tensors)
    metadata = {METADATA_KEY: path.with_suffix(".json").read_text()}
    save_file(tensors, str(path), metadata=metadata)


def test_shape_mismatch_names_the_tensor_and_both_shapes(saved: Path) -> None:
    _rewrite_tensors(saved, lambda t: t.update({"lm_head.weight": torch.zeros(259, 16)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: shape mismatch for tensor 'lm_head\.weight': "
                                         r"expected \(259, 32\), got \(259, 16\)"):
        load_checkpoint(saved)


def test_missing_and_unexpected_tensors_are_listed(saved: Path) -> None:
    _rewrite_tensors(saved, lambda t: t.pop("ln_f.weight"))
    with pytest.raises(ValueError, match=r"model\.safetensors is missing 1 tensor\(s\).*ln_f\.weight"):
        load_checkpoint(saved)
    fresh = save_checkpoint(make_model(), saved.parent / "again.safetensors")
    _rewrite_tensors(fresh, lambda t: t.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"again\.safetensors has 1 unexpected tensor\(s\).*extra\.weight"):
        load_checkpoint(fresh)


def test_non_finite_weights_are_refused(saved: Path) -> None:
    _rewrite_tensors(saved, lambda t: t["ln_f.bias"].fill_(float("nan")))
    with pytest.raises(ValueError, match=r"tensor 'ln_f\.bias' contains NaN"):
        load_checkpoint(saved)


def test_upload_without_any_config_is_refused(tmp_path) -> None:
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in make_model().state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="bare.safetensors has no model config"):
        load_checkpoint_bytes(path.read_bytes(), None, name="bare.safetensors")


def test_save_requires_the_safetensors_suffix(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_checkpoint(make_model(), tmp_path / "model.pt")


def test_shipped_demo_model_routes_fresh_validation_text_by_type() -> None:
    assert DEMO.stat().st_size <= 10 * 2**20
    model = load_checkpoint(DEMO)
    assert "--seed" in model.checkpoint_metadata["command"]
    fresh = generate_corpus(CorpusConfig(seed=2024, num_train=1, num_val=40)).val  # not the training seed
    dataset = LMDataset(fresh, model.tokenizer, model.config.max_seq_len)
    tally = RoutingTally(model.config.num_layers, model.expert_types, model.mapping)
    with torch.no_grad():
        for batch in dataset.batches(16, shuffle=False):
            tally.update(model(batch.input_ids, return_routing_info=True).routing, batch.token_types)
    assert tally.accuracy() >= 0.9
    assert all(accuracy >= 0.9 for accuracy in tally.accuracy_per_layer())


def _with_config(config: dict) -> bytes:
    """A safetensors file holding one small tensor and an embedded document with `config`."""
    from safetensors.torch import save as save_bytes

    from pimoe.lm.checkpoint import CHECKPOINT_FORMAT

    document = {"format": CHECKPOINT_FORMAT, "format_version": 1, "config": config}
    return save_bytes({"x": torch.zeros(1)}, metadata={METADATA_KEY: json.dumps(document)})


@pytest.mark.parametrize(("path", "value", "words"), [
    (("num_layers",), 100_000, "100,000 layers (num_layers); this server loads at most 64"),
    (("moe", "hidden_size"), 1_000_000, "1,000,000 hidden size (hidden_size); this server loads at most 4,096"),
    (("moe", "num_experts"), 5000, "5,000 experts (num_experts); this server loads at most 64"),
    (("vocab_size",), 10**7, "10,000,000 vocabulary size (vocab_size); this server loads at most 65,536"),
    (("max_seq_len",), 10**6, "1,000,000 sequence length (max_seq_len); this server loads at most 8,192"),
])
def test_oversized_config_is_refused_before_anything_is_allocated(path, value, words, monkeypatch) -> None:
    config = LMConfig.demo().to_dict()
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    built = []
    monkeypatch.setattr(PiMoELM, "__init__", lambda *a, **k: built.append(1))  # a build would be the bug

    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint_bytes(_with_config(config), name="big.safetensors")
    assert not built


def test_parameter_count_within_each_size_limit_but_too_large_overall_is_refused() -> None:
    config = LMConfig.demo().to_dict()
    config["num_layers"], config["moe"]["hidden_size"], config["moe"]["num_experts"] = 64, 4096, 64
    with pytest.raises(ValueError, match=r"about [\d,]+ parameters; this server loads at most 250,000,000"):
        load_checkpoint_bytes(_with_config(config), name="big.safetensors")


def test_pickles_are_named_as_pickles_and_refused(tmp_path) -> None:
    import io
    import pickle

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    for data, kind in ((buffer.getvalue(), "zip archive with a pickle inside"), (pickle.dumps({"w": 1}), "pickle")):
        with pytest.raises(ValueError, match=f"model.pt is a .*{kind}.*Pickles are refused"):
            load_checkpoint_bytes(data, name="model.pt")


def test_a_model_without_attention_biases_round_trips(tmp_path) -> None:
    from dataclasses import replace

    torch.manual_seed(1)
    model = PiMoELM(replace(LMConfig.tiny(), attention_bias=False)).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "no-bias.safetensors"))
    assert loaded.config.attention_bias is False and loaded.blocks[0].attn.qkv.bias is None
    for got, expected in zip(outputs(loaded), outputs(model), strict=True):
        assert torch.equal(got, expected)
