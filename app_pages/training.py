"""Live training: train a fresh PiMoE-LM in the background and watch losses, loads and routing evolve."""

import math
import time

import streamlit as st

from studio import state, training_session
from studio.canvas_chart import show_chart
from studio.fresh_model import size_label
from studio.guard import in_fragment_rerun, request_waiting, switch_to_cpu
from studio.settings import current_settings
from studio.training import CONTROLLER_LIMITS
from studio.training_view import DETAIL_CHARTS, MAIN_CHARTS, training_figures

settings = current_settings()
# Statuses that show the same buttons and polling: moving within a group needs no full rerun of the page.
BUTTON_STATES = {"idle": "idle", "starting": "active", "running": "active", "paused": "paused",
                 "finished": "done", "stopped": "done", "error": "done"}

st.title("Live training")
st.caption("Trains a freshly initialised PiMoE-LM (the demo size, with the sidebar's expert set) on the synthetic "
           "corpus of arithmetic and logic word problems, with token-type routing labels. Training runs on the "
           "server's training worker, which takes every session's runs in turn; the page's address holds the run's "
           "id, so a refresh comes back to it. The sidebar's temperature and load-balance weight apply to the "
           "running model and are marked on the charts.")

if lost := st.session_state.pop(state.TRAIN_LOST_RUN, None):
    st.warning(f"Run {lost} is no longer on the server: a run stops and is freed once its browser session has been "
               "gone for a few seconds, and the server may have restarted. Start a new one below.")
if settings.device.startswith("cuda"):
    st.radio("Model size", ["demo", "gpu"], key=state.TRAIN_SIZE, horizontal=True,
             format_func=size_label,
             help="On a GPU a tiny model is bound by kernel launches; the GPU preset gives the GPU real work. Steps "
                  "run in bf16 autocast on the fast path's differentiable kernels.")
adaptive = st.session_state.get(state.TRAIN_ADAPTIVE, True)
runner, note = training_session.sync_runner(settings, adaptive)
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
limits = CONTROLLER_LIMITS
buttons[4].toggle("Adaptive controller", True, key=state.TRAIN_ADAPTIVE, persist_state="session",
                  help="After every training step, score the routing (balance, MaxVio, accuracy, ...) and, below the "
                       "threshold, move each router's selection bias and load-balance weight within the bounds shown "
                       "below the buttons. It never acts in eval mode. Changing it rebuilds the model.")
if adaptive:
    st.caption(f"Adaptive controller bounds: load-balance weight {limits['min_load_balance_weight']:g}–"
               f"{limits['max_load_balance_weight']:g} (the sidebar slider's range), temperature "
               f"{limits['min_temperature']:g}–{limits['max_temperature']:g}, selection bias ±{limits['max_bias']:g}. "
               "It stops raising the load-balance weight while routing accuracy is more than 0.05 below its best.")
probe = st.text_input("Probe sentence", training_session.DEFAULT_PROBE, key=state.TRAIN_PROBE, persist_state="session",
                      help="Routed through the model about once a second while it trains.")
runner.set_probe(probe)

if message := st.session_state.pop(state.TRAIN_STEP_NOTE, None):
    st.info(message)
if training_session.server_busy():
    st.warning("The server is already running its maximum number of live trainings. Try again in a moment.")


def knob_metric(column, label: str, used: float, requested: float) -> None:
    """A knob's value in use; when the controller moved it away from the sidebar's value, say so."""
    by_controller = not math.isclose(used, requested, rel_tol=1e-6, abs_tol=1e-12)
    column.metric(label, f"{used:.4g}", delta="set by the controller" if by_controller else None,
                  delta_color="off", help=f"Sidebar value {requested:g}. The value the model's routers use now.")


def cached_figures(snapshot, layer: int, refresh_s: float, which: tuple[str, ...]) -> dict:
    """The charts in `which`, rebuilt only when something new arrived, and for new steps at most every `refresh_s`: a
    rebuild costs the server a chart spec and the browser a redraw."""
    key = (snapshot.run_id, layer, len(snapshot.events), snapshot.step, snapshot.probe_step)
    caches = st.session_state.setdefault(state.TRAIN_FIGURES, {})
    cached = caches.get(which)
    now = time.monotonic()
    # A new run, layer or user event (a marker every chart must show) redraws at once; new steps wait their turn.
    live = snapshot.status in ("running", "starting")  # a paused or finished run shows its last step at once
    fresh = cached is not None and (cached[0] == key or live and cached[0][:3] == key[:3]
                                    and now - cached[1] < 0.9 * refresh_s)  # the fragment runs every refresh_s
    if not fresh:
        cached = caches[which] = (key, now, training_figures(snapshot, layer, which))
    return cached[2]


