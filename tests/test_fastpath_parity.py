"""One-patient forecasts give exactly the answers of the cohort-wide call.

The serving path forecasts one patient at a time, where the policy scores the
assessments once (shared with the feature context when the safety rules are
the defaults) and collects flagged answers with array lookups instead of a
merge and a groupby. The cohort-wide call is the reference: each patient's
one-patient answers must serialise to the same JSON, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from forecast.features import _features_at_days, features_at
from forecast.instruments import SafetyRules, score_assessments
from forecast.outcomes import OutcomeDefinition, prepare
from forecast.policy import PolicySettings, forecast_queries
from forecast.simulation import simulate

AS_OF = ["2025-01-15", "2025-09-01", "2026-03-10", "2026-06-01", "2026-10-31"]


@pytest.fixture(scope="module")
def cohort200() -> Any:
    return simulate(200, 11).cohort


def _queries(pids: list[str]) -> pd.DataFrame:
    return pd.DataFrame([(p, d) for p in pids for d in AS_OF], columns=["patient_id", "as_of"])


def _dumps(answers: list[dict]) -> list[str]:
    return [json.dumps(a, sort_keys=True) for a in answers]


@pytest.mark.parametrize(
    "settings",
    [
        PolicySettings(),
        PolicySettings(threshold=0.3, safety_rules=SafetyRules(review_item9=2)),
    ],
    ids=["default", "other-rules"],
)
def test_one_patient_answers_equal_the_cohort_call(
    cohort200: Any, policy_model: Any, settings: PolicySettings
) -> None:
    pids = sorted(cohort200.patients["patient_id"].astype(str))
    q = _queries(pids)
    wide = _dumps(forecast_queries(cohort200, policy_model, q, settings))
    assert len(wide) == len(pids) * len(AS_OF)
    statuses = set()
    flagged = 0
    for i, pid in enumerate(pids):
        one = _dumps(
            forecast_queries(
                cohort200.subset([pid]), policy_model, q[q["patient_id"] == pid], settings
            )
        )
        assert one == wide[i * len(AS_OF) : (i + 1) * len(AS_OF)], pid
    for text in wide:
        answer = json.loads(text)
        statuses.add(answer.get("status"))
        flagged += answer["status"] in ("urgent_review", "safety_review")
    # The comparison covers forecasts, safety overrides and the other statuses.
    assert len(statuses) >= 4
    assert flagged > 0


def test_prepare_with_a_scored_frame_equals_scoring_inside(cohort200: Any) -> None:
    definition = OutcomeDefinition()
    scored = score_assessments(cohort200.assessments)
    before = scored.copy()
    a = prepare(cohort200, definition)
    b = prepare(cohort200, definition, scored=scored)
    pd.testing.assert_frame_equal(a.assessments, b.assessments)
    for name in ("a_patient", "a_day", "a_key", "a_rank", "anchor_day", "base_phq9", "base_day"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    pd.testing.assert_frame_equal(scored, before)


def test_features_at_days_equals_features_at(cohort200: Any) -> None:
    pids = sorted(cohort200.patients["patient_id"].astype(str))[:50]
    q = _queries(pids)
    definition = OutcomeDefinition()
    expected = features_at(cohort200, q, definition)
    as_of = pd.to_datetime(q["as_of"]).to_numpy(dtype="datetime64[ns]")
    got = _features_at_days(
        cohort200,
        q["patient_id"].to_numpy(dtype=object),
        as_of,
        definition,
        scored=score_assessments(cohort200.assessments),
    )
    assert list(got) == list(expected.columns)
    pd.testing.assert_frame_equal(pd.DataFrame(got), expected)
