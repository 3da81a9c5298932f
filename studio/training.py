"""Live training for one browser session: a background thread that owns a Trainer, and snapshots for the page.

Why a thread: a training step takes from tens of milliseconds to seconds on a shared CPU. Run inside the page script, it
would block every widget of the session while it runs. The thread steps continuously; the page's fragment
(`st.fragment(run_every=1.0)`) only copies a snapshot and draws it, so the UI stays responsive.

Isolation: each session builds its own TrainingRunner with its own freshly initialised model (never the shared one),
Trainer, corpus iterator and history, and keeps it in its own session state. Model compute (each step, each probe) holds
the process-wide compute lock, so sessions and the routing lab take turns on the device.

Lifetime: the thread ends when the user resets, when it reaches `max_steps`, or when Streamlit reports the session gone
(the tab was closed); it is a daemon thread, so it never keeps the server alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pimoe.adaptive.controller import AdaptationConfig, AdaptiveController
from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import PiMoELM, TextRouting
from pimoe.lm.train import StepRecord, TrainConfig, Trainer

from .engine import fresh_lm_config

__all__ = ["RunSpec", "TrainingRunner", "TrainingSnapshot"]

_LOG = logging.getLogger(__name__)
PROBE_EVERY_S = 1.0  # re-route the probe sentence at most this often: its heatmap is drawn about once a second


@dataclass(frozen=True)
class RunSpec:
    """What a run trains: the sidebar's expert set, device and router knobs at the moment it was (re)built."""

    expert_types: tuple[str, ...]
    num_experts: int
    device: str
    temperature: float
    load_balance_weight: float
    adaptive: bool
    capacity_factor: float | None = None
    max_steps: int = 2000
    batch_size: int = 8
    seq_len: int = 64
    seed: int = 0

    @property
    def expert_set(self) -> tuple[tuple[str, ...], int]:
        return self.expert_types, self.num_experts


@dataclass
class TrainingSnapshot:
    """A consistent copy of a run's state for drawing: records in step order, user events as (step, label)."""

    status: str  # "idle", "starting", "running", "paused", "finished", "stopped", "error"
    records: list[StepRecord]
    events: list[tuple[int, str]]
    probe: TextRouting | None
    probe_step: int
    error: str | None = None
    out_of_memory: bool = False
    expert_types: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.records[-1].step if self.records else 0


def session_alive_check(session_id: str | None) -> Callable[[], bool]:
    """A function telling whether the Streamlit session is still connected (always True outside a server)."""
    if session_id is None:
        return lambda: True
    from streamlit import runtime

    def alive() -> bool:
        if not runtime.exists():
            return True
        active = runtime.get_instance().is_active_session(session_id)
        return active if isinstance(active, bool) else True  # AppTest's stand-in runtime answers with a mock

    return alive


