"""Routing lab: type or pick a text and watch every byte-token choose its experts, layer by layer."""

import math
import time

import streamlit as st

from studio import state
from studio.canvas_chart import show_chart
from studio.guard import guarded
from studio.hf_lab import render_hf_lab
from studio.presets import CUSTOM, PRESETS
from studio.routing_view import (
    MAX_TEXT_BYTES,
    accuracy_caption,
    accuracy_help,
    build_lab_figures,
    clip_text,
    route_text,
    routing_view,
)
from studio.settings import current_settings, effective_top_k
from studio.strip_component import show_token_strip

DEFAULT_PRESET = "Mixed paragraph"


def _preset_changed() -> None:
    preset = st.session_state[state.LAB_PRESET]
    if preset in PRESETS:
        st.session_state[state.LAB_TEXT] = PRESETS[preset]


def _text_edited() -> None:
    if st.session_state[state.LAB_TEXT] != PRESETS.get(st.session_state[state.LAB_PRESET]):
        st.session_state[state.LAB_PRESET] = CUSTOM


def _use_fresh_model() -> None:
    st.session_state[state.MODEL_SOURCE] = "fresh"


settings = current_settings()
if settings.hf_model is not None:  # a Hugging Face checkpoint: its own lab (studio.hf_lab)
    render_hf_lab(settings.hf_model)
    st.stop()
model = settings.model
top_k = effective_top_k(settings, model)

st.title("Routing lab")
st.caption("Each byte of the text is a token. The router of every layer gives each token a probability per expert and "
           "sends it to its top-k experts. Move the sidebar's temperature or top-k and watch the decisions change.")

left, right = st.columns([1, 3])
examples = [*PRESETS, CUSTOM]
# Defaults through session state, not the widgets' arguments: the callbacks above set these keys, and a widget given
# both a default and a session-state value logs a warning on every run.
st.session_state.setdefault(state.LAB_PRESET, DEFAULT_PRESET)
st.session_state.setdefault(state.LAB_TEXT, PRESETS[DEFAULT_PRESET])
left.selectbox("Example", examples, key=state.LAB_PRESET, persist_state="session", on_change=_preset_changed)
num_layers = model.config.num_layers
if st.session_state.get(state.LAB_LAYER, 0) >= num_layers:
    st.session_state[state.LAB_LAYER] = 0
layer = left.radio("Layer", list(range(num_layers)), key=state.LAB_LAYER, persist_state="session", horizontal=True)
text = right.text_area("Text", key=state.LAB_TEXT, persist_state="session", height=110,
                       on_change=_text_edited, help=f"Up to {MAX_TEXT_BYTES} bytes (UTF-8); longer text is cut there.")

if not text.strip():
    st.info("Type some text, or pick an example, to see how its tokens are routed.")
    st.stop()
text, clipped = clip_text(text)
if clipped:
    st.warning(f"The text is longer than {MAX_TEXT_BYTES} bytes; only the first {MAX_TEXT_BYTES} are routed.")
if top_k < settings.top_k:
    st.info(f"Top-k capped at {top_k}: the model has {top_k} experts.")
model_types = sorted(set(model.expert_types))
if settings.source.kind != "fresh" and sorted(settings.expert_types) != model_types:
    note, button = st.columns([4, 1])
    note.info(f"The sidebar's expert types ({', '.join(settings.expert_types)}) apply to fresh models and to "
              f"training; the {settings.source.label} brings its own experts ({', '.join(model_types)}).")
    button.button("Use a fresh model with these types", key=state.LAB_FRESH_MODEL, on_click=_use_fresh_model,
                  width="stretch", help="An untrained model with the sidebar's expert set: its routing is random "
                                        "until it is trained (Live training).")

started = time.perf_counter()
routed = guarded(lambda: route_text(model, text, settings.routing), what="routing the text",
                 key=state.LAB_RETRY_CPU)
if routed is None:
    st.stop()
view = routing_view(routed, layer, settings.load_balance_weight)
figures, strip = build_lab_figures(view)
elapsed_ms = (time.perf_counter() - started) * 1e3

stats = view.stats
cols = st.columns(7)
cols[0].metric("Tokens", len(view.tokens))
accuracy = view.accuracy
cols[1].metric("Routing accuracy", "n/a" if math.isnan(accuracy) else f"{accuracy:.1%}",
               delta=None if math.isnan(accuracy) else f"{100 * (accuracy - view.all_language):+.1f} pts vs baseline",
               delta_color="normal",
               help=accuracy_help(view))
cols[2].metric("Mean confidence", f"{stats.mean_confidence:.3f}", help="Mean top-1 router probability.")
cols[3].metric("Entropy / log E", f"{stats.normalized_entropy:.3f}", help="0: certain; 1: uniform over experts.")
cols[4].metric("Load balance", f"{stats.load_balance_score:.3f}", help="1 = every expert equally loaded.")
cols[5].metric("Dropped tokens", int(view.dropped_tokens.sum()),
               help="Tokens that lost all their experts to the capacity limit (they pass through unchanged).")
cols[6].metric(f"Balance loss at α = {settings.load_balance_weight:g}", f"{view.load_balance_loss:.4f}",
               help="What this layer's routing of the text would add to the training loss at the sidebar's "
                    "load-balance weight α (Switch loss α·E·Σ fᵢ·Pᵢ). Routing here does not change with α: the weight "
                    "only scales this loss's gradient while training, pushing the router towards even expert load "
                    "(Live training applies it to the running model).")

st.caption(accuracy_caption(view))
st.subheader("Tokens by top-1 expert")
show_token_strip(strip, key=state.LAB_STRIP)
show_chart(figures["heatmap"], key=state.LAB_HEATMAP)
st.caption(f"The heatmap shows router probabilities, which temperature changes; top-k ({top_k}) decides how many of "
           "the highest-probability experts each token is sent to, which shows in the expert load and the dropped "
           "cells, not in the probabilities.")
left_col, right_col = st.columns(2)
with left_col:
    show_chart(figures["load"], key=state.LAB_LOAD)
with right_col:
    show_chart(figures["confidence"], key=state.LAB_CONFIDENCE)
st.caption(f"Temperature {settings.temperature:g} · top-k {top_k} · load-balance loss at α = "
           f"{settings.load_balance_weight:g}: {view.load_balance_loss:.4f} · routed and drawn in {elapsed_ms:.0f} ms on "
           f"{settings.device} · model: {settings.source.label}")
