"""The server's compute gate and its one training worker: every live-training run of every session is stepped by a
single background thread, the longest-waiting run first, one step per turn, and requests from pages (routing, probes,
benchmarks) go ahead of the next training step.

Why one worker and not a thread per run: with a thread per run, N runs fought over one lock that Python does not hand
out in order, so a run could wait for many of its neighbours' steps and a page's routing request for all of them. One
worker taking the runs in turn is fair by construction, and the gate bounds a page's wait to the one step in flight.

Why the worker also reaps: a run belongs to a browser session, and a refresh gives the same user a new session (the run
id in the URL brings them back to the run). A run whose session has been disconnected for ORPHAN_GRACE_S is stopped and
dropped, and the freed memory is handed back to the operating system.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from pimoe.turns import sharing_turns

__all__ = ["ORPHAN_GRACE_S", "ComputeGate", "Schedulable", "Superseded", "TrainingScheduler", "pause_after"]

_LOG = logging.getLogger(__name__)
ORPHAN_GRACE_S = 10.0  # a refresh reconnects within a second or two; a closed tab never does
TRAINING_STARVATION_S = 0.5  # a step that waited this long goes ahead of further page requests
IDLE_POLL_S = 0.25
# The worker shares the server's GIL with every page's script run: each torch op releases it and must win it back,
# and beside a thread running Python it waits out that thread's whole switch interval, once per op. A demo step took
# 21-23 ms alone and beside a busy Python thread 5.6-6.7 s at Python's default 5 ms, 0.42 s at 0.5 ms, 0.18 s at 0.2 ms
# and 0.15 s at 0.1 ms, the busy thread keeping 93%, 92% and 79% of its speed (`python bench/gil_convoy.py --intervals
# 0.5,0.2,0.1`, this project's 2-core machine, 2026-12-06). Under eight sessions, page reruns are such threads: the
# on-screen training stalls came in their bursts (four Start presses at once: first steps of 0.4-0.9 s at 0.5 ms).
GIL_SWITCH_INTERVAL_S = 0.0002
# Share of the worker's time spent stepping. The rest is left to the server's main thread, which draws every
# session's pages: on a 2-core machine a worker that never paused would leave those pages starved of the GIL.
TRAINING_DUTY = 0.8
MAX_PAUSE_S = 0.1
# A run that has waited this long since its last turn goes without the pause before it: each page must show a new step at
# least every 2 s, and under load a round of four runs took 1.6-1.8 s on the server, of which 0.15-0.4 s were these
# pauses and the page requests they let through back to back (gate trace of bench/load_sessions.py, 8 sessions on 2
# cores, 2026-12-06). The pause is owed, not dropped: it is taken once no run is due, so the pages keep their share of
# the time. Owed pauses add up to at most MAX_PAUSE_DEBT_S; past that (every run late: an overloaded server) the worker
# pauses for the excess, its whole share again, or page threads would starve behind runs that are always due.
STEP_DUE_S = 0.6
MAX_PAUSE_DEBT_S = 0.3
# New runs join one at a time: a run's first turn (its model build) waits until ADMIT_GAP_S has passed since the last new
# run's, or until it has waited ADMIT_MAX_WAIT_S. Four runs started within a second on a loaded 2-core machine took
# their first steps at 0.15-0.6 s each for about 4 s (the pages' reruns after Start and eight browsers rendering), and a
# round of four such steps plus the lab users' routing left a run 1.7-1.9 s without a step on the server. A run waiting
# its turn shows "starting" (the page's limit for that is 5 s).
ADMIT_GAP_S = 1.0
ADMIT_MAX_WAIT_S = 2.5


class Superseded(Exception):
    """A page's request withdrew from the gate queue: a newer request of the same session replaced it."""


