"""The routing lab for a Hugging Face MoE checkpoint: the checkpoint's own routing of a text, and a counterfactual
continuation under the user's router edits. Widgets and layout only; numbers come from studio.hf_view and figures from
studio.figures.hf."""

from __future__ import annotations

import math

import streamlit as st

from pimoe.hf.model import HFMoEModel
from pimoe.hf.specialization import TOKEN_CLASSES

from . import state
from .figures.hf import (
    build_class_specialization_figure,
    build_coactivation_figure,
    build_expert_path_figure,
    build_layer_load_figure,
    build_logprob_change_figure,
    build_routing_difference_figure,
    build_vocabulary_specialization_figure,
)
from .guard import guarded
from .hf_view import MAX_LAB_TOKENS, counterfactual, lab_view, model_name

__all__ = ["render_hf_lab"]

DEFAULT_TEXT = "Ana has 12 apples and buys 7 more. 12+7=19. If 3>5 then Ben wins, else Chen wins."
EVERY_LAYER = "every MoE layer"
_CHART = {"displaylogo": False}


def render_hf_lab(model: HFMoEModel) -> None:
    st.title("Routing lab")
    st.caption(f"**{model_name(model)}** · {model.describe()}. The checkpoint's MoE blocks run on PiMoE's router and "
               f"dispatch; the tokens are its tokenizer's own (first {MAX_LAB_TOKENS} routed). The sidebar's router and "
               "expert settings belong to PiMoE-LM models: this lab's routing edits are in the counterfactual panel.")
    if model.tokenizer is None:
        st.info("This folder has no tokenizer: type token ids (integers separated by spaces or commas), or save the "
                "checkpoint's tokenizer beside its weights to type text.")
    text = st.text_area("Text" if model.tokenizer is not None else "Token ids", DEFAULT_TEXT, key=state.HF_TEXT,
                        height=90)
    if not text.strip():
        st.info("Type some text to see how the checkpoint routes its tokens.")
        return
    view = guarded(lambda: lab_view(model, text), what="routing the text", key=state.HF_RETRY_CPU)
    if view is None:
        return
    if warning := model.beyond_trained_positions(len(view.tokens)):
        st.warning(warning)
    cols = st.columns(4)
    cols[0].metric("Tokens", len(view.tokens))
    cols[1].metric("MoE layers", len(view.layer_ids))
    cols[2].metric("Mean MaxVio", f"{sum(view.max_violation) / len(view.max_violation):.2f}",
                   help="max load / mean load − 1 per layer, averaged; 0 is perfect balance.")
    cols[3].metric("Mean router entropy", f"{sum(view.entropy) / len(view.entropy):.2f} nats",
                   help=f"ln E = {math.log(view.num_experts):.2f} at uniform.")
    st.plotly_chart(build_expert_path_figure(view.tokens, view.chosen, view.layer_ids, view.num_experts,
                                             about=view.about), key=state.HF_PATH_CHART, config=_CHART)
    st.plotly_chart(build_layer_load_figure(view.load, view.max_violation, view.layer_ids, about=view.about),
                    key=state.HF_LOAD_CHART, config=_CHART)
    layer = st.selectbox("Layer for co-activation and specialisation", view.layer_ids, key=state.HF_LAYER)
    index = view.layer_ids.index(layer)
    left, right = st.columns(2)
    left.plotly_chart(build_coactivation_figure(view.coactivation[index], layer, about=view.about),
                      key=state.HF_COACTIVATION_CHART, config=_CHART)
    right.plotly_chart(build_class_specialization_figure(view.class_share[index], TOKEN_CLASSES,
                                                         view.top_k / view.num_experts, layer, about=view.about),
                       key=state.HF_SPECIALIZATION_CHART, config=_CHART)
    entries, share, counts = view.vocabulary[index]
    st.plotly_chart(build_vocabulary_specialization_figure(entries, share, counts, view.top_k / view.num_experts, layer,
                                                           about=view.about), key=state.HF_VOCABULARY_CHART,
                    config=_CHART)
    _counterfactual_panel(model, text)


def _counterfactual_panel(model: HFMoEModel, text: str) -> None:
    st.subheader("Counterfactual: the continuation under your routing")
    experts = [None, *range(model.num_experts)]
    cols = st.columns(5)
    temperature = cols[0].slider("Router temperature", 0.1, 5.0, 1.0, 0.05, key=state.HF_CF_TEMPERATURE)
    top_k = cols[1].selectbox("Top-k", [None, *range(1, min(model.max_top_k, 16) + 1)], key=state.HF_CF_TOP_K,
                              format_func=lambda k: f"own ({model.top_k})" if k is None else str(k))
    layer = cols[2].selectbox("Edit at layer", [EVERY_LAYER, *model.moe_layer_ids], key=state.HF_CF_LAYER)
    force = cols[3].selectbox("Force expert", experts, key=state.HF_CF_FORCE,
                              format_func=lambda e: "none" if e is None else f"E{e}")
    ablate = cols[4].selectbox("Ablate expert", experts, key=state.HF_CF_ABLATE,
                               format_func=lambda e: "none" if e is None else f"E{e}")
    new_tokens = st.slider("New tokens", 1, 48, 16, key=state.HF_CF_TOKENS)
    edits = {"temperature": None if temperature == 1.0 else temperature, "top_k": top_k,
             "force": _at(layer, force), "ablate": _at(layer, ablate)}
    result = guarded(lambda: counterfactual(model, text, new_tokens, **edits), what="generating the continuations",
                     key=state.HF_RETRY_CPU + ".cf")
    if result is None:
        return
    own, edited = st.columns(2)
    own.markdown("**Own routing**")
    own.code(result.own_text, language=None)
    edited.markdown("**Your routing**")
    edited.code(result.edited_text, language=None)
    st.plotly_chart(build_logprob_change_figure(result.tokens, result.logprob_delta, about=result.about),
                    key=state.HF_LOGPROB_CHART, config=_CHART)
    st.plotly_chart(build_routing_difference_figure(result.all_tokens, result.differing, result.layer_ids,
                                                    result.top_k, about=result.about),
                    key=state.HF_DIFF_CHART, config=_CHART)


def _at(layer, expert):
    if expert is None:
        return None
    return expert if layer == EVERY_LAYER else {layer: expert}
