"""PiMoE's dispatch registered as a transformers experts implementation (`pimoe.hf.experts_interface`): every
family whose experts go through transformers' ExpertsInterface gives the eager implementation's logits with PiMoE
serving its experts; what PiMoE does not take (gradients, GPT-OSS's biased clamped experts) runs transformers'
grouped_mm, with the reason logged."""

from __future__ import annotations

import logging

import pytest
import torch
from hf_tiny import FAMILIES, save_tiny, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

import pimoe.cuda.fast_path as fast_path
from pimoe.hf.experts_interface import EXPERTS_IMPLEMENTATION, register_experts_implementation, routing_from_choices


@pytest.fixture
def dispatch_calls(monkeypatch) -> list:
    from pimoe.hf import experts_interface

    register_experts_implementation()
    monkeypatch.setattr(experts_interface, "_logged", set())  # each test sees its own once-per-reason warnings
    calls: list = []
    real = fast_path.fast_dispatch
    monkeypatch.setattr(fast_path, "fast_dispatch", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def _interface_experts(model) -> list:
    """The experts modules transformers dispatches through its ExpertsInterface (`@use_experts_implementation`)."""
    return [m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "is_concatenated")]


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 101, (2, 12), generator=torch.Generator().manual_seed(seed))


# what PiMoE's dispatch does not compute, with the reason it logs: GPT-OSS's biased clamped experts, Beam's,
# HY-V4's, Bailing-Hybrid's and DeepSeek-V4's own gate functions (float32 products; clamps), Nemotron-H's and Ergo's
# ungated squared-ReLU experts
FALLBACKS = {"gpt_oss": "the experts have biases", "beam": "BeamExperts has its own gate function",
             "hy_v4": "HYV4Experts has its own gate function", "nemotron_h": "the experts are not gated",
             "bailing_hybrid": "BailingHybridExperts has its own gate function",
             "deepseek_v4": "DeepseekV4Experts has its own gate function", "ergo": "the experts are not gated"}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_the_eager_experts_with_pimoe_serving_them(family, dispatch_calls, caplog) -> None:
    model = tiny_model(family)
    experts = _interface_experts(model)
    if not experts:
        pytest.skip(f"{family}'s experts do not go through transformers' ExpertsInterface")
    ids = _ids()
    with torch.no_grad():
        model.set_experts_implementation("eager")
        expected = model(input_ids=ids).logits
        model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
        with caplog.at_level(logging.WARNING, logger="pimoe.hf.experts_interface"):
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    if family in FALLBACKS:  # transformers' grouped_mm, and said so
        assert not dispatch_calls and FALLBACKS[family] in caplog.text
    else:
        assert dispatch_calls and all(shape[-1] == model.config.get_text_config().hidden_size
                                      for shape in dispatch_calls)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe", "deepseek_v3", "glm4_moe", "granitemoe"])
def test_training_gradients_equal_the_eager_experts(family, monkeypatch) -> None:
    """A call that needs gradients takes PiMoE's differentiable path with the module's own stacks as its weights:
    every parameter's gradient (experts, routers, embeddings) as the eager implementation gives it."""
    import copy

    import pimoe.cuda.train_path as train_path

    register_experts_implementation()
    calls = []
    real = train_path.stacked_train_dispatch
    monkeypatch.setattr(train_path, "stacked_train_dispatch", lambda *a, **k: calls.append(1) or real(*a, **k))
    reference = tiny_model(family).train()
    ours = copy.deepcopy(reference)
    reference.set_experts_implementation("eager")
    ours.set_experts_implementation(EXPERTS_IMPLEMENTATION)
    ids = _ids(5)
    grads = []
    for model in (reference, ours):
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert calls and grads[0].keys() == grads[1].keys()
    assert any("gate_up_proj" in n for n in grads[1])
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item() + 1e-9,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_what_pimoe_does_not_take_runs_transformers_grouped_mm_and_says_why(dispatch_calls, caplog) -> None:
    model = tiny_model("gpt_oss").train()
    model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
    with caplog.at_level(logging.WARNING, logger="pimoe.hf.experts_interface"):
        loss = model(input_ids=_ids()).logits.square().mean()
    loss.backward()
    assert not dispatch_calls and "the experts have biases" in caplog.text
    assert all(e.gate_up_proj.grad is not None for e in _interface_experts(model))


