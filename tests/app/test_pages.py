"""Every page runs from app.py without an exception, and the shared sidebar is there on each of them."""

import pytest
from studio_apptest import PAGES, on_page

from studio.engine import DEMO_CHECKPOINT

pytestmark = pytest.mark.app

SIDEBAR_KEYS = {
    "selectbox": ["device.choice"],
    "radio": ["model.source"],
    "slider": ["router.temperature", "router.load_balance_weight", "router.top_k", "experts.num"],
    "select_slider": ["router.capacity_factor"],
    "pills": ["experts.types"],
}


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_without_exception_with_the_sidebar(app, page):
    on_page(app, page)

    assert not app.exception, [e.value for e in app.exception]
    for kind, keys in SIDEBAR_KEYS.items():
        for key in keys:
            assert getattr(app.sidebar, kind)(key=key) is not None


def test_sidebar_values_persist_across_pages(app):
    app.slider(key="router.temperature").set_value(0.4).run()
    app.slider(key="experts.num").set_value(5).run()

    on_page(app, "app_pages/guide.py")
    on_page(app, "app_pages/routing_lab.py")

    assert app.slider(key="router.temperature").value == pytest.approx(0.4)
    assert app.slider(key="experts.num").value == 5
    assert app.session_state["_settings"].model.config.moe.num_experts == 5


def test_missing_or_chosen_demo_checkpoint_never_breaks_the_app(app):
    app.radio(key="model.source").set_value("demo").run()

    assert not app.exception
    settings = app.session_state["_settings"]
    # The checkpoint ships in assets/, so it must load; only a checkout without it may fall back, with a warning.
    if DEMO_CHECKPOINT.is_file():
        assert settings.source.kind == "demo"
    else:
        assert settings.source.kind == "fresh"
        assert any("demo checkpoint" in w.value for w in app.sidebar.warning)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_with_one_expert_and_the_largest_top_k(page):
    """The sidebar's extremes: a fresh model of one expert (top-k clamps to it) and of sixteen at top-k 4, capacity
    at its tightest."""
    from studio_apptest import new_session

    at = new_session()
    for experts, top_k in ((1, 4), (16, 4)):
        at.slider(key="experts.num").set_value(experts)
        at.slider(key="router.top_k").set_value(top_k)
        at.select_slider(key="router.capacity_factor").set_value(0.5)
        on_page(at, page)
        assert not at.exception, (experts, top_k, [e.value for e in at.exception])
