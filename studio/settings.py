"""What the shared sidebar resolved on this run, for the pages to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from pimoe.layer.options import NO_CAPACITY_LIMIT, RoutingOptions
from pimoe.lm.model import PiMoELM

from . import state
from .engine import ModelSource

__all__ = ["Settings", "current_settings", "effective_top_k", "routing_options"]


@dataclass(frozen=True)
class Settings:
    """The sidebar's values plus the model they resolved to.

    expert_types / num_experts describe the fresh model and the one training builds; a checkpoint brings its own.
    capacity_factor: None for no limit. model: the shared, read-only model in use (see studio.engine); with a Hugging
    Face model chosen, `model` stays the PiMoE-LM last in use (the other pages keep working) and `hf_model` is set.
    routing: the router knobs every page passes to the engine with each call, built (and validated) once here.
    """

    device: str
    precision: str  # the shared model's weights: "bfloat16" (a GPU's default) or "float32"
    source: ModelSource
    temperature: float
    load_balance_weight: float
    top_k: int
    capacity_factor: float | None
    expert_types: tuple[str, ...]
    num_experts: int
    model: PiMoELM
    routing: RoutingOptions
    hf_model: Any = None  # a pimoe.hf.HFMoEModel when the sidebar's model choice is "Hugging Face model"


def current_settings() -> Settings:
    """The Settings the sidebar stored on this run (app.py renders the sidebar before any page)."""
    return st.session_state[state.SETTINGS]


def routing_options(temperature: float, top_k: int, capacity_factor: float | None, model: PiMoELM) -> RoutingOptions:
    """The sidebar's router knobs as the engine's record: top-k capped at the model's experts, no capacity factor
    meaning no limit (whatever the checkpoint's router config says)."""
    return RoutingOptions(temperature=float(temperature), top_k=min(int(top_k), model.config.moe.num_experts),
                          capacity_factor=NO_CAPACITY_LIMIT if capacity_factor is None else float(capacity_factor))


def effective_top_k(settings: Settings, model: PiMoELM) -> int:
    """The sidebar's top-k, capped at the model's number of experts."""
    return min(settings.top_k, model.config.moe.num_experts)
