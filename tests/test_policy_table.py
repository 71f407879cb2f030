"""``forecast_table`` (the predict table read from the forecast frame) equals the answers' rows.

Property test over the simulator's cohorts: random seeds, sizes, schedules,
as-of dates, thresholds and safety rules; the table must equal
``forecast_rows(forecast_cohort(...))`` exactly, CSV text included, so
``forecast predict`` gives the same file whichever path wrote it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.instruments import SafetyRules
from forecast.policy import PolicySettings, forecast_cohort, forecast_rows, forecast_table
from forecast.simulation import simulate


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    schedule=st.sampled_from(["weekly", "at-visit", "sparse"]),
    totals_only=st.sampled_from([0.0, 0.5]),
    as_of=st.dates(pd.Timestamp("2024-06-01").date(), pd.Timestamp("2026-10-31").date()),
    threshold=st.sampled_from([0.05, 0.2, 0.35]),
    item9=st.sampled_from([1, 2]),
)
def test_table_equals_the_rows_of_the_answers(
    policy_model: Any,
    seed: int,
    n: int,
    schedule: str,
    totals_only: float,
    as_of: Any,
    threshold: float,
    item9: int,
) -> None:
    cohort = simulate(n, seed, schedule=schedule, totals_only_share=totals_only).cohort
    rules = PolicySettings(threshold=threshold, safety_rules=SafetyRules(review_item9=item9))
    day = pd.Timestamp(as_of)
    expected = forecast_rows(forecast_cohort(cohort, policy_model, day, rules))
    got = forecast_table(cohort, policy_model, day, rules)
    pd.testing.assert_frame_equal(got, expected)
    assert got.to_csv(index=False) == expected.to_csv(index=False)


def test_table_covers_every_status_on_a_clinic(sim_small: Any, policy_model: Any) -> None:
    cohort = sim_small.cohort
    expected = forecast_rows(forecast_cohort(cohort, policy_model, "2026-06-01"))
    got = forecast_table(cohort, policy_model, "2026-06-01")
    pd.testing.assert_frame_equal(got, expected)
    assert len(set(got["status"])) >= 4
    assert got["safety"].notna().any()
    assert got["risk_28d"].notna().any()
