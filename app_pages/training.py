"""Live training: train a fresh PiMoE-LM in the background and watch losses, loads and routing evolve."""

import math

import streamlit as st

from studio import state, training_session
from studio.guard import switch_to_cpu
from studio.settings import current_settings
from studio.training_view import training_figures

settings = current_settings()
CHART = {"displaylogo": False}

st.title("Live training")
st.caption("Trains a freshly initialised PiMoE-LM (the demo size, with the sidebar's expert set) on the synthetic "
           "corpus of arithmetic and logic word problems, with token-type routing labels. Training runs in the "
           "background for this browser session only; the sidebar's temperature and load-balance weight apply to the "
           "running model and are marked on the charts.")

runner, note = training_session.sync_runner(settings, st.session_state.get(state.TRAIN_ADAPTIVE, True))
if note:
    st.session_state[state.TRAIN_STEP_NOTE] = note
status = runner.status

buttons = st.columns([1, 1, 1, 1, 3])
buttons[0].button("Start", key=state.TRAIN_START, on_click=training_session.start, type="primary",
                  disabled=status != "idle", width="stretch")
buttons[1].button("Pause", key=state.TRAIN_PAUSE, on_click=training_session.pause,
                  disabled=status not in ("running", "starting"), width="stretch")
buttons[2].button("Resume", key=state.TRAIN_RESUME, on_click=training_session.resume, disabled=status != "paused",
                  width="stretch")
buttons[3].button("Reset", key=state.TRAIN_RESET, on_click=training_session.reset, disabled=status == "idle",
                  width="stretch")
buttons[4].toggle("Adaptive controller", True, key=state.TRAIN_ADAPTIVE, persist_state="session",
                  help="After every step, score the routing (balance, MaxVio, accuracy, ...) and, below the threshold, "
                       "move each router's selection bias and load-balance weight. Changing it rebuilds the model.")
probe = st.text_input("Probe sentence", training_session.DEFAULT_PROBE, key=state.TRAIN_PROBE, persist_state="session",
                      help="Routed through the model about once a second while it trains.")
runner.set_probe(probe)

if message := st.session_state.pop(state.TRAIN_STEP_NOTE, None):
    st.info(message)
if training_session.server_busy():
    st.warning("The server is already running its maximum number of live trainings. Try again in a moment.")


@st.fragment(run_every=1.0 if status in ("running", "starting") else None)
def live_view() -> None:
    runner = training_session.current_runner()
    snapshot = runner.snapshot()
    if snapshot.status != status:
        st.rerun()  # the run finished or failed on its own: redraw the buttons and stop polling
    if snapshot.error:
        st.error(f"Training stopped: {snapshot.error}.")
        if snapshot.out_of_memory:
            st.button("Retry on CPU", key=state.TRAIN_RETRY_CPU, on_click=switch_to_cpu, type="primary")
    last = snapshot.records[-1] if snapshot.records else None
    cols = st.columns(6)
    cols[0].metric("Status", snapshot.status)
    cols[1].metric("Step", snapshot.step)
    cols[2].metric("Loss", f"{last.loss:.3f}" if last else "–")
    accuracy = last.routing_accuracy if last else math.nan
    cols[3].metric("Routing accuracy", "–" if math.isnan(accuracy) else f"{accuracy:.1%}")
    cols[4].metric("Tokens / s", f"{last.tokens_per_s:,.0f}" if last else "–")
    cols[5].metric("Step time", f"{last.step_ms:.0f} ms" if last else "–",
                   help="Forward + backward + optimiser update.")
    if not snapshot.records:
        st.info("Press **Start** to train. Steps appear here as they finish.")
        return
    num_layers = len(last.load)
    layer = st.radio("Layer", list(range(num_layers)), key=state.TRAIN_LAYER, persist_state="session", horizontal=True)
    figures = training_figures(snapshot, min(layer, num_layers - 1))
    left, right = st.columns(2)
    left.plotly_chart(figures["loss"], key=state.TRAIN_LOSS_CHART, config=CHART)
    right.plotly_chart(figures["accuracy"], key=state.TRAIN_ACCURACY_CHART, config=CHART)
    left.plotly_chart(figures["load"], key=state.TRAIN_LOAD_CHART, config=CHART)
    right.plotly_chart(figures["latency"], key=state.TRAIN_LATENCY_CHART, config=CHART)
    if "probe" in figures:
        st.plotly_chart(figures["probe"], key=state.TRAIN_PROBE_CHART, config=CHART)
    st.plotly_chart(figures["adaptation"], key=state.TRAIN_ADAPTATION_CHART, config=CHART)
    if last.adaptation and last.adaptation.get("changes"):
        with st.expander(f"Controller at step {last.step}: score {last.adaptation['performance_score']:.3f}"):
            st.write("\n".join(f"- {change}" for change in last.adaptation["changes"]))


live_view()
