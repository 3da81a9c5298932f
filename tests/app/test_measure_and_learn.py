"""Performance, optimisation and guide pages: measurements arrive labelled, and the teaching examples respond."""

import numpy as np
import pytest
from studio_apptest import chart, figure, on_page

pytestmark = pytest.mark.app


def test_a_small_sweep_gives_a_labelled_table_chart_and_csv(app):
    on_page(app, "app_pages/performance.py")
    app.multiselect(key="perf.batches").set_value([1, 2])
    app.multiselect(key="perf.seqs").set_value([32])
    app.selectbox(key="perf.hidden").set_value(64)
    app.slider(key="perf.repeats").set_value(3)
    app.button(key="perf.run").click().run()

    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["batch"]) == [1, 2] and list(table["tokens"]) == [32, 64]
    assert (table["layer median µs"] > 0).all() and (table["layer p95 µs"] >= table["layer median µs"]).all()
    device = app.session_state["_settings"].device  # the sidebar's: cpu here, cuda:0 on a GPU machine
    kind = device.split(":")[0]  # results name the device type ("cuda"), the card beside it
    assert any(c.value.startswith("Measured on") and f"({kind}" in c.value for c in app.caption)
    assert app.get("download_button")
    latency = figure(app, "perf.latency_chart")
    assert [trace["name"] for trace in latency["data"]] == ["PiMoE layer", "loop over experts", "dense FFN"]


def test_measuring_quantisation_and_pruning_reports_before_and_after(app):
    on_page(app, "app_pages/optimisation.py")
    app.radio(key="opt.source").set_value("bench")
    app.selectbox(key="opt.hidden").set_value(128)
    app.button(key="opt.run").click().run()

    assert not app.exception
    rows = app.dataframe[0].value.set_index("Variant")
    assert rows.index[0] == "original (float)"
    pruned = rows.loc[[v for v in rows.index if v.startswith("pruned 30%")][0]]
    quantised = rows.loc[[v for v in rows.index if v.startswith("quantised")][0]]
    original = rows.loc["original (float)"]
    assert pruned["Parameters"] < original["Parameters"]
    assert quantised["Weights (MB)"] < original["Weights (MB)"]
    assert 0 < quantised["Output error"] < 0.1
    assert original["Output error"] == 0 and original["Speed-up"] == 1
    for _, row in rows.iloc[1:].iterrows():  # every speed-up comes with its error and a verdict on it
        assert row["Error check"].startswith("⚠" if row["Output error"] > 0.05 else "ok")
    if "Peak memory (MB)" not in rows:  # dropped only when it does not differ between variants
        assert any("Peak memory is not shown" in c.value for c in app.caption)


def test_speed_up_with_a_large_error_is_flagged_and_equal_peaks_drop_the_column():
    from studio.optimise import presentation_rows

    base = {"median ms": 2.0, "p95 ms": 2.5, "peak MB": 300.0, "weights MB": 1.0, "parameters": 10,
            "top-1 changed": 0, "top-k set changed": 0, "tokens": 8}
    rows = [{**base, "variant": "original (float)", "relative error": 0.0},
            {**base, "variant": "fast", "median ms": 1.0, "relative error": 0.2}]
    shown, note = presentation_rows(rows)

    assert shown[1]["Speed-up"] == 2.0 and shown[1]["Error check"] == "⚠ above 5%"
    assert "Peak memory (MB)" not in shown[0] and "Peak memory is not shown" in note
    rows[1]["peak MB"] = 200.0
    shown, note = presentation_rows(rows)
    assert shown[1]["Peak memory (MB)"] == 200.0 and note is None


def test_guide_softmax_gets_sharper_at_lower_temperature(app):
    on_page(app, "app_pages/guide.py")
    warm = np.array(chart(app, "guide.softmax_probs_chart")["panels"][0]["bars"]["values"])

    app.slider(key="guide.temperature").set_value(0.2).run()
    cold = np.array(chart(app, "guide.softmax_probs_chart")["panels"][0]["bars"]["values"])

    assert not app.exception
    assert cold.max() > warm.max()
    assert cold.argmax() == warm.argmax()  # temperature never changes which expert ranks first


def test_guide_balance_loss_rises_as_the_toy_router_collapses(app):
    on_page(app, "app_pages/guide.py")
    balanced = float(next(m.value for m in app.metric if m.label.startswith("Auxiliary loss")))

    app.slider(key="guide.balance_skew").set_value(1.0).run()
    collapsed = float(next(m.value for m in app.metric if m.label.startswith("Auxiliary loss")))

    assert collapsed == pytest.approx(4 * balanced, rel=1e-3)  # alpha * E when all go to one expert, alpha when even


def test_a_tiny_training_sweep_times_each_contender_with_its_ratios_and_says_what_was_counted(app):
    on_page(app, "app_pages/performance.py")
    app.selectbox(key="perf.hidden").set_value(64)
    app.slider(key="perf.repeats").set_value(3)
    app.multiselect(key="perf.train.tokens").set_value([64, 256])
    app.button(key="perf.train.run").click().run()

    assert not app.exception
    table = next(frame.value for frame in app.dataframe if "contender" in frame.value.columns)
    assert list(table["tokens"]) == [64] * 3 + [256] * 3
    assert list(table["contender"][:3]) == ["PiMoE fast path", "argsort + grouped_mm", "dense FFN (equal active)"]
    assert (table["median ms"] > 0).all() and (table["p95 ms"] >= table["median ms"]).all()
    settings = app.session_state["_settings"]
    rows, meta = app.session_state["_perf_train_results"]
    assert meta["config"]["hidden_size"] == 64 and meta["device"] == settings.device.split(":")[0]
    fast = table[table["contender"] == "PiMoE fast path"]
    assert list(fast["time ÷ dense"]) == pytest.approx([r["fast_median_ms"] / r["dense_median_ms"] for r in rows],
                                                       abs=0.0051)  # the table shows 2 decimals
    if settings.device == "cpu":
        assert set(table["MFU"]) == {"n/a — peak unknown"}
    captions = " ".join(c.value for c in app.caption)
    assert "Measured on" in captions and "3 x (router GEMM + 2 GEMMs per active expert)" in captions
    chart = figure(app, "perf.train.chart")
    assert [trace["name"] for trace in chart["data"]][:3] == ["PiMoE fast path", "argsort + grouped_mm",
                                                             "dense FFN (equal active)"]
    assert any(button.proto.id.endswith("perf.train.csv") for button in app.get("download_button"))
