"""Performance: latency, throughput and memory of the PiMoE layer on the selected device, measured here and now."""

from dataclasses import asdict
from functools import partial

import streamlit as st
import torch

from pimoe.measure.layer_bench import BenchConfig, run_layer_benchmark
from pimoe.original import systems_bench
from studio import state
from studio.figures.routing import build_latency_figure, build_throughput_figure
from studio.guard import guarded
from studio.settings import current_settings
from studio.tables import LAYER_COLUMNS, SYSTEM_COLUMNS, measured_on, results_csv, results_frame
from studio.train_sweep import render_training_sweep


def _progress(bar, done: int, total: int, message: str) -> None:
    bar.progress(done / total, text=f"{message} ({done}/{total})")


settings = current_settings()
on_cuda = settings.device.startswith("cuda")
top_k = min(settings.top_k, settings.num_experts)

st.title("Performance")
st.caption("Times one PiMoE layer with the sidebar's expert set on the selected device: median and p95 of synchronised "
           "wall times after warm-up, peak memory measured, against the loop-over-experts reference and a dense FFN as "
           "wide as the expert units one token activates. Other work in this app waits while it runs; other programs on "
           "the machine do not, so a busy machine shows in the p95.")

# Outside the form: every measurement on the page (layer sweep, training sweep, systems) uses what is shown here.
cols = st.columns(3)
hidden = cols[0].selectbox("Hidden size", [64, 128, 256, 512, 1024], index=1, key=state.PERF_HIDDEN,
                           persist_state="session",
                           help="The expert width is 4 × hidden (scaled by each type's multiplier).")
dtypes = ["float32", "bfloat16", "float16"] if on_cuda else ["float32", "bfloat16"]
dtype = cols[1].selectbox("dtype", dtypes, index=dtypes.index(settings.precision), key=state.PERF_DTYPE,
                          persist_state="session", help="Starts at the sidebar's precision.")
repeats = cols[2].slider("Timed calls per point", 3, 50, 10, key=state.PERF_REPEATS, persist_state="session")

with st.form(state.PERF_FORM, border=False):
    cols = st.columns([2, 2, 1, 1])
    batches = cols[0].multiselect("Batch sizes", [1, 2, 4, 8, 16, 32], default=[1, 8], key=state.PERF_BATCHES,
                                  persist_state="session")
    seqs = cols[1].multiselect("Sequence lengths", [32, 64, 128, 256, 512, 1024, 2048], default=[128],
                               key=state.PERF_SEQS, persist_state="session")
    include_loop = cols[2].toggle("Loop reference", value=True, key=state.PERF_INCLUDE_LOOP, persist_state="session")
    include_dense = cols[2].toggle("Dense FFN", value=True, key=state.PERF_INCLUDE_DENSE, persist_state="session")
    run = cols[3].form_submit_button("Run sweep", type="primary", width="stretch", key=state.PERF_RUN)

if run:
    if not batches or not seqs:
        st.warning("Pick at least one batch size and one sequence length.")
    else:
        shapes = tuple((b, s) for b in sorted(batches) for s in sorted(seqs))
        config = BenchConfig(device=settings.device, dtype=dtype, hidden_size=hidden, num_experts=settings.num_experts,
                             intermediate_size=4 * hidden, top_k=top_k, expert_types=settings.expert_types,
                             shapes=shapes, repeats=repeats, include_loop=include_loop, include_dense=include_dense)
        bar = st.progress(0.0, text="Starting…")
        progress = partial(_progress, bar)
        result = guarded(lambda: run_layer_benchmark(config, progress=progress), what="benchmarking the layer",
                         key=state.PERF_RETRY_CPU)
        bar.empty()
        if result is not None:
            rows, meta = result
            st.session_state[state.PERF_RESULTS] = ([asdict(r) for r in rows], meta)

if results := st.session_state.get(state.PERF_RESULTS):
    rows, meta = results
    cfg = meta["config"]
    st.subheader("Layer sweep")
    st.caption(f"Measured on {measured_on(meta)} · D={cfg['hidden_size']}, E={cfg['num_experts']}, "
               f"top-{cfg['top_k']}, {cfg['repeats']} timed calls per point · peak memory: {meta['memory_method']}")
    st.dataframe(results_frame(rows, LAYER_COLUMNS), hide_index=True, width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(build_latency_figure(rows), key=state.PERF_LATENCY_CHART, config={"displaylogo": False})
    right.plotly_chart(build_throughput_figure(rows), key=state.PERF_THROUGHPUT_CHART, config={"displaylogo": False})
    st.download_button("Download CSV", results_csv(rows, meta), file_name=f"pimoe-layer-{meta['device']}.csv",
                       mime="text/csv", key=state.PERF_CSV, on_click="ignore")
else:
    st.info("Choose shapes and press **Run sweep**. A sweep of a few shapes takes seconds to a minute on a CPU.")

render_training_sweep(settings, hidden, dtype, repeats)

st.subheader("Basic / Enhanced / Adaptive")
shape = (min(batches or [4]), min(seqs or [128]))
st.caption(f"The three systems of the original description on one {shape[0]}×{shape[1]} batch with the same weights "
           "and inputs. Enhanced is optimised for inference (quantisation where the device supports it, bias fitted "
           "on a separate batch); Adaptive runs its controller after every call, which is counted in its latency.")
if st.button("Run systems comparison", key=state.PERF_SYSTEMS_RUN):
    bar = st.progress(0.0, text="Starting…")
    progress = partial(_progress, bar)
    result = guarded(lambda: systems_bench.run_systems_benchmark(
        device=settings.device, dtype=dtype, hidden_size=hidden, num_experts=settings.num_experts,
        intermediate_size=4 * hidden, top_k=top_k, expert_types=settings.expert_types, shapes=(shape,),
        repeats=repeats, progress=progress), what="comparing the systems", key=state.PERF_SYSTEMS_RETRY_CPU)
    bar.empty()
    if result is not None:
        rows, meta = result
        st.session_state[state.PERF_SYSTEMS_RESULTS] = ([asdict(r) for r in rows], meta)
if results := st.session_state.get(state.PERF_SYSTEMS_RESULTS):
    rows, meta = results
    st.caption(f"Measured on {measured_on(meta)} · peak memory: {meta['memory_method']}")
    st.dataframe(results_frame(rows, SYSTEM_COLUMNS), hide_index=True, width="stretch")
    for row in rows:
        if row["applied"]:
            st.caption(f"**{row['system']}** applied: " + "; ".join(row["applied"]))
    st.download_button("Download CSV", results_csv(rows, meta), file_name=f"pimoe-systems-{meta['device']}.csv",
                       mime="text/csv", key=state.PERF_SYSTEMS_CSV, on_click="ignore")
if torch.cuda.is_available() and not on_cuda:
    st.caption("A GPU is available: pick it in the sidebar to measure there.")
