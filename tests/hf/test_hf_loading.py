"""load_hf_moe refuses, with a message naming the problem, what it cannot run; and sizes models before loading."""

import json

import pytest
import torch
from hf_tiny import save_tiny, tiny_config, tiny_model

from pimoe.hf import load_hf_moe, memory
from pimoe.hf.memory import count_parameters, plan_placement


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8,
                vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="llama.*supported: Mixtral.*Qwen2-MoE.*DeepSeek-V3"):
        load_hf_moe(tmp_path, device="cpu")


@pytest.mark.parametrize("family", ["olmoe", "qwen3_next"])  # Qwen3-Next's folder yields an empty tokenizer
def test_weights_only_folder_traces_ids_and_asks_for_a_tokenizer_for_text(family, tmp_path):
    save_tiny(family, tmp_path)
    model = load_hf_moe(tmp_path, device="cpu", dtype=torch.float32)
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="has no tokenizer .*save the checkpoint's tokenizer there"):
        model.encode("12+7=")
    assert model.trace(torch.tensor([[5, 6, 7]])).logits.shape[:2] == (1, 3)


def test_folder_without_weights_is_refused(tmp_path):
    tiny_config("olmoe").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot load the weights"):
        load_hf_moe(tmp_path, device="cpu")


def test_corrupt_weights_are_refused(tmp_path):
    save_tiny("olmoe", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot load the weights"):
        load_hf_moe(tmp_path, device="cpu")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    save_tiny("olmoe", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_experts"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weights"):
        load_hf_moe(tmp_path, device="cpu")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("hidden_size", -4, "no model transformers can build"),
    ("hidden_size", 0, "no model transformers can build"),
    ("num_experts", -1, "no model transformers can build"),
    ("vocab_size", 0, "no model transformers can build"),
    ("hidden_size", "big", "cannot read a transformers config"),
    ("num_experts_per_tok", 99, "exceeds the 8 experts"),
])
def test_a_config_with_impossible_sizes_is_refused_by_name(tmp_path, key, value, message):
    save_tiny("olmoe", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_hf_moe(tmp_path, device="cpu")


def test_missing_folder_and_uncached_hub_id_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        load_hf_moe(tmp_path / "nowhere", device="cpu")
    with pytest.raises(ValueError, match="download=True"):
        load_hf_moe("pimoe-tests/no-such-model", device="cpu")


def test_parameter_count_read_from_config_matches_the_built_model():
    from hf_tiny import tiny_model

    model = tiny_model("deepseek_v3")
    total, experts = count_parameters(model.config)
    assert total == sum(p.numel() for p in model.parameters())
    assert experts == sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n) > 0


def test_too_big_for_the_cpu_gives_the_numbers_and_loads_nothing(tmp_path, monkeypatch):
    save_tiny("olmoe", tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match=r"too big for the CPU: .*M parameters, .*GiB needed, .*GiB free"):
        load_hf_moe(tmp_path, device="cpu")


def test_several_gpus_together_get_a_device_map():
    from transformers import OlmoeConfig

    config = OlmoeConfig(intermediate_size=1024)  # OLMoE-1B-7B: 6.9 B parameters, ~17 GiB in bf16 with headroom
    gib = 1024**3
    one = plan_placement(config, torch.bfloat16, torch.device("cuda", 0), free_bytes={0: 80 * gib})
    assert one.device_map is None
    spread = plan_placement(config, torch.bfloat16, torch.device("cuda", 0),
                            free_bytes={0: 10 * gib, 1: 10 * gib})
    assert spread.device_map == "auto" and set(spread.max_memory) == {0, 1}
    with pytest.raises(ValueError, match="too big for cuda:0"):
        plan_placement(config, torch.bfloat16, torch.device("cuda", 0), free_bytes={0: 8 * gib})


