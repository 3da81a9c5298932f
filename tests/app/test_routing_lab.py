"""The routing lab: the sidebar's temperature and top-k drive the figures; bad text never takes the page down."""

import numpy as np
import pytest
from studio_apptest import chart, charts_drawn, component, metric

from studio.routing_view import MAX_TEXT_BYTES

pytestmark = pytest.mark.app


def heatmap(at) -> np.ndarray:
    return np.array(chart(at, "lab.heatmap")["panels"][0]["heatmap"]["z"], dtype=float)  # (E, T) probabilities


def test_lab_shows_heatmap_strip_load_and_confidence(app):
    assert not app.exception
    probs = heatmap(app)
    tokens = int(metric(app, "Tokens"))

    assert probs.shape[1] == tokens
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)  # each token's probabilities sum to one (5 digits)
    assert chart(app, "lab.load")["panels"][0]["kind"] == "bars"
    assert [p["y_title"] for p in chart(app, "lab.confidence")["panels"]] == ["confidence", "entropy (nats)"]
    strip = component(app, "pimoe_token_strip", "lab.strip")
    assert len(strip["text"]) == tokens and len(strip["color"]) == tokens


def test_lower_temperature_sharpens_the_heatmap(app):
    before = heatmap(app)

    app.slider(key="router.temperature").set_value(0.3).run()
    after = heatmap(app)

    assert not app.exception
    assert after.shape == before.shape
    assert not np.allclose(after, before)
    assert after.max(axis=0).mean() > before.max(axis=0).mean()  # sharper: the top-1 probability grows


def test_top_k_changes_how_many_assignments_the_experts_get(app):
    app.slider(key="router.top_k").set_value(1).run()
    one = sum(chart(app, "lab.load")["panels"][0]["bars"]["values"])
    app.slider(key="router.top_k").set_value(3).run()
    three = sum(chart(app, "lab.load")["panels"][0]["bars"]["values"])

    tokens = int(metric(app, "Tokens"))
    assert (one, three) == (tokens, 3 * tokens)


def test_capacity_limit_marks_dropped_tokens(app):
    app.select_slider(key="router.capacity_factor").set_value(0.5).run()

    assert not app.exception
    heatmap_spec = chart(app, "lab.heatmap")["panels"][0]["heatmap"]
    assert heatmap_spec["marks"] and heatmap_spec["mark_name"] == "dropped (over capacity)"


def test_empty_text_gives_a_friendly_message(app):
    app.text_area(key="lab.text").set_value("   ").run()

    assert not app.exception
    assert any("Type some text" in info.value for info in app.info)
    assert charts_drawn(app) == 0


def test_very_long_text_is_cut_to_the_limit_with_a_warning(app):
    app.text_area(key="lab.text").set_value("3 + 4 = 7 and so on. " * 200).run()

    assert not app.exception
    assert any(str(MAX_TEXT_BYTES) in warning.value for warning in app.warning)
    assert int(metric(app, "Tokens")) == MAX_TEXT_BYTES


def test_picking_an_example_fills_the_text(app):
    app.selectbox(key="lab.preset").set_value("Logic").run()

    assert app.text_area(key="lab.text").value.startswith("If it rains")
    assert not app.exception


def test_accuracy_is_shown_beside_its_baselines_and_what_it_measures(app):
    assert not app.exception
    [caption] = [c.value for c in app.caption if "Routing accuracy" in c.value]
    assert "all-language baseline" in caption and "chance line k/E" in caption
    assert "rule-based regex tagger" in caption
    [accuracy] = [m for m in app.metric if m.label == "Routing accuracy"]
    assert "pts vs baseline" in accuracy.proto.delta
    top_k = app.slider(key="router.top_k").value
    app.slider(key="router.top_k").set_value(1).run()
    assert f"k/E = {1 / 8:.1%}" in [c.value for c in app.caption if "Routing accuracy" in c.value][0], top_k


def test_load_balance_weight_shows_the_loss_it_would_add(app):
    first = float(metric(app, "Balance loss at α = 0.01"))
    app.slider(key="router.load_balance_weight").set_value(0.1).run()

    assert float(metric(app, "Balance loss at α = 0.1")) == pytest.approx(10 * first, rel=1e-2)  # shown to 4 decimals


def test_choosing_expert_types_with_a_checkpoint_offers_a_fresh_model_with_them(app, tmp_path):
    from studio_apptest import new_session

    from pimoe.lm.checkpoint import save_checkpoint
    from pimoe.lm.model import LMConfig, PiMoELM

    path = save_checkpoint(PiMoELM(LMConfig.demo()), tmp_path / "m.safetensors")
    at = new_session()
    at.radio(key="model.source").set_value("upload").run()
    at.file_uploader(key="model.upload_weights").set_value(("m.safetensors", path.read_bytes(),
                                                             "application/octet-stream")).run()
    assert at.session_state["_settings"].source.kind == "upload"
    at.pills(key="experts.types").set_value(["computation", "language"]).run()

    assert any("bring" in i.value and "own experts" in i.value for i in at.info)
    at.button(key="lab.fresh_model").click().run()

    assert not at.exception
    assert at.session_state["_settings"].source.kind == "fresh"
    assert set(at.session_state["_settings"].model.expert_types) == {"computation", "language"}
