"""``score_assessments`` builds its frame in one step: same frame as joining the parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecast.contract import PHQ9_ITEMS
from forecast.instruments import score_assessments
from forecast.simulation import simulate

SCORED = ("phq9", "phq9_answered", "phq9_prorated", "severity", "item9", "safety", "safety_reason")


def _reference(assessments: pd.DataFrame) -> pd.DataFrame:
    """The former construction: drop scored names, add blank instruments, concatenate."""
    out = score_assessments(assessments)
    base = assessments.drop(columns=[c for c in SCORED if c in assessments.columns])
    missing = [
        c
        for c in (*PHQ9_ITEMS, "phq9_total", "cssrs_ideation", "cssrs_behavior")
        if c not in base.columns
    ]
    extra = pd.DataFrame(dict.fromkeys(missing, np.full(len(base), np.nan)), index=base.index)
    return pd.concat([base, extra, out[list(SCORED)]], axis=1)


@pytest.mark.parametrize("variant", ["canonical", "empty", "missing_columns", "odd_index"])
def test_scored_frame_equals_the_joined_parts(variant: str) -> None:
    a = simulate(30, 2).cohort.assessments
    if variant == "empty":
        a = a.iloc[:0]
    elif variant == "missing_columns":
        a = a.drop(columns=["phq9_4", "cssrs_behavior"])
    elif variant == "odd_index":
        a = a.assign(phq9=1.0, note="x").set_index(np.arange(len(a)) * 3 + 7)
    got = score_assessments(a)
    pd.testing.assert_frame_equal(got, _reference(a))
    pd.testing.assert_index_equal(got.index, a.index)


def test_scored_frame_shares_no_memory_with_the_input() -> None:
    a = simulate(10, 3).cohort.assessments
    before = a.copy()
    scored = score_assessments(a)
    scored.loc[:, "phq9_1"] = 3.0
    scored.loc[:, "date"] = pd.Timestamp("2000-01-01")
    pd.testing.assert_frame_equal(a, before)
