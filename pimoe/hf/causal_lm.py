"""Which transformers class builds a config's causal LM: the auto class, or the model file's own where transformers'
auto mapping lists the model type only under other tasks."""

from __future__ import annotations

__all__ = ["causal_lm_class", "causal_lm_from_config"]


def causal_lm_class(config):
    """The transformers class that builds `config`'s causal LM: AutoModelForCausalLM, or the model file's own
    `<Name>ForCausalLM` where transformers maps the model type to one only under other tasks (Mistral 4's
    Mistral4ForCausalLM: image-text-to-text and pretraining)."""
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    own = getattr(transformers, type(config).__name__.removesuffix("Config") + "ForCausalLM", None)
    return own if getattr(own, "config_class", None) is type(config) else AutoModelForCausalLM


def causal_lm_from_config(config, **kwargs):
    """A freshly initialised causal LM of `config` (`causal_lm_class`'s class); kwargs as transformers'
    `from_config` takes them (dtype, ...)."""
    from transformers import AutoModelForCausalLM

    model_class = causal_lm_class(config)
    if model_class is AutoModelForCausalLM:
        return model_class.from_config(config, **kwargs)
    return model_class._from_config(config, **kwargs)