def test_hub_id_loads_offline_from_the_local_cache(tmp_path, monkeypatch):
    """A hub id already in the Hugging Face cache loads with no network (HF_HUB_OFFLINE=1 from the fixture)."""
    repo = tmp_path / "hub" / "models--pimoe-tests--tiny-olmoe"
    snapshot = repo / "snapshots" / ("0" * 40)
    save_tiny("olmoe", snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_hf_moe("pimoe-tests/tiny-olmoe", device="cpu")
    assert model.family.model_type == "olmoe" and model.moe_layer_ids == [0, 1]


@pytest.mark.parametrize("device_map", [{"": "cpu"}, {"model.layers.0": 0, "model.layers.1": "disk"}, {}, "auto"])
def test_an_explicit_device_map_must_put_every_module_on_a_gpu(tmp_path, device_map):
    save_tiny("olmoe", tmp_path)
    with pytest.raises(ValueError, match="device_map"):
        load_hf_moe(tmp_path, device="cpu", device_map=device_map)


def test_a_top_k_that_differs_between_layers_is_refused_before_the_weights(tmp_path):
    config = tiny_config("hunyuan_v1_moe")
    config.moe_topk = [2, 3]
    config.save_pretrained(tmp_path)  # no weights: the refusal must come from the config alone
    with pytest.raises(ValueError, match=r"moe_topk differs between layers \(\[2, 3\]\)"):
        load_hf_moe(tmp_path, device="cpu")


def test_a_top_k_list_with_one_value_loads(tmp_path):
    config = tiny_config("hunyuan_v1_moe")
    config.moe_topk = [2, 2]
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    assert load_hf_moe(tmp_path, device="cpu", dtype=torch.float32).top_k == 2


def test_the_readme_lists_every_supported_family():
    from pathlib import Path

    from pimoe.hf.families import SUPPORTED_FAMILIES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [name for name in SUPPORTED_FAMILIES if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("family, change, message", [
    ("dbrx", lambda c: setattr(c.ffn_config, "moe_normalize_expert_weights", 2.0), r"p-norm other than 1"),
    ("phimoe", lambda c: setattr(c, "num_experts_per_tok", 3), r"exactly 2 experts per token; the config asks 3"),
])
def test_a_routing_rule_pimoe_does_not_follow_is_refused_before_the_weights(tmp_path, family, change, message):
    config = tiny_config(family)
    change(config)
    config.save_pretrained(tmp_path)  # no weights: the refusal must come from the config alone
    with pytest.raises(ValueError, match=message):
        load_hf_moe(tmp_path, device="cpu")


def test_a_multimodal_llama4_checkpoint_runs_its_language_model(tmp_path):
    """model_type "llama4" (vision tower, projector, language model) is not a family itself; its text config is:
    the language model loads on PiMoE blocks, the other towers' weights are left out, and text logits equal the
    whole transformers model's."""
    import transformers as tf
    from hf_tiny import make_routing_decisive, tiny_config

    text = tiny_config("llama4_text").to_dict()
    vision = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=16, image_size=32,
                  patch_size=16, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32)
    torch.manual_seed(0)
    whole = tf.Llama4ForConditionalGeneration(tf.Llama4Config(text_config=text, vision_config=vision)).eval()
    make_routing_decisive(whole, "llama4_text")
    whole.save_pretrained(tmp_path)
    ours = load_hf_moe(tmp_path, device="cpu")
    assert ours.family.model_type == "llama4_text" and ours.moe_layer_ids == [1]
    ids = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = whole(input_ids=ids).logits
    torch.testing.assert_close(ours.trace(ids).logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_a_multimodal_qwen3_5_moe_checkpoint_runs_its_language_model(tmp_path):
    """The same for Qwen3.5-MoE, whose text weights sit under model.language_model and vision ones under
    model.visual; a stray weight outside the vision tower is still refused."""
    import transformers as tf
    from hf_tiny import make_routing_decisive, tiny_config

    if not hasattr(tf, "Qwen3_5MoeConfig"):
        pytest.skip(f"transformers {tf.__version__} has no Qwen3.5-MoE")
    vision = dict(depth=1, hidden_size=32, num_heads=4, intermediate_size=16, out_hidden_size=32, patch_size=4)
    torch.manual_seed(0)
    config = tf.Qwen3_5MoeConfig(text_config=tiny_config("qwen3_5_moe_text").to_dict(), vision_config=vision)
    whole = tf.Qwen3_5MoeForConditionalGeneration(config).eval()
    make_routing_decisive(whole, "qwen3_5_moe_text")
    whole.save_pretrained(tmp_path)
    ours = load_hf_moe(tmp_path, device="cpu")
    assert ours.family.model_type == "qwen3_5_moe_text"
    ids = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = whole(input_ids=ids).logits
    torch.testing.assert_close(ours.trace(ids).logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    from safetensors.torch import load_file, save_file

    weights = next(tmp_path.glob("*.safetensors"))
    tensors = load_file(weights)
    tensors["model.language_model.layers.0.stray.weight"] = torch.zeros(2)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected keys.*stray"):
        load_hf_moe(tmp_path, device="cpu")


def test_pickled_weights_are_never_loaded(tmp_path):
    """A folder with only pytorch_model.bin (a pickle) is refused before anything is unpickled, naming the file."""
    from hf_tiny import tiny_model

    model = tiny_model("olmoe")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only as PyTorch pickles \(pytorch_model.bin\).*safetensors only"):
        load_hf_moe(tmp_path, device="cpu")
    # transformers itself is never asked for a pickle either, whatever the folder's file names say
    (tmp_path / "notes.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot load the weights"):
        load_hf_moe(tmp_path, device="cpu")


def test_a_causal_lm_the_auto_classes_do_not_list_is_built_from_its_own_class():
    """Mistral 4's causal LM is not in transformers' causal-LM auto mapping; its model file's class builds it, and
    the auto class still builds every family it lists."""
    import transformers as tf

    from pimoe.hf.causal_lm import causal_lm_class, causal_lm_from_config

    assert causal_lm_class(tiny_config("mistral4")) is tf.Mistral4ForCausalLM
    assert causal_lm_class(tiny_config("mixtral")) is tf.AutoModelForCausalLM
    with torch.device("meta"):
        assert type(causal_lm_from_config(tiny_config("mistral4"))).__name__ == "Mistral4ForCausalLM"


def test_a_multimodal_gemma4_checkpoint_runs_its_language_model(tmp_path):
    """transformers maps "gemma4" to the whole multimodal model, not a text causal LM: PiMoE loads the text config's
    causal LM with the weights' `model.language_model.` prefix renamed, and its logits equal the multimodal model's
    on token ids."""
    import transformers as tf

    from pimoe.hf import load_hf_moe

    text = tiny_model("gemma4_text")
    vision = tf.Gemma4VisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, head_dim=8, patch_size=4, position_embedding_size=64)
    whole = tf.Gemma4ForConditionalGeneration(tf.Gemma4Config(text_config=text.config.to_dict(),
                                                              vision_config=vision.to_dict(), audio_config=None,
                                                              tie_word_embeddings=False)).eval()
    whole.model.language_model.load_state_dict(text.model.state_dict())
    whole.save_pretrained(tmp_path)
    ours = load_hf_moe(tmp_path, device="cpu", dtype=torch.float32)
    assert type(ours.model).__name__ == "Gemma4ForCausalLM" and ours.moe_layer_ids == [0, 1]
    ids = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = whole(input_ids=ids).logits
    torch.testing.assert_close(ours.trace(ids).logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