class ComputeGate:
    """One model computation at a time, pages first.

    `with gate:` (or `gate.interactive()`) is a page's request: it waits for the computation in flight, then goes ahead
    of a waiting training step. `gate.background()` is a training step: it goes when no page request is queued, right
    after a page request finishes (pages and training take turns), or once it has waited TRAINING_STARVATION_S.
    """

    def __init__(self, starvation_s: float = TRAINING_STARVATION_S,
                 trace: Callable[[str, float, float, float], None] | None = None) -> None:
        """trace(kind, requested_at, acquired_at, released_at) is called after every hold (time.time() seconds;
        kind "training" or the page request's label), to see under load who held the gate when runs stalled."""
        self._trace = trace
        self._hold: tuple[str, float, float] | None = None
        self._cond = threading.Condition()
        self._busy = False
        self._pages_waiting = 0
        self._training_due = False  # a training step goes next (it waited its limit, or a page just had its turn)
        self._background_waiting = 0
        self._starvation_s = starvation_s

    def acquire_interactive(self, superseded: Callable[[], bool] | None = None, label: str = "page") -> None:
        """Wait for the computation in flight, then go ahead of waiting training steps. `superseded` is asked about
        every 50 ms while waiting: when it answers True the request withdraws with `Superseded` (a page run that a
        newer run of the same session replaced would otherwise still compute its stale answer)."""
        requested_at = time.time()
        with self._cond:
            self._pages_waiting += 1
        try:
            while True:
                with self._cond:
                    if self._busy or self._training_due:
                        self._cond.wait(None if superseded is None else 0.05)
                    if not self._busy and not self._training_due:
                        self._busy = True
                        self._hold = (label, requested_at, time.time())
                        return
                if superseded is not None and superseded():  # asked outside the gate's lock
                    raise Superseded
        finally:
            with self._cond:
                self._pages_waiting -= 1

    def acquire_background(self, label: str = "training") -> None:
        requested_at = time.time()
        deadline = time.monotonic() + self._starvation_s
        with self._cond:
            self._background_waiting += 1
            try:
                while True:
                    overdue = time.monotonic() >= deadline
                    if overdue:
                        self._training_due = True  # later page requests now queue behind this step
                    if not self._busy and (self._training_due or not self._pages_waiting):
                        break
                    self._cond.wait(timeout=None if overdue else max(0.005, deadline - time.monotonic()))
            finally:
                self._background_waiting -= 1
            self._busy = True
            self._training_due = False
            self._hold = (label, requested_at, time.time())

    def release(self, page: bool = False) -> None:
        with self._cond:
            hold, self._hold = self._hold, None
            self._busy = False
            if page and self._background_waiting:
                # Pages and training take turns: a waiting step goes after each page request, so a queue of page
                # requests costs a run one request's wait, and a page waits for at most one step.
                self._training_due = True
            self._cond.notify_all()
        if self._trace is not None and hold is not None:
            self._trace(*hold, time.time())

    @contextlib.contextmanager
    def interactive(self, superseded: Callable[[], bool] | None = None,
                    share_after_s: float | None = None, label: str = "page") -> Iterator[None]:
        """A page's hold. With share_after_s, a hold that has lasted that long hands the gate to a waiting training
        step at the computation's next turn point (pimoe.turns: between generated tokens, between evaluated texts) and
        then takes it back, ahead of further steps; a long generation otherwise stalled every run for its whole length.
        When `superseded` answers True at such a point the computation is abandoned with `Superseded`."""
        self.acquire_interactive(superseded, label)
        holding = True
        since = time.monotonic()

        def share_turn() -> None:
            nonlocal holding, since
            if time.monotonic() - since < share_after_s:
                return
            with self._cond:
                step_waiting = self._background_waiting > 0
            if step_waiting:
                self.release(page=True)  # hands the turn to the waiting step (see release)
                holding = False
                self.acquire_interactive(superseded, label)
                holding = True
            elif superseded is not None and superseded():
                raise Superseded
            since = time.monotonic()

        try:
            if share_after_s is None:
                yield
            else:
                with sharing_turns(share_turn):
                    yield
        finally:
            if holding:
                self.release(page=True)

    @contextlib.contextmanager
    def background(self, label: str = "training") -> Iterator[None]:
        self.acquire_background(label)
        try:
            yield
        finally:
            self.release()

    # `with gate:` is a page request, so code written for a plain lock keeps working.
    def __enter__(self) -> None:
        self.acquire_interactive()

    def __exit__(self, *exc) -> None:
        self.release(page=True)


