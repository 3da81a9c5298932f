"""The shared sidebar: device, model source, router knobs and the expert set. Rendered by app.py on every page, so its
widget values persist while the user moves between pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from pimoe.layer.expert_types import (
    ACTIVATIONS,
    MAX_TYPE_NAME,
    NORMS,
    ExpertSpec,
    expert_spec,
    known_expert_types,
    register_expert_type,
)
from pimoe.lm.model import LMConfig, PiMoELM

from . import state
from .engine import (
    DEMO_CHECKPOINT,
    ModelSource,
    detect_devices,
    load_demo_model,
    load_fresh_model,
    load_uploaded_model,
    upload_digest,
)
from .hf_models import render_hf_source
from .hf_view import model_name
from .settings import Settings, routing_options

__all__ = ["DEFAULT_EXPERT_TYPES", "render_sidebar"]

DEFAULT_EXPERT_TYPES = tuple(dict.fromkeys(LMConfig.demo().moe.expert_types))
CAPACITY_OPTIONS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)  # 0.0 = no limit
PICKLE_SUFFIXES = ("pt", "pth", "bin", "ckpt", "pkl", "pickle")
SOURCE_LABELS = {"demo": "Demo checkpoint (trained)", "fresh": "Fresh untrained model", "upload": "Upload a checkpoint",
                 "hf": "Hugging Face model"}
# NOTE: every widget gets its default as an argument rather than only through session state: a click that reaches
# the server before the browser has mounted a lazily loaded widget sends that widget's built-in default, which must
# then be ours (not the slider's minimum).
DEFAULTS = {
    state.TEMPERATURE: 1.0,
    state.LOAD_BALANCE_WEIGHT: 0.01,
    state.TOP_K: 2,
    state.CAPACITY_FACTOR: 0.0,
    state.NUM_EXPERTS: 8,
}


def render_sidebar() -> Settings:
    """Draw the sidebar, resolve the model it selects and store the result under state.SETTINGS."""
    with st.sidebar:
        st.subheader("Engine")
        devices = detect_devices()
        labels = {d.id: d.label for d in devices}
        device = st.selectbox("Device", list(labels), format_func=labels.get, key=state.DEVICE,
                              help="Auto-detected. Work on this device is serialised across users.")
        on_gpu = device.startswith("cuda")
        precision = st.radio("Precision", ["bfloat16", "float32"], index=0 if on_gpu else 1, horizontal=True,
                             key=f"{state.PRECISION}.{'gpu' if on_gpu else 'cpu'}",
                             help="The model's weights. bf16 on a GPU runs the fused fast path (the default there); "
                                  "float32 is the CPU's default: bf16 arithmetic on a CPU is slower, not faster.")
        source_kind = st.radio("Model", list(SOURCE_LABELS), index=0, format_func=SOURCE_LABELS.get,
                               key=state.MODEL_SOURCE)
        model_notes = st.container()  # load messages appear next to the choice they are about

        st.subheader("Router")
        temperature = st.slider("Temperature", 0.1, 5.0, DEFAULTS[state.TEMPERATURE], 0.05, key=state.TEMPERATURE,
                                help="Divides the router logits before the softmax: < 1 sharpens, > 1 flattens.")
        load_balance_weight = st.slider("Load-balance weight", 0.0, 0.2, DEFAULTS[state.LOAD_BALANCE_WEIGHT], 0.005,
                                        format="%.3f", key=state.LOAD_BALANCE_WEIGHT,
                                        help="α of the Switch auxiliary loss α·E·Σ fᵢ·Pᵢ.")
        _controller_note(float(temperature), float(load_balance_weight))
        top_k = st.slider("Top-k experts per token", 1, 4, DEFAULTS[state.TOP_K], key=state.TOP_K)
        capacity = st.select_slider("Capacity factor", CAPACITY_OPTIONS, DEFAULTS[state.CAPACITY_FACTOR],
                                    key=state.CAPACITY_FACTOR,
                                    format_func=lambda v: "no limit" if v == 0 else f"{v:g}",
                                    help="Each expert takes at most ⌈factor·T·k/E⌉ assignments; the rest are "
                                         "dropped.")

        st.subheader("Experts")
        options = list(DEFAULT_EXPERT_TYPES) + [
            name for name in st.session_state.get(state.CUSTOM_TYPES, []) if name not in DEFAULT_EXPERT_TYPES
        ]
        chosen = st.pills("Expert types", options, selection_mode="multi", default=list(DEFAULT_EXPERT_TYPES),
                          key=state.EXPERT_TYPES,
                          help="Used by the fresh model and by training; a checkpoint brings its own experts.")
        num_experts = st.slider("Number of experts", 1, 16, DEFAULTS[state.NUM_EXPERTS], key=state.NUM_EXPERTS)
        if not chosen:
            st.warning("Pick at least one expert type; using the defaults meanwhile.")
            chosen = list(DEFAULT_EXPERT_TYPES)
        _custom_type_form()

        capacity_factor = None if capacity == 0 else float(capacity)
        with model_notes:
            hf_model = render_hf_source(device) if source_kind == "hf" else None
            model, source = _resolve_model(source_kind, device, tuple(chosen), num_experts, capacity_factor,
                                           precision)
            moe = model.config.moe
            if hf_model is not None:
                st.caption(f"In use in the routing lab: **{model_name(hf_model)}** · {hf_model.describe()} · "
                           f"{hf_model.num_parameters() / 1e6:,.1f} M parameters")
            else:
                st.caption(f"In use: **{source.label}** · {moe.num_experts} experts × {model.config.num_layers} "
                           f"layers, hidden {moe.hidden_size} · {device} · {precision}")

    settings = Settings(device=device, precision=precision, source=source, temperature=float(temperature),
                        load_balance_weight=float(load_balance_weight), top_k=int(top_k),
                        capacity_factor=capacity_factor, expert_types=tuple(chosen), num_experts=int(num_experts),
                        model=model, routing=routing_options(temperature, top_k, capacity_factor, model),
                        hf_model=hf_model)
    st.session_state[state.SETTINGS] = settings
    return settings


def _resolve_model(kind: str, device: str, expert_types: tuple[str, ...], num_experts: int,
                   capacity_factor: float | None, precision: str) -> tuple[PiMoELM, ModelSource]:
    """Load what the sidebar asks for; on failure say why and keep the model in use (or fall back to a fresh one)."""
    fresh = ModelSource("fresh", "fresh untrained model")
    active: ModelSource = st.session_state.get(state.ACTIVE_SOURCE, fresh)
    wanted: ModelSource | None = None
    if kind == "fresh":
        wanted = fresh
    elif kind == "demo":
        if DEMO_CHECKPOINT.is_file():
            wanted = ModelSource("demo", f"demo checkpoint ({DEMO_CHECKPOINT.name})")
        else:
            st.warning(f"The demo checkpoint {DEMO_CHECKPOINT.relative_to(DEMO_CHECKPOINT.parents[1])} is not there "
                       "yet (it is produced by `python -m pimoe train`). Using a fresh untrained model instead.")
            wanted = fresh
    elif kind == "upload":
        wanted = _accept_upload()
        if wanted is None:
            wanted = active
    else:  # a Hugging Face model serves the routing lab; the other pages keep the PiMoE-LM in use
        wanted = active
    # What was asked for, else what was in use, else a fresh model, else a fresh model on the CPU (never fails).
    candidates = dict.fromkeys([(wanted, device, precision), (active, device, precision), (fresh, device, precision),
                                (fresh, "cpu", "float32")])
    for candidate, on_device, on_precision in candidates:
        try:
            model = _load(candidate, on_device, expert_types, num_experts, capacity_factor, on_precision)
        except (ValueError, torch.cuda.OutOfMemoryError) as error:
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
                error = "the GPU is out of memory (pick the CPU as the device to load it there)"
            st.error(f"Could not load the {candidate.label}: {error}.")
            continue
        st.session_state[state.ACTIVE_SOURCE] = candidate
        return model, candidate
    raise AssertionError("unreachable: a fresh model on the CPU always loads")


def _load(source: ModelSource, device: str, expert_types: tuple[str, ...], num_experts: int,
          capacity_factor: float | None, precision: str) -> PiMoELM:
    if source.kind == "demo":
        if not DEMO_CHECKPOINT.is_file():
            raise ValueError(f"{DEMO_CHECKPOINT.name} is missing")
        return load_demo_model(device, capacity_factor, DEMO_CHECKPOINT.stat().st_mtime_ns, precision)
    if source.kind == "upload":
        uploads = st.session_state.get(state.UPLOADS, {})
        if source.digest not in uploads:
            raise ValueError("the uploaded file is no longer in this session")
        weights, config, name = uploads[source.digest]
        return load_uploaded_model(source.digest, device, capacity_factor, weights, config, name, precision)
    return load_fresh_model(expert_types, num_experts, capacity_factor, device, precision=precision)


def _accept_upload() -> ModelSource | None:
    """The upload widgets; returns the source of a newly valid upload, or None (nothing new, or it was rejected)."""
    # NOTE: pickle suffixes are accepted here only to be refused with a reason; with type=["safetensors"] Streamlit
    # would turn a .pt file away with a bare "file type not allowed".
    weights_file = st.file_uploader("Checkpoint (.safetensors)", type=["safetensors", *PICKLE_SUFFIXES],
                                    key=state.UPLOAD_WEIGHTS,
                                    help="Loaded with safetensors and JSON only: nothing is ever unpickled.")
    config_file = st.file_uploader("Config (.json, if not inside the checkpoint)", type=["json"],
                                   key=state.UPLOAD_CONFIG)
    if weights_file is None:
        active = st.session_state.get(state.ACTIVE_SOURCE)
        if active is not None and active.kind == "upload" and active.digest in st.session_state.get(state.UPLOADS, {}):
            st.caption(f"No new file picked: the {active.label} stays in use.")
        else:
            st.info("Upload a PiMoE-LM checkpoint to use it; until then the current model stays in use.")
        return None
    suffix = Path(weights_file.name).suffix.lower().lstrip(".")
    if suffix in PICKLE_SUFFIXES:
        st.error(f"{Path(weights_file.name).name} is a PyTorch pickle (.{suffix}). Loading a pickle runs whatever code "
                 "it holds, so this app accepts only safetensors files, which hold plain numbers. Convert it where "
                 "you trust the file: `safetensors.torch.save_file(torch.load('model.pt'), 'model.safetensors')`, "
                 "or save from pimoe with `pimoe.lm.checkpoint.save_checkpoint`. The current model stays in use.")
        return None
    weights = weights_file.getvalue()
    config = config_file.getvalue() if config_file is not None else None
    digest = upload_digest(weights, config)
    name = Path(weights_file.name).name
    failure = st.session_state.get(state.UPLOAD_FAILURE)
    if failure and failure[0] == digest:
        st.error(failure[1])
        return None
    uploads = st.session_state.setdefault(state.UPLOADS, {})
    if digest not in uploads:
        try:
            load_uploaded_model(digest, "cpu", None, weights, config, name)  # validate once, on the CPU
        except ValueError as error:
            message = f"Could not load {name}: {error}. The current model stays in use."
            st.session_state[state.UPLOAD_FAILURE] = (digest, message)
            st.error(message)
            return None
        uploads.clear()  # keep one upload per session: the bytes live in session memory
        uploads[digest] = (weights, config, name)
    return ModelSource("upload", f"uploaded {name}", digest)


def _custom_type_form() -> None:
    with st.expander("Add a custom expert type"):
        with st.form(state.CUSTOM_FORM, clear_on_submit=False, border=False):
            st.text_input("Name", key=state.CUSTOM_NAME, placeholder="scientific", max_chars=MAX_TYPE_NAME)
            st.selectbox("Activation", ACTIVATIONS, key=state.CUSTOM_ACTIVATION)
            st.slider("Width multiplier", 0.25, 4.0, 1.0, 0.25, key=state.CUSTOM_WIDTH)
            st.selectbox("Input norm", NORMS, format_func=lambda n: n or "none", key=state.CUSTOM_NORM)
            st.form_submit_button("Register type", on_click=_register_custom_type, key=state.CUSTOM_SUBMIT)
        message = st.session_state.pop(state.CUSTOM_MESSAGE, None)
        if message:
            (st.success if message[0] == "ok" else st.error)(message[1])


def _register_custom_type() -> None:
    """Form callback: runs before the rerun, so it may still add the new type to the multiselect's value."""
    name = (st.session_state.get(state.CUSTOM_NAME) or "").strip().lower()
    spec = ExpertSpec(activation=st.session_state[state.CUSTOM_ACTIVATION],
                      width_multiplier=float(st.session_state[state.CUSTOM_WIDTH]),
                      norm=st.session_state[state.CUSTOM_NORM], description="custom type from the dashboard")
    try:
        if not name:
            raise ValueError("give the type a name")
        if name in known_expert_types():
            existing = expert_spec(name)
            # NOTE: the type registry is process-wide; redefining a name would change other users' models.
            if (existing.activation, existing.width_multiplier, existing.norm) != (spec.activation,
                                                                                   spec.width_multiplier, spec.norm):
                raise ValueError(f"{name!r} already exists with a different architecture; pick another name")
        else:
            register_expert_type(name, spec)
    except ValueError as error:
        st.session_state[state.CUSTOM_MESSAGE] = ("error", f"Not registered: {error}")
        return
    custom = st.session_state.setdefault(state.CUSTOM_TYPES, [])
    if name not in custom and name not in DEFAULT_EXPERT_TYPES:
        custom.append(name)
    chosen = list(st.session_state.get(state.EXPERT_TYPES, DEFAULT_EXPERT_TYPES))
    if name not in chosen:
        st.session_state[state.EXPERT_TYPES] = [*chosen, name]
    st.session_state[state.CUSTOM_MESSAGE] = ("ok", f"Registered {name!r} and added it to the expert types.")


def _controller_note(temperature: float, load_balance_weight: float) -> None:
    """Under the router sliders: the values this session's training run uses now, when its adaptive controller has
    moved them away from the sliders (the sliders keep the user's own setting)."""
    from .training_session import current_runner

    runner = current_runner()
    if runner is None or not runner.spec.adaptive:
        return
    used = runner.knobs_in_use()
    if used is None:
        return
    moved = [f"{label} {used[name]:.4g} (slider {slider:g})"
             for name, label, slider in (("load_balance_weight", "load-balance weight", load_balance_weight),
                                         ("temperature", "temperature", temperature))
             if abs(used[name] - slider) > 1e-9 * max(1.0, abs(slider))]
    if moved:
        st.caption("Live training: the adaptive controller set " + ", ".join(moved) + ", within its bounds shown on "
                   "the Live training page.")
