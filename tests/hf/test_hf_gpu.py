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
