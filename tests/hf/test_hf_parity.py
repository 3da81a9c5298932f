"""Each family's tiny random model on PiMoE blocks equals transformers' own: logits and every layer's top-k."""

import pytest
import torch
from hf_tiny import FAMILIES, record_router_choices, save_tiny

from pimoe.hf import load_hf_moe
from pimoe.hf.block import PiMoEBlock


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = save_tiny(request.param, folder)
    return request.param, reference, load_hf_moe(folder, device="cpu", dtype=torch.float32)


def _ids(seed=1, batch=2, seq=12):
    return torch.randint(3, 101, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_logits_equal_transformers(pair):
    family, reference, ours = pair
    ids = _ids()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    got = ours.trace(ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_topk_experts_equal_transformers_router(pair):
    family, reference, ours = pair
    ids = _ids(seed=2)
    choices, handles = record_router_choices(reference, family)
    with torch.no_grad():
        reference(input_ids=ids)
    for handle in handles:
        handle.remove()
    routing = ours.trace(ids).routing
    assert len(routing) == len(choices) == len(ours.moe_layer_ids)
    for layer, (info, theirs) in enumerate(zip(routing, choices, strict=True)):
        mine = info.expert_indices.sort(dim=-1).values
        assert torch.equal(mine, theirs.sort(dim=-1).values), f"layer {ours.moe_layer_ids[layer]} picks differ"


def test_every_moe_block_replaced_and_dense_layers_untouched(pair):
    family, reference, ours = pair
    layers = ours.family.layers(ours.model)
    for layer_id, layer in enumerate(layers):
        attr = ours.family.block_attr
        reference_mlp = getattr(ours.family.layers(reference)[layer_id], attr)
        if layer_id in ours.moe_layer_ids:
            assert isinstance(getattr(layer, attr), PiMoEBlock)
        else:
            assert type(getattr(layer, attr)) is type(reference_mlp)
    expected_dense = {"qwen3_moe": [1], "deepseek_v2": [0], "deepseek_v3": [0], "deepseek_v32": [0], "glm4_moe": [0],
                      "glm4_moe_lite": [0], "ernie4_5_moe": [0], "llama4_text": [0], "dots1": [0], "exaone_moe": [0], "kimi_linear": [0], "glm_moe_dsa": [0],
                      "minicpm5_moe": [0], "lfm2_moe": [0], "afmoe": [0], "cohere2_moe": [0], "mistral4": [0],
                      "mimo_v2_flash": [0], "beam": [0], "axk1": [0], "axk2": [0], "hy_v4": [0], "hy_v3": [0],
                      "laguna": [0], "mellum": [0], "kolibri1_1": [0], "flint": [0],
                      "nemotron_h": [0, 2, 4], "bailing_hybrid": [0],
                      "deepseek_v4": [0], "ergo": [0], "qwen3_vl_moe_text": [1],
                      "glm4v_moe_text": [0]}.get(family, [])
    assert [i for i in range(len(layers)) if i not in ours.moe_layer_ids] == expected_dense


def test_fast_path_mirror_takes_the_checkpoint_experts(pair):
    """The `cuda_fast` strategy (its plain-torch mirror on the CPU) packs the checkpoint's experts and matches."""
    import pimoe.cuda  # noqa: F401  (registers cuda_fast)
    from pimoe.cuda.packing import pack_experts, pack_experts_in_place

    family, reference, ours = pair
    if ours.blocks[0].dispatch != "auto":
        pytest.skip(f"{family}'s experts run on the sorted dispatch (no fast-path activation for them)")
    ids = _ids(seed=4)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    try:
        for block in ours.blocks:
            block.dispatch = "cuda_fast"
            packed = pack_experts_in_place(block.experts)
            assert block.experts[1].up.weight.data_ptr() == packed.w1[1].data_ptr()  # one copy: views of the pack
            assert pack_experts(block.experts) is packed  # and the cached pack stays valid
        got = ours.trace(ids).logits
    finally:
        for block in ours.blocks:
            block.dispatch = "auto"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_top_k_beyond_the_reachable_experts_is_refused(pair):
    family, _, ours = pair
    with pytest.raises(ValueError, match="experts a token can reach"):
        ours.trace(_ids(), top_k=ours.max_top_k + 1)
    if family in ("deepseek_v2", "deepseek_v3"):  # 8 experts in 4 groups, 2 groups per token: 4 reachable
        assert ours.max_top_k == 4


def test_greedy_generation_equals_transformers(pair):
    """Decoding goes through the KV cache (and Qwen3-Next's recurrent state) one token at a time: a path `trace` never
    takes."""
    family, reference, ours = pair
    ids = _ids(seed=5, batch=1, seq=7)
    expected = reference.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    got = ours.generate(ids, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(got.sequences, expected)
    assert len(got.step_routing) == 6


def test_an_input_weighted_block_refuses_a_dispatch_that_would_not_run_it(pair):
    family, _, ours = pair
    if not ours.family.weights_on_input:
        pytest.skip(f"{family} weights the experts' outputs")
    block = ours.blocks[0]
    with pytest.raises(ValueError, match="only the 'sorted' dispatch"):
        block.dispatch = "cuda_fast"
    assert block.dispatch == "sorted"


def test_biases_and_latent_projections_of_ungated_experts_are_carried(tmp_path):
    """Nemotron-H with `mlp_bias`: transformers starts every bias at zero, so the shared MLP's and the latent
    projections' biases are drawn here; a block that dropped one (or read the latent width wrong) would differ."""
    from hf_tiny import tiny_model

    reference = tiny_model("nemotron_h")
    biases = [p for name, p in reference.named_parameters() if name.endswith(".bias") and ".mixer." in name]
    assert any("latent" in name for name, _ in reference.named_parameters())
    with torch.no_grad():
        for bias in biases:
            bias.uniform_(-0.5, 0.5)
    reference.save_pretrained(tmp_path)
    ours = load_hf_moe(tmp_path, device="cpu", dtype=torch.float32)
    ids = _ids(seed=6)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    assert len(biases) >= 4
    torch.testing.assert_close(ours.trace(ids).logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_zero_computation_experts_are_named_apart(tmp_path):
    """LongCat-Flash's last experts return their input: the model's description says which they are."""
    from hf_tiny import save_tiny

    save_tiny("longcat_flash", tmp_path)
    ours = load_hf_moe(tmp_path, device="cpu", dtype=torch.float32)
    assert ours.num_zero_experts == 4 and ours.num_experts == 12
    assert "8 experts + 4 zero-computation (E8-E11) top-3" in ours.describe()
    save_tiny("mixtral", tmp_path / "mixtral")
    assert "Mixtral · 4 experts top-2" in load_hf_moe(tmp_path / "mixtral", device="cpu").describe()
