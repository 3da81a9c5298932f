"""How often a live-training page redraws its charts as more runs share the server."""

import pytest

from studio.training_session import CHART_REFRESH_MAX_S, CHART_REFRESH_MIN_S, chart_refresh_s


def test_one_run_redraws_at_the_fastest_rate_and_more_runs_slow_every_page_down_to_a_cap():
    assert chart_refresh_s(0) == chart_refresh_s(1) == CHART_REFRESH_MIN_S
    rates = [chart_refresh_s(n) for n in range(1, 12)]
    assert rates == sorted(rates)  # never faster with more runs
    assert chart_refresh_s(4) > chart_refresh_s(2) > CHART_REFRESH_MIN_S
    assert max(rates) == CHART_REFRESH_MAX_S


@pytest.mark.parametrize("runs", [3, 4, 8])
def test_total_chart_redraws_per_second_stay_bounded_as_runs_grow(runs):
    # each of `runs` pages redraws 1/refresh times a second; the sum must not grow past what two runs cost
    assert runs / chart_refresh_s(runs) <= 2 / chart_refresh_s(2) + 1e-9 or chart_refresh_s(runs) == CHART_REFRESH_MAX_S
