"""Performance, optimisation and guide pages: measurements arrive labelled, and the teaching examples respond."""

import pytest
from studio_apptest import array, figure, on_page

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
    assert any(c.value.startswith("Measured on") and "(cpu, float32)" in c.value for c in app.caption)
    assert app.get("download_button")
    latency = figure(app, "perf.latency_chart")
    assert [trace["name"] for trace in latency["data"]] == ["PiMoE layer", "loop over experts", "dense FFN"]


def test_measuring_quantisation_and_pruning_reports_before_and_after(app):
    on_page(app, "app_pages/optimisation.py")
    app.radio(key="opt.source").set_value("bench")
    app.selectbox(key="opt.hidden").set_value(128)
    app.button(key="opt.run").click().run()

    assert not app.exception
    rows = app.dataframe[0].value.set_index("variant")
    assert rows.index[0] == "original (float)"
    pruned = rows.loc[[v for v in rows.index if v.startswith("pruned 30%")][0]]
    quantised = rows.loc[[v for v in rows.index if v.startswith("quantised")][0]]
    original = rows.loc["original (float)"]
    assert pruned["parameters"] < original["parameters"]
    assert quantised["weights MB"] < original["weights MB"]
    assert 0 < quantised["relative error"] < 0.1
    assert original["relative error"] == 0


def test_guide_softmax_gets_sharper_at_lower_temperature(app):
    on_page(app, "app_pages/guide.py")
    warm = array(figure(app, "guide.softmax_chart")["data"][1]["y"])

    app.slider(key="guide.temperature").set_value(0.2).run()
    cold = array(figure(app, "guide.softmax_chart")["data"][1]["y"])

    assert not app.exception
    assert cold.max() > warm.max()
    assert cold.argmax() == warm.argmax()  # temperature never changes which expert ranks first


def test_guide_balance_loss_rises_as_the_toy_router_collapses(app):
    on_page(app, "app_pages/guide.py")
    balanced = float(next(m.value for m in app.metric if m.label.startswith("Auxiliary loss")))

    app.slider(key="guide.balance_skew").set_value(1.0).run()
    collapsed = float(next(m.value for m in app.metric if m.label.startswith("Auxiliary loss")))

    assert collapsed == pytest.approx(4 * balanced, rel=1e-3)  # alpha * E when all go to one expert, alpha when even
