"""The live-training page's session glue: one TrainingRunner per session, kept in step with the sidebar, and the
callbacks behind the Start / Pause / Resume / Reset buttons."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from . import state
from .engine import compute_lock, training_slots
from .settings import Settings
from .training import RunSpec, TrainingRunner, session_alive_check

__all__ = ["DEFAULT_PROBE", "current_runner", "pause", "reset", "resume", "server_busy", "start", "sync_runner"]

DEFAULT_PROBE = "If 12 + 30 = 42 then the answer is even, so we say yes."


def _spec(settings: Settings, adaptive: bool) -> RunSpec:
    return RunSpec(expert_types=settings.expert_types, num_experts=settings.num_experts, device=settings.device,
                   temperature=settings.temperature, load_balance_weight=settings.load_balance_weight,
                   adaptive=adaptive, capacity_factor=settings.capacity_factor)


def _new_runner(spec: RunSpec) -> TrainingRunner:
    ctx = get_script_run_ctx()
    probe = st.session_state.get(state.TRAIN_PROBE) or DEFAULT_PROBE
    runner = TrainingRunner(spec, probe, compute_lock(), training_slots(),
                            alive=session_alive_check(ctx.session_id if ctx else None))
    st.session_state[state.TRAIN_RUNNER] = runner
    return runner


def current_runner() -> TrainingRunner | None:
    return st.session_state.get(state.TRAIN_RUNNER)


def sync_runner(settings: Settings, adaptive: bool) -> tuple[TrainingRunner, str | None]:
    """This session's runner, matching the sidebar: a new expert set, device, capacity or controller choice rebuilds
    the model (restarting the run if it was running); a new temperature or load-balance weight is sent to the running
    trainer as an event. Returns the runner and a message when something was rebuilt."""
    spec = _spec(settings, adaptive)
    runner = current_runner()
    if runner is None:
        return _new_runner(spec), None
    old = runner.spec
    structural = (old.expert_set, old.device, old.capacity_factor, old.adaptive)
    if structural != (spec.expert_set, spec.device, spec.capacity_factor, spec.adaptive):
        status = runner.status
        runner.stop()
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
            runner = _new_runner(spec)
        return runner, None
    for name, value in (("temperature", settings.temperature), ("load_balance_weight", settings.load_balance_weight)):
        if runner.requested[name] != value:
            runner.set_knob(name, value)
    return runner, None


def _start(runner: TrainingRunner) -> None:
    st.session_state[state.TRAIN_BUSY] = not runner.start()


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


def reset() -> None:
    runner = current_runner()
    if runner is not None:
        runner.stop()
        _new_runner(runner.spec)


def server_busy() -> bool:
    """True once, after Start found every training slot of the server taken."""
    return bool(st.session_state.pop(state.TRAIN_BUSY, False))
