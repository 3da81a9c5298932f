"""PiMoESystem: equivalence with the float64 reference, gradients, capacity, padding, determinism, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pimoe
from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig
from pimoe.layer.reference import reference_forward
from pimoe.layer.strategies import STRATEGIES


def make_system(seed: int = 0, **router_kwargs) -> PiMoESystem:
    torch.manual_seed(seed)
    config = PiMoEConfig(hidden_size=32, num_experts=6, router=RouterConfig(**router_kwargs),
                         expert=ExpertConfig(intermediate_size=48))
    return PiMoESystem(config).eval()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.detach().double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("dispatch", sorted(STRATEGIES))
@pytest.mark.parametrize("top_k", [1, 2, 6])
def test_output_matches_float64_reference(dispatch: str, top_k: int) -> None:
    system = make_system(top_k=top_k).double()
    system.dispatch = dispatch
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    assert relative_error(system(x), reference_forward(system, x)) < 1e-6


def test_float32_output_matches_float64_reference_within_float32_rounding() -> None:
    system = make_system()
    x = torch.randn(4, 9, 32)
    assert relative_error(system(x), reference_forward(system, x)) < 1e-5


def test_output_is_reproducible_from_experts_and_routing_info() -> None:
    system = make_system(top_k=2, capacity_factor=0.6)
    x = torch.randn(2, 13, 32)
    mask = torch.ones(2, 13)
    mask[0, 9:] = 0
    out, info = system(x, attention_mask=mask, return_routing_info=True)
    flat = x.reshape(-1, 32)
    rebuilt = flat.clone()
    for t, position in enumerate(info.token_positions.tolist()):
        for slot in range(info.top_k):
            if not info.dropped[t, slot]:
                expert = system.experts[int(info.expert_indices[t, slot])]
                rebuilt[position] += info.expert_weights[t, slot] * expert(flat[position : position + 1])[0]
    torch.testing.assert_close(out.reshape(-1, 32), rebuilt, rtol=1e-5, atol=1e-5)


def test_unmasked_routing_info_places_token_t_at_position_t_of_the_batch_grid() -> None:
    system = make_system(top_k=2)
    x = torch.randn(3, 7, 32)
    _, info = system(x, return_routing_info=True)
    assert info.batch_shape == (3, 7)
    assert torch.equal(info.token_positions, torch.arange(21))
    torch.testing.assert_close(info.to_grid(info.entropy), info.entropy.view(3, 7))


def test_gradient_reaches_router_and_every_selected_expert() -> None:
    system = make_system(top_k=2).train()
    x = torch.randn(4, 16, 32)
    out, info = system(x, return_routing_info=True)
    (out.pow(2).mean()).backward()  # task loss only: the router must learn through the combine weights
    assert system.router.gate.weight.grad is not None and system.router.gate.weight.grad.abs().sum() > 0
    for expert_id, count in enumerate(info.tokens_per_expert.tolist()):
        grad = system.experts[expert_id].up.weight.grad
        if count > 0:
            assert grad is not None and grad.abs().sum() > 0, f"expert {expert_id} got no gradient"
        else:
            assert grad is None or grad.abs().sum() == 0


def test_top1_router_gets_task_gradient_without_renormalisation() -> None:
    system = make_system(top_k=1).train()
    out = system(torch.randn(2, 8, 32))
    out.pow(2).mean().backward()
    assert system.router.gate.weight.grad.abs().sum() > 0


def test_capacity_drops_exactly_the_over_capacity_tokens_and_they_pass_through_unchanged() -> None:
    system = make_system(top_k=1, capacity_factor=0.5)
    x = torch.randn(1, 40, 32)
    out, info = system(x, return_routing_info=True)
    capacity = info.capacity
    assert capacity == 4  # ceil(0.5 * 40 * 1 / 6)
    for expert_id in range(6):
        chosen = (info.expert_indices[:, 0] == expert_id).nonzero().flatten().tolist()
        kept = [t for t in chosen if not info.dropped[t, 0]]
        assert kept == chosen[:capacity], "the first tokens in order keep their expert"
    dropped = info.dropped_tokens
    assert dropped.sum() > 0
    torch.testing.assert_close(out[0][dropped], x[0][dropped], rtol=0, atol=0)
    assert not torch.equal(out[0][~dropped], x[0][~dropped])
    assert int(info.tokens_per_expert.max()) <= capacity


def test_padding_is_neither_routed_nor_counted_and_passes_through() -> None:
    system = make_system(top_k=2)
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 4:] = 0
    out, info = system(x, attention_mask=mask, return_routing_info=True)
    assert info.num_tokens == 14
    assert int(info.tokens_per_expert.sum()) == 14 * 2
    torch.testing.assert_close(out[1, 4:], x[1, 4:], rtol=0, atol=0)
    # changing padded values changes nothing else
    x2 = x.clone()
    x2[1, 4:] = 1e3
    torch.testing.assert_close(system(x2, attention_mask=mask)[:, :4], out[:, :4])


def test_eval_mode_is_bit_for_bit_deterministic() -> None:
    system = make_system(top_k=2)
    x = torch.randn(3, 17, 32)
    assert torch.equal(system(x), system(x))


def test_per_call_temperature_does_not_mutate_the_module() -> None:
    system = make_system(temperature=1.0)
    x = torch.randn(1, 8, 32)
    _, cold = system(x, temperature=0.05, return_routing_info=True)
    assert system.router.temperature == 1.0
    _, default = system(x, return_routing_info=True)
    assert cold.confidence.mean() > default.confidence.mean()


def test_seed_style_attribute_tuning_changes_routing() -> None:
    system = make_system()
    system.router.temperature = 0.7
    system.router.load_balance_weight = 0.2
    _, info = system(torch.randn(1, 8, 32), return_routing_info=True)
    assert info.temperature == 0.7
    assert info.load_balance_loss.item() > 0


def test_seed_dict_keys_answer_from_routing_info() -> None:
    system = make_system()
    _, info = system(torch.randn(2, 5, 32), return_routing_info=True)
    assert len(info["routing_decisions"]) == 10
    assert info["load_balance_loss"] is info.load_balance_loss
    assert info["expert_probs"].shape == (10, 6)
    with pytest.raises(KeyError, match="not a routing-info field"):
        info["nope"]


def test_create_pimoe_system_accepts_seed_arguments() -> None:
    system = pimoe.create_pimoe_system(
        hidden_size=32,
        num_experts=8,
        expert_types=[pimoe.ExpertType.REASONING, pimoe.ExpertType.COMPUTATION,
                      pimoe.ExpertType.MATHEMATICAL, pimoe.ExpertType.LOGICAL],
        top_k=3,
        router_config={"temperature": 0.8, "load_balance_weight": 0.15, "use_gating": True, "use_auxiliary_loss": True},
        expert_config={"intermediate_size": 64, "dropout": 0.1, "activation": "gelu"},
    )
    assert system.expert_types == ["reasoning", "computation", "mathematical", "logical"] * 2
    assert system.router.top_k == 3 and system.router.temperature == 0.8
    out, info = system(torch.randn(2, 6, 32), return_routing_info=True)
    assert out.shape == (2, 6, 32) and info.expert_indices.shape == (12, 3)


def test_ungated_combine_averages_the_selected_experts() -> None:
    system = make_system(top_k=2, use_gating=False)
    _, info = system(torch.randn(1, 5, 32), return_routing_info=True)
    torch.testing.assert_close(info.expert_weights, torch.full((5, 2), 0.5))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s(torch.randn(4, 32)), "3 dimensions"),
        (lambda s: s(torch.randn(1, 4, 16)), "hidden size 16 does not match"),
        (lambda s: s(torch.full((1, 2, 32), float("nan"))), "NaN or Inf"),
        (lambda s: s(torch.tensor([[[float("inf")] * 32]])), "NaN or Inf"),
        (lambda s: s(torch.randn(0, 4, 32)), "empty"),
        (lambda s: s(torch.randn(1, 4, 32), top_k=7), "top_k must be between 1 and num_experts=6"),
        (lambda s: s(torch.randn(1, 4, 32), top_k=0), "top_k must be between"),
        (lambda s: s(torch.randn(1, 4, 32), temperature=0.0), "temperature must be a finite number > 0"),
        (lambda s: s(torch.randn(1, 4, 32), temperature=-1.0), "temperature"),
        (lambda s: s(torch.randn(1, 4, 32), attention_mask=torch.ones(1, 5)), "attention_mask shape"),
        (lambda s: s(torch.randn(1, 4, 32), attention_mask=torch.full((1, 4), 2)), "only 0 and 1"),
        (lambda s: s(torch.randint(0, 3, (1, 4, 32))), "floating-point"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(make_system())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: pimoe.create_pimoe_system(hidden_size=8, num_experts=4, top_k=5), "top_k must be between 1"),
        (lambda: pimoe.create_pimoe_system(hidden_size=8, num_experts=4, expert_types=["wizard"]),
         "unknown expert type 'wizard'"),
        (lambda: pimoe.create_pimoe_system(hidden_size=8, router_config={"temperature": 0}), "temperature must be"),
        (lambda: pimoe.create_pimoe_system(hidden_size=8, router_config={"temprature": 1}), "unknown router_config"),
        (lambda: pimoe.create_pimoe_system(hidden_size=0), "hidden_size must be a positive integer"),
    ],
)
def test_bad_configuration_raises_a_clear_value_error(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_setting_a_bad_temperature_on_the_router_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        make_system().router.temperature = 0


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 12),
    num_experts=st.integers(1, 6),
    data=st.data(),
)
def test_each_token_reaches_its_experts_exactly_once(batch: int, seq: int, num_experts: int, data) -> None:
    top_k = data.draw(st.integers(1, num_experts))
    capacity_factor = data.draw(st.sampled_from([None, 0.5, 1.0, 2.0]))
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    config = PiMoEConfig(hidden_size=8, num_experts=num_experts, expert_types=("language", "computation"),
                         router=RouterConfig(top_k=top_k, capacity_factor=capacity_factor),
                         expert=ExpertConfig(intermediate_size=8))
    system = PiMoESystem(config).double().eval()
    x = torch.randn(batch, seq, 8, dtype=torch.float64)
    out, info = system(x, return_routing_info=True)
    tokens = batch * seq
    assert info.expert_indices.shape == (tokens, top_k)
    for row in info.expert_indices.tolist():
        assert len(set(row)) == top_k, "an expert chosen twice for one token"
    assert int(info.selected_per_expert.sum()) == tokens * top_k
    assert int(info.tokens_per_expert.sum()) == int((~info.dropped).sum())
    torch.testing.assert_close(info.probs.sum(-1), torch.ones(tokens), rtol=1e-5, atol=1e-5)
    if top_k > 1:
        torch.testing.assert_close(info.expert_weights.sum(-1), torch.ones(tokens), rtol=1e-5, atol=1e-5)
    assert relative_error(out, reference_forward(system, x)) < 1e-6


def test_every_strategy_runs_in_a_fresh_interpreter():
    import subprocess
    import sys

    code = ("import torch; from pimoe import PiMoEConfig, PiMoESystem; from pimoe.layer.strategies import STRATEGIES\n"
            "x = torch.randn(1, 5, 32)\n"
            "for name in STRATEGIES:\n"
            "    s = PiMoESystem(PiMoEConfig(hidden_size=32, num_experts=4)).eval(); s.dispatch = name; s(x)\n"
            "print('ok', len(STRATEGIES))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_unknown_strategy_is_refused_with_the_known_names():
    system = make_system()
    with pytest.raises(ValueError, match="unknown dispatch strategy 'fastest'.*sorted.*dense_masked"):
        system.dispatch = "fastest"
    assert system.dispatch == "auto", "a refused name leaves the strategy as it was"


def test_strategy_is_resolved_when_set_not_per_call(monkeypatch):
    system = make_system()
    system.dispatch = "loop"
    calls = []
    import pimoe.layer.dispatch_choice as choice_module

    monkeypatch.setattr(choice_module, "resolve_strategy", lambda *a: calls.append(a))
    system(torch.randn(2, 3, 32))
    assert calls == [] and system.strategy.name == "loop"
