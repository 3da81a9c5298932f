"""Live training: steps arrive while the run is going, stop when paused, and belong to one session only."""

import time

import pytest
from streamlit.testing.v1 import AppTest
from studio_apptest import chart, metric, new_session, on_page

pytestmark = pytest.mark.app

WAIT_S = 180  # a step takes from 0.1 s to several seconds on a shared 2-core machine


def runner(at: AppTest):
    from studio.engine import training_scheduler

    return training_scheduler().get(at.session_state["_train_run_id"])


def wait_for(condition, what: str) -> None:
    """Poll the background thread's state (it runs outside AppTest's script runs)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def training(app):
    on_page(app, "app_pages/training.py")
    yield app
    from studio.engine import training_scheduler

    training_scheduler().remove(runner(app).run_id)


def test_starting_training_produces_steps_and_charts(training):
    assert metric(training, "Status") == "idle"

    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 2, "two training steps")
    training.run()

    assert not training.exception
    assert int(metric(training, "Step")) >= 2
    loss = chart(training, "train.loss_chart")
    assert {series["name"] for series in loss["panels"][0]["series"]} >= {"total", "language model", "load balance"}
    assert chart(training, "train.load_chart")["panels"][0]["kind"] == "heatmap"
    subtitles = [panel["subtitle"] for panel in chart(training, "train.adaptation_chart")["panels"]]
    assert subtitles[:3] == ["temperature", "load-balance weight", "selection bias per expert"]


def test_pausing_stops_the_steps_and_resuming_continues(training):
    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 1, "a training step")

    training.button(key="train.pause").click().run()
    wait_for(lambda: runner(training).status == "paused", "the pause")
    paused_at = runner(training).snapshot().step
    time.sleep(3.0)  # long enough for several steps, had the thread not stopped

    assert runner(training).snapshot().step <= paused_at + 1  # at most the step in flight when Pause was pressed
    training.button(key="train.resume").click().run()
    wait_for(lambda: runner(training).snapshot().step > paused_at + 1, "a step after resuming")


def test_temperature_change_mid_run_is_applied_and_marked(training):
    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 1, "a training step")

    training.slider(key="router.temperature").set_value(0.5).run()
    wait_for(lambda: runner(training).snapshot().events, "the temperature event")
    wait_for(lambda: runner(training).snapshot().records[-1].temperature == 0.5, "a step at the new temperature")
    training.run()

    step, label = runner(training).snapshot().events[0]
    assert "temperature" in label and "0.5" in label
    assert [step, label] in chart(training, "train.loss_chart")["events"]


def test_changing_the_expert_set_rebuilds_the_model_and_says_so(training):
    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 1, "a training step")
    old = runner(training)

    training.slider(key="experts.num").set_value(4).run()

    assert not training.exception
    assert any("rebuilt the model with 4 experts" in info.value for info in training.info)
    assert runner(training) is not old and runner(training).spec.num_experts == 4
    wait_for(lambda: runner(training).snapshot().step >= 1, "a step of the rebuilt model")
    assert len(runner(training).snapshot().records[-1].load[0]) == 4


def test_one_sessions_training_does_not_appear_in_another(training):
    other = on_page(new_session(), "app_pages/training.py")

    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 1, "a training step")
    other.run()

    assert metric(other, "Status") == "idle"
    assert metric(other, "Step") == "0"
    assert runner(other) is not runner(training)


def test_refresh_with_the_run_id_in_the_url_returns_to_the_same_run(training):
    training.slider(key="experts.num").set_value(4).run()
    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 1, "a training step")
    run_id = training.query_params["run"]
    run_id = run_id if isinstance(run_id, str) else run_id[0]
    assert run_id == runner(training).run_id

    refreshed = AppTest.from_file(str(training._script_path), default_timeout=180)
    refreshed.session_state["model.source"] = "fresh"
    refreshed.query_params["run"] = run_id
    refreshed.switch_page("app_pages/training.py").run()

    assert not refreshed.exception
    assert runner(refreshed) is runner(training)
    assert refreshed.slider(key="experts.num").value == 4  # the sidebar shows what the run was built with
    assert metric(refreshed, "Status") in ("running", "starting")
    assert int(metric(refreshed, "Step")) >= 1


def test_unknown_run_id_in_the_url_says_the_run_is_gone(app):
    app.query_params["run"] = "0123456789ab"
    on_page(app, "app_pages/training.py")

    assert any("0123456789ab is no longer on the server" in w.value for w in app.warning)
    assert metric(app, "Status") == "idle"


def test_run_can_be_saved_and_used_in_the_routing_lab(training):
    training.button(key="train.start").click().run()
    wait_for(lambda: runner(training).snapshot().step >= 2, "two training steps")
    training.run()
    downloads = [b.proto.id for b in training.get("download_button")]
    for key in ("train.save_checkpoint", "train.save_csv", "train.save_json"):
        assert any(d.endswith(key) for d in downloads), downloads

    training.button(key="train.to_lab").click().run()

    assert not training.exception
    assert training.session_state["model.source"] == "upload"
    source = training.session_state["_active_source"]
    assert source.kind == "upload" and runner(training).run_id in source.label
    on_page(training, "app_pages/routing_lab.py")
    assert not training.exception
    assert any(runner(training).run_id in c.value for c in training.caption)