def test_from_pretrained_takes_the_name_and_weights_changed_in_place_are_followed(tmp_path, dispatch_calls) -> None:
    from transformers import AutoModelForCausalLM

    save_tiny("mixtral", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation=EXPERTS_IMPLEMENTATION,
                                                 dtype=torch.float32).eval()
    assert model.config._experts_implementation == EXPERTS_IMPLEMENTATION
    ids = _ids(2)
    with torch.no_grad():
        first = model(input_ids=ids).logits
        for experts in _interface_experts(model):
            experts.gate_up_proj.mul_(1.5)  # an in-place edit: the views share the storage
        edited = model(input_ids=ids).logits
        model.set_experts_implementation("eager")
        expected = model(input_ids=ids).logits
        model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
        model.double()  # new tensors bound to the stacks: the views are built again
        doubled = model(input_ids=ids).logits
    assert dispatch_calls and not torch.allclose(first, edited)
    for experts in _interface_experts(model):  # the module's stacks are the pack the fast path reads: no second copy
        views = experts._pimoe_views[1]
        assert views[0].up.weight.data_ptr() == experts.gate_up_proj.data_ptr()
        assert views[-1].down.weight.data_ptr() == experts.down_proj[-1].data_ptr()
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert doubled.dtype == torch.float64
    torch.testing.assert_close(doubled.float(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_routing_from_another_routers_choices_counts_each_expert() -> None:
    indices = torch.tensor([[0, 2], [2, 1], [2, 0]])
    routing = routing_from_choices(indices, torch.full((3, 2), 0.5), num_experts=4)
    assert routing.tokens_per_expert.tolist() == [2, 1, 3, 0] and not routing.dropped.any()
    assert routing.expert_indices.dtype == torch.int64 and routing.num_tokens == 3


def test_a_model_served_under_inference_mode_still_trains_afterwards(dispatch_calls) -> None:
    """The pack the module's stacks become is made outside inference mode: an inference tensor as a parameter would
    make the model's next training step fail ("Inference tensors cannot be saved for backward")."""
    model = tiny_model("olmoe")
    ids = _ids(3)
    model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
    with torch.inference_mode():
        served = model(input_ids=ids).logits
    assert dispatch_calls and not any(p.is_inference() for p in model.parameters())
    model.set_experts_implementation("grouped_mm")
    loss = model(input_ids=ids).logits.square().mean()
    loss.backward()
    assert all(e.gate_up_proj.grad is not None and e.gate_up_proj.grad.abs().sum() > 0
               for e in _interface_experts(model))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, served)


def test_a_model_built_under_inference_mode_keeps_working_on_every_implementation(dispatch_calls) -> None:
    """Parameters made under inference_mode are inference tensors; the pack that replaces them must be one too
    (found by bench/hf_moe_block.py, which builds its block inside inference_mode)."""
    with torch.inference_mode():
        model = tiny_model("qwen2_moe")
        ids = _ids(4)
        model.set_experts_implementation("eager")
        expected = model(input_ids=ids).logits
        model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
        got = model(input_ids=ids).logits
        model.set_experts_implementation("eager")
        again = model(input_ids=ids).logits
    assert dispatch_calls
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(again, expected)


def _toy_experts(transposed: bool, act: str = "silu", experts: int = 6, hidden: int = 24, width: int = 16,
                 seed: int = 3):
    """A transformers-style experts module of an architecture PiMoE's loader does not know, with the interface's
    default gate: transposed stacks ((E, D, 2F), (E, F, D)) as some models keep them."""
    from types import SimpleNamespace

    from torch import nn
    from transformers.activations import ACT2FN
    from transformers.integrations.moe import use_experts_implementation

    @use_experts_implementation(is_transposed=transposed)
    class ToyExperts(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.num_experts = experts
            up_shape, down_shape = ((experts, hidden, 2 * width), (experts, width, hidden)) if transposed else \
                ((experts, 2 * width, hidden), (experts, hidden, width))
            self.gate_up_proj = nn.Parameter(torch.randn(up_shape) * 0.3)
            self.down_proj = nn.Parameter(torch.randn(down_shape) * 0.3)
            self.act_fn = ACT2FN[config.hidden_act]

        def forward(self, hidden_states, top_k_index, top_k_weights):  # the eager reference
            gate_up = self.gate_up_proj.transpose(1, 2) if transposed else self.gate_up_proj
            down = self.down_proj.transpose(1, 2) if transposed else self.down_proj
            out = torch.zeros_like(hidden_states)
            for slot in range(top_k_index.shape[1]):
                w_up, w_down = gate_up[top_k_index[:, slot]], down[top_k_index[:, slot]]  # (T, 2F, D), (T, D, F)
                gate, up = torch.einsum("td,tfd->tf", hidden_states, w_up).chunk(2, dim=-1)
                h = torch.einsum("tf,tdf->td", self.act_fn(gate) * up, w_down)
                out = out + h * top_k_weights[:, slot, None]
            return out

    config = SimpleNamespace(model_type="toy_moe", hidden_act=act, _experts_implementation="eager")
    torch.manual_seed(seed)
    return ToyExperts(config), config


def _eager_and_pimoe(module, config, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, ...]]:
    """Per implementation (eager, then PiMoE's): the output, the gradients of the tokens, the routing weights and both
    stacks, and the output of a call without gradients."""
    x = torch.randn(30, 24, dtype=dtype)
    index = torch.randint(0, 6, (30, 2))
    weights = torch.rand(30, 2, dtype=dtype)
    results = []
    for implementation in ("eager", EXPERTS_IMPLEMENTATION):
        config._experts_implementation = implementation
        module.zero_grad()
        x_req, w_req = x.clone().requires_grad_(), weights.clone().requires_grad_()
        out = module(x_req, index, w_req)
        (out * torch.linspace(-1, 1, 24, dtype=dtype)).sum().backward()
        with torch.no_grad():
            served = module(x, index, weights)
        results.append((out.detach(), x_req.grad, w_req.grad, module.gate_up_proj.grad.clone(),
                        module.down_proj.grad.clone(), served))
    return results


@pytest.mark.parametrize("transposed", [False, True], ids=["concatenated", "transposed"])
@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh", "relu"])
def test_an_architecture_the_loader_does_not_know_runs_on_pimoe_forward_and_backward(transposed, act,
                                                                                      dispatch_calls) -> None:
    module, config = _toy_experts(transposed, act)
    expected, got = _eager_and_pimoe(module, config)
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert dispatch_calls  # the no-grad call took PiMoE's dispatch


@pytest.mark.parametrize("transposed", [False, True], ids=["concatenated", "transposed"])
def test_a_float64_module_trains_to_float64_accuracy(transposed, dispatch_calls) -> None:
    """Combine weights, bias sums and norms stay in the module's dtype when it is wider than float32: a float64 probe
    of the training path once agreed with eager only to 5e-7."""
    module, config = _toy_experts(transposed, "silu")
    expected, got = _eager_and_pimoe(module.double(), config, torch.float64)
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_an_activation_pimoe_lacks_runs_grouped_mm_and_names_it(dispatch_calls, caplog) -> None:
    module, config = _toy_experts(False, "gelu_fast")
    config._experts_implementation = EXPERTS_IMPLEMENTATION
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="pimoe.hf.experts_interface"):
        module(torch.randn(5, 24), torch.zeros(5, 2, dtype=torch.long), torch.ones(5, 2))
    assert not dispatch_calls and "FastGELUActivation has no PiMoE expert activation" in caplog.text