class Schedulable(Protocol):
    """What the worker needs from a run (studio.training.TrainingRunner)."""

    run_id: str

    def wants_turn(self) -> bool: ...

    def advance(self, gate: ComputeGate, others_due: Callable[[], bool] = lambda: False) -> None:
        """One turn through `gate`; optional work after the step (a probe) waits for a turn when others_due()."""

    def close(self) -> None: ...


class TrainingScheduler:
    """The worker thread and the registry of runs by id. Runs are added with `add`, found with `get`, and dropped by
    `remove` or by the reaper once `is_connected(owner)` has been False for ORPHAN_GRACE_S.

    is_connected: tells whether a session id still has a browser attached (always True outside a server).
    """

    def __init__(self, gate: ComputeGate, is_connected: Callable[[str], bool] = lambda _: True,
                 grace_s: float = ORPHAN_GRACE_S, duty: float = TRAINING_DUTY, admit_gap_s: float = ADMIT_GAP_S) -> None:
        self.gate = gate
        self._admit_gap_s = admit_gap_s
        self._admitted: set[str] = set()  # runs that have had their first turn
        self._last_admission = -float("inf")
        self._is_connected = is_connected
        self._grace_s = grace_s
        self._duty = duty
        self._lock = threading.Lock()  # guards the dicts below
        self._runs: dict[str, Schedulable] = {}
        self._owners: dict[str, str | None] = {}
        self._orphaned_since: dict[str, float] = {}
        self._order: list[str] = []  # in the order they were added
        self._waiting_since: dict[str, float] = {}  # runs that want a turn: since when (see _next_run)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False

    # --- registry (page threads) ----------------------------------------------------------------------------------

    def start(self, warm_up: Callable[[], None] | None = None) -> None:
        """Start the worker (add() does too); it runs `warm_up` first. Shortens the process's GIL switch interval
        (GIL_SWITCH_INTERVAL_S) for the worker's sake."""
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        _few_malloc_arenas()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, args=(warm_up,), name="pimoe-training-worker",
                                                daemon=True)
                self._thread.start()

    def add(self, run: Schedulable, owner: str | None) -> None:
        with self._lock:
            self._runs[run.run_id] = run
            self._owners[run.run_id] = owner
            self._order.append(run.run_id)
        self.start()
        self._wake.set()

    def get(self, run_id: str) -> Schedulable | None:
        with self._lock:
            return self._runs.get(run_id)

    def attach(self, run_id: str, owner: str | None) -> Schedulable | None:
        """Hand a run to the session `owner` (a refresh or a second tab); None when the run no longer exists."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                self._owners[run_id] = owner
                self._orphaned_since.pop(run_id, None)
            return run

    def remove(self, run_id: str) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            self._owners.pop(run_id, None)
            self._orphaned_since.pop(run_id, None)
            if run_id in self._order:
                self._order.remove(run_id)
            self._waiting_since.pop(run_id, None)
            self._admitted.discard(run_id)
        if run is not None:
            run.close()
            _free_memory()

    def run_ids(self) -> list[str]:
        with self._lock:
            return list(self._order)

    def wake(self) -> None:
        """A run changed state (started, resumed): look for work now rather than at the next poll."""
        self._wake.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current turn and drop every run. Registered with atexit: a daemon thread still
        inside torch when the interpreter exits aborts the process ("terminate called without an active exception")."""
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        for run_id in self.run_ids():
            self.remove(run_id)

    # --- the worker -----------------------------------------------------------------------------------------------

    def _next_run(self) -> Schedulable | None:
        """The run that has waited longest: since its last turn ended, or since the worker first saw it want a turn.
        Unlike a fixed round-robin order, a run that starts while another is already stepping queues behind that
        run's next step: four runs started at once under load used to be built one after another while the first,
        already stepping, waited out all their builds (2.1-2.4 s without a step on screen)."""
        now = time.monotonic()
        with self._lock:
            waiting = []
            for run_id in self._order:
                if self._runs[run_id].wants_turn():
                    if run_id not in self._waiting_since:
                        self._waiting_since[run_id] = now
                    waiting.append(run_id)
                else:
                    self._waiting_since.pop(run_id, None)
            # a new run goes only once the last new run has had ADMIT_GAP_S, or once it has waited ADMIT_MAX_WAIT_S
            admitting = now - self._last_admission >= self._admit_gap_s
            eligible = [run_id for run_id in waiting if run_id in self._admitted or admitting
                        or now - self._waiting_since[run_id] >= ADMIT_MAX_WAIT_S]
            if not eligible:
                return None
            chosen = min(eligible, key=self._waiting_since.__getitem__)
            if chosen not in self._admitted:
                self._admitted.add(chosen)
                self._last_admission = now
            return self._runs[chosen]

    def _longest_wait(self) -> float:
        """Seconds the longest-waiting run (as _next_run counts) has waited; 0 when none waits."""
        now = time.monotonic()
        with self._lock:
            return max((now - since for since in self._waiting_since.values()), default=0.0)

    def _turn_ended(self, run: Schedulable) -> None:
        with self._lock:
            if run.run_id in self._waiting_since:
                self._waiting_since[run.run_id] = time.monotonic()

    def _reap(self) -> None:
        now = time.monotonic()
        gone = []
        with self._lock:
            for run_id, owner in self._owners.items():
                if owner is None or self._is_connected(owner):
                    self._orphaned_since.pop(run_id, None)
                    continue
                since = self._orphaned_since.setdefault(run_id, now)
                if now - since >= self._grace_s:
                    gone.append(run_id)
        for run_id in gone:
            _LOG.info("training run %s stopped and freed: its session has been gone %.0f s", run_id, self._grace_s)
            self.remove(run_id)

    def _loop(self, warm_up: Callable[[], None] | None = None) -> None:
        if warm_up is not None:
            warm_up()
        last_reap = 0.0
        owed = 0.0  # pause time deferred while runs were due (pause_after)
        while not self._closing:
            if time.monotonic() - last_reap >= 1.0:
                self._reap()
                last_reap = time.monotonic()
            run = self._next_run()
            if run is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            started = time.perf_counter()
            try:
                run.advance(self.gate, others_due=lambda: self._longest_wait() >= STEP_DUE_S)
            except Exception:  # advance records its own errors; this only keeps the worker alive for the others
                _LOG.exception("training run %s failed outside its own error handling", run.run_id)
            self._turn_ended(run)
            # Capped: a slow turn (a model build, a step on a loaded machine) must not idle the other runs for long.
            pause, owed = pause_after(time.perf_counter() - started, self._duty, self._longest_wait(), owed)
            if pause > 0:
                time.sleep(pause)


