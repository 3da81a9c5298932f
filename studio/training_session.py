"""The live-training page's session glue: this session's run (found in the training worker's registry by the run id
kept in session state and in the URL), kept in step with the sidebar, and the callbacks behind the page's buttons.

Why the run id is in the URL (`?run=...`): a refresh starts a new Streamlit session with empty session state. The id
in the address is what the new session finds the run by; `restore_from_url` runs before the sidebar is drawn so it can
also put the run's settings back into the sidebar's widgets.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from . import state
from .engine import (
    MAX_CONCURRENT_TRAININGS,
    ModelSource,
    compute_lock,
    detect_devices,
    training_scheduler,
    upload_digest,
)
from .fresh_model import MODEL_SIZES
from .settings import Settings
from .training import RunSpec, TrainingRunner

__all__ = ["DEFAULT_PROBE", "RUN_PARAM", "chart_refresh_s", "checkpoint_bytes", "current_runner", "live_runs", "pause", "reset", "restore_from_url",
           "resume", "server_busy", "start", "sync_runner", "use_in_routing_lab"]

DEFAULT_PROBE = "If 12 + 30 = 42 then the answer is even, so we say yes."
RUN_PARAM = "run"
CHART_REFRESH_MIN_S, CHART_REFRESH_PER_RUN_S, CHART_REFRESH_MAX_S = 2.0, 1.5, 8.0


def _session_id() -> str | None:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else None


def _spec(settings: Settings, adaptive: bool) -> RunSpec:
    size = st.session_state.get(state.TRAIN_SIZE, "demo") if settings.device.startswith("cuda") else "demo"
    _, batch_size, seq_len = MODEL_SIZES[size]
    return RunSpec(expert_types=settings.expert_types, num_experts=settings.num_experts, device=settings.device,
                   temperature=settings.temperature, load_balance_weight=settings.load_balance_weight,
                   adaptive=adaptive, capacity_factor=settings.capacity_factor, size=size, batch_size=batch_size,
                   seq_len=seq_len)


def _new_runner(spec: RunSpec) -> TrainingRunner:
    probe = st.session_state.get(state.TRAIN_PROBE) or DEFAULT_PROBE
    runner = TrainingRunner(spec, probe)
    training_scheduler().add(runner, owner=_session_id())
    st.session_state[state.TRAIN_RUN_ID] = runner.run_id
    return runner


def _drop(runner: TrainingRunner) -> None:
    training_scheduler().remove(runner.run_id)


def current_runner() -> TrainingRunner | None:
    run_id = st.session_state.get(state.TRAIN_RUN_ID)
    return training_scheduler().get(run_id) if run_id else None


def restore_from_url() -> None:
    """Called before the sidebar is drawn: when the URL names a run this session does not hold yet (a refresh, a
    reconnect, a second tab), take the run over and set the sidebar to the settings it was built with."""
    run_id = st.query_params.get(RUN_PARAM)
    if not run_id or run_id == st.session_state.get(state.TRAIN_RUN_ID):
        return
    runner = training_scheduler().attach(run_id, _session_id())
    if runner is None:
        st.session_state[state.TRAIN_LOST_RUN] = run_id
        return
    spec = runner.spec
    st.session_state[state.TRAIN_RUN_ID] = run_id
    st.session_state[state.EXPERT_TYPES] = list(dict.fromkeys(spec.expert_types))
    st.session_state[state.NUM_EXPERTS] = spec.num_experts
    st.session_state[state.CAPACITY_FACTOR] = spec.capacity_factor or 0.0
    st.session_state[state.TEMPERATURE] = runner.requested["temperature"]
    st.session_state[state.LOAD_BALANCE_WEIGHT] = runner.requested["load_balance_weight"]
    st.session_state[state.TRAIN_ADAPTIVE] = spec.adaptive
    if spec.device in {option.id for option in detect_devices()}:
        st.session_state[state.DEVICE] = spec.device


def sync_runner(settings: Settings, adaptive: bool) -> tuple[TrainingRunner, str | None]:
    """This session's runner, matching the sidebar: a new expert set, device, capacity or controller choice rebuilds
    the model (restarting the run if it was running); a new temperature or load-balance weight is sent to the running
    trainer as an event. Returns the runner and a message when something was rebuilt. Puts the run id in the URL."""
    spec = _spec(settings, adaptive)
    runner = current_runner()
    if runner is None:
        runner = _new_runner(spec)
    else:
        runner, note = _follow_sidebar(runner, spec, settings)
        if note:
            st.query_params[RUN_PARAM] = runner.run_id
            return runner, note
    st.query_params[RUN_PARAM] = runner.run_id
    return runner, None


def _follow_sidebar(runner: TrainingRunner, spec: RunSpec, settings: Settings) -> tuple[TrainingRunner, str | None]:
    old = runner.spec
    structural = (old.expert_set, old.device, old.capacity_factor, old.adaptive, old.size)
    if structural != (spec.expert_set, spec.device, spec.capacity_factor, spec.adaptive, spec.size):
        status = runner.status
        _drop(runner)
        runner = _new_runner(spec)
        if status == "idle":
            return runner, None
        restart = status in ("running", "starting")
        if restart:
            _start(runner)
        types = ", ".join(dict.fromkeys(spec.expert_types))
        return runner, (f"Settings changed: rebuilt the model with {spec.num_experts} experts ({types}) on "
                        f"{spec.device}{', adaptive controller on' if spec.adaptive else ''}. Training "
                        f"{'restarted' if restart else 'reset'} at step 0.")
    if runner.status == "idle":
        if old != spec:
            _drop(runner)
            runner = _new_runner(spec)
        return runner, None
    for name, value in (("temperature", settings.temperature), ("load_balance_weight", settings.load_balance_weight)):
        if runner.requested[name] != value:
            runner.set_knob(name, value)
    return runner, None


def _busy_runs() -> int:
    scheduler = training_scheduler()
    runs = [scheduler.get(run_id) for run_id in scheduler.run_ids()]
    return sum(1 for run in runs if run is not None and run.wants_turn())


def chart_refresh_s(live_runs: int) -> float:
    """Seconds between chart redraws on a live-training page while `live_runs` runs train on this server.

    The step metrics show each step as it lands; a chart costs a browser about a tenth of a CPU-second per redraw in software
    rendering (2026-12-06, this machine's chromium), so with more live runs each page redraws its loss and accuracy
    less often: 2 s for one run, 1.5 s per run beyond that, at most 8 s (the layer charts take three times as long)."""
    return min(CHART_REFRESH_MAX_S, max(CHART_REFRESH_MIN_S, CHART_REFRESH_PER_RUN_S * live_runs))


def live_runs() -> int:
    """Runs of any session that are starting or running on this server now."""
    return _busy_runs()


def _start(runner: TrainingRunner) -> None:
    if _busy_runs() >= MAX_CONCURRENT_TRAININGS:
        st.session_state[state.TRAIN_BUSY] = True
        return
    runner.start()
    training_scheduler().wake()


def start() -> None:
    runner = current_runner()
    if runner is not None:
        _start(runner)


def pause() -> None:
    runner = current_runner()
    if runner is not None:
        runner.pause()


def resume() -> None:
    runner = current_runner()
    if runner is not None:
        runner.resume()
        training_scheduler().wake()


def reset() -> None:
    runner = current_runner()
    if runner is not None:
        _drop(runner)
        _new_runner(runner.spec)


def server_busy() -> bool:
    """True once, after Start found every training slot of the server taken."""
    return bool(st.session_state.pop(state.TRAIN_BUSY, False))


def checkpoint_bytes() -> bytes:
    """The current run's model as safetensors bytes (the download button's deferred data)."""
    runner = current_runner()
    if runner is None:
        raise ValueError("this session has no training run")
    return runner.checkpoint_bytes(compute_lock())


def use_in_routing_lab() -> None:
    """Button callback: make the run's current model this session's model in use (as an upload of its checkpoint),
    so the Routing lab and the other pages route with it."""
    runner = current_runner()
    if runner is None:
        return
    try:
        data = checkpoint_bytes()
    except ValueError as error:
        st.session_state[state.TRAIN_STEP_NOTE] = f"Nothing to load yet: {error}."
        return
    step = runner.snapshot().step
    digest = upload_digest(data, None)
    name = f"pimoe-run-{runner.run_id}-step{step}.safetensors"
    uploads = st.session_state.setdefault(state.UPLOADS, {})
    uploads.clear()  # one upload per session: the bytes live in session memory
    uploads[digest] = (data, None, name)
    st.session_state[state.ACTIVE_SOURCE] = ModelSource("upload", f"training run {runner.run_id} at step {step}",
                                                        digest)
    st.session_state[state.MODEL_SOURCE] = "upload"
    st.session_state[state.TRAIN_STEP_NOTE] = (f"The run's model at step {step} is now the model in use on every "
                                               "page (sidebar → Model). Open the Routing lab to see how it routes.")
