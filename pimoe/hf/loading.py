"""`load_hf_moe`: open a transformers MoE checkpoint from a folder or the Hugging Face cache, on PiMoE blocks.

Nothing is downloaded unless `download=True`; `trust_remote_code` is never enabled, so only architectures that ship
inside transformers load, and a checkpoint's own Python code never runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pimoe.devices import available_device
from pimoe.hf.block import RoutingSession
from pimoe.hf.causal_lm import causal_lm_class, loads_whole
from pimoe.hf.convert import replace_moe_blocks
from pimoe.hf.families import family_for, language_model_config
from pimoe.hf.memory import plan_placement
from pimoe.hf.model import HFMoEModel

__all__ = ["load_hf_moe", "resolve_device", "resolve_dtype"]

# module names of a multimodal checkpoint's non-text parts (Llama 4, Qwen3.5-MoE): their weights go unused (a checkpoint
# that `loads_whole`, Qwen3-VL-MoE, loads them too)
_OTHER_TOWERS = frozenset({"vision_model", "visual", "vision_tower", "multi_modal_projector", "audio_tower",
                           "audio_model", "embed_vision", "embed_audio"})


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return available_device(device)


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """float32 on the CPU, bfloat16 on a GPU (the fast path's dtype), unless given."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def load_hf_moe(source: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                *, download: bool = False, device_map: dict[str, int | str] | None = None) -> HFMoEModel:
    """Load a causal-LM MoE checkpoint with every sparse MoE block running on PiMoE's router and dispatch.

    source: a folder written by `save_pretrained`, or a hub id ("allenai/OLMoE-1B-7B-0924") found in the local
    Hugging Face cache, or downloaded into it when `download=True`. device: default a GPU when visible, else the CPU.
    dtype: default bfloat16 on a GPU, float32 on the CPU.
    device_map: your own placement over GPUs, as transformers' `from_pretrained` takes it ({module name: GPU index}),
    instead of the one planned here (all on `device`, or several GPUs together when one is too small); every MoE block
    then runs its dispatch on the GPU its layer sits on, and accelerate moves the hidden states between them. The size
    check is skipped for it: the placement is yours. "cpu" and "disk" entries are refused: transformers offloads those
    layers (their weights wait in host memory or on disk, the modules hold meta tensors), which the blocks cannot run.
    Raises ValueError, before loading any weight, for an unsupported architecture or a model that does not fit the
    device; and after, for missing, unexpected, mismatched or unreadable weights.
    """
    from transformers import AutoConfig

    source = str(source)
    is_folder = Path(source).is_dir()
    if not is_folder and (Path(source).exists() or source.startswith((".", "/", "~"))):
        raise ValueError(f"{source!r} is not a model folder")
    local_only = is_folder or not download
    common = dict(trust_remote_code=False, local_files_only=local_only)
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except Exception as error:  # noqa: BLE001 - OSError, ValueError, KeyError, and strict-dataclass field errors
        # (transformers 5 checks field types: "hidden_size": "big" raises huggingface_hub's own exception class)
        hint = "" if is_folder or download else " (not in the local Hugging Face cache; pass download=True to fetch it)"
        raise ValueError(f"cannot read a transformers config from {source!r}{hint}: {error}") from error
    text_config = language_model_config(config)
    family = family_for(text_config)
    # a routing rule PiMoE cannot follow is refused here, before any weight is read
    family.rule(text_config)
    family.num_experts(text_config)
    family.averages_shared(text_config)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if device_map is not None:
        _check_device_map(device_map)
    # sized as it loads: the language model alone, or the whole multimodal model
    sized = config if loads_whole(config) else text_config
    placement = None if device_map is not None else plan_placement(sized, dtype, device)
    if placement is None:
        where = dict(device_map=device_map)
    elif placement.device_map:  # several GPUs together (accelerate places whole decoder layers)
        where = dict(device_map=placement.device_map, max_memory=placement.max_memory)
    elif device.type == "cuda":  # straight onto the GPU, never a full copy in host memory first
        where = dict(device_map={"": device})
    else:
        where = {}
    if is_folder:
        _check_weights_are_safetensors(Path(source))
    try:
        # safetensors only: a PyTorch .bin is a pickle, and unpickling what a user hands us could run code
        model_class, model_config, renames = _text_model_class(config, text_config)
        model, info = model_class.from_pretrained(source, config=model_config, dtype=dtype, use_safetensors=True,
                                                  output_loading_info=True, **renames, **where, **common)
    except Exception as error:  # safetensors, OSError, size mismatches: all mean "this folder's weights are bad"
        raise ValueError(f"cannot load the weights of {source!r}: {type(error).__name__}: {error}") from error
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
                if info.get(kind)}
    if text_config is not config and "unexpected_keys" in problems:
        # a multimodal checkpoint: its other towers (vision, audio, projectors) are not loaded, by design
        text_keys = [key for key in problems.pop("unexpected_keys") if not _OTHER_TOWERS & set(key.split("."))]
        if text_keys:
            problems["unexpected_keys"] = text_keys
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {sorted(map(str, keys))[:5]}" for kind, keys in problems.items())
        raise ValueError(f"the weights of {source!r} do not match its config ({detail})")
    model.eval().requires_grad_(False)
    session = RoutingSession()
    blocks = replace_moe_blocks(model, family, session)
    if any(block.router.weight.is_cuda for block in blocks):
        from pimoe.cuda.packing import pack_experts_in_place

        for block in blocks:  # layer by layer: the fast path's stacks become the only copy of the routed experts
            if block.dispatch == "auto" and block.router.weight.is_cuda:
                pack_experts_in_place(block.experts)
    return HFMoEModel(model, blocks, session, family, _load_tokenizer(source, common), source)


