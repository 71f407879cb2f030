"""Outcome definitions: baseline, response, remission, reliable change, patient summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast.outcomes import (
    OutcomeDefinition,
    assessment_states,
    baselines,
    reliable_change_index,
)
from forecast.summary import patient_summary
from tests.fixtures.episodes import day, make_cohort


def test_baseline_is_the_last_score_on_or_before_the_first_induction():
    c = make_cohort(
        [
            ("a", -60, "maintenance"),  # not an induction: does not anchor
            ("a", 0, "induction"),
            ("a", 4, "induction"),
            ("b", 0, "induction"),
            ("c", 0, "induction"),
            ("d", 5, "maintenance"),
        ],
        [
            ("a", -40, 25),
            ("a", -10, 18),
            ("a", 0, 17),  # same day as the session: taken before it
            ("a", 3, 9),
            ("b", -31, 19),  # too old
            ("c", -30, 21),  # exactly 30 days: allowed
            ("d", 1, 15),
        ],
    )
    b = baselines(c).set_index("patient_id")
    assert b.loc["a", "baseline_phq9"] == 17
    assert b.loc["a", "baseline_date"] == day(0)
    assert b.loc["a", "anchor_date"] == day(0)
    assert math.isnan(b.loc["b", "baseline_phq9"])
    assert b.loc["c", "baseline_phq9"] == 21
    assert pd.isna(b.loc["d", "anchor_date"])
    assert math.isnan(b.loc["d", "baseline_phq9"])
    wider = baselines(c, OutcomeDefinition(baseline_window_days=31)).set_index("patient_id")
    assert wider.loc["b", "baseline_phq9"] == 19


def test_response_and_remission_relative_to_baseline():
    c = make_cohort(
        [("p", 0, "induction")],
        [("p", -1, 20), ("p", 7, 10), ("p", 14, 11), ("p", 21, 4), ("p", 28, 5)],
    )
    s = assessment_states(c)
    assert list(s["in_response"]) == [False, True, False, True, True]
    assert list(s["in_remission"]) == [False, False, False, True, False]
    assert list(s["after_treatment"]) == [False, True, True, True, True]
    assert list(s["change_from_baseline"]) == [0, 10, 9, 16, 15]
    stricter = assessment_states(c, OutcomeDefinition(response_fraction=0.4))
    assert list(stricter["in_response"]) == [False, False, False, True, True]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 27), st.integers(0, 27)), min_size=1, max_size=20),
    st.sampled_from([0.4, 0.5, 0.6]),
)
def test_response_iff_score_at_most_fraction_of_baseline(pairs, fraction):
    sessions = [(f"p{i}", 0, "induction") for i in range(len(pairs))]
    assessments = []
    for i, (base, score) in enumerate(pairs):
        assessments += [(f"p{i}", -1, base), (f"p{i}", 7, score)]
    s = assessment_states(
        make_cohort(sessions, assessments), OutcomeDefinition(response_fraction=fraction)
    )
    after = s[s["after_treatment"]].set_index("patient_id")
    for i, (base, score) in enumerate(pairs):
        assert after.loc[f"p{i}", "in_response"] == (score <= fraction * base)
        assert after.loc[f"p{i}", "in_remission"] == (score < 5)


def test_reliable_change_index_matches_jacobson_truax():
    # 1.96 * sqrt(2) * 5.5 * sqrt(1 - 0.84) = 1.96 * 1.41421 * 5.5 * 0.4
    assert reliable_change_index(5.5, 0.84) == pytest.approx(6.0983, abs=1e-3)
    with pytest.raises(ValueError, match="reliability"):
        reliable_change_index(5.5, 1.0)
    with pytest.raises(ValueError, match="sd"):
        reliable_change_index(0.0, 0.5)


def test_definition_validation_and_round_trip():
    d = OutcomeDefinition(confirm_waning=True, response_window_days=10)
    assert OutcomeDefinition.from_dict(d.to_dict()) == d
    with pytest.raises(ValueError, match="response_fraction"):
        OutcomeDefinition(response_fraction=1.5)
    with pytest.raises(ValueError, match="unknown"):
        OutcomeDefinition.from_dict({"nope": 1})


def test_patient_summary_hand_checked():
    c = make_cohort(
        [
            ("p", 0, "induction"),
            ("p", 3, "induction"),
            ("p", 30, "maintenance"),
            ("n", 0, "induction"),
            ("w", 0, "maintenance"),
        ],
        [
            ("p", -2, 20, 1),
            ("p", 5, 8, 0),
            ("p", 12, 4, 0),
            ("p", 19, 7, 0),
            ("p", 30, 12, 0),
            ("p", 35, 6, 0, 1),
            ("p", 42, 9, 0),
            ("n", -1, 18, 0),
            ("n", 7, 16, 0, 3),
        ],
    )
    s = patient_summary(c).set_index("patient_id")
    p = s.loc["p"]
    assert (p["baseline_phq9"], p["best_phq9"], p["best_date"]) == (20, 4, day(12))
    assert p["first_response_date"] == day(5)
    assert p["first_remission_date"] == day(12)
    assert (p["latest_phq9"], p["latest_date"]) == (9, day(42))
    assert p["current_state"] == "in_response"
    assert p["change_from_baseline"] == 11
    assert p["reliable_improvement"]
    assert (p["n_sessions"], p["n_episodes"], p["n_waned"]) == (3, 2, 1)
    assert p["n_item9_positive"] == 1
    assert p["max_cssrs_ideation"] == 1
    assert p["last_si_date"] == day(35)
    n = s.loc["n"]
    assert n["current_state"] == "not_in_response"
    assert not n["reliable_improvement"]
    assert n["n_episodes"] == 0
    assert n["last_safety"] == "review"
    assert n["last_si_date"] == day(7)
    w = s.loc["w"]
    assert w["current_state"] == "no_treatment"
    assert w["n_assessments"] == 0
    assert np.isnan(w["max_cssrs_ideation"])
    assert w["last_safety"] is None


def test_patient_summary_no_baseline_state():
    # A score 45 days before treatment is too old, and 8 days after the first
    # session is too late for the fallback baseline (7 days).
    c = make_cohort([("p", 0, "induction")], [("p", -45, 20), ("p", 8, 6)])
    assert patient_summary(c).loc[0, "current_state"] == "no_baseline"
