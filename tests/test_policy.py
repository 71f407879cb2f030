"""forecast.policy: settings, the suggestion rules, the table form and cohort-wide invariants."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.contract import HORIZONS, PREDICT_COLUMNS, STATUSES
from forecast.policy import (
    PolicySettings,
    forecast_cohort,
    forecast_queries,
    forecast_rows,
    suggest_offsets,
)
from forecast.simulation import simulate
from tests.fixtures.policy import all_strings, risks_monotone


# --------------------------------------------------------------------------- settings
def test_settings_defaults_and_validation():
    s = PolicySettings()
    assert (s.threshold, s.min_interval_days, s.max_interval_days) == (0.20, 7, 84)
    assert s.horizons == HORIZONS
    assert s.grid_days == 84
    for bad in (
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"threshold": float("nan")},
        {"min_interval_days": 0},
        {"min_interval_days": 90},
        {"window_fraction": 0.0},
        {"horizons": (0, 7)},
        {"band_level": 1.0},
    ):
        with pytest.raises(ValueError, match="must"):
            PolicySettings(**bad)


# --------------------------------------------------------------------------- suggestion rule
def _linear(n_days: int = 84, slope: float = 0.01, n: int = 1) -> np.ndarray:
    return np.tile(np.minimum(np.arange(1, n_days + 1) * slope, 1.0), (n, 1))


def test_suggestion_is_latest_day_at_or_below_threshold_with_half_threshold_window():
    s = PolicySettings()
    out = suggest_offsets(_linear(), 0.2, np.array([10]), s)
    # risk(d) = d / 100: 0.20 at day 20, above it from day 21.
    assert out["session_by"][0] == 20
    assert out["window_start"][0] == 10
    assert not out["due"][0]
    assert out["risk_at"][0] == pytest.approx(0.20)
    assert out["clamp"][0] == ""


def test_suggestion_clamps_to_minimum_and_maximum_interval():
    s = PolicySettings()
    steep = _linear(slope=0.3, n=1)
    # Booster yesterday, risk above the threshold at once: not before day 7 after it.
    out = suggest_offsets(steep, 0.2, np.array([1]), s)
    assert out["due"][0]
    assert out["session_by"][0] == 6
    assert out["clamp"][0] == "min"
    flat = np.zeros((3, 84))
    out = suggest_offsets(flat, 0.2, np.array([0, 80, 100]), s)
    # Never later than 84 days after the session; overdue -> today.
    assert list(out["session_by"]) == [84, 4, 0]
    assert list(out["due"]) == [False, False, True]
    assert list(out["clamp"]) == ["max", "max", "max"]


def test_suggestion_is_monotone_in_threshold_and_vectorised():
    rng = np.random.default_rng(3)
    n = 500
    inc = rng.exponential(0.01, size=(n, 84))
    daily = np.minimum(np.cumsum(inc, axis=1), 1.0)
    since = rng.integers(0, 120, size=n)
    s = PolicySettings()
    prev = None
    for thr in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        out = suggest_offsets(daily, thr, since, s)
        by = out["session_by"]
        assert (by >= 0).all()
        lo = np.maximum(s.min_interval_days - since, 0)
        hi = np.maximum(s.max_interval_days - since, 0)
        assert ((by >= lo) & (by <= hi)).all()
        assert (out["window_start"] <= by).all()
        if prev is not None:
            assert (prev <= by).all()
        prev = by
    # Per-row thresholds give the same as one threshold at a time.
    thr = np.where(np.arange(n) % 2 == 0, 0.1, 0.3)
    mixed = suggest_offsets(daily, thr, since, s)["session_by"]
    a = suggest_offsets(daily, 0.1, since, s)["session_by"]
    b = suggest_offsets(daily, 0.3, since, s)["session_by"]
    assert np.array_equal(mixed, np.where(np.arange(n) % 2 == 0, a, b))


# --------------------------------------------------------------------------- answers and rows
def test_forecast_rows_has_exactly_the_contract_columns(policy_model, sim_small):
    answers = forecast_cohort(
        sim_small.cohort.subset(sim_small.cohort.patients["patient_id"][:40]),
        policy_model,
        "2026-03-01",
    )
    table = forecast_rows(answers)
    assert tuple(table.columns) == PREDICT_COLUMNS
    assert len(table) == 40
    assert forecast_rows([]).columns.tolist() == list(PREDICT_COLUMNS)
    # Answers are JSON-able as they are (dates as strings, no NaN).
    text = json.dumps(answers, allow_nan=False)
    assert '"decision_support": true' in text


def test_queries_validate_input(policy_model, sim_small):
    c = sim_small.cohort
    pid = c.patients["patient_id"].iloc[0]
    with pytest.raises(ValueError, match="as_of"):
        forecast_queries(c, policy_model, pd.DataFrame({"patient_id": [pid]}))
    with pytest.raises(ValueError, match="not in the cohort"):
        forecast_queries(
            c, policy_model, pd.DataFrame({"patient_id": ["nobody"], "as_of": ["2026-01-01"]})
        )
    with pytest.raises(ValueError, match="threshold"):
        forecast_queries(
            c,
            policy_model,
            pd.DataFrame({"patient_id": [pid], "as_of": ["2026-01-01"], "threshold": [2.0]}),
        )


def test_insufficient_data_uses_the_population_curve_of_the_model(policy_model, sim_small):
    curve = policy_model.population_curve
    surv = np.array(curve["survival"])
    assert surv[0] == 1.0
    assert (np.diff(surv) <= 0).all()
    answers = forecast_cohort(sim_small.cohort, policy_model, "2026-06-01")
    pop = [a for a in answers if a["status"] == "insufficient_data" and a["risk"]]
    assert pop
    for a in pop:
        assert a["risk"]["kind"] == "population"
        t0 = a["days_since_session"] or 0
        for h in a["risk"]["horizons"]:
            if t0 + h["days"] < len(surv):
                expected = 1 - surv[t0 + h["days"]] / surv[t0]
                assert h["risk"] == pytest.approx(expected, abs=1e-4)
            assert h["lower"] is None


def test_without_population_curve_insufficient_data_has_no_risk(policy_model, sim_small):
    class NoCurve:
        version = policy_model.version
        card = {}
        bundle = policy_model.bundle
        definition = policy_model.definition
        population_curve = None

    answers = forecast_cohort(sim_small.cohort, NoCurve(), "2026-06-01")
    insufficient = [a for a in answers if a["status"] == "insufficient_data"]
    assert insufficient
    for a in insufficient:
        assert a["risk"] is None
        assert a["suggestion"]["session_by"] is None
        assert "population estimate" in a["suggestion"]["rationale"]


def test_a_whole_clinic_is_vectorised(policy_model):
    sim = simulate(1500, 99)
    t0 = time.perf_counter()
    answers = forecast_cohort(sim.cohort, policy_model, "2026-05-01")
    elapsed = time.perf_counter() - t0
    assert len(answers) == 1500
    # A per-patient model call would take minutes; the vectorised path takes seconds.
    assert elapsed < 30, elapsed


# --------------------------------------------------------------------------- invariants
FORBIDDEN = ("no risk", "low risk", " safe ", "safe.", "cleared")


def _latest_flag_since_session(cohort, as_of: pd.Timestamp) -> set[str]:
    """Patients whose latest assessment since the last session has item 9 >= 1 or C-SSRS >= 2."""
    s = cohort.sessions[cohort.sessions["date"] <= as_of]
    last = s.groupby("patient_id")["date"].max()
    a = cohort.assessments[cohort.assessments["date"] <= as_of].copy()
    a["last"] = a["patient_id"].map(last)
    a = a[a["last"].isna() | (a["date"] >= a["last"])]
    latest = a.sort_values(["patient_id", "date"]).groupby("patient_id").tail(1)
    hit = (latest["phq9_9"] >= 1) | (latest["cssrs_ideation"] >= 2)
    return set(latest.loc[hit, "patient_id"])


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    day=st.integers(min_value=0, max_value=600),
    threshold=st.sampled_from([0.05, 0.2, 0.35]),
)
def test_invariants_on_any_simulated_cohort(policy_model, seed, day, threshold):
    sim = simulate(120, seed)
    as_of = pd.Timestamp("2025-01-01") + pd.Timedelta(days=day)
    answers = forecast_cohort(sim.cohort, policy_model, as_of, PolicySettings(threshold=threshold))
    flagged = _latest_flag_since_session(sim.cohort, as_of)
    s = PolicySettings()
    for a in answers:
        assert a["status"] in STATUSES
        assert a["status_reason"]
        assert a["safety"]["statement"]
        assert risks_monotone(a)
        if a["patient_id"] in flagged:
            assert a["safety"]["level"] in ("review", "urgent")
        level = a["safety"]["level"]
        if level is not None:
            assert a["status"] == {"urgent": "urgent_review", "review": "safety_review"}[level]
        else:
            assert a["status"] not in ("urgent_review", "safety_review")
        for text in all_strings(a):
            low = f" {text.lower()} "
            assert not any(w in low for w in FORBIDDEN), text
        by = a["suggestion"]["session_by"]
        if by is not None:
            last = pd.Timestamp(a["last_session"]["date"])
            lo = max(as_of, last + pd.Timedelta(days=s.min_interval_days))
            hi = max(as_of, last + pd.Timedelta(days=s.max_interval_days))
            assert lo <= pd.Timestamp(by) <= hi
        if a["status"] in ("routine", "session_due"):
            assert a["risk"]["kind"] == "personalised"
            assert by is not None
            risk_at = a["suggestion"]["rationale"]
            assert "%" in risk_at
        if a["status"] == "routine":
            # Routine means the suggested date lies after today and the risk at
            # the first day is within the threshold.
            assert pd.Timestamp(by) > as_of
            assert a["risk"]["daily"]["risk"][0] <= threshold + 1e-9
