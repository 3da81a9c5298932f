"""The app's side of the engine: device detection, the process-wide compute gate, the training worker and cached
model loaders.

Models returned here are shared by every session (`st.cache_resource`) and are never mutated by a request: they are put
in eval mode with gradients off when loaded, and per-request knobs (temperature, top-k) travel as call arguments.
Training never touches them; each session trains its own model (studio.training).
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import streamlit as st
import torch

from pimoe.lm.checkpoint import load_checkpoint, load_checkpoint_bytes
from pimoe.lm.model import PiMoELM

from .fresh_model import fresh_lm_config
from .scheduler import ComputeGate, TrainingScheduler

__all__ = [
    "DEMO_CHECKPOINT",
    "MAX_CONCURRENT_TRAININGS",
    "DeviceOption",
    "ModelSource",
    "compute_lock",
    "detect_devices",
    "load_demo_model",
    "load_fresh_model",
    "load_uploaded_model",
    "run_locked",
    "training_scheduler",
    "upload_digest",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
# One torch intra-op thread by default, PIMOE_TORCH_THREADS to change it. The server computes from several threads at
# once (the training worker, each session's page), and each such thread gets its own OpenMP team of that many
# threads: on a 2-core machine shared with other work, two threads each took a training run's first step from 0.1 s
# to over 20 s, while one thread per computing thread kept runs stepping (see bench/load_sessions.py and
# bench/app_latency.py --threads).
torch.set_num_threads(int(os.environ.get("PIMOE_TORCH_THREADS", "1")))
DEMO_CHECKPOINT = REPO_ROOT / "assets" / "pimoe-demo.safetensors"
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceOption:
    """A device the user can pick: torch device string and a label with the GPU's name and memory."""

    id: str
    label: str


@st.cache_resource(show_spinner=False)
def detect_devices() -> list[DeviceOption]:
    """CUDA devices first (name and total memory), then the CPU."""
    options = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            label = f"GPU {index}: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
            options.append(DeviceOption(f"cuda:{index}", label))
    threads = torch.get_num_threads()
    options.append(DeviceOption("cpu", f"CPU ({threads} thread{'' if threads == 1 else 's'})"))
    return options


@st.cache_resource(show_spinner=False)
def compute_lock() -> ComputeGate:
    """One gate for the whole server process: model compute (routing, training steps, benchmarks) runs one at a time,
    so two users never race on one GPU and a benchmark is never timed while something else runs. A page's request
    waits for at most the one training step in flight (studio.scheduler).

    PIMOE_GATE_TRACE=path appends one line per hold (label, requested, acquired, released as Unix seconds) to that
    file: bench/load_sessions.py --gate-trace reads it to tell who held the gate while a run stalled."""
    path = os.environ.get("PIMOE_GATE_TRACE")
    if not path:
        return ComputeGate()
    sink = open(path, "a", buffering=1)  # noqa: SIM115 - open for the server's life, one line per hold
    atexit.register(sink.close)
    return ComputeGate(trace=lambda label, requested, acquired, released: sink.write(
        f"{label}\t{requested:.4f}\t{acquired:.4f}\t{released:.4f}\n"))


MAX_CONCURRENT_TRAININGS = 4  # runs stepping at once; each takes a turn of the one worker, so more would slow all


def _session_connected(session_id: str) -> bool:
    from streamlit import runtime

    if not runtime.exists():
        return True
    connected = runtime.get_instance().is_active_session(session_id)
    return connected if isinstance(connected, bool) else True  # AppTest's stand-in runtime answers with a mock


@st.cache_resource(show_spinner=False)
def training_scheduler() -> TrainingScheduler:
    """The process-wide training worker and registry of runs (studio.scheduler).

    Also warms the training path in the background (studio.training.warm_training_path): torch's optimisers import
    torch._dynamo on first construction, which takes 1.5 s on an idle 2-core machine and over 20 s on a loaded one,
    and would otherwise keep the server's first run in "starting" that long."""
    from .training import warm_training_path

    scheduler = TrainingScheduler(compute_lock(), is_connected=_session_connected)
    scheduler.start(warm_up=warm_training_path)
    atexit.register(scheduler.shutdown)
    return scheduler