class TrainingRunner:
    """Start / pause / resume / stop a training run in a background thread; read it with `snapshot()`.

    compute_lock: held around every model call. slots: a process-wide semaphore bounding concurrent runs.
    alive: returns False once the owning session is gone, which stops the thread.
    """

    def __init__(self, spec: RunSpec, probe_text: str, compute_lock: threading.Lock,
                 slots: threading.Semaphore, alive: Callable[[], bool] = lambda: True) -> None:
        self.spec = spec
        self._compute_lock = compute_lock
        self._slots = slots
        self._alive = alive
        self._state_lock = threading.Lock()  # guards everything below that the page reads
        self._status = "idle"
        self._records: list[StepRecord] = []
        self._events: list[tuple[int, str]] = []
        self._probe_text = probe_text
        self._probe: TextRouting | None = None
        self._probe_step = 0
        self._error: str | None = None
        self._out_of_memory = False
        self._commands: dict[str, float] = {}
        self._run = threading.Event()  # set while running, cleared while paused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requested = {"temperature": spec.temperature, "load_balance_weight": spec.load_balance_weight}

    # --- controls (page thread) -----------------------------------------------------------------------------

    @property
    def status(self) -> str:
        with self._state_lock:
            return self._status

    def start(self) -> bool:
        """Start the thread; False when the server already runs its maximum number of trainings."""
        if self._thread is not None:
            return True
        if not self._slots.acquire(blocking=False):
            return False
        self._set_status("starting")
        self._run.set()
        self._thread = threading.Thread(target=self._main, name="pimoe-training", daemon=True)
        self._thread.start()
        return True

    def pause(self) -> None:
        self._run.clear()
        with self._state_lock:
            if self._status in ("running", "starting"):
                self._status = "paused"

    def resume(self) -> None:
        with self._state_lock:
            if self._status == "paused":
                self._status = "running"
        self._run.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for its current step to finish."""
        self._stop.set()
        self._run.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def set_knob(self, name: str, value: float) -> None:
        """Queue a temperature or load-balance-weight change; it applies before the next step and becomes an event."""
        if name not in self.requested:
            raise ValueError(f"unknown knob {name!r}; choose one of {sorted(self.requested)}")
        self.requested[name] = value
        with self._state_lock:
            self._commands[name] = float(value)

    def set_probe(self, text: str) -> None:
        with self._state_lock:
            self._probe_text = text

    def snapshot(self) -> TrainingSnapshot:
        with self._state_lock:
            return TrainingSnapshot(status=self._status, records=list(self._records), events=list(self._events),
                                    probe=self._probe, probe_step=self._probe_step, error=self._error,
                                    out_of_memory=self._out_of_memory, expert_types=self._expert_types())

    def _expert_types(self) -> list[str]:
        return [self.spec.expert_types[i % len(self.spec.expert_types)] for i in range(self.spec.num_experts)]

    # --- the thread -----------------------------------------------------------------------------------------

    def _set_status(self, status: str) -> None:
        with self._state_lock:
            self._status = status

    def _build(self) -> tuple[PiMoELM, Trainer]:
        spec = self.spec
        torch.manual_seed(spec.seed)
        model = PiMoELM(fresh_lm_config(spec.expert_types, spec.num_experts, spec.capacity_factor,
                                        use_selection_bias=spec.adaptive))
        config = TrainConfig(steps=spec.max_steps, batch_size=spec.batch_size, seq_len=spec.seq_len, device=spec.device,
                             temperature=spec.temperature, load_balance_weight=spec.load_balance_weight,
                             seed=spec.seed, corpus=CorpusConfig(seed=spec.seed, num_train=2000, num_val=100))
        # Type-supervised training asks for uneven load across types; the controller balances within each type.
        adaptation = AdaptationConfig(history_size=spec.max_steps, balance_within_types=config.routing_mode == "supervised")
        controller = AdaptiveController(adaptation) if spec.adaptive else None
        with self._compute_lock:
            trainer = Trainer(model, config, controller=controller)
        return model, trainer

    def _main(self) -> None:
        try:
            model, trainer = self._build()
            with self._state_lock:
                if self._status == "starting":
                    self._status = "running"
            last_probe = 0.0
            while not self._stop.is_set():
                if not self._alive():
                    self._set_status("stopped")
                    _LOG.info("training stopped: its session ended")
                    return
                if not self._run.wait(timeout=0.5):
                    continue
                if self._stop.is_set():
                    break
                if trainer.state.step >= self.spec.max_steps:
                    self._set_status("finished")
                    return
                self._apply_commands(trainer)
                with self._compute_lock:
                    record = trainer.step()
                probe = None
                if time.monotonic() - last_probe >= PROBE_EVERY_S:
                    with self._state_lock:
                        probe_text = self._probe_text
                    with self._compute_lock:
                        probe = model.route_text(probe_text) if probe_text.strip() else None
                    last_probe = time.monotonic()
                with self._state_lock:
                    self._records.append(record)
                    self._events.extend((record.step, event) for event in record.events)
                    if probe is not None:
                        self._probe, self._probe_step = probe, record.step
            self._set_status("stopped")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            with self._state_lock:
                self._status, self._error, self._out_of_memory = "error", "the GPU ran out of memory", True
        except Exception as error:  # the page shows it; the server must not lose the thread silently
            _LOG.exception("training thread failed")
            with self._state_lock:
                self._status, self._error = "error", f"{type(error).__name__}: {error}"
        finally:
            self._slots.release()

    def _apply_commands(self, trainer: Trainer) -> None:
        with self._state_lock:
            commands, self._commands = self._commands, {}
        if "temperature" in commands:
            trainer.set_temperature(commands["temperature"])
        if "load_balance_weight" in commands:
            trainer.set_load_balance_weight(commands["load_balance_weight"])