def _text_model_class(config, text_config) -> tuple:
    """(class, config, extra from_pretrained arguments) that load the checkpoint's causal LM: its own (a multimodal
    model whose language model has no causal-LM class loads whole: `loads_whole`), or for a multimodal checkpoint
    whose causal LM is the whole multimodal model (Gemma 4's "gemma4" maps to Gemma4ForConditionalGeneration) its text
    config's, the weights' `model.language_model.` renamed `model.` (Llama 4's and Qwen3.5-MoE's map to a text causal
    LM already)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if text_config is config or loads_whole(config) \
            or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, "").endswith("ForCausalLM"):
        return causal_lm_class(config), config, {}
    return causal_lm_class(text_config), text_config, {"key_mapping": {r"^model\.language_model\.": "model."}}


_PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _check_weights_are_safetensors(folder: Path) -> None:
    """A folder whose weights exist only as pickles gets a message saying so (transformers would say only that
    model.safetensors is missing)."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in _PICKLED_WEIGHTS for p in folder.glob(pattern))
    if pickled:
        raise ValueError(
            f"{str(folder)!r} holds its weights only as PyTorch pickles ({', '.join(pickled[:3])}); PiMoE reads "
            "safetensors only, since loading a pickle can run code it holds. Convert them where you trust the file: "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)` writes safetensors")


def _check_device_map(device_map: dict) -> None:
    if not isinstance(device_map, dict) or not device_map:
        raise ValueError(f"device_map must be a non-empty dict of module name -> GPU index, got {device_map!r}")
    for name, where in device_map.items():
        on_gpu = (isinstance(where, int) and not isinstance(where, bool) and where >= 0) or (
            isinstance(where, (str, torch.device)) and str(where).split(":")[0] == "cuda")
        if not on_gpu:
            raise ValueError(f"device_map places {name!r} on {where!r}: only GPUs are supported (transformers would "
                             "offload that layer, and an offloaded MoE block has no weights to run)")


def _load_tokenizer(source: str, common: dict):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a weights-only folder still traces token ids
    # NOTE: a folder without tokenizer files can still yield a tokenizer, built from the config's class with only its
    # special tokens (OLMoE, Qwen3-Next), which turns every text into no tokens: keep one that encodes a plain text
    probe = tokenizer("The 12 apples", add_special_tokens=False)["input_ids"]
    return tokenizer if any(token != tokenizer.unk_token_id for token in probe) else None
