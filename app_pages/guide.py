"""Guide: token-level routing, top-k, temperature and load balancing, explained with small live examples."""

import pandas as pd
import streamlit as st

from pimoe.layer.options import RoutingOptions
from studio import state
from studio.canvas_chart import show_chart
from studio.figures.canvas import build_softmax_figures, build_topk_weights_figure
from studio.figures.routing import expert_labels
from studio.guard import guarded
from studio.guide import balance_example, softmax_example, temperature_sweep
from studio.routing_view import route_text
from studio.settings import current_settings

settings = current_settings()
model = settings.model
num_experts = model.config.moe.num_experts
SENTENCE = "If 7 + 5 = 12 then the answer is yes."

st.title("Guide: how a token finds its experts")
st.markdown("""
A **mixture of experts** replaces one big feed-forward network with several smaller ones, the *experts*, and a small
**router** that decides, for every token separately, which experts should process it. Only the chosen experts run, so
the model can hold many experts while each token pays for just a few. PiMoE gives the experts *types* (computation,
logical, language, …) and teaches the router to send digits and operators to the computation expert, logic words to
the logical expert, and so on. This page follows one token through the router of the model in use.
""")

st.header("1. One token through the router")
st.markdown(f"""
Below is the sentence *“{SENTENCE}”*, one byte per token. For the token you pick, the router multiplies its hidden
state by a weight matrix and gets one number per expert: the **logits** *z*. A softmax turns them into probabilities
that sum to one. The **temperature** *T* divides the logits first:
""")
st.latex(r"p_i = \frac{e^{z_i / T}}{\sum_j e^{z_j / T}}")
routed = guarded(lambda: route_text(model, SENTENCE, RoutingOptions(temperature=1.0, top_k=1)), what="routing the example",
                 key=state.GUIDE_RETRY_CPU)
if routed is None:
    st.stop()
positions = list(range(len(routed.tokens)))
cols = st.columns(3)
token = cols[0].selectbox("Token", positions, index=SENTENCE.index("7"), key=state.GUIDE_TOKEN,
                          format_func=lambda i: f"#{i}: {routed.tokens[i]!r}")
temperature = cols[1].slider("Temperature T", 0.1, 5.0, 1.0, 0.05, key=state.GUIDE_TEMPERATURE)
if num_experts > 1:
    top_k = cols[2].slider("Top-k", 1, min(4, num_experts), min(2, num_experts), key=state.GUIDE_TOP_K)
else:  # a slider from 1 to 1 is refused by Streamlit
    top_k = 1
    cols[2].metric("Top-k", 1, help="The model has one expert: every token goes to it.")
logits = routed.routing[0].logits[token]
example = softmax_example(logits, temperature, top_k)
logit_chart, prob_chart = build_softmax_figures(example.logits, example.probs, routed.expert_types, example.chosen,
                                                temperature=temperature, about=f"Token {routed.tokens[token]!r}, layer 0")
logit_col, prob_col = st.columns(2)
with logit_col:
    show_chart(logit_chart, key=state.GUIDE_SOFTMAX_CHART)
with prob_col:
    show_chart(prob_chart, key=state.GUIDE_SOFTMAX_PROBS_CHART)
labels = expert_labels(routed.expert_types)
chosen = ", ".join(f"{labels[i]} (weight {w:.2f})" for i, w in zip(example.chosen, example.weights, strict=True))
st.markdown(f"""
**Top-k** keeps the *k* most probable experts — here {chosen} — and renormalises their probabilities into combine
weights. The token's output is the weighted sum of what those experts compute; the other experts never see the token.
With *k* = 1 each token costs one expert; with *k* = 2 it gets a second opinion at twice the compute.
""")

st.header("2. What temperature does")
st.markdown("""
Dividing by a small *T* stretches the gaps between logits, so the best expert takes almost all the probability
(**sharp**, low entropy). A large *T* squeezes them together, so probability spreads over all experts (**flat**, high
entropy, up to log E when the router cannot choose at all). Temperature never changes which expert ranks first — only
how sure the router is, and so the combine weights and how much each expert learns from the token. Here is the same
token at five temperatures:
""")
st.dataframe(pd.DataFrame(temperature_sweep(logits)).round(3), hide_index=True, width="content")

st.header("3. Load balancing")
st.markdown("""
A router left alone tends to **collapse**: one expert is slightly better early on, gets more tokens, learns faster,
and ends up with everything while the others idle. The Switch Transformer's auxiliary loss pushes back:
""")
st.latex(r"\mathcal{L}_{\text{aux}} = \alpha \cdot E \cdot \sum_i f_i \, P_i")
st.markdown("""
*f<sub>i</sub>* is the share of tokens sent to expert *i*, *P<sub>i</sub>* its mean router probability. When routing is
uniform both are 1/E and the loss equals α, its minimum; when every token goes to one expert it rises to α·E. Slide
the toy router below from balanced to collapsed (8 tokens, 4 experts, top-1):
""", unsafe_allow_html=True)
collapse = st.slider("Collapse towards expert 0", 0.0, 1.0, 0.0, 0.05, key=state.GUIDE_BALANCE_SKEW)
toy = balance_example(collapse, alpha=max(settings.load_balance_weight, 1e-3))
toy_types = ["expert"] * toy.probs.shape[1]
left, right = st.columns([3, 2])
with left:
    show_chart(build_topk_weights_figure(toy.probs, toy_types, row_labels=[f"token {i}" for i in range(8)],
                                         title="Router probabilities of the toy tokens"), key=state.GUIDE_BALANCE_CHART)
right.dataframe(pd.DataFrame({"expert": [f"E{i}" for i in range(len(toy.shares))], "f (share of tokens)": toy.shares,
                              "P (mean probability)": toy.mean_probs}), hide_index=True, width="stretch")
right.metric(f"Auxiliary loss at α = {toy.alpha:g}", f"{toy.loss:.4f}",
             help="Minimum α (balanced), maximum α·E (collapsed).")
right.metric("Tokens dropped at capacity factor 1.25", toy.dropped,
             help=f"Each expert takes at most ⌈1.25 · T · k / E⌉ = {toy.capacity} tokens; the rest pass through "
                  "the layer unchanged.")
st.markdown("""
Adding this loss (weighted by the sidebar's **load-balance weight** α) to the training loss makes collapse costly, so
the router spreads tokens while still preferring the right expert. A **capacity factor** is the hard limit: an expert
that is full drops further tokens. The *Live training* page shows all of this happening as a real model learns.
""")
