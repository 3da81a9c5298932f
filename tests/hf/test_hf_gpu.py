"""On a GPU: each family's bf16 PiMoE blocks (the `cuda_fast` path) against transformers' own bf16 model, both measured
against the float32 model as the truth. Skipped without CUDA."""

import pytest
import torch
from hf_tiny import FAMILIES, save_tiny

from pimoe.hf import load_hf_moe
from pimoe.layer.strategies import resolve_strategy

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_fast_path_is_as_close_to_float32_as_transformers_bf16(family, tmp_path):
    from transformers import AutoModelForCausalLM

    save_tiny(family, tmp_path)
    truth_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).cuda().eval()
    their_bf16 = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda().eval()
    ours = load_hf_moe(tmp_path, device="cuda")
    assert ours.dtype == torch.bfloat16
    ids = torch.randint(3, 101, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    assert resolve_strategy("auto", "cuda").name == "cuda_fast"
    with torch.no_grad():
        truth = truth_model(input_ids=ids).logits.float()
        theirs = their_bf16(input_ids=ids).logits.float()
    got = ours.trace(ids).logits
    our_error = (got - truth).abs().max().item()
    their_error = (theirs - truth).abs().max().item()
    assert our_error <= 2 * their_error + 1e-2, f"ours {our_error:.4f} vs transformers bf16 {their_error:.4f}"
    # the experts are views of the fast path's stacks: one copy on the GPU
    from pimoe.cuda.packing import pack_experts

    block = ours.blocks[0]
    if block.dispatch != "auto":
        return  # GPT-OSS's experts take the sorted dispatch
    assert block.experts[0].up.weight.data_ptr() == pack_experts(block.experts).w1[0].data_ptr()


@pytest.mark.parametrize("logits_in_float32", [False, True])
def test_fused_checkpoint_router_on_the_gpu_agrees_with_the_torch_router(logits_in_float32):
    from pimoe.cuda.fused_router import fused_checkpoint_route, fused_checkpoint_route_applies
    from pimoe.hf.router import CheckpointRouter
    from pimoe.layer.scoring import ScoringRule

    torch.manual_seed(0)
    rule = ScoringRule(top_k=8, renormalize=False, logits_in_float32=logits_in_float32)
    router = CheckpointRouter(torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16) * 0.02, rule)
    x = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        assert fused_checkpoint_route_applies(router, x, None, None)
        got = fused_checkpoint_route(router, x, 1.0, 8, None)
        pinned = torch.zeros(64, dtype=torch.bool, device="cuda")  # an (empty) edit sends the call down the torch path
        ref = router(x, pinned=pinned)
    assert not fused_checkpoint_route_applies(router, x, pinned, None)
    # bf16-rounded logits tie often; a tie may be broken either way, so check that the fused choice is *a* top-k of
    # the reference's probabilities, carrying those probabilities as weights
    torch.testing.assert_close(got.probs, ref.probs, rtol=1e-3, atol=1e-5)
    kth_best = ref.probs.topk(8, dim=-1).values[:, -1:]
    chosen = ref.probs.gather(1, got.expert_indices)
    assert (chosen >= kth_best * (1 - 1e-3) - 1e-6).all()
    assert got.expert_indices.sort(dim=-1).values.unique_consecutive(dim=-1).shape[-1] == 8  # 8 distinct experts
    torch.testing.assert_close(got.expert_weights, chosen, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got.load_balance_loss, ref.load_balance_loss, rtol=1e-3, atol=1e-5)



@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe", "deepseek_v3"])
def test_registered_experts_implementation_in_bf16_is_as_close_to_float32_as_grouped_mm(family, tmp_path):
    """`experts_implementation="pimoe"` on a transformers model on the GPU: the routed experts on the fast path's
    kernels (no copy of their weights), as close to the float32 model as transformers' grouped_mm in bf16."""
    from transformers import AutoModelForCausalLM

    from pimoe.hf.experts_interface import register_experts_implementation

    name = register_experts_implementation()
    save_tiny(family, tmp_path)
    truth_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).cuda().eval()
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(3, 101, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        truth = truth_model(input_ids=ids).logits.float()
        model.set_experts_implementation("grouped_mm")
        theirs = model(input_ids=ids).logits.float()
        model.set_experts_implementation(name)
        got = model(input_ids=ids).logits.float()
    our_error, their_error = (got - truth).abs().max().item(), (theirs - truth).abs().max().item()
    assert our_error <= 2 * their_error + 1e-2, f"ours {our_error:.4f} vs grouped_mm bf16 {their_error:.4f}"
    experts = [m for m in model.modules() if hasattr(m, "_pimoe_views")]
    assert experts
    from pimoe.cuda.packing import pack_experts

    for module in experts:
        assert pack_experts(module._pimoe_views[1]).w1.data_ptr() == module.gate_up_proj.data_ptr()


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe"])
def test_registered_experts_implementation_trains_in_bf16_as_close_to_float32_as_grouped_mm(family, tmp_path):
    """A training step through `experts_implementation="pimoe"` on the GPU (the differentiable path with the
    module's stacks as its weights): the experts' gradients as close to the float32 model's as grouped_mm's in bf16."""
    from transformers import AutoModelForCausalLM

    from pimoe.hf.experts_interface import register_experts_implementation

    name = register_experts_implementation()
    save_tiny(family, tmp_path)
    ids = torch.randint(3, 101, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()

    def expert_grads(dtype, implementation):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype).cuda().train()
        model.set_experts_implementation(implementation)
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if "gate_up_proj" in n or "down_proj" in n}

    truth, theirs, ours = (expert_grads(torch.float32, "eager"), expert_grads(torch.bfloat16, "grouped_mm"),
                           expert_grads(torch.bfloat16, name))
    for key, want in truth.items():
        scale = want.norm().clamp_min(1e-12)
        our_error, their_error = (ours[key] - want).norm() / scale, (theirs[key] - want).norm() / scale
        assert our_error <= 2 * their_error + 1e-2, (key, float(our_error), float(their_error))
