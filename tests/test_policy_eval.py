"""forecast.policy.replay: replay of model-driven and fixed maintenance schedules."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast.policy import PolicySettings
from forecast.policy.replay import (
    FIXED_WEEKS,
    TABLE_COLUMNS,
    PolicyEvaluationError,
    _sequential_booking,
    compare_to_fixed,
    evaluate_policy,
    model_share_at,
    replay_episodes,
)
from forecast.simulation import simulate


def test_policy_replay_needs_the_truth(policy_model, sim_small, tmp_path: Path):
    with pytest.raises(PolicyEvaluationError, match="truth"):
        evaluate_policy(sim_small.cohort, policy_model, None, tmp_path)
    with pytest.raises(PolicyEvaluationError, match="truth.csv"):
        evaluate_policy(sim_small.cohort, policy_model, tmp_path / "truth.csv", tmp_path)
    other = simulate(50, 777).truth
    with pytest.raises(PolicyEvaluationError, match="same simulation"):
        evaluate_policy(sim_small.cohort, policy_model, other.iloc[:0], tmp_path)


def test_sequential_booking_keeps_the_earliest_date_before_the_booked_session():
    s = PolicySettings()
    # Episode 0: decisions on days 5, 12, 30 suggesting 40, 20, 15. The day-30
    # decision comes after the session booked for day 20: it is never made.
    # Episode 1: one decision on day 3 suggesting day 60.
    # Episode 2: decisions on days 4, 9 suggesting 100 (beyond the grid), 9.
    ep = np.array([0, 0, 0, 1, 2, 2])
    day = np.array([5, 12, 30, 3, 4, 9])
    book = np.array([40.0, 20.0, 15.0, 60.0, 100.0, 9.0])
    out = _sequential_booking(ep, day, book, 4, s)
    assert list(out) == [20.0, 60.0, 9.0, float(s.max_interval_days)]


def test_replay_on_a_small_cohort(policy_model, sim_small, tmp_path: Path):
    thresholds = (0.05, 0.1, 0.2, 0.3, 0.5)
    res = evaluate_policy(
        sim_small.cohort, policy_model, sim_small.truth, tmp_path, thresholds=thresholds
    )
    table = pd.DataFrame(res["table"])
    assert tuple(table.columns) == TABLE_COLUMNS
    fixed = table[table["schedule"] != "model"]
    model = table[table["schedule"] == "model"]
    assert len(fixed) == len(FIXED_WEEKS)
    assert list(model["threshold"]) == list(thresholds)
    # Fixed schedules, recomputed from the truth independently.
    eps = replay_episodes(sim_small.cohort, policy_model, sim_small.truth)
    t = eps["latent_wane_days"].to_numpy()
    for w, row in zip(FIXED_WEEKS, fixed.itertuples(), strict=True):
        assert row.sessions_per_patient_year == pytest.approx(365.25 / (7 * w), abs=1e-3)
        assert row.waned_before_session_share == pytest.approx(np.mean(t < 7 * w), abs=1e-4)
        assert row.n_episodes == len(eps)
    # A higher threshold books later for every episode: fewer sessions, more waning.
    assert (np.diff(model["sessions_per_patient_year"].to_numpy()) <= 0).all()
    assert (np.diff(model["waned_before_session_share"].to_numpy()) >= 0).all()
    assert model["sessions_per_patient_year"].iloc[0] > model["sessions_per_patient_year"].iloc[-1]
    # The report: an HTML fragment with an inline PNG, and the files written.
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', res["html"])
    assert m is not None
    assert base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Assumptions" in res["html"]
    assert (tmp_path / "policy_eval.png").read_bytes()[:4] == b"\x89PNG"
    saved = pd.read_csv(tmp_path / "policy_eval.csv")
    assert len(saved) == len(table)
    assert len(res["comparison"]) == len(FIXED_WEEKS)


def test_comparison_interpolates_the_model_curve():
    rows = [
        {
            "schedule": "fixed every 3 weeks",
            "threshold": None,
            "sessions_per_patient_year": 17.0,
            "waned_before_session_share": 0.12,
            "n_episodes": 10,
        },
        {
            "schedule": "fixed every 9 weeks",
            "threshold": None,
            "sessions_per_patient_year": 5.0,
            "waned_before_session_share": 0.40,
            "n_episodes": 10,
        },
        {
            "schedule": "model",
            "threshold": 0.1,
            "sessions_per_patient_year": 20.0,
            "waned_before_session_share": 0.06,
            "n_episodes": 10,
        },
        {
            "schedule": "model",
            "threshold": 0.2,
            "sessions_per_patient_year": 10.0,
            "waned_before_session_share": 0.16,
            "n_episodes": 10,
        },
    ]
    assert model_share_at(rows, 17.0) == pytest.approx(0.09)
    assert model_share_at(rows, 30.0) is None
    cmp = compare_to_fixed(rows)
    assert cmp[0]["model_better"] is True
    assert cmp[0]["model_share_same_sessions"] == pytest.approx(0.09)
    # Outside the model's range and with more sessions only: no claim of being better.
    assert cmp[1]["model_better"] is False


@pytest.mark.slow
def test_model_schedule_beats_every_fixed_schedule(tmp_path: Path):
    """Done-when of the policy: fewer waned-before-session episodes at the same sessions/year.

    The documented measurement (README.md (policy section)): the default model trained
    by ``forecast train`` on one 3,000-patient simulated cohort is replayed on
    another; at each fixed schedule's sessions per patient-year the interpolated
    model curve must lie strictly below the fixed schedule's share. The margin at
    4 and 6 weeks depends on the training sample (the README gives the range over
    other seeds); this seeded configuration is the one the README reports.
    """
    from forecast import registry
    from forecast.training import train_and_save

    version = train_and_save(simulate(3000, 21).cohort, tmp_path, n_bootstrap=0, seed=0)
    model = registry.load(version, tmp_path)
    test = simulate(3000, 22)
    res = evaluate_policy(test.cohort, model, test.truth, None)
    assert {c["schedule"] for c in res["comparison"]} == {
        f"fixed every {w} weeks" for w in FIXED_WEEKS
    }
    for c in res["comparison"]:
        assert c["model_share_same_sessions"] is not None, c
        assert c["model_share_same_sessions"] < c["fixed_share"], c
        assert c["model_better"], c
