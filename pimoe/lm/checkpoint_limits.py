"""Size limits on a checkpoint's config, checked before any tensor is allocated, and recognising pickles.

A checkpoint's embedded config decides how much memory building its model takes. A file that asks for 100,000 layers
or a hidden size of a million would make the loader allocate gigabytes before the weights could even be compared, so
`check_config_limits` bounds every size from the config numbers alone. The limits are far above the models this
package trains (the demo: 2 layers, hidden 96, 8 experts, 0.9 M parameters) and well below what breaks a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimoe.layer.expert_types import expert_spec, known_expert_types

__all__ = ["CONFIG_LIMITS", "ConfigLimits", "check_config_limits", "pickle_kind"]


@dataclass(frozen=True)
class ConfigLimits:
    """The largest value each config size may have. max_parameters bounds the estimated total."""

    num_layers: int = 64
    hidden_size: int = 4096
    num_experts: int = 64
    vocab_size: int = 65_536
    max_seq_len: int = 8192
    intermediate_size: int = 16_384
    num_heads: int = 64
    max_parameters: int = 250_000_000


CONFIG_LIMITS = ConfigLimits()
_LABELS = {
    "num_layers": "layers", "hidden_size": "hidden size", "num_experts": "experts", "vocab_size": "vocabulary size",
    "max_seq_len": "sequence length", "intermediate_size": "expert intermediate size", "num_heads": "attention heads",
}


def _as_int(value, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{source}: {_LABELS[name]} ({name}) must be an integer, got {value!r}")
    return value


def estimate_parameters(sizes: dict[str, int], expert_types: list[str]) -> int:
    """An upper estimate of the parameter count: embeddings, attention, norms, router and three projections per expert
    (gated experts have three; plain ones two)."""
    d, layers, experts = sizes["hidden_size"], sizes["num_layers"], sizes["num_experts"]
    known = set(known_expert_types())
    types = expert_types or ["language"]
    widths = []
    for index in range(experts):
        name = types[index % len(types)]
        multiplier = expert_spec(name).width_multiplier if name in known else 4.0
        widths.append(max(1, round(sizes["intermediate_size"] * multiplier)))
    per_layer = 4 * d * d + 4 * d + experts * d + sum(3 * d * w + w + d for w in widths)
    return sizes["vocab_size"] * d * 2 + sizes["max_seq_len"] * d + layers * per_layer


def check_config_limits(config: dict, source: str, limits: ConfigLimits = CONFIG_LIMITS) -> None:
    """Raise ValueError naming the size and its limit when the config dict of a checkpoint (LMConfig.to_dict() form)
    asks for more than `limits` allows. Reads numbers only: nothing is allocated."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: 'config' must be a JSON object, got a {type(config).__name__}")
    moe = config.get("moe") or {}
    if not isinstance(moe, dict):
        raise ValueError(f"{source}: 'config.moe' must be a JSON object, got a {type(moe).__name__}")
    expert = moe.get("expert") or {}
    hidden = _as_int(moe.get("hidden_size", 64), "hidden_size", source)
    intermediate = expert.get("intermediate_size") if isinstance(expert, dict) else None
    sizes = {
        "num_layers": config.get("num_layers", 2),
        "hidden_size": hidden,
        "num_experts": moe.get("num_experts", 8),
        "vocab_size": config.get("vocab_size", 259),
        "max_seq_len": config.get("max_seq_len", 128),
        "intermediate_size": 4 * hidden if intermediate is None else intermediate,
        "num_heads": config.get("num_heads", 4),
    }
    for name, value in sizes.items():
        sizes[name] = _as_int(value, name, source)
        limit = getattr(limits, name)
        if sizes[name] > limit:
            raise ValueError(f"{source} asks for {sizes[name]:,} {_LABELS[name]} ({name}); this server loads at most "
                             f"{limit:,}")
    expert_types = moe.get("expert_types") or []
    if not isinstance(expert_types, list) or len(expert_types) > limits.num_experts:
        raise ValueError(f"{source}: expert_types must be a list of at most {limits.num_experts} names")
    parameters = estimate_parameters(sizes, [str(t) for t in expert_types])
    if parameters > limits.max_parameters:
        raise ValueError(f"{source} describes a model of about {parameters:,} parameters; this server loads at most "
                         f"{limits.max_parameters:,}")


def pickle_kind(data: bytes) -> str | None:
    """What kind of pickle `data` starts like ("a Python pickle", "a PyTorch zip archive (torch.save)"), or None."""
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a Python pickle"
    if data[:4] == b"PK\x03\x04":
        return "a PyTorch zip archive with a pickle inside (what torch.save writes)"
    return None
