"""``write_cohort`` then ``load_cohort`` gives back exactly the same cohort."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.cohort import Cohort, canonicalize
from forecast.contract import DIAGNOSES, PHQ9_ITEMS, ROUTES, SESSION_KINDS, SEXES
from forecast.data import load_cohort, write_cohort
from forecast.instruments import phq9_from_items

TODAY = date(2025, 1, 1)
DAYS = st.integers(min_value=0, max_value=700)
ID = st.text(alphabet="abcxyz019_-", min_size=1, max_size=6)


def maybe(strategy):
    return st.one_of(st.none(), strategy)


@st.composite
def cohorts(draw) -> Cohort:
    ids = draw(st.lists(ID, min_size=1, max_size=4, unique=True))
    n = len(ids)
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "age": draw(st.lists(maybe(st.floats(0, 120)), min_size=n, max_size=n)),
            "sex": draw(st.lists(maybe(st.sampled_from(SEXES)), min_size=n, max_size=n)),
            "diagnosis": draw(st.lists(maybe(st.sampled_from(DIAGNOSES)), min_size=n, max_size=n)),
            "prior_treatments": draw(st.lists(maybe(st.integers(0, 50)), min_size=n, max_size=n)),
            "bmi": draw(st.lists(maybe(st.floats(10, 60)), min_size=n, max_size=n)),
        }
    )
    srows, arows = [], []
    for pid in ids:
        for day in draw(st.sets(DAYS, max_size=3)):
            srows.append(
                {
                    "patient_id": pid,
                    "date": np.datetime64("2023-01-01") + np.timedelta64(day, "D"),
                    "kind": draw(st.sampled_from(SESSION_KINDS)),
                    "dose_mg_per_kg": draw(maybe(st.floats(0, 20))),
                    "route": draw(maybe(st.sampled_from(ROUTES))),
                    "psychotherapy": draw(maybe(st.booleans())),
                    "dissociation": draw(maybe(st.floats(0, 100))),
                    "systolic_bp_max": draw(maybe(st.floats(50, 300))),
                }
            )
        for day in draw(st.sets(DAYS, max_size=4)):
            items = np.array([draw(maybe(st.integers(0, 3))) for _ in PHQ9_ITEMS], dtype=float)
            total, answered = phq9_from_items(items[None, :])
            if answered[0] == 0:
                given_total = draw(maybe(st.integers(0, 27)))
            elif np.isnan(total[0]):
                # 3+ missing: a total between the answered sum and its maximum
                low = int(np.nansum(items))
                given_total = draw(st.integers(low, low + 3 * (9 - int(answered[0]))))
            else:
                given_total = draw(st.sampled_from([None, int(total[0])]))
            ideation = draw(maybe(st.integers(0, 5)))
            behavior = draw(maybe(st.integers(0, 1)))
            if answered[0] == 0 and given_total is None and ideation is None:
                behavior = 0
            arows.append(
                {
                    "patient_id": pid,
                    "date": np.datetime64("2023-01-01") + np.timedelta64(day, "D"),
                    **dict(zip(PHQ9_ITEMS, items, strict=True)),
                    "phq9_total": given_total,
                    "cssrs_ideation": ideation,
                    "cssrs_behavior": behavior,
                }
            )
    sessions = pd.DataFrame(srows, columns=list(srows[0]) if srows else ["patient_id", "date"])
    assessments = pd.DataFrame(arows, columns=list(arows[0]) if arows else ["patient_id", "date"])
    if not srows:
        sessions = sessions.astype({"date": "datetime64[ns]"})
    if not arows:
        assessments = assessments.astype({"date": "datetime64[ns]"})
    return Cohort(
        canonicalize("patients", patients, ("bmi",)),
        canonicalize("sessions", sessions.astype(object).where(sessions.notna(), None)),
        canonicalize("assessments", assessments),
        ("bmi",),
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohort=cohorts())
def test_write_then_load_is_exact(fmt, cohort):
    with tempfile.TemporaryDirectory() as tmp:
        write_cohort(cohort, Path(tmp), fmt)
        back = load_cohort(tmp, covariates=("bmi",), today=TODAY)
    assert back.covariates == cohort.covariates
    for table in ("patients", "sessions", "assessments"):
        pd.testing.assert_frame_equal(getattr(back, table), getattr(cohort, table))
