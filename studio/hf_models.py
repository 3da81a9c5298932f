"""The sidebar's "Hugging Face model" choice: a folder or hub id, loaded once per (source, device) and shared.

A source that fails to load leaves the Hugging Face model already in use (if any) in place, with the reason shown.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from pimoe.hf.families import SUPPORTED_FAMILIES
from pimoe.hf.loading import load_hf_moe
from pimoe.hf.model import HFMoEModel

from . import state
from .engine import REPO_ROOT, run_locked

__all__ = ["SHIPPED_HF_MODEL", "load_hf_model", "render_hf_source"]

SHIPPED_HF_MODEL = REPO_ROOT / "assets" / "hf-tiny-qwen3-moe"


@st.cache_resource(max_entries=2, show_spinner="Loading the Hugging Face model…")
def load_hf_model(source: str, device: str, download: bool) -> HFMoEModel:
    """`pimoe.load_hf_moe` once per (source, device); the model is shared by every session and never mutated by a
    request (routing edits travel as call arguments)."""
    return load_hf_moe(source, device=device, download=download)


_FAMILY_NAMES = ", ".join(family.display_name for family in SUPPORTED_FAMILIES.values())


def render_hf_source(device: str) -> HFMoEModel | None:
    """The folder / hub id input; returns the model to use, or None when none has loaded in this session."""
    source = st.text_input("Folder or hub id", str(SHIPPED_HF_MODEL.relative_to(REPO_ROOT)), key=state.HF_SOURCE,
                           help=f"A save_pretrained folder ({_FAMILY_NAMES}), or a hub id already in the Hugging Face "
                                "cache.").strip()
    download = st.checkbox("Download a hub id that is not cached", False, key=state.HF_DOWNLOAD)
    path = REPO_ROOT / source
    wanted = str(path) if not source.startswith("/") and path.exists() else source
    try:
        model = run_locked(lambda: load_hf_model(wanted, device, download))
    except (ValueError, torch.cuda.OutOfMemoryError) as error:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            error = "the GPU is out of memory (pick the CPU as the device to load it there)"
        active = st.session_state.get(state.HF_ACTIVE)
        keep = f" Still using {Path(active.source).name or active.source}." if active is not None else ""
        st.error(f"Could not load {source!r}: {error}.{keep}")
        return active
    st.session_state[state.HF_ACTIVE] = model
    return model