# One fragment run a second, most of it spent waiting for steps and drawing each as it lands. Every fragment run costs
# the browser a re-render of the page around it: at 0.5 s a live-training tab took 0.50 s of chromium main-thread time
# per second under the 8-session load, at 1 s 0.27-0.32, and the runs took 25% more steps (bench/load_sessions.py runs
# 48 and 49, this 2-core machine, 2026-12-06). Before the fragment waited for steps, a 1 s tick left a step unshown
# for up to 2 s.
METRICS_EVERY_S = 1.0


def draw_metrics(runner, snapshot) -> None:
    if snapshot.error:
        st.error(f"Training stopped: {snapshot.error}.")
        if snapshot.out_of_memory:
            st.button("Retry on CPU", key=state.TRAIN_RETRY_CPU, on_click=switch_to_cpu, type="primary")
    last = snapshot.records[-1] if snapshot.records else None
    cols = st.columns(7)
    cols[0].metric("Status", snapshot.status)
    cols[1].metric("Step", snapshot.step)
    cols[2].metric("Loss", f"{last.loss:.3f}" if last else "–")
    accuracy = last.routing_accuracy if last else math.nan
    cols[3].metric("Routing accuracy", "–" if math.isnan(accuracy) else f"{accuracy:.1%}")
    cols[4].metric("Step time", f"{last.step_ms:.0f} ms" if last else "–",
                   help="Forward + backward + optimiser update.")
    if last is None:
        cols[5].metric("Load-balance weight", f"{runner.requested['load_balance_weight']:.4g}")
        cols[6].metric("Temperature", f"{runner.requested['temperature']:.4g}")
        st.info("Press **Start** to train. Steps appear here as they finish.")
        return
    used = runner.knobs_in_use() or runner.requested
    knob_metric(cols[5], "Load-balance weight", used["load_balance_weight"], runner.requested["load_balance_weight"])
    knob_metric(cols[6], "Temperature", used["temperature"], runner.requested["temperature"])
    guard = [c for c in (last.adaptation or {}).get("changes", []) if "accuracy guard" in c]
    if guard:
        st.warning(f"The adaptive controller is easing off balancing to protect routing accuracy: {guard[0]}. It "
                   "lowers the load-balance weight and holds the selection bias until accuracy recovers.")


# The part of each poll interval a metrics rerun spends waiting for the next step. Not all of it: the gap lets the
# session's script go idle between polls, as the browser's "running" state and a page's other fragments expect.
METRICS_WAIT_SHARE = 0.85
METRICS_MIN_GAP_S = 0.1


@st.fragment(run_every=METRICS_EVERY_S if status in ("running", "starting") else None)
def live_view() -> None:
    """Draws the run's metrics, then, in a rerun of this fragment, waits for the run's next step and redraws the moment
    it lands. Drawn only at each poll, a step waited for the next tick and then for the rerun: 0.3 s on average and up
    to 1 s under the 8-session load. The wait holds no lock and no CPU, and ends as soon as anything else (a click,
    another fragment's rerun) is queued for the session; the page's first run never waits (its charts follow)."""
    runner = training_session.current_runner()
    if runner is None:
        st.rerun()
    slot = st.empty()
    others_waiting = request_waiting()
    until = time.monotonic() + (METRICS_WAIT_SHARE * METRICS_EVERY_S if in_fragment_rerun() else 0.0)
    snapshot = runner.snapshot()
    while True:
        if BUTTON_STATES.get(snapshot.status) != BUTTON_STATES.get(status):
            st.rerun()  # the run finished or failed on its own: redraw the buttons
        with slot.container():
            draw_metrics(runner, snapshot)
        drawn_at = time.monotonic()
        if snapshot.status not in ("running", "starting") or drawn_at >= until:
            return
        while not runner.wait_for_news(len(snapshot.records), snapshot.status, 0.05):
            if time.monotonic() >= until or others_waiting():
                return
        # a fast run (a GPU step takes milliseconds) is drawn at most every METRICS_MIN_GAP_S
        time.sleep(max(0.0, min(drawn_at + METRICS_MIN_GAP_S, until) - time.monotonic()))
        snapshot = runner.snapshot()


# The charts live in fragments of their own: the loss and accuracy every few seconds (2 s for one run on the server,
# longer with more), the layer's load, latency, probe and adaptation charts DETAIL_EVERY times less often. One chart
# redraw costs a browser about a tenth of a CPU-second in software rendering; all six every 2 s took a page 0.42 s of
# main-thread time per second against 0.06 for the metrics alone (2026-12-06, this 2-core machine's chromium).
DETAIL_EVERY = 3
LIVE = status in ("running", "starting")
CHART_EVERY_S = training_session.chart_refresh_s(training_session.live_runs())


