"""Model FLOPs and model-FLOPs utilisation (MFU) for the PiMoE layer and PiMoE-LM.

MFU = achieved model FLOP/s / the card's peak dense bf16 FLOP/s, where the model FLOPs of a training step count only
the arithmetic the model needs, never recomputation or padding (Chowdhery et al. 2022, PaLM, appendix B):

    per token = 6 * N_active + 12 * L * D * S

N_active: the matrix-multiply parameters one token uses (attention projections, the router, the K experts it is
routed to, the LM head; embeddings are lookups and count nothing). 6 = 2 FLOPs per multiply-add x (forward + the two
backward GEMMs). 12 * L * D * S: the attention scores and weighted values over a sequence of S, forward and backward,
for L layers of width D. For a typed layer the expert term uses the mean expert size (routing decides which experts a
token uses; the mean is exact under balanced routing).
"""

from __future__ import annotations

import torch

__all__ = ["PEAK_BF16_TFLOPS", "PEAK_FP32_TFLOPS", "PEAK_TF32_TFLOPS", "ffn_flops", "lm_flops_per_token",
           "moe_layer_flops", "mfu", "peak_bf16_flops", "peak_flops"]

# Dense peaks without sparsity, from the vendors' data sheets: bf16 (and fp16, the same rate on these cards) and TF32
# on the tensor cores, plain fp32 on the CUDA cores (what float32 matmuls get at torch's default "highest" precision).
PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4, "A100": 312.0,
                    "L4": 121.0, "L40S": 362.0}
PEAK_TF32_TFLOPS = {"H100 SXM": 494.7, "H100 PCIe": 378.0, "H100 NVL": 417.5, "H200": 494.7, "A100": 156.0,
                    "L4": 60.0, "L40S": 183.0}
PEAK_FP32_TFLOPS = {"H100 SXM": 67.0, "H100 PCIe": 51.2, "H100 NVL": 60.0, "H200": 67.0, "A100": 19.5,
                    "L4": 30.3, "L40S": 91.6}


def _card_key(device_name: str) -> str | None:
    name = device_name.upper()
    if "H100" in name:
        return "H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"
    # longest first: "L4" is also a substring of "NVIDIA L40S"
    return next((k for k in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True) if k.upper() in name), None)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a card from its `torch.cuda.get_device_name()`, or None when unknown."""
    key = _card_key(device_name)
    return None if key is None else PEAK_BF16_TFLOPS[key] * 1e12


def peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """Peak dense FLOP/s of a card for matmuls in `dtype`, or None when the card or the dtype's peak is unknown.

    float32 takes the TF32 tensor-core peak when torch lets float32 matmuls use TF32 (`torch.set_float32_matmul_precision`
    "high" or "medium"), the CUDA-core fp32 peak otherwise ("highest", torch's default)."""
    key = _card_key(device_name)
    if key is None:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        return PEAK_BF16_TFLOPS[key] * 1e12
    if dtype == torch.float32:
        table = PEAK_FP32_TFLOPS if torch.get_float32_matmul_precision() == "highest" else PEAK_TF32_TFLOPS
        return table[key] * 1e12
    return None


def _expert_params(expert) -> int:
    return expert.up.weight.numel() + expert.down.weight.numel()


def moe_layer_flops(system, tokens: int, training: bool = True) -> float:
    """Model FLOPs of one PiMoE layer call on `tokens` tokens (router + top-k experts at their mean size); x3 for a
    training step (forward and backward)."""
    mean_expert = sum(_expert_params(e) for e in system.experts) / len(system.experts)
    active = system.router.gate.weight.numel() + system.router.top_k * mean_expert
    return (6.0 if training else 2.0) * active * tokens


def ffn_flops(ffn, tokens: int, training: bool = True) -> float:
    """Model FLOPs of a dense FFN (up and down GEMMs, 2 per multiply-add) on `tokens` tokens; x3 for a training step."""
    return (6.0 if training else 2.0) * (ffn.up.weight.numel() + ffn.down.weight.numel()) * tokens


def lm_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of PiMoE-LM (6 N_active + 12 L D S, module docstring)."""
    config = model.config
    active = model.lm_head.weight.numel()
    for block in model.blocks:
        moe = block.moe
        mean_expert = sum(_expert_params(e) for e in moe.experts) / len(moe.experts)
        active += moe.router.gate.weight.numel() + moe.router.top_k * mean_expert
        active += sum(m.weight.numel() for m in block.attn.modules()
                      if isinstance(m, torch.nn.Linear))
    hidden = config.hidden_size
    return 6.0 * active + 12.0 * config.num_layers * hidden * seq_len


def mfu(flops: float, seconds: float, device_name: str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Model-FLOPs utilisation in [0, 1] of `flops` done in `seconds` on the named card against its `dtype` peak, None
    when that peak is unknown."""
    peak = peak_flops(device_name, dtype)
    return None if peak is None or seconds <= 0 else flops / seconds / peak
