"""Computation: the router hands arithmetic to the exact expert inside one decoding pass (PiMoE/PiERN)."""

from functools import partial

import streamlit as st

from pimoe.handoff.decode import (
    COMPUTATION_TYPE,
    DEFAULT_THRESHOLD,
    HandoffTrigger,
    generate_with_computation,
    route_positions,
)
from pimoe.handoff.evaluation import ComputeEvalConfig, latest_report, run_compute_eval, summary_rows, trigger_rows
from pimoe.handoff.heldout_eval import heldout_handoff_report
from pimoe.lm.routing_eval import routing_report
from studio import state
from studio.canvas_chart import show_chart
from studio.engine import REPO_ROOT
from studio.figures.baselines import baseline_rows, build_accuracy_baseline_figure
from studio.figures.computation import build_handoff_html, build_result_figure, handoff_segments
from studio.guard import guarded
from studio.routing_view import TAGGER_NOTE, clip_text
from studio.settings import current_settings, effective_top_k
from studio.tables import (
    EVAL_COLUMNS,
    TRIGGER_COLUMNS,
    exact_answers_line,
    handoff_rows,
    in_words,
    measured_on,
    method_rows,
)

CUSTOM = "Your own prompt"
PRESETS = {
    "Addition, 6 digits": "Ana has 123456 apples and buys 654321 more, so Ana has 123456+654321=",
    "Multiplication": "There are 4521 boxes with 387 coins in each, so there are 4521*387=",
    "Exact division": "Hana shares 943426 books equally among 418 friends, so each friend gets 943426/418=",
    "The model writes the sum": "There are 4521 boxes with 387 coins in each, so there are ",
    "Division by zero (declined)": "Ben has 5 coins and 0 friends, so each friend gets 5/0=",
    "Prose (no computation)": "The old lighthouse keeper watched the storm roll in across the grey, restless sea.",
}
MAX_PROMPT_BYTES = 400
EVAL_SIZES = (7, 14, 28, 56)  # multiples of the 7 problem kinds
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _preset_changed() -> None:
    if (preset := st.session_state[state.COMPUTE_PRESET]) in PRESETS:
        st.session_state[state.COMPUTE_PROMPT] = PRESETS[preset]


def _prompt_edited() -> None:
    if st.session_state[state.COMPUTE_PROMPT] != PRESETS.get(st.session_state[state.COMPUTE_PRESET]):
        st.session_state[state.COMPUTE_PRESET] = CUSTOM


def _progress(bar, done: int, total: int, message: str) -> None:
    bar.progress(done / total, text=message)


def _show_generalisation(data: dict, chart_key: str) -> None:
    """Routing accuracy per text beside its baselines, and the held-out hand-off precision/recall."""
    routing = data.get("routing", {})
    parts = [f"{name} mean {routing[part]['mean_accuracy']:.3f} (all-language {routing[part]['mean_all_language']:.3f})"
             for part, name in (("in_template", "in-template"), ("out_of_template", "out-of-template")) if part in routing]
    if parts:
        chance = next(iter(routing.values()))["chance"]
        st.markdown("**Routing accuracy** · " + " · ".join(parts) + f" · chance k/E {chance:.2f}")
        show_chart(build_accuracy_baseline_figure(routing), key=chart_key)
        with st.expander("Per-text table"):
            st.dataframe(baseline_rows(routing), hide_index=True, width="stretch")
    if handoff := data.get("handoff"):
        def show(value):
            return "n/a" if value is None else f"{value:.3f}"
        st.markdown(f"**Hand-off on held-out text** · precision {show(handoff['precision'])} · recall "
                    f"{show(handoff['recall'])} ({handoff['hits']} of {handoff['labels']} labelled '=', "
                    f"{handoff['fired']} fired) · router alone: precision {show(handoff['router_precision'])}, "
                    f"recall {show(handoff['router_recall'])}")


