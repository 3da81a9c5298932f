"""Optimisation: quantise and prune a PiMoE layer, measure what it costs and saves, read the recommendations, and
export the layer to ONNX."""

import pandas as pd
import streamlit as st

from pimoe.optimize.report import speedup_claim
from studio import state
from studio.guard import guarded
from studio.optimise import (
    ERROR_THRESHOLD,
    bench_layer,
    compare_variants,
    layer_from_model,
    onnx_bytes,
    optimisation_report,
    presentation_rows,
)
from studio.settings import current_settings

settings = current_settings()
model = settings.model

st.title("Optimisation")
st.caption("Every number below is measured on the selected device against the float original: latency (median and "
           "p95) and the speed-up, each next to the output's relative error (flagged above 5%), weight bytes, "
           "parameters and how many tokens changed their experts. Variants are copies; the model in use is never modified.")

LAYER_SOURCES = {"model": "A layer of the model in use, on corpus text",
                 "bench": "A benchmark-size layer, random inputs"}
with st.form(state.OPT_FORM, border=False):
    cols = st.columns([2, 1, 1])
    source = cols[0].radio("Layer", list(LAYER_SOURCES), format_func=LAYER_SOURCES.get, key=state.OPT_SOURCE,
                           persist_state="session")
    layer = cols[1].selectbox("Model layer", list(range(model.config.num_layers)), key=state.OPT_LAYER,
                              persist_state="session")
    hidden = cols[2].selectbox("Benchmark hidden size", [128, 256, 512], index=1, key=state.OPT_HIDDEN,
                               persist_state="session")
    cols = st.columns([1, 1, 1, 1])
    quantize = cols[0].toggle("Quantise to int8", value=True, key=state.OPT_QUANTIZE, persist_state="session")
    prune = cols[1].toggle("Prune expert neurons", value=True, key=state.OPT_PRUNE, persist_state="session")
    amount = cols[2].slider("Share of neurons pruned", 0.1, 0.9, 0.3, 0.1, key=state.OPT_PRUNE_AMOUNT,
                            persist_state="session")
    importance = cols[3].selectbox("Importance", ["magnitude", "activation"], key=state.OPT_IMPORTANCE,
                                   persist_state="session",
                                   help="magnitude: weight norms; activation: mean activation on the inputs.")
    run = st.form_submit_button("Measure", type="primary", key=state.OPT_RUN)


def _measure() -> dict:
    if source == "model":
        system, x = layer_from_model(model, layer)
    else:
        system, x = bench_layer(settings.expert_types, settings.num_experts, settings.top_k, hidden, settings.device)
    rows, memory_method = compare_variants(system, x, quantize=quantize, prune_amount=amount if prune else None,
                                           importance=importance)
    return {"rows": rows, "memory_method": memory_method, "report": optimisation_report(system, x),
            "system": system, "shape": tuple(x.shape), "device": settings.device, "source": LAYER_SOURCES[source]}


if run:
    st.session_state.pop(state.OPT_ONNX_BYTES, None)  # an export of the previous layer no longer matches
    with st.spinner("Measuring the variants…"):
        result = guarded(_measure, what="measuring the variants", key=state.OPT_RETRY_CPU)
    if result is not None:
        st.session_state[state.OPT_RESULTS] = result

result = st.session_state.get(state.OPT_RESULTS)
if result is None:
    st.info("Choose what to apply and press **Measure**.")
    st.stop()

batch, seq, hidden_size = result["shape"]
st.subheader("Before and after")
st.caption(f"{result['source']} · input {batch}×{seq}×{hidden_size} on {result['device']} · speed-up = the "
           f"original's median time / the variant's · peak memory measured with {result['memory_method']}")
shown, memory_note = presentation_rows(result["rows"])
st.dataframe(pd.DataFrame(shown), hide_index=True, width="stretch", column_config={
    "Time per call (ms, median)": st.column_config.NumberColumn(format="%.3f"),
    "Time per call (ms, p95)": st.column_config.NumberColumn(format="%.3f"),
    "Speed-up": st.column_config.NumberColumn(format="%.2f×"),
    "Output error": st.column_config.NumberColumn(format="%.2e", help="‖variant − original‖ / ‖original‖ on the "
                                                                        "same input."),
    "Weights (MB)": st.column_config.NumberColumn(format="%.3f"),
    "Peak memory (MB)": st.column_config.NumberColumn(format="%.2f"),
})
flagged = [row["Variant"] for row in shown if row["Error check"].startswith("⚠")]
if flagged:
    st.warning(f"{', '.join(flagged)}: output error above {ERROR_THRESHOLD:.0%} of the original's output. Its "
               "speed-up comes with a layer that no longer computes the same thing; check the tokens whose experts "
               "changed before using it.")
if memory_note:
    st.caption(memory_note)
for row, table_row in zip(result["rows"][1:], shown[1:], strict=True):  # the claim quotes the table's speed-up
    st.caption(f"**{row['variant']}**: " + speedup_claim(table_row["Speed-up"], row["relative error"],
                                                         row["MoE Δ error"], row["top-1 changed"], row["tokens"]))

report = result["report"]
st.subheader("Optimisation report")
metrics = report["performance_metrics"]
cols = st.columns(4)
cols[0].metric("Calls measured", metrics.get("count", 0))
if metrics.get("count"):
    cols[1].metric("Median latency", f"{metrics['latency_median_ms']:.3f} ms")
    cols[2].metric("Load balance", f"{metrics['load_balance_score']:.3f}")
    cols[3].metric("Entropy / log E", f"{metrics['normalized_entropy']:.3f}")
if report["recommendations"]:
    for recommendation in report["recommendations"]:
        st.markdown(f"- **{recommendation['rule'].replace('_', ' ')}**: {recommendation['message']}")
else:
    st.success("No rule fired: the measured routing and latency are within every threshold.")
with st.expander("Full report (JSON)"):
    st.json(report, expanded=False)

st.subheader("ONNX export")
st.caption("Exports the float layer (dynamic batch and sequence axes) for onnxruntime and other runtimes.")
if st.button("Export to ONNX", key=state.OPT_ONNX):
    with st.spinner("Exporting…"):
        data = guarded(lambda: onnx_bytes(result["system"]), what="exporting to ONNX", key=state.OPT_ONNX_RETRY_CPU)
    if data is not None:
        st.session_state[state.OPT_ONNX_BYTES] = data
if data := st.session_state.get(state.OPT_ONNX_BYTES):
    st.download_button(f"Download pimoe-layer.onnx ({len(data) / 2**20:.1f} MB)", data, file_name="pimoe-layer.onnx",
                       mime="application/octet-stream", key=state.OPT_ONNX_DOWNLOAD, on_click="ignore")
