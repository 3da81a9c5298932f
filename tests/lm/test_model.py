"""PiMoE-LM: config validation, causality, padding, router losses, generation and the routing lab."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pimoe.layer.config import PiMoEConfig
from pimoe.lm.data import LMBatch
from pimoe.lm.generation import TokenRouting
from pimoe.lm.model import LMConfig, PiMoELM, display_tokens
from pimoe.lm.text import IGNORE_TYPE_ID, ByteTokenizer, TokenType, tag_batch

TOKENIZER = ByteTokenizer()


def make_model(seed: int = 0, **changes) -> PiMoELM:
    torch.manual_seed(seed)
    config = LMConfig.tiny()
    for name, value in changes.items():
        setattr(config, name, value)
    return PiMoELM(config).eval()


def test_forward_returns_logits_and_one_routing_record_per_layer() -> None:
    model = make_model()
    ids = torch.randint(0, 256, (3, 17))
    out = model(ids, return_routing_info=True)
    assert out.logits.shape == (3, 17, model.config.vocab_size)
    assert len(out.routing) == model.config.num_layers
    assert all(r.num_tokens == 3 * 17 for r in out.routing)
    assert out.router_loss.dim() == 0
    assert model(ids).routing is None


def test_router_loss_is_sum_of_layer_losses() -> None:
    model = make_model()
    out = model(torch.randint(0, 256, (2, 9)), return_routing_info=True)
    torch.testing.assert_close(out.router_loss, sum(r.router_loss for r in out.routing))
    torch.testing.assert_close(out.router_loss, out.load_balance_loss + out.z_loss + out.supervised_loss)


def test_logits_do_not_depend_on_future_tokens() -> None:
    model = make_model()
    ids = torch.randint(0, 256, (1, 20))
    changed = ids.clone()
    changed[0, 12:] = torch.randint(0, 256, (8,))
    torch.testing.assert_close(model(ids).logits[:, :12], model(changed).logits[:, :12])


def test_right_padding_leaves_real_tokens_unchanged_and_is_not_routed() -> None:
    model = make_model()
    ids = torch.randint(0, 256, (1, 10))
    padded = torch.cat([ids, torch.full((1, 5), TOKENIZER.pad_id)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], dim=1).long()
    out = model(padded, attention_mask=mask, return_routing_info=True)
    torch.testing.assert_close(out.logits[:, :10], model(ids).logits, rtol=1e-5, atol=1e-5)
    assert all(r.num_tokens == 10 for r in out.routing)
    assert torch.isfinite(out.logits).all()


def test_supervised_loss_needs_labels_and_a_positive_weight() -> None:
    model = make_model()
    texts = ["If 3+4=7 then Ana wins."]
    ids, _ = TOKENIZER.encode_batch(texts, 64)
    types = tag_batch(texts, 64)
    assert float(model(ids, token_types=types).supervised_loss) == 0.0  # default supervised_weight is 0
    model.set_router_options(supervised_weight=0.5)
    assert float(model(ids).supervised_loss) == 0.0
    assert float(model(ids, token_types=types).supervised_loss.detach()) > 0.0
    assert all(r.config.supervised_weight == 0.5 for r in model.routers)
    assert model.config.moe.router.supervised_weight == 0.5


def test_loss_ignores_padding_targets() -> None:
    model = make_model()
    ids = torch.randint(0, 256, (2, 12))
    targets = torch.randint(0, 256, (2, 12))
    types = torch.full((2, 12), IGNORE_TYPE_ID)
    full = model.loss(LMBatch(ids, targets, torch.ones_like(ids), types))
    targets_padded = targets.clone()
    targets_padded[:, 8:] = TOKENIZER.pad_id
    partial = model.loss(LMBatch(ids, targets_padded, torch.ones_like(ids), types))
    expected = torch.nn.functional.cross_entropy(model(ids).logits[:, :8].reshape(-1, 259), targets[:, :8].reshape(-1))
    torch.testing.assert_close(partial.lm_loss, expected)
    assert float(full.lm_loss.detach()) != float(partial.lm_loss.detach())
    torch.testing.assert_close(full.total, full.lm_loss + full.load_balance_loss + full.z_loss + full.supervised_loss)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 5}, "divisible"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_bias": "no"}, "attention_bias"),
    ],
)
def test_config_rejects_bad_values_with_a_named_error(changes, message) -> None:
    values = {**LMConfig.tiny().__dict__, **changes}
    with pytest.raises(ValueError, match=message):
        LMConfig(**values)


def test_config_rejects_a_residual_moe_layer() -> None:
    with pytest.raises(ValueError, match="residual"):
        LMConfig(moe=PiMoEConfig(hidden_size=32, num_experts=4, residual=True))


def test_config_round_trips_through_a_dict() -> None:
    config = LMConfig.demo()
    assert LMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown LMConfig keys"):
        LMConfig.from_dict({**config.to_dict(), "hidden": 3})


def test_a_model_without_attention_biases_has_none_and_trains() -> None:
    torch.manual_seed(0)
    with_biases = PiMoELM(LMConfig.tiny())
    config = replace(LMConfig.tiny(), attention_bias=False)
    model = PiMoELM(config)
    assert all(block.attn.qkv.bias is None and block.attn.proj.bias is None for block in model.blocks)
    count = sum(p.numel() for p in with_biases.parameters()) - sum(p.numel() for p in model.parameters())
    assert count == config.num_layers * 4 * config.hidden_size  # qkv's 3 D and the projection's D, per layer
    out = model(torch.randint(0, 259, (2, 12)))
    (out.logits.float().logsumexp(-1).mean() + out.router_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_configs_saved_before_attention_bias_existed_load_with_biases() -> None:
    values = LMConfig.tiny().to_dict()
    del values["attention_bias"]
    assert LMConfig.from_dict(values).attention_bias is True
    assert LMConfig.from_dict(replace(LMConfig.tiny(), attention_bias=False).to_dict()).attention_bias is False


def test_forward_rejects_sequences_longer_than_max_seq_len() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.full((1, 3), 999))


def test_greedy_generation_is_deterministic() -> None:
    model = make_model()
    first = model.generate("Ana has 3", max_new_tokens=12)
    second = model.generate("Ana has 3", max_new_tokens=12)
    assert first.ids == second.ids
    assert len(first.new_ids) == 12 or first.stop_reason == "eos"


def test_sampling_with_a_seed_is_reproducible_and_leaves_global_rng_alone() -> None:
    model = make_model()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = model.generate("Ben", max_new_tokens=20, sampling_temperature=1.5, seed=7, stop_at_eos=False)
    assert torch.equal(torch.get_rng_state(), before)
    b = model.generate("Ben", max_new_tokens=20, sampling_temperature=1.5, seed=7, stop_at_eos=False)
    c = model.generate("Ben", max_new_tokens=20, sampling_temperature=1.5, seed=8, stop_at_eos=False)
    assert a.ids == b.ids
    assert a.ids != c.ids  # an untrained model's next-byte distribution is near uniform: two seeds differ


def test_generation_slides_its_window_past_max_seq_len() -> None:
    model = make_model()
    seen: list[int] = []
    original_forward = model.forward

    def recording_forward(input_ids, *args, **kwargs):
        seen.append(input_ids.shape[1])
        return original_forward(input_ids, *args, **kwargs)

    model.forward = recording_forward
    steps = model.config.max_seq_len + 10
    result = model.generate("x", max_new_tokens=steps, stop_at_eos=False)
    assert len(result.new_ids) == steps
    assert max(seen) == model.config.max_seq_len


def test_on_token_hook_sees_each_token_and_can_splice() -> None:
    model = make_model()
    calls: list[tuple[int, int, TokenRouting]] = []

    def hook(position: int, token_id: int, routing: TokenRouting):
        calls.append((position, token_id, routing))
        return [ord("4"), ord("2")] if len(calls) == 2 else None

    result = model.generate("7*6=", max_new_tokens=5, stop_at_eos=False, on_token=hook)
    plain = model.generate("7*6=", max_new_tokens=5, stop_at_eos=False)
    assert len(calls) == 4  # the splice added two tokens for one, so four hook calls reach five new tokens
    assert [p for p, _, _ in calls] == [result.prompt_length, result.prompt_length + 1, result.prompt_length + 3,
                                        result.prompt_length + 4]
    assert result.new_ids[1:3] == [ord("4"), ord("2")]
    assert result.new_ids[0] == plain.new_ids[0]
    assert result.steps[1].spliced == [ord("4"), ord("2")]
    routing = calls[0][2]
    assert len(routing.expert_indices) == model.config.num_layers
    assert len(routing.top1_types) == model.config.num_layers
    assert abs(sum(routing.probs[0]) - 1.0) < 1e-5


def test_generation_rejects_bad_arguments() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", sampling_temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate("a", max_new_tokens=-2)
    with pytest.raises(ValueError, match="empty"):
        model.generate([])


def test_generation_never_emits_pad_or_bos() -> None:
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight[TOKENIZER.pad_id] += 5.0  # make PAD the most likely token everywhere
    result = model.generate("abc", max_new_tokens=6, stop_at_eos=False)
    assert TOKENIZER.pad_id not in result.new_ids and TOKENIZER.bos_id not in result.new_ids


def test_route_text_aligns_tokens_types_and_routing_across_windows() -> None:
    model = make_model()
    text = "If 12+30=42 then Ana wins, café! " * 5  # longer than max_seq_len 64
    routed = model.route_text(text)
    num_bytes = len(text.encode())
    assert len(routed.tokens) == num_bytes == routed.token_ids.numel() == routed.token_types.numel()
    assert all(r.num_tokens == num_bytes for r in routed.routing)
    assert routed.tokens[:3] == ["I", "f", "␣"]
    assert routed.token_types[3] == TokenType.NUMBER
    # Window by window equals routing each window alone (attention does not cross windows).
    window = model.config.max_seq_len
    alone = model(routed.token_ids[:window].view(1, -1), return_routing_info=True).routing[0]
    torch.testing.assert_close(routed.routing[0].probs[:window], alone.probs, rtol=1e-5, atol=1e-6)
    accuracies = routed.routing_accuracy_per_layer()
    assert len(accuracies) == model.config.num_layers and all(0.0 <= a <= 1.0 for a in accuracies)


def test_display_tokens_mark_continuation_bytes() -> None:
    assert display_tokens("é a\n") == ["é", "·", "␣", "a", "↵"]


def test_model_deep_copies_with_identical_outputs() -> None:
    import copy

    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny()).eval()
    clone = copy.deepcopy(model)
    ids = torch.randint(0, 256, (2, 12))
    assert torch.equal(model(ids).logits, clone(ids).logits)
    assert clone.mapping.type_to_expert == model.mapping.type_to_expert


def test_cached_stepper_matches_full_recompute_through_growth_splices_and_window_slides() -> None:
    model = make_model()
    stepper = model.stepper()
    ids = [model.tokenizer.eos_id, *model.tokenizer.encode("if 3+4=7 then")]
    growth = [[32], [121], [101, 115, 46], *[[120]] * (model.config.max_seq_len - 14)]  # one token, a splice, ...
    for new in growth:
        ids = ids + new
        cached, full = stepper(ids), model.step(ids)
        torch.testing.assert_close(cached.logits, full.logits, rtol=1e-4, atol=1e-4)
        assert cached.routing.expert_indices == full.routing.expert_indices
    assert len(ids) > model.config.max_seq_len, "the last steps slide the window, where the cache must step aside"
    rewritten = ids[:10] + [65]  # a changed prefix recomputes instead of reusing the cache
    torch.testing.assert_close(stepper(rewritten).logits, model.step(rewritten).logits, rtol=1e-4, atol=1e-4)


def test_generation_with_and_without_cache_gives_the_same_text() -> None:
    model = make_model(seed=3)
    cached = model.generate("7*8=", max_new_tokens=20, use_cache=True)
    recomputed = model.generate("7*8=", max_new_tokens=20, use_cache=False)
    assert cached.ids == recomputed.ids


def test_forward_with_a_cache_rejects_a_padding_mask_and_overlong_input() -> None:
    model = make_model()
    out = model(torch.randint(0, 256, (1, 8)), use_cache=True)
    with pytest.raises(ValueError, match="no attention_mask"):
        model(torch.randint(0, 256, (1, 2)), attention_mask=torch.ones(1, 2), past_key_values=out.past_key_values)
    with pytest.raises(ValueError, match="after 8 cached tokens exceeds max_seq_len"):
        model(torch.randint(0, 256, (1, model.config.max_seq_len)), past_key_values=out.past_key_values)


def test_resized_replaces_the_widths_where_they_live_and_validates_the_result() -> None:
    preset = LMConfig.gpu()
    wide = preset.resized(hidden_size=1024, intermediate_size=512, num_layers=4, num_heads=16)
    assert (wide.hidden_size, wide.moe.intermediate_size, wide.num_layers, wide.num_heads) == (1024, 512, 4, 16)
    assert wide.moe.expert_types == preset.moe.expert_types and wide.moe.router == preset.moe.router
    assert preset.resized() == preset and preset.hidden_size == 512  # the original is untouched
    model = PiMoELM(preset.resized(hidden_size=64, intermediate_size=32, num_layers=1, num_heads=4))
    assert model.tok_emb.weight.shape[1] == 64 and len(model.blocks) == 1
    assert {e.up.weight.shape[1] for e in model.blocks[0].moe.experts} == {64}
    with pytest.raises(ValueError, match="divisible"):
        preset.resized(hidden_size=516)
    with pytest.raises(ValueError, match="intermediate_size"):
        preset.resized(intermediate_size=0)
