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

__all__ = ["PEAK_BF16_TFLOPS", "lm_flops_per_token", "moe_layer_flops", "mfu", "peak_bf16_flops"]

# Dense bf16 tensor-core peaks without sparsity, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4, "A100": 312.0,
                    "L4": 121.0, "L40S": 362.0}


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a card from its `torch.cuda.get_device_name()`, or None when unknown."""
    name = device_name.upper()
    if "H100" in name:
        key = "H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"
    else:
        key = next((k for k in PEAK_BF16_TFLOPS if k.upper() in name), None)
    return None if key is None else PEAK_BF16_TFLOPS[key] * 1e12


def _expert_params(expert) -> int:
    return expert.up.weight.numel() + expert.down.weight.numel()


def moe_layer_flops(system, tokens: int, training: bool = True) -> float:
    """Model FLOPs of one PiMoE layer call on `tokens` tokens (router + top-k experts at their mean size); x3 for a
    training step (forward and backward)."""
    mean_expert = sum(_expert_params(e) for e in system.experts) / len(system.experts)
    active = system.router.gate.weight.numel() + system.router.top_k * mean_expert
    return (6.0 if training else 2.0) * active * tokens


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


def mfu(flops: float, seconds: float, device_name: str) -> float | None:
    """Model-FLOPs utilisation in [0, 1] of `flops` done in `seconds` on the named card, None when its peak is
    unknown."""
    peak = peak_bf16_flops(device_name)
    return None if peak is None or seconds <= 0 else flops / seconds / peak
