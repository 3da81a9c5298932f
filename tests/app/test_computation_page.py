"""The Computation page: the demo model's hand-off is shown beside plain generation, the routing figure marks it, and
the evaluation runs on demand.

NOTE: the page runs inside a small script that draws the shared sidebar first (what app.py does), so these tests do
not depend on the page being registered in app.py's navigation.
"""

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from studio_apptest import TIMEOUT_S, chart

pytestmark = pytest.mark.app


def _page_with_sidebar() -> None:
    import runpy

    from studio.engine import REPO_ROOT
    from studio.sidebar import render_sidebar

    render_sidebar()
    runpy.run_path(str(REPO_ROOT / "app_pages" / "computation.py"), run_name="__page__")


def _session(source: str) -> AppTest:
    at = AppTest.from_function(_page_with_sidebar, default_timeout=TIMEOUT_S)
    at.session_state["model.source"] = source
    return at.run()


def _handoff_stars(at: AppTest) -> dict:
    """The hand-off markers of the page's routing chart (a canvas chart spec)."""
    [stars] = chart(at, "compute.routing_chart")["panels"][1]["series"]
    return stars


def test_demo_model_splices_the_exact_sum_and_the_figure_marks_it():
    at = _session("demo")

    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["_settings"].source.kind == "demo"  # the checkpoint ships in assets/: it must load
    plain_html, expert_html = (h.proto.body for h in at.get("html"))
    assert "777777" not in plain_html
    assert 'class="pimoe-result"' in expert_html and ">777777</span>" in expert_html
    stars = _handoff_stars(at)
    assert len(stars["x"]) == 1 and stars["y"][0] >= 0.8


def test_raising_the_threshold_to_one_removes_the_handoff():
    at = _session("demo")
    assert at.session_state["_settings"].source.kind == "demo"

    at.slider(key="compute.threshold").set_value(1.0).run()

    assert not at.exception
    assert 'class="pimoe-result"' not in at.get("html")[1].proto.body
    assert _handoff_stars(at)["x"] == []


def test_evaluation_button_runs_and_keeps_the_session_result():
    at = _session("fresh")  # an untrained router hands off nothing: the page must still run and report it

    at.select_slider(key="compute.eval_problems").set_value(7).run()
    at.button(key="compute.eval_run").click().run()

    assert not at.exception, [e.value for e in at.exception]
    report = at.session_state["_compute_eval"]
    assert report["config"]["num_problems"] == 7
    assert 0.0 <= report["summary"]["expert"]["accuracy"] <= 1.0
    tables = [np.asarray(frame.value) for frame in at.dataframe]
    assert len(tables) >= 2  # the method table and the trigger table of this session's run


def test_heldout_measurement_shows_every_accuracy_beside_its_baselines():
    at = _session("fresh")

    at.button(key="compute.heldout_run").click().run()

    assert not at.exception, [e.value for e in at.exception]
    measured = at.session_state["_compute_heldout"]
    moe = at.session_state["_settings"].model.config.moe
    assert measured["routing"]["out_of_template"]["chance"] == moe.router.top_k / moe.num_experts
    names = {item[0] for item in chart(at, "compute.heldout_chart")["legend_items"]}
    assert {"in-template accuracy", "out-of-template accuracy", "all-language baseline"} <= names
    assert any("rule-based regex tagger" in c.value for c in at.caption)


def test_declined_division_says_so_in_the_headline_and_the_text():
    at = _session("demo")
    at.selectbox(key="compute.preset").set_value("Division by zero (declined)").run()

    assert not at.exception
    handoffs = [frame.value for frame in at.dataframe if "Expression" in frame.value.columns]
    if not handoffs:  # the router did not fire at this '=': then nothing was declined either
        pytest.skip("the demo router did not hand this '=' off")
    assert any("declined" in md.value for md in at.markdown if "With the computation expert" in md.value)
    assert any("declined `5/0`" in w.value for w in at.warning)
    row = handoffs[0].iloc[0]
    assert row["Result"] == "declined" and row["Why declined"]
    assert "declined_reason" not in handoffs[0].columns  # words, not field names