def test_torch_compile_fullgraph_traces_the_training_step_after_one_call(dispatch_calls) -> None:
    """Dynamo traces the registered implementation (the differentiable path's custom ops) with fullgraph=True once
    a first call has built the expert views (built outside any graph); the gradients equal eager's."""
    import copy

    model = tiny_model("qwen3_moe").train()
    reference = copy.deepcopy(model)
    reference.set_experts_implementation("eager")
    model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
    ids = _ids(6)
    reference(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        model(input_ids=ids)  # builds the views
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled(input_ids=ids, labels=ids).loss.backward()
    expected = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(param.grad, expected[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # an inference call traced too
        torch.testing.assert_close(compiled(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("needs_grad", [False, True])
@pytest.mark.parametrize(("experts", "tokens", "top_k"), [(1, 5, 1), (4, 0, 2), (6, 1, 1), (3, 7, 3)])
def test_edge_shapes_match_the_eager_experts(experts, tokens, top_k, needs_grad, dispatch_calls) -> None:
    """One expert, an empty batch, one token, every expert chosen by every token."""
    module, config = _toy_experts(False, "silu", experts=experts)
    x = torch.randn(tokens, 24, requires_grad=needs_grad)
    index = torch.stack([torch.randperm(experts)[:top_k] for _ in range(tokens)]) if tokens else \
        torch.zeros(0, top_k, dtype=torch.long)
    weights = torch.rand(tokens, top_k)
    outputs = []
    for implementation in ("eager", EXPERTS_IMPLEMENTATION):
        config._experts_implementation = implementation
        with torch.set_grad_enabled(needs_grad):
            out = module(x, index, weights)
        assert out.shape == (tokens, 24)
        if needs_grad:
            out.sum().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_weights_on_the_meta_device_run_transformers_grouped_mm_and_say_why(dispatch_calls) -> None:
    """Offloading (accelerate) leaves the parameters on the meta device until its hooks move them: PiMoE's views
    and pack cannot be built from those, so the call is left to transformers."""
    from pimoe.hf.experts_interface import unsupported_reason

    module, _ = _toy_experts(False)
    assert unsupported_reason(module) is None
    module.to("meta")
    assert "meta device" in unsupported_reason(module)


@settings(max_examples=25, deadline=None)
@given(experts=st.integers(1, 9), hidden=st.integers(1, 40), width=st.integers(1, 40), tokens=st.integers(1, 40),
       top_k_share=st.floats(0, 1), transposed=st.booleans(), act=st.sampled_from(["silu", "gelu", "relu", "tanh"]),
       needs_grad=st.booleans(), seed=st.integers(0, 1000))
def test_drawn_experts_modules_match_the_eager_experts(experts, hidden, width, tokens, top_k_share, transposed, act,
                                                      needs_grad, seed) -> None:
    """Drawn sizes (widths no multiple of anything, one expert, every expert per token), layouts, activations and
    grad modes: PiMoE's output, and with gradients the tokens', weights' and both stacks' gradients, equal eager's."""
    register_experts_implementation()
    module, config = _toy_experts(transposed, act, experts=experts, hidden=hidden, width=width, seed=seed)
    from pimoe.hf.experts_interface import unsupported_reason

    assert unsupported_reason(module) is None  # PiMoE serves every drawn module, no fallback
    top_k = 1 + round(top_k_share * (experts - 1))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=generator)
    index = torch.stack([torch.randperm(experts, generator=generator)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=generator)
    results = []
    for implementation in ("eager", EXPERTS_IMPLEMENTATION):
        config._experts_implementation = implementation
        module.zero_grad()
        x_in, w_in = x.clone().requires_grad_(needs_grad), weights.clone().requires_grad_(needs_grad)
        with torch.set_grad_enabled(needs_grad):
            out = module(x_in, index, w_in)
        row = [out.detach()]
        if needs_grad:
            (out * torch.linspace(-1, 1, hidden)).sum().backward()
            row += [x_in.grad, w_in.grad, module.gate_up_proj.grad.clone(), module.down_proj.grad.clone()]
        results.append(row)
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