def current_snapshot():
    runner = training_session.current_runner()
    return runner, (runner.snapshot() if runner is not None else None)


def layer_count(runner, snapshot) -> int:
    return len(snapshot.records[-1].load) if snapshot.records else runner.spec.num_layers


@st.fragment(run_every=CHART_EVERY_S if LIVE else None)
def charts_view() -> None:
    runner, snapshot = current_snapshot()
    if snapshot is None:
        return
    # Before the first step the charts are drawn empty: the user sees what is coming, and the browser loads and lays out
    # the plotting library when the page opens rather than all at once when several runs take their first step.
    refresh_s = training_session.chart_refresh_s(training_session.live_runs())
    layer = min(st.session_state.get(state.TRAIN_LAYER, 0), layer_count(runner, snapshot) - 1)
    figures = cached_figures(snapshot, layer, refresh_s, MAIN_CHARTS)
    if not snapshot.records:
        st.caption("The charts fill in from the first step.")
    elif snapshot.status in ("running", "starting"):
        runs_now = training_session.live_runs()
        st.caption(f"The metrics above show every step; the loss and accuracy redraw every {refresh_s:g} s and the "
                   f"charts below them every {DETAIL_EVERY * refresh_s:g} s while {runs_now} "
                   f"run{'s' if runs_now != 1 else ''} train on this server (more runs, longer intervals: the server keeps up with every session).")
    left, right = st.columns(2)
    with left:
        show_chart(figures["loss"], key=state.TRAIN_LOSS_CHART)
    with right:
        show_chart(figures["accuracy"], key=state.TRAIN_ACCURACY_CHART)


@st.fragment(run_every=DETAIL_EVERY * CHART_EVERY_S if LIVE else None)
def detail_view() -> None:
    if state.TRAIN_STEP_NOTE in st.session_state:
        st.rerun()  # a button here (Use in the Routing lab) left a note: the whole page shows it and the new model
    runner, snapshot = current_snapshot()
    if snapshot is None:
        return
    last = snapshot.records[-1] if snapshot.records else None
    num_layers = layer_count(runner, snapshot)
    layer = st.radio("Layer", list(range(num_layers)), key=state.TRAIN_LAYER, persist_state="session", horizontal=True,
                     help="The expert load, probe and adaptation charts show this layer.")
    refresh_s = DETAIL_EVERY * training_session.chart_refresh_s(training_session.live_runs())
    figures = cached_figures(snapshot, min(layer, num_layers - 1), refresh_s, DETAIL_CHARTS)
    left, right = st.columns(2)
    with left:
        show_chart(figures["load"], key=state.TRAIN_LOAD_CHART)
    with right:
        show_chart(figures["latency"], key=state.TRAIN_LATENCY_CHART)
    show_chart(figures["probe"], key=state.TRAIN_PROBE_CHART)
    show_chart(figures["adaptation"], key=state.TRAIN_ADAPTATION_CHART)
    if last is not None and last.adaptation and last.adaptation.get("changes"):
        with st.expander(f"Controller at step {last.step}: score {last.adaptation['performance_score']:.3f}"):
            st.write("\n".join(f"- {change}" for change in last.adaptation["changes"]))
    if last is not None:
        save_section(runner)


def save_section(runner) -> None:
    """Checkpoint and metrics downloads. Drawn with the charts, so the first step shows it without a full rerun
    (a rerun of every widget on the page, which with several runs starting at once stalled their pages)."""
    st.subheader("Save this run")
    st.caption("The checkpoint is a safetensors file with the model's config inside; load it on any page with "
               "sidebar → Model → Upload a checkpoint, or with `pimoe.lm.checkpoint.load_checkpoint`. The metrics "
               "hold one row per step.")
    save = st.columns(4)
    save[0].download_button("Checkpoint (.safetensors)", training_session.checkpoint_bytes,
                            file_name=f"pimoe-run-{runner.run_id}.safetensors", mime="application/octet-stream",
                            key=state.TRAIN_SAVE_CHECKPOINT, on_click="ignore", width="stretch")
    save[1].download_button("Metrics (.csv)", runner.metrics_csv, file_name=f"pimoe-run-{runner.run_id}.csv",
                            mime="text/csv", key=state.TRAIN_SAVE_CSV, on_click="ignore", width="stretch")
    save[2].download_button("Metrics (.json)", runner.metrics_json, file_name=f"pimoe-run-{runner.run_id}.json",
                            mime="application/json", key=state.TRAIN_SAVE_JSON, on_click="ignore", width="stretch")
    save[3].button("Use in the Routing lab", key=state.TRAIN_TO_LAB, on_click=training_session.use_in_routing_lab,
                   width="stretch", help="Makes the run's current model the model in use on every page.")


live_view()
charts_view()
detail_view()

