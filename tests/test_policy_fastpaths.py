"""The policy's array lookups give what the pandas merges they replace gave.

``forecast.policy`` answers one patient per request on the serving path, where
pandas' per-call overhead (merges, ``to_dict``) was most of a forecast's time.
These tests pin the replacements to the generic pandas forms on a simulated
cohort with repeated days, flags and patients without rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.instruments import score_assessments
from forecast.policy import answers, context
from forecast.simulation import simulate


def _cohort() -> Cohort:
    return simulate(120, 31).cohort


def _codes(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of patient ids shared by two columns."""
    codes, _ = pd.factorize(np.concatenate([a.to_numpy(dtype=object), b.to_numpy(dtype=object)]))
    return codes[: len(a)], codes[len(a) :]


def _queries(cohort: Cohort) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    a = cohort.assessments
    pick = rng.choice(len(a), size=300)
    shift = rng.integers(-20, 20, size=300)
    ids = np.concatenate([a["patient_id"].to_numpy()[pick], cohort.patients["patient_id"][:5]])
    dates = np.concatenate(
        [
            (a["date"].to_numpy()[pick] + shift.astype("timedelta64[D]")),
            np.full(5, np.datetime64("2000-01-01"), dtype="datetime64[ns]"),
        ]
    )
    q = pd.DataFrame({"patient_id": ids.astype(str), "as_of": dates, "threshold": 0.2})
    q["qi"] = np.arange(len(q))
    return q


def test_count_upto_equals_the_asof_merge() -> None:
    cohort = _cohort()
    q = _queries(cohort)
    scored = score_assessments(cohort.assessments)
    valid = scored[scored["phq9"].notna()]
    # The merge_asof form it replaces.
    r = valid[["patient_id", "date"]].copy()
    r["k"] = r.groupby("patient_id").cumcount() + 1
    left = q[["qi", "patient_id", "as_of"]].sort_values("as_of", kind="stable")
    right = r.sort_values("date", kind="stable")
    merged = pd.merge_asof(
        left, right, left_on="as_of", right_on="date", by="patient_id", direction="backward"
    ).sort_values("qi")
    expected = merged["k"].fillna(0).to_numpy(dtype=int)
    q_codes, r_codes = _codes(q["patient_id"], valid["patient_id"])
    got = context.count_rows_up_to(
        q_codes,
        q["as_of"].to_numpy(dtype="datetime64[ns]"),
        r_codes,
        valid["date"].to_numpy(dtype="datetime64[ns]"),
    )
    np.testing.assert_array_equal(got, expected)
    assert expected.max() > 3


def test_first_row_at_equals_the_left_merge_on_patient_and_day() -> None:
    cohort = _cohort()
    q = _queries(cohort)
    scored = score_assessments(cohort.assessments)
    # Repeat some rows with other values: the first one of the day must win.
    dup = scored.iloc[::7].assign(item9=99.0)
    rows = pd.concat([scored, dup], ignore_index=True)
    # Half the queries on a day with an assessment, some without a date at all.
    dates = q["as_of"].to_numpy(dtype="datetime64[ns]").copy()
    hit = scored.set_index("patient_id")["date"].groupby(level=0).first()
    on_day = hit.reindex(q["patient_id"]).to_numpy(dtype="datetime64[ns]")
    dates[::2] = on_day[::2]
    dates[::9] = np.datetime64("NaT")
    q_dates = pd.Series(dates)
    expected = (
        pd.DataFrame({"patient_id": q["patient_id"], "d": q_dates})
        .merge(
            rows[["patient_id", "date", "item9"]].drop_duplicates(["patient_id", "date"]),
            left_on=["patient_id", "d"],
            right_on=["patient_id", "date"],
            how="left",
        )["item9"]
        .to_numpy(dtype=float)
    )
    q_codes, r_codes = _codes(q["patient_id"], rows["patient_id"])
    at = context.first_row_on_day(
        r_codes, rows["date"].to_numpy(dtype="datetime64[ns]"), q_codes, dates
    )
    got = context.take_or_nan(rows["item9"].to_numpy(dtype=float), at)
    np.testing.assert_array_equal(got, expected)
    assert (at >= 0).sum() > 100
    assert not (got == 99.0).any()


def test_records_equal_to_dict_records() -> None:
    frame = pd.DataFrame(
        {
            "s": ["a", None, "c"],
            "f": [1.5, np.nan, 3.0],
            "i": np.array([1, 2, 3], dtype=np.int64),
            "b": [True, False, True],
            "d": pd.to_datetime(["2024-01-01", None, "2024-03-01"]),
            "o": np.array([np.float64(2.5), np.int64(4), np.bool_(True)], dtype=object),
            "n": pd.array([1, None, 3], dtype="Int64"),
        }
    )
    for f in (frame, frame.iloc[:0]):
        got = answers.context_records(f)
        want = f.to_dict("records")
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert list(g) == list(w)
            for key, value in w.items():
                assert type(g[key]) is type(value), key
                if isinstance(value, float) and math.isnan(value):
                    assert math.isnan(g[key])
                elif value is pd.NaT or value is pd.NA:
                    assert g[key] is value
                else:
                    assert g[key] == value
