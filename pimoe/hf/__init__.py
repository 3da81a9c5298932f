"""Hugging Face MoE checkpoints (Mixtral, Qwen, OLMoE, FlexOlmo, Jamba, DeepSeek, dots.llm1, EXAONE, Solar,
Kimi-Linear, MiniCPM5, LFM2, AFMoE, GLM, ERNIE, Granite, HunYuan, MiniMax, PhiMoE, DBRX, Llama 4, Cohere2, GPT-OSS).

Modules: families (which architectures, and each one's routing rule), router (the checkpoint's router as a PiMoE
router), experts (expert networks the typed experts lack: GPT-OSS's), block (router + experts + shared experts),
convert (an HF block's weights into a PiMoE block), experts_interface (PiMoE's dispatch
registered as a transformers experts implementation, `experts_implementation="pimoe"`), edits (temperature / top-k / force / ablate knobs), memory (size
check and device placement before loading), loading (`load_hf_moe`), model (`HFMoEModel.trace` / `.generate`),
summary (per-layer numbers and JSON), specialization (token classes, co-activation), train_tiny (the shipped tiny
model's recipe).
"""

from pimoe.hf.edits import RoutingEdits
from pimoe.hf.experts_interface import EXPERTS_IMPLEMENTATION, register_experts_implementation
from pimoe.hf.families import SUPPORTED_FAMILIES, family_for
from pimoe.hf.loading import load_hf_moe
from pimoe.hf.model import Generation, HFMoEModel, Trace

__all__ = ["EXPERTS_IMPLEMENTATION", "SUPPORTED_FAMILIES", "Generation", "HFMoEModel", "RoutingEdits", "Trace",
           "family_for", "load_hf_moe", "register_experts_implementation"]
