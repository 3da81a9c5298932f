"""Live training for one browser session: a run the server's training worker steps, and snapshots for the page.

Why a worker: a training step takes from tens of milliseconds to seconds on a shared CPU. Run inside the page script, it
would block every widget of the session while it runs. The worker (studio.scheduler) steps every session's runs in
turn; the page's fragment (`st.fragment(run_every=...)`) only copies a snapshot and draws it.

Isolation: each run has its own freshly initialised model (never the shared one), Trainer, corpus iterator and history.
It lives in the scheduler's registry under a run id, not in session state, so a refresh (a new session) finds it again
through the id in the URL. Model compute (each step, each probe) goes through the compute gate, one step at a time.

Lifetime: a run ends when the user resets it, when it reaches `max_steps`, or when its session has been gone for the
scheduler's grace period; `close()` then drops its model, optimiser and history so the memory is freed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from pimoe.adaptive.controller import AdaptationConfig, AdaptiveController
from pimoe.lm.checkpoint import checkpoint_document, json_safe
from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import PiMoELM, TextRouting
from pimoe.lm.train import StepRecord, TrainConfig, Trainer

from .fresh_model import MODEL_SIZES, fresh_lm_config
from .scheduler import ComputeGate

__all__ = ["CONTROLLER_LIMITS", "METRIC_COLUMNS", "RunSpec", "TrainingRunner", "TrainingSnapshot", "warm_training_path"]

_LOG = logging.getLogger(__name__)
PROBE_EVERY_S = 1.0  # re-route the probe sentence at most this often: its heatmap is drawn about once a second
# The controller's bounds in the dashboard: the sidebar sliders' ranges (load-balance weight 0..0.2, temperature
# 0.1..5), narrowed where a value would make the run useless. A controller free to go past the slider would set values
# the user can neither see on the slider nor set back.
CONTROLLER_LIMITS = {
    "min_load_balance_weight": 0.001,
    "max_load_balance_weight": 0.2,
    "min_temperature": 0.25,
    "max_temperature": 4.0,
    "max_bias": 1.0,
}
METRIC_COLUMNS = ("step", "loss", "lm_loss", "load_balance_loss", "z_loss", "supervised_loss", "routing_accuracy",
                  "tokens_per_s", "step_ms", "lr", "temperature", "load_balance_weight")


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
    size: str = "demo"  # a key of studio.fresh_model.MODEL_SIZES
    max_steps: int = 2000
    batch_size: int = 8
    seq_len: int = 64
    seed: int = 0

    @property
    def expert_set(self) -> tuple[tuple[str, ...], int]:
        return self.expert_types, self.num_experts

    @property
    def num_layers(self) -> int:
        return MODEL_SIZES[self.size][0]().num_layers


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
    run_id: str = ""

    @property
    def step(self) -> int:
        return self.records[-1].step if self.records else 0


def warm_training_path() -> None:
    """One step of a tiny run, so the one-time costs of the first training step (importing torch._dynamo for the
    optimiser, autograd's first backward) are paid when the server starts rather than by its first user."""
    try:
        runner = TrainingRunner(RunSpec(expert_types=("computation", "language"), num_experts=2, device="cpu",
                                        temperature=1.0, load_balance_weight=0.01, adaptive=True, batch_size=2,
                                        seq_len=16, max_steps=1), "1 + 1 = 2")
        runner.start()
        gate = ComputeGate()
        runner.advance(gate)  # build
        runner.advance(gate)  # one step
        runner.close()
    except Exception:  # a warm-up failure only means the first real run pays these costs itself
        _LOG.exception("training warm-up failed")


class TrainingRunner:
    """Start / pause / resume / stop one training run; the scheduler's worker calls `advance`, the page `snapshot()`.

    Statuses: idle (built nothing yet), starting (queued for the worker, which builds the model on its first turn),
    running, paused, finished (max_steps reached), stopped (reset, or its session left) and error.
    """

    def __init__(self, spec: RunSpec, probe_text: str, run_id: str | None = None) -> None:
        self.spec = spec
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._state_lock = threading.Lock()  # guards everything below that the page reads
        # Notified when a step lands or the status changes: a page waiting for news draws it at once instead of at its
        # next poll (wait_for_news).
        self._news = threading.Condition(self._state_lock)
        self._status = "idle"
        self._records: list[StepRecord] = []
        self._events: list[tuple[int, str]] = []
        self._probe_text = probe_text
        self._probe: TextRouting | None = None
        self._probe_step = 0
        self._last_probe = 0.0
        self._error: str | None = None
        self._out_of_memory = False
        self._commands: dict[str, float] = {}
        self._model: PiMoELM | None = None
        self._trainer: Trainer | None = None
        self.requested = {"temperature": spec.temperature, "load_balance_weight": spec.load_balance_weight}
        self.adaptation = self._adaptation_config() if spec.adaptive else None

    # --- controls (page threads) --------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        with self._state_lock:
            return self._status

    def start(self) -> None:
        """Queue the run for the worker (it builds the model on its first turn)."""
        with self._state_lock:
            if self._status == "idle":
                self._status = "starting"
                self._news.notify_all()

    def pause(self) -> None:
        with self._state_lock:
            if self._status in ("running", "starting"):
                self._status = "paused"
                self._news.notify_all()

    def resume(self) -> None:
        with self._state_lock:
            if self._status == "paused":
                self._status = "running" if self._trainer is not None else "starting"
                self._news.notify_all()

    def close(self, status: str = "stopped") -> None:
        """Stop for good and drop the model, optimiser and history (called by the scheduler, never mid-step)."""
        with self._state_lock:
            if self._status not in ("finished", "error"):
                self._status = status
            self._model = self._trainer = self._probe = None
            self._records, self._events = [], []
            self._news.notify_all()

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
                                    out_of_memory=self._out_of_memory, expert_types=self._expert_types(),
                                    run_id=self.run_id)

    def wait_for_news(self, step: int, status: str, timeout: float) -> bool:
        """Block up to `timeout` seconds until the run is past `step` or no longer in `status`; True if it is."""
        with self._news:
            return self._news.wait_for(lambda: len(self._records) != step or self._status != status, timeout)

    def knobs_in_use(self) -> dict[str, float] | None:
        """Temperature and load-balance weight the next step uses (layer 0), after the controller; None before the
        first step."""
        with self._state_lock:
            last = self._records[-1] if self._records else None
        if last is None:
            return None
        adapted = last.adaptation or {}
        return {"temperature": (adapted.get("temperature") or [last.temperature])[0],
                "load_balance_weight": (adapted.get("load_balance_weight") or [last.load_balance_weight])[0]}

    def _expert_types(self) -> list[str]:
        return [self.spec.expert_types[i % len(self.spec.expert_types)] for i in range(self.spec.num_experts)]

    # --- saving ---------------------------------------------------------------------------------------------------

    def checkpoint_bytes(self, gate: ComputeGate) -> bytes:
        """The model as a safetensors checkpoint with its config embedded (pimoe.lm.checkpoint's format), taken
        between two steps. ValueError before the first step (there is nothing trained to save)."""
        from safetensors.torch import save as save_safetensors_bytes

        from pimoe.lm.checkpoint import METADATA_KEY

        with gate.interactive():
            model = self._model
            if model is None:
                raise ValueError("the run has no model yet: start it and save after its first step")
            step = len(self._records)
            document = checkpoint_document(model, json_safe({
                "source": "PiMoE Studio live training", "run_id": self.run_id, "step": step,
                "spec": {**asdict(self.spec), "expert_types": list(self.spec.expert_types)},
            }))
            tensors = {name: t.detach().to("cpu").clone().contiguous() for name, t in model.state_dict().items()}
        return save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(document)})

    def metrics_csv(self) -> str:
        """One row per step: the METRIC_COLUMNS."""
        rows = self.snapshot().records
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(METRIC_COLUMNS)
        for record in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v
                             for v in (getattr(record, name) for name in METRIC_COLUMNS)])
        return out.getvalue()

    def metrics_json(self) -> str:
        """The whole run: its settings, the controller's bounds and every step record (NaN written as null)."""
        snapshot = self.snapshot()
        document = {
            "run_id": self.run_id,
            "spec": {**asdict(self.spec), "expert_types": list(self.spec.expert_types)},
            "controller": asdict(self.adaptation) if self.adaptation else None,
            "events": snapshot.events,
            "steps": [record.to_dict() for record in snapshot.records],
        }
        return json.dumps(json_safe(document), allow_nan=False)

    # --- the worker's side ------------------------------------------------------------------------------------------

    def wants_turn(self) -> bool:
        with self._state_lock:
            return self._status in ("starting", "running")

    def _adaptation_config(self) -> AdaptationConfig:
        # Type-supervised training asks for uneven load across types; the controller balances within each type.
        return AdaptationConfig(history_size=self.spec.max_steps, balance_within_types=True, **CONTROLLER_LIMITS)

    def _build(self) -> None:
        spec = self.spec
        torch.manual_seed(spec.seed)
        model = PiMoELM(fresh_lm_config(spec.expert_types, spec.num_experts, spec.capacity_factor,
                                        use_selection_bias=spec.adaptive, size=spec.size))
        config = TrainConfig(steps=spec.max_steps, batch_size=spec.batch_size, seq_len=spec.seq_len, device=spec.device,
                             temperature=spec.temperature, load_balance_weight=spec.load_balance_weight,
                             seed=spec.seed, corpus=CorpusConfig(seed=spec.seed, num_train=2000, num_val=100))
        controller = AdaptiveController(self.adaptation) if self.adaptation is not None else None
        trainer = Trainer(model, config, controller=controller)
        with self._state_lock:
            if self._status in ("starting", "paused"):  # not closed while it was being built
                self._model, self._trainer = model, trainer
            if self._status == "starting":
                self._status = "running"
                self._news.notify_all()

    def advance(self, gate: ComputeGate, others_due: Callable[[], bool] = lambda: False) -> None:
        """One turn: build the model (first turn) or take one training step, then re-route the probe when due and no
        other run is (others_due: the scheduler's view; a probe is a gate turn of its own, and a page request goes
        after it, both before the next run's step)."""
        try:
            if self._trainer is None:
                with gate.background(f"build {self.run_id}"):
                    self._build()
                return
            trainer = self._trainer
            if trainer.state.step >= self.spec.max_steps:
                with self._state_lock:
                    self._status = "finished"
                    self._news.notify_all()
                return
            self._apply_commands(trainer)
            with gate.background(f"step {self.run_id}"):
                if not self.wants_turn():  # paused or closed while waiting for the gate
                    return
                record = trainer.step()
            with self._state_lock:
                if self._trainer is not trainer:  # closed during the step
                    return
                self._records.append(record)
                self._events.extend((record.step, event) for event in record.events)
                self._news.notify_all()
            if time.monotonic() - self._last_probe >= PROBE_EVERY_S and not others_due():
                self._route_probe(gate, record.step)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            with self._state_lock:
                self._status, self._error, self._out_of_memory = "error", "the GPU ran out of memory", True
                self._news.notify_all()
        except Exception as error:  # the page shows it; the worker must not lose the run silently
            _LOG.exception("training run %s failed", self.run_id)
            with self._state_lock:
                self._status, self._error = "error", f"{type(error).__name__}: {error}"
                self._news.notify_all()

    def _route_probe(self, gate: ComputeGate, step: int) -> None:
        with self._state_lock:
            text, model = self._probe_text, self._model
        if model is None or not text.strip():
            return
        # a turn of its own, so a page never waits behind a step and a probe
        with gate.background(f"probe {self.run_id}"):
            probe = model.route_text(text)
        self._last_probe = time.monotonic()
        with self._state_lock:
            self._probe, self._probe_step = probe, step

    def _apply_commands(self, trainer: Trainer) -> None:
        with self._state_lock:
            commands, self._commands = self._commands, {}
        if "temperature" in commands:
            trainer.set_temperature(commands["temperature"])
        if "load_balance_weight" in commands:
            trainer.set_load_balance_weight(commands["load_balance_weight"])