def pause_after(busy: float, duty: float, longest_wait: float, owed: float = 0.0) -> tuple[float, float]:
    """(pause now, pause still owed) after a turn of `busy` seconds: the duty cycle's share (at most MAX_PAUSE_S per
    turn) plus what earlier turns owe. While a run has waited STEP_DUE_S (`longest_wait`) only the part of the debt
    above MAX_PAUSE_DEBT_S is paid; otherwise up to MAX_PAUSE_S, cut short where it would make a waiting run due."""
    owed += min(MAX_PAUSE_S, busy * (1.0 - duty) / duty)
    if longest_wait >= STEP_DUE_S:
        pause = max(0.0, owed - MAX_PAUSE_DEBT_S)
    else:
        pause = max(0.0, min(MAX_PAUSE_S, STEP_DUE_S - longest_wait, owed))
    return pause, min(MAX_PAUSE_DEBT_S, owed - pause)


# glibc gives each new thread its own heap arena (up to 8 per core), and each Streamlit session runs its scripts on threads
# of its own: memory a closed session freed stayed spread over arenas that malloc_trim could not shrink as a whole.
MALLOC_ARENAS = 2


def _few_malloc_arenas() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, MALLOC_ARENAS)  # -8: M_ARENA_MAX


def _free_memory() -> None:
    """Collect the dropped run and return freed heap pages to the OS (glibc keeps them otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