# A page computation longer than this lets a waiting training step go at its next turn point (ComputeGate.interactive).
# Training runs must step at least every 2 s under load; a step takes 25-100 ms on the 2-core machine, so a turn every
# quarter second costs a generation at most about a third of its time while no run waits longer than that.
PAGE_SHARE_AFTER_S = 0.25


def run_locked(fn: Callable[[], T], superseded: Callable[[], bool] | None = None, label: str = "page") -> T:
    """Run `fn()` as a page request through the compute gate, sharing turns with training during long computations
    (see ComputeGate.interactive; superseded: see ComputeGate.acquire_interactive; label: names it in the trace)."""
    with compute_lock().interactive(superseded, share_after_s=PAGE_SHARE_AFTER_S, label=label):
        return fn()


@dataclass(frozen=True)
class ModelSource:
    """Where the model in use came from. digest identifies an uploaded checkpoint (sha256 of its bytes)."""

    kind: Literal["demo", "fresh", "upload"]
    label: str
    digest: str | None = None


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _freeze(model: PiMoELM, device: str, capacity_factor: float | None, precision: str = "float32") -> PiMoELM:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    model.set_router_options(capacity_factor=capacity_factor)
    # bf16 weights put the model on the GPU's bf16 fast path (cuda_fast's fused kernels); routers keep float32 logits
    model.to(device=torch.device(device), dtype=PRECISIONS[precision]).eval().requires_grad_(False)
    return model


@st.cache_resource(max_entries=6, show_spinner="Building a fresh model…")
def load_fresh_model(expert_types: tuple[str, ...], num_experts: int, capacity_factor: float | None,
                     device: str, seed: int = 0, precision: str = "float32") -> PiMoELM:
    """An untrained PiMoE-LM with the given expert set, seeded so every session sees the same weights."""
    torch.manual_seed(seed)
    return _freeze(PiMoELM(fresh_lm_config(expert_types, num_experts, capacity_factor)), device, capacity_factor,
                   precision)


def _as_model(loaded: Any) -> PiMoELM:
    """The PiMoELM inside whatever the checkpoint loader returned (a model, or a tuple/record holding one)."""
    if isinstance(loaded, PiMoELM):
        return loaded
    candidates = loaded if isinstance(loaded, tuple) else [getattr(loaded, "model", None)]
    for item in candidates:
        if isinstance(item, PiMoELM):
            return item
    raise ValueError(f"the checkpoint did not hold a PiMoE-LM (got {type(loaded).__name__})")


@st.cache_resource(max_entries=4, show_spinner="Loading the demo checkpoint…")
def load_demo_model(device: str, capacity_factor: float | None, modified_ns: int,
                    precision: str = "float32") -> PiMoELM:
    """The shipped checkpoint. modified_ns (the file's mtime) is part of the cache key, so a retrained file is
    picked up without restarting the server. Raises ValueError when the file cannot be loaded."""
    del modified_ns
    model = _as_model(load_checkpoint(DEMO_CHECKPOINT))
    return _freeze(model, device, capacity_factor, precision)


@st.cache_resource(max_entries=4, show_spinner="Loading the uploaded checkpoint…")
def load_uploaded_model(digest: str, device: str, capacity_factor: float | None, _weights: bytes,
                        _config: bytes | None, name: str, precision: str = "float32") -> PiMoELM:
    """A user's safetensors upload (never unpickled: safetensors + JSON only), cached by the sha256 of its bytes.
    Raises ValueError naming the problem for an invalid, truncated or mismatched file."""
    del digest  # the cache key; the leading underscore keeps the bytes themselves out of the hash
    loaded = load_checkpoint_bytes(_weights, _config, name=name)
    return _freeze(_as_model(loaded), device, capacity_factor, precision)


def upload_digest(weights: bytes, config: bytes | None) -> str:
    digest = hashlib.sha256(weights)
    digest.update(b"\0config\0" + (config or b""))
    return digest.hexdigest()


