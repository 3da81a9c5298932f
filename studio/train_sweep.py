"""The Performance page's training-step sweep: forward + backward of the PiMoE layer on its fast path against the
argsort + grouped_mm baseline and a dense FFN of equal active parameters. Widgets and layout only; numbers come from
pimoe.measure.train_bench, the figure from studio.figures.training_step."""

from __future__ import annotations

from functools import partial

import streamlit as st

from pimoe.measure.train_bench import MFU_COUNTING, TrainBenchConfig, run_train_benchmark

from . import state
from .figures.training_step import MFU_UNKNOWN, build_train_step_figure
from .guard import guarded
from .settings import Settings
from .tables import measured_on, results_csv, train_step_table

__all__ = ["TOKEN_CHOICES", "render_training_sweep"]

TOKEN_CHOICES = [64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
_DEFAULT_TOKENS = {"cpu": [256, 1024], "cuda": [2048, 8192, 32768]}  # a GPU needs thousands of tokens to be busy


def _progress(bar, done: int, total: int, message: str) -> None:
    bar.progress(done / total, text=f"{message} ({done}/{total})")


def _run(settings: Settings, hidden: int, dtype: str, repeats: int, tokens: list[int], include_sorted: bool) -> None:
    def sweep():  # the config inside: a size it rejects shows as an error, not a traceback
        config = TrainBenchConfig(device=settings.device, dtype=dtype, hidden_size=hidden,
                                  num_experts=settings.num_experts, intermediate_size=4 * hidden,
                                  top_k=min(settings.top_k, settings.num_experts), tokens=tuple(sorted(tokens)),
                                  repeats=repeats, include_sorted=include_sorted)
        return run_train_benchmark(config, progress=partial(_progress, bar))

    bar = st.progress(0.0, text="Starting…")
    result = guarded(sweep, what="timing training steps", key=state.PERF_TRAIN_RETRY_CPU)
    bar.empty()
    if result is not None:
        rows, meta = result
        st.session_state[state.PERF_TRAIN_RESULTS] = ([row.flat() for row in rows], meta)


def _show(rows: list[dict], meta: dict) -> None:
    cfg = meta["config"]
    peak = (f"the card's dense {meta['dtype']} peak, {meta['peak_tflops']:g} TFLOP/s" if meta["peak_tflops"]
            else f"MFU {MFU_UNKNOWN} for this device")
    st.caption(f"Measured on {measured_on(meta)} · D={cfg['hidden_size']}, E={cfg['num_experts']} "
               f"{cfg['expert_type']} experts of width {cfg['intermediate_size']}, top-{cfg['top_k']}, dense FFN width "
               f"{cfg['dense_intermediate_size']} · {cfg['repeats']} timed steps per point after {cfg['warmup']} "
               f"warm-up · fast path: {meta['fast_path']} · {peak}")
    st.dataframe(train_step_table(rows), hide_index=True, width="stretch")
    st.plotly_chart(build_train_step_figure(rows), key=state.PERF_TRAIN_CHART, config={"displaylogo": False})
    error = meta.get("grouped_mm_rel_error")
    if isinstance(error, float):
        st.caption(f"Same function: the grouped_mm baseline's output differs from the layer's by {error:.1e} "
                   f"(relative, {meta['dtype']}) on the first input.")
    st.caption(f"How it is counted: {MFU_COUNTING}.")
    st.download_button("Download CSV", results_csv(rows, meta), file_name=f"pimoe-train-step-{meta['device']}.csv",
                       mime="text/csv", key=state.PERF_TRAIN_CSV, on_click="ignore")


def render_training_sweep(settings: Settings, hidden: int, dtype: str, repeats: int) -> None:
    """The section: a form of token counts, the run through the compute gate, then table, figure and CSV."""
    st.subheader("Training step sweep")
    st.caption("Times one training step (zero the gradients, forward, backward of a fixed upstream gradient; the input "
               "needs its gradient too, as inside a network) of three contenders with equal active parameters and the "
               "same inputs: the PiMoE layer on its fast path (`cuda_fast`; on the CPU its plain-torch mirror), the "
               "argsort + torch._grouped_mm layer most MoE code uses (the same weights, autograd backward) and a dense "
               "FFN as wide as the expert units one token activates. The experts are one uniform type (GELU), since "
               "the grouped_mm baseline stacks one architecture. Hidden size, dtype and timed calls come from the top of "
               "the page, experts, top-k and device from the sidebar.")
    default = _DEFAULT_TOKENS["cuda" if settings.device.startswith("cuda") else "cpu"]
    with st.form(state.PERF_TRAIN_FORM, border=False):
        left, middle, right = st.columns([3, 1, 1])
        tokens = left.multiselect("Tokens per step", TOKEN_CHOICES, default=default, key=state.PERF_TRAIN_TOKENS,
                                  persist_state="session")
        include_sorted = middle.toggle("Sorted dispatch too", value=False, key=state.PERF_TRAIN_SORTED,
                                       persist_state="session", help="The layer with one nn.Module call per expert.")
        run = right.form_submit_button("Run training sweep", type="primary", width="stretch", key=state.PERF_TRAIN_RUN)
    if run:
        if tokens:
            _run(settings, hidden, dtype, repeats, tokens, include_sorted)
        else:
            st.warning("Pick at least one token count.")
    if results := st.session_state.get(state.PERF_TRAIN_RESULTS):
        _show(*results)
