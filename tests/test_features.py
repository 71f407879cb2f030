"""Features "as of" a date: hand-checked values, no look-ahead, train/serve parity, landmarks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.cohort import Cohort
from forecast.episodes import build_episodes
from forecast.features import (
    DEFAULT_LANDMARKS,
    FEATURES,
    feature_spec,
    features_at,
    landmark_dataset,
)
from tests.fixtures.episodes import cohorts, day, make_cohort

SESSION_EXTRA = {"dose_mg_per_kg": 0.5, "route": "iv", "psychotherapy": True}


def example() -> Cohort:
    """Two episodes of p (event, then censored at end), one of q (item-9 event)."""
    return make_cohort(
        [
            ("p", 0, "induction", SESSION_EXTRA),
            ("p", 3, "induction", SESSION_EXTRA),
            ("p", 30, "maintenance", {"dose_mg_per_kg": 0.7, "route": "im"}),
            ("q", 0, "induction"),
        ],
        [
            ("p", -2, 20, 1),
            ("p", 5, 8, 0),
            ("p", 12, 9, 0),
            ("p", 19, 7, 0),
            ("p", 30, 12, 0),
            ("p", 35, 6, 0),
            ("p", 42, 6, 0),
            ("q", -5, 16, 0),
            ("q", 7, 7, 0),
            ("q", 14, 8, 0),
            ("q", 21, 5, 1),
        ],
        patients=[
            {"patient_id": "p", "age": 40, "sex": "female", "diagnosis": "trd"},
            {"patient_id": "q", "prior_treatments": 3},
        ],
    )


def at(cohort: Cohort, pid: str, offset: int) -> pd.Series:
    q = pd.DataFrame({"patient_id": [pid], "as_of": [day(offset)]})
    return features_at(cohort, q).iloc[0]


def test_hand_checked_values_inside_an_episode():
    f = at(example(), "p", 20)
    assert f["episode_id"] == "p#1"
    assert f["in_episode"]
    assert f["episode_start"] == day(3)
    assert f["days_since_session"] == 17
    assert f["elapsed_days"] == 17
    assert f["response_status"] == "responded"
    assert f["response_known"] == 1.0
    assert f["response_day"] == 2
    assert f["phq9_response"] == 8
    assert f["phq9_latest"] == 7
    assert f["phq9_change"] == -1
    assert f["phq9_max_since_session"] == 9
    # PHQ-9 since the session of day 3: 8, 9, 7 -> mean 8, baseline 20
    assert f["phq9_mean_ratio_since_session"] == pytest.approx(0.4)
    assert f["prev_response_ratio_mean"] == 0.0  # no earlier episode
    assert f["n_assessments_since_session"] == 3
    assert f["n_prev_sessions"] == 1
    assert f["first_episode"] == 1.0
    # Least squares over days -2, 5, 12, 19 (scores 20, 8, 9, 7): -133/245 per day.
    assert f["phq9_slope_28d"] == pytest.approx(7 * -133 / 245)
    assert f["baseline_phq9"] == 20
    assert f["response_threshold"] == 10
    assert f["response_state"] == "in_response"
    assert f["severity"] == "mild"
    assert not f["waned_seen"]
    assert f["safety"] is None
    assert (f["age"], f["age_missing"], f["sex"], f["diagnosis"]) == (40, 0, "female", "trd")
    assert (f["dose_mg_per_kg"], f["route"], f["psychotherapy"]) == (0.5, "iv", 1.0)
    assert f["prior_treatments_missing"] == 1.0


def test_previous_episodes_and_waning_seen():
    f = at(example(), "p", 40)
    assert f["episode_id"] == "p#2"
    assert f["n_prev_episodes"] == 1
    assert f["first_episode"] == 0.0
    # The first episode waned in (16, 27]: its midpoint is 21.5 days.
    assert f["prev_benefit_days_mean"] == 21.5
    assert f["prev_waned_share"] == 1.0
    # the first episode responded with 8 of a baseline of 20; since day 30 only day 35 (6)
    assert f["prev_response_ratio_mean"] == pytest.approx(0.4)
    assert f["phq9_mean_ratio_since_session"] == pytest.approx(0.3)
    assert (f["dose_mg_per_kg"], f["route"], f["psychotherapy_missing"]) == (0.7, "im", 1.0)
    g = at(example(), "q", 25)
    assert g["waned_seen"]
    assert g["waned_date"] == day(21)
    assert g["safety"] == "review"
    assert g["safety_date"] == day(21)
    assert "item 9" in g["safety_reason"]
    assert g["sex"] == "unknown"
    assert g["prior_treatments"] == 3


def test_states_before_and_around_treatment():
    c = example()
    before = at(c, "p", -5)
    assert before["response_status"] == "no_treatment"
    assert before["response_state"] == "no_treatment"
    assert math.isnan(before["latest_phq9"])
    pending = at(c, "p", 4)
    assert pending["response_status"] == "pending"
    assert pending["response_known"] == 0.0
    assert not pending["in_episode"]
    # The day -2 item 9 = 1 predates the session of day 0, but no negative screen
    # has followed it: it stays in force (forecast.safety, the rule of every answer).
    assert pending["safety"] == "review"
    assert pending["safety_date"] == day(-2)
    assert "item 9" in pending["safety_reason"]
    # An answer from the session day itself counts (the data have no time of day).
    same_day = make_cohort([("s", 0, "induction")], [("s", 0, 20, 1)])
    assert at(same_day, "s", 3)["safety"] == "review"
    nores = make_cohort([("x", 0, "induction")], [("x", -1, 20), ("x", 20, 18)])
    assert at(nores, "x", 15)["response_status"] == "no_assessment"
    assert at(nores, "x", 21)["response_status"] == "no_assessment"
    assert at(nores, "x", 21)["response_state"] == "not_in_response"


def test_features_ignore_rows_after_as_of():
    c = example()
    later = make_cohort(
        [
            ("p", 0, "induction", SESSION_EXTRA),
            ("p", 3, "induction", SESSION_EXTRA),
            ("p", 21, "maintenance"),
            ("p", 30, "maintenance", {"dose_mg_per_kg": 0.7, "route": "im"}),
            ("q", 0, "induction"),
        ],
        [
            ("p", -2, 20, 1),
            ("p", 5, 8, 0),
            ("p", 12, 9, 0),
            ("p", 19, 7, 0),
            ("p", 21, 27, 3, 5),  # future: severe, SI
            ("p", 30, 12, 0),
            ("p", 35, 6, 0),
            ("p", 42, 6, 0),
            ("q", -5, 16, 0),
            ("q", 7, 7, 0),
            ("q", 14, 8, 0),
            ("q", 21, 5, 1),
        ],
        patients=[
            {"patient_id": "p", "age": 40, "sex": "female", "diagnosis": "trd"},
            {"patient_id": "q", "prior_treatments": 3},
        ],
    )
    q = pd.DataFrame({"patient_id": ["p", "p", "q"], "as_of": [day(4), day(20), day(20)]})
    pd.testing.assert_frame_equal(features_at(c, q), features_at(later, q))
    # ... and the future rows do change the answer once they are in the past.
    q2 = pd.DataFrame({"patient_id": ["p"], "as_of": [day(21)]})
    assert features_at(later, q2).loc[0, "safety"] == "urgent"


def test_queries_keep_their_order_and_unknown_patients_fail():
    c = example()
    q = pd.DataFrame({"patient_id": ["q", "p", "q"], "as_of": [day(25), day(20), day(8)]})
    f = features_at(c, q)
    assert list(f["patient_id"]) == ["q", "p", "q"]
    assert list(f["as_of"]) == [day(25), day(20), day(8)]
    with pytest.raises(ValueError, match="not in the cohort"):
        features_at(c, pd.DataFrame({"patient_id": ["zz"], "as_of": [day(1)]}))


def test_landmark_rows_follow_the_risk_set_rules():
    lm = landmark_dataset(example())
    p1 = lm[lm["episode_id"] == "p#1"]
    # Event in (16, 27]: observed from landmark 28 on, so rows at 0, 7, 14, 21.
    assert list(p1["landmark"]) == [0, 7, 14, 21]
    assert list(p1["lower"]) == [16, 9, 2, 0]
    assert list(p1["upper"]) == [27, 20, 13, 6]
    assert p1["event"].all()
    p2 = lm[lm["episode_id"] == "p#2"]
    # Censored at 12: no information from landmark 14 on.
    assert list(p2["landmark"]) == [0, 7]
    assert list(p2["lower"]) == [12, 5]
    assert np.isinf(p2["upper"]).all()
    assert not p2["event"].any()
    assert list(lm.loc[lm["episode_id"] == "q#1", "landmark"]) == [0, 7, 14]
    assert (lm["as_of"] == lm["as_of"].dt.normalize()).all()


def test_train_serve_parity_on_the_hand_cohort():
    c = example()
    lm = landmark_dataset(c)
    served = features_at(c, lm[["patient_id", "as_of"]])
    pd.testing.assert_frame_equal(
        lm.loc[:, list(FEATURES.names)].reset_index(drop=True),
        served.loc[:, list(FEATURES.names)],
    )


@pytest.mark.slow
def test_train_serve_parity_and_completeness_on_a_simulated_cohort(sim_small):
    cohort = sim_small.cohort
    lm = landmark_dataset(cohort)
    spec = feature_spec(cohort.covariates)
    assert not lm[list(spec.numeric)].isna().any().any()
    for name, levels in spec.categorical.items():
        assert set(lm[name].dropna()) <= set(levels)
    eps = build_episodes(cohort)
    assert set(lm["episode_id"]) <= set(eps["episode_id"])
    assert (lm["lower"] < lm["upper"]).all()
    assert (lm["lower"] >= 0).all()
    # One patient served on one landmark date, alone in the cohort: same features.
    rows = lm.sample(25, random_state=0)
    for _, row in rows.iterrows():
        one = cohort.subset([row["patient_id"]])
        served = features_at(
            one, pd.DataFrame({"patient_id": [row["patient_id"]], "as_of": [row["as_of"]]})
        )
        got = served.loc[0, list(spec.names)]
        want = row[list(spec.names)]
        pd.testing.assert_series_equal(got, want, check_names=False, check_dtype=False)


def test_landmarks_are_validated():
    with pytest.raises(ValueError, match="non-negative"):
        landmark_dataset(example(), landmarks=[-1, 7])
    assert DEFAULT_LANDMARKS[0] == 0


@pytest.mark.parametrize(
    ("sessions", "assessments", "status"),
    [
        ([], [("p", 0, 10)], "no_treatment"),
        ([("p", 0, "induction")], [], "no_baseline"),
        ([], [], "no_treatment"),
    ],
)
def test_sparse_histories_still_give_complete_rows(sessions, assessments, status):
    c = make_cohort(sessions, assessments, patients=[{"patient_id": "p"}])
    f = at(c, "p", 5)
    assert f["response_status"] == status
    assert not f["in_episode"]
    assert f["safety"] is None
    assert not f[list(FEATURES.numeric)].astype(float).isna().any()
    assert landmark_dataset(c).empty


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts(), st.integers(-3, 130))
def test_features_equal_those_of_the_truncated_history(cohort, offset):
    """Property: everything features_at says on a date follows from rows up to that date."""
    ids = sorted(cohort.patients["patient_id"])
    q = pd.DataFrame({"patient_id": ids, "as_of": day(offset)})
    full = features_at(cohort, q)
    past = features_at(cohort.upto(day(offset)), q)
    pd.testing.assert_frame_equal(full, past)


def reference_features(cohort: Cohort, pid: str, as_of: pd.Timestamp) -> dict:
    """A few features recomputed with plain loops from one patient's rows up to as_of."""
    from forecast.instruments import score_assessments

    a = score_assessments(cohort.assessments)
    a = a[(a["patient_id"] == pid) & (a["date"] <= as_of)].to_dict("records")
    s = cohort.sessions
    s = s[(s["patient_id"] == pid) & (s["date"] <= as_of)].to_dict("records")
    last = s[-1]["date"] if s else None
    scored = [r for r in a if r["phq9"] == r["phq9"]]
    since = [r for r in a if last is not None and r["date"] > last]
    window = [r for r in scored if (as_of - r["date"]).days <= 28]
    slope = float("nan")
    if len(window) >= 2:
        x = np.array([(r["date"] - as_of).days for r in window], dtype=float)
        y = np.array([r["phq9"] for r in window], dtype=float)
        if np.ptp(x) > 0:
            slope = 7 * np.polyfit(x, y, 1)[0]
    # Flags in force (docs: safety rules): since the last session's day, or not
    # closed by a later negative screen (a C-SSRS flag only by a negative C-SSRS).
    def closed(r: dict) -> bool:
        by_cssrs = r["cssrs_ideation"] >= 1 or r["cssrs_behavior"] == 1
        later = [g for g in a if g["date"] > r["date"] and g["safety"] is None]
        if by_cssrs:
            return any(g["cssrs_ideation"] == 0 for g in later)
        return any(g["cssrs_ideation"] == 0 or g["item9"] == 0 for g in later)

    flagged = [
        r for r in a if r["safety"] and (last is None or r["date"] >= last or not closed(r))
    ]
    rank = {"urgent": 2, "review": 1}
    worst = max((rank.get(r["safety"], 0) for r in flagged), default=0)
    return {
        "n_prev_sessions": max(len(s) - 1, 0),
        "phq9_latest": scored[-1]["phq9"] if scored else 0.0,
        "phq9_max_since_session": max(
            (r["phq9"] for r in since if r["phq9"] == r["phq9"]), default=0.0
        ),
        "n_assessments_since_session": len(since),
        "phq9_slope_28d": 0.0 if np.isnan(slope) else slope,
        "slope_missing": float(np.isnan(slope)),
        "days_since_assessment": (as_of - a[-1]["date"]).days if a else 0,
        "safety": {2: "urgent", 1: "review", 0: None}[worst],
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts(), st.lists(st.integers(-5, 130), min_size=1, max_size=4))
def test_vectorised_features_match_the_reference_loops(cohort, offsets):
    ids = sorted(cohort.patients["patient_id"])
    q = pd.DataFrame(
        [(pid, day(o)) for pid in ids for o in offsets], columns=["patient_id", "as_of"]
    )
    got = features_at(cohort, q)
    eps = build_episodes(cohort)
    for i, (pid, as_of) in enumerate(q.itertuples(index=False)):
        want = reference_features(cohort, pid, as_of)
        # Episodes as the full table knows them, seen from as_of.
        mine = eps[eps["patient_id"] == pid]
        last = got.loc[i, "last_session"]
        current = mine[(mine["start"] == last) & (mine["response_date"] <= as_of)]
        assert got.loc[i, "n_prev_episodes"] == (mine["start"] < last).sum()
        assert got.loc[i, "in_episode"] == (len(current) == 1)
        if len(current):
            assert got.loc[i, "episode_id"] == current["episode_id"].iloc[0]
            seen = current["event_known_date"].iloc[0] <= as_of
            assert got.loc[i, "waned_seen"] == bool(seen)
        for name, value in want.items():
            if isinstance(value, float):
                assert got.loc[i, name] == pytest.approx(value, abs=1e-9), (name, pid, as_of)
            else:
                assert got.loc[i, name] == value, (name, pid, as_of)


def test_declared_covariates_become_features_with_missing_indicators():
    c = make_cohort(
        [("p", 0, "induction"), ("q", 0, "induction")],
        [("p", -1, 20), ("p", 7, 8), ("q", -1, 20), ("q", 7, 8)],
        patients=[{"patient_id": "p", "bmi": 31.5}, {"patient_id": "q", "bmi": None}],
        covariates=("bmi",),
    )
    spec = feature_spec(c.covariates)
    assert {"bmi", "bmi_missing"} <= set(spec.numeric)
    assert "bmi" not in FEATURES.numeric
    lm = landmark_dataset(c).set_index("patient_id")
    assert (lm.loc["p", "bmi"], lm.loc["p", "bmi_missing"]) == (31.5, 0.0)
    assert (lm.loc["q", "bmi"], lm.loc["q", "bmi_missing"]) == (0.0, 1.0)
