"""Which transformers class builds a config's causal LM: the auto class, or the model file's own where transformers'
auto mapping lists the model type only under other tasks."""

from __future__ import annotations

__all__ = ["causal_lm_class", "causal_lm_from_config", "loads_whole"]


def causal_lm_class(config):
    """The transformers class that builds `config`'s causal LM: AutoModelForCausalLM, or the model file's own
    `<Name>ForCausalLM` where transformers maps the model type to one only under other tasks (Mistral 4's
    Mistral4ForCausalLM: image-text-to-text and pretraining), or AutoModelForImageTextToText for a multimodal model
    whose language model has no causal-LM class at all (Qwen3-VL-MoE, GLM-4V-MoE: `loads_whole`)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    own = getattr(transformers, type(config).__name__.removesuffix("Config") + "ForCausalLM", None)
    if getattr(own, "config_class", None) is type(config):
        return own
    return AutoModelForImageTextToText if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES \
        else AutoModelForCausalLM


def loads_whole(config) -> bool:
    """Whether `config`'s model loads whole, vision tower included (its image-text-to-text class, which runs on token
    ids alone as a causal LM), because transformers gives its language model no causal-LM class: the checkpoint's
    own weight conversions (Qwen3-VL-MoE's transposed expert stacks) then apply as transformers applies them."""
    from transformers import AutoModelForImageTextToText

    return causal_lm_class(config) is AutoModelForImageTextToText


def causal_lm_from_config(config, **kwargs):
    """A freshly initialised causal LM of `config` (`causal_lm_class`'s class); kwargs as transformers'
    `from_config` takes them (dtype, ...)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model_class = causal_lm_class(config)
    if model_class in (AutoModelForCausalLM, AutoModelForImageTextToText):
        return model_class.from_config(config, **kwargs)
    return model_class._from_config(config, **kwargs)