def _show_report(data: dict) -> None:
    share = st.column_config.NumberColumn(format="percent")
    one_decimal = st.column_config.NumberColumn(format="%.1f")
    words = EVAL_COLUMNS
    st.dataframe(in_words(method_rows(summary_rows(data)), words), hide_index=True, width="stretch",
                 column_config={words["exact answers"]: share, words["median ms"]: one_decimal,
                                words["p95 ms"]: one_decimal, words["forward passes"]: one_decimal,
                                words["tokens read"]: st.column_config.NumberColumn(format="%.0f")})
    three = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(in_words(trigger_rows(data), TRIGGER_COLUMNS), hide_index=True, width="stretch",
                 column_config={TRIGGER_COLUMNS["precision"]: three, TRIGGER_COLUMNS["recall"]: three})
    st.caption(f"Extraction rate {data['extraction_rate']:.1%} · hand-off at the answer {data['handoff_rate']:.1%} · "
               f"{data['config']['num_problems']} problems, seed {data['config']['seed']}, operands "
               f"{data['config']['min_digits']}-{data['config']['max_digits']} digits · measured on "
               f"{measured_on(data['meta'])}, load average {data['meta'].get('load_average_before')}")
    if data.get("generalisation"):
        _show_generalisation(data["generalisation"], state.COMPUTE_HELDOUT_SAVED_CHART)


settings = current_settings()
model = settings.model
top_k = effective_top_k(settings, model)

st.title("Computation")
st.caption("A tiny language model cannot multiply 6-digit numbers; an exact expert can. When the router sends a '=' to "
           "the computation expert and the text before it is an arithmetic expression, the expert computes it exactly "
           "and its result is spliced into the token stream, and decoding goes on in the same pass.")
if COMPUTATION_TYPE not in model.expert_types:
    st.info("The model in use has no computation expert, so nothing can be handed off. Add the computation type in the "
            "sidebar or load the demo checkpoint.")
    st.stop()

left, right = st.columns([1, 3])
examples = [*PRESETS, CUSTOM]
left.selectbox("Example", examples, key=state.COMPUTE_PRESET, on_change=_preset_changed, persist_state="session")
layers = [*range(model.config.num_layers), "mean"]
layer = left.radio("Trigger layer", layers, index=len(layers) - 2, key=state.COMPUTE_LAYER, horizontal=True,
                   persist_state="session", help="The router whose decision triggers the hand-off, or the layer mean.")
threshold = left.slider("Threshold", 0.05, 1.0, DEFAULT_THRESHOLD, 0.05, key=state.COMPUTE_THRESHOLD,
                        persist_state="session", help="Minimum probability of the computation expert at the '='.")
max_new_tokens = left.slider("New tokens", 4, 64, 24, key=state.COMPUTE_MAX_TOKENS, persist_state="session")
prompt = right.text_area("Prompt", next(iter(PRESETS.values())), key=state.COMPUTE_PROMPT, height=110,
                         on_change=_prompt_edited, persist_state="session")
if not prompt.strip():
    st.info("Type a prompt, or pick an example.")
    st.stop()
prompt, clipped = clip_text(prompt, MAX_PROMPT_BYTES)
if clipped:
    st.warning(f"The prompt is longer than {MAX_PROMPT_BYTES} bytes; only the first {MAX_PROMPT_BYTES} are used.")


def _generate():
    options = {"max_new_tokens": max_new_tokens, "routing": settings.routing}
    plain = model.generate(prompt, **options)
    with_expert = generate_with_computation(model, prompt, threshold=threshold, layer=layer, **options)
    probs = route_positions(model, with_expert.ids, range(len(with_expert.ids)), settings.routing)
    return plain, with_expert, HandoffTrigger(threshold, layer).layer_probs(probs)


generated = guarded(_generate, what="generating", key=state.COMPUTE_RETRY_CPU)
if generated is None:
    st.stop()
