"""What the shared sidebar resolved on this run, for the pages to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from pimoe.lm.model import PiMoELM

from . import state
from .engine import ModelSource

__all__ = ["Settings", "current_settings", "effective_top_k"]


@dataclass(frozen=True)
class Settings:
    """The sidebar's values plus the model they resolved to.

    expert_types / num_experts describe the fresh model and the one training builds; a checkpoint brings its own.
    capacity_factor: None for no limit. model: the shared, read-only model in use (see studio.engine); with a Hugging
    Face model chosen, `model` stays the PiMoE-LM last in use (the other pages keep working) and `hf_model` is set.
    """

    device: str
    source: ModelSource
    temperature: float
    load_balance_weight: float
    top_k: int
    capacity_factor: float | None
    expert_types: tuple[str, ...]
    num_experts: int
    model: PiMoELM
    hf_model: Any = None  # a pimoe.hf.HFMoEModel when the sidebar's model choice is "Hugging Face model"


def current_settings() -> Settings:
    """The Settings the sidebar stored on this run (app.py renders the sidebar before any page)."""
    return st.session_state[state.SETTINGS]


def effective_top_k(settings: Settings, model: PiMoELM) -> int:
    """The sidebar's top-k, capped at the model's number of experts."""
    return min(settings.top_k, model.config.moe.num_experts)