plain, with_expert, probs = generated
cols = st.columns(2)
cols[0].markdown("**Plain generation**")
cols[0].html(build_handoff_html(handoff_segments(plain.ids, plain.prompt_length, [])))
declined = [h for h in with_expert.handoffs if h.declined_reason]
spliced = len(with_expert.handoffs) - len(declined)
headline = f"{spliced} result(s) spliced in" + (f", {len(declined)} declined" if declined else "")
cols[1].markdown(f"**With the computation expert** · {headline}")
cols[1].html(build_handoff_html(handoff_segments(with_expert.ids, with_expert.prompt_length, with_expert.handoffs)))
for handoff in declined:
    st.warning(f"The computation expert declined `{handoff.expression}`: {handoff.declined_reason}. Nothing was "
               "spliced in; the model's own tokens continue after the '='.")
if with_expert.handoffs:
    st.dataframe(handoff_rows(with_expert.handoffs), hide_index=True, width="stretch")
else:
    st.caption("No hand-off: no '=' was routed to the computation expert after an arithmetic expression.")
show_chart(build_result_figure(with_expert, probs, model.expert_types), key=state.COMPUTE_ROUTING_CHART)

st.subheader("Evaluation")
st.caption("Held-out problems with 3-6 digit operands (training saw 0..99): exact answers of plain generation, one-pass "
           "hand-off and a multi-round tool call; trigger precision and recall against the '=' labels; latency per "
           "answer. Runs with the model's own router settings.")
size = st.select_slider("Problems", EVAL_SIZES, value=EVAL_SIZES[1], key=state.COMPUTE_EVAL_PROBLEMS)
if st.button("Run evaluation", key=state.COMPUTE_EVAL_RUN):
    bar = st.progress(0.0, text="Starting…")
    config = ComputeEvalConfig(num_problems=size, num_controls=max(3, size // 4), threshold=threshold, layer=layer,
                               warmup=1)
    report = guarded(lambda: run_compute_eval(model, config, progress=partial(_progress, bar)),
                     what="evaluating the hand-off", key=state.COMPUTE_EVAL_RETRY_CPU)
    bar.empty()
    if report is not None:
        st.session_state[state.COMPUTE_EVAL_RESULTS] = report.to_dict()
if results := st.session_state.get(state.COMPUTE_EVAL_RESULTS):
    st.markdown("**This session's run**")
    _show_report(results)
try:
    saved = latest_report(RESULTS_DIR)
except ValueError as error:
    saved = None
    st.warning(str(error))
if saved is not None:
    path, data = saved
    # Folded: its three tables and chart were a fifth of the browser's work to open this page (bench/browser_cost.py
    # --pages), which under the 8-session load made it the slowest page to render.
    with st.expander(f"Last saved run, {data['config']['num_problems']} problems: exact answers "
                     f"{exact_answers_line(data)} (`{path.relative_to(REPO_ROOT)}`, `python -m pimoe eval-compute`)"):
        _show_report(data)

st.subheader("On text nobody tuned for")
st.caption("Routing accuracy on the training templates (in-template) and on held-out templates, wording, languages and "
           "operand ranges (out-of-template, `pimoe/lm/heldout.py`), each text beside the all-language baseline "
           "(every token to its most common type) and the chance line k/E; and hand-off precision/recall on held-out "
           "text (7-12 digit operands, powers, percentages, prices; controls with dates, phone numbers, assignments). "
           + TAGGER_NOTE)
if st.button("Measure on held-out text", key=state.COMPUTE_HELDOUT_RUN):
    measured = guarded(lambda: {"routing": routing_report(model),
                                "handoff": heldout_handoff_report(model, count=5, threshold=threshold, layer=layer)},
                       what="measuring on held-out text", key=state.COMPUTE_EVAL_RETRY_CPU)
    if measured is not None:
        st.session_state[state.COMPUTE_HELDOUT_RESULTS] = measured
if heldout := st.session_state.get(state.COMPUTE_HELDOUT_RESULTS):
    st.markdown("**This session's measurement** (5 documents per held-out kind)")
    _show_generalisation(heldout, state.COMPUTE_HELDOUT_CHART)
