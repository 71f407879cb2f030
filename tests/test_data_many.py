"""``validate_records_many``: one vectorised pass, the same answers as one list at a time."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

import forecast.data.cells as data
from forecast.data import RecordsOf, validate_patient, validate_records, validate_records_many

TODAY = date(2024, 6, 1)

GOOD = [
    {"date": "2024-02-01", "phq9_total": 12, "id": "b"},
    {"date": "2024-01-15", **{f"phq9_{i}": 1 for i in range(1, 10)}, "phq9_total": 9.0},
    {"date": "2024-01-20", "cssrs_ideation": 2, "cssrs_behavior": 0, "id": "c"},
]
# Every kind of problem: wrong JSON types, bounds, unknown and missing keys,
# bad ids, repeated dates, disagreeing totals, items that are not objects.
BAD = [
    {"date": "2024-01-01", "phq9_total": "3", "id": ""},
    {"date": "2024-01-01", "phq9_1": True, "phq9_total": 28, "colour": "red"},
    {"phq9_total": 5},
    {"date": "2024-13-01", "phq9_total": 5, "id": "x"},
    {"date": "2030-01-01", "phq9_total": 5, "id": "x"},
    {"date": "2024-02-02", **{f"phq9_{i}": 2 for i in range(1, 10)}, "phq9_total": 3},
    {"date": "2024-02-03", "phq9_total": float("nan")},
    {"date": "2024-02-04", "phq9_total": [1], "cssrs_ideation": {"a": 1}},
    {"date": "2024-02-05"},
    7,
]
STORED = pd.DataFrame(
    {
        "date": pd.to_datetime(["2024-01-15", "2024-02-01"]),
        "client_id": [None, "b"],
    }
)


def _single(table: str, entry: RecordsOf) -> tuple[pd.DataFrame, list]:
    return validate_records(
        table,
        entry.records,
        patient_id=entry.patient_id,
        known_patient=entry.known_patient,
        existing=entry.existing,
        today=TODAY,
    )


def _entries() -> list[RecordsOf]:
    return [
        RecordsOf("p1", GOOD),
        RecordsOf("p2", BAD),
        RecordsOf("p3", []),
        RecordsOf("p4", GOOD, existing=STORED),
        RecordsOf("p5", GOOD[:1], known_patient=False),
        RecordsOf("p6", {"not": "a list"}),
        RecordsOf("p7", list(reversed(GOOD))),
    ]


def test_many_equals_one_list_at_a_time() -> None:
    entries = _entries()
    many = validate_records_many("assessments", entries, today=TODAY)
    assert len(many) == len(entries)
    for entry, (frame, problems, order) in zip(entries, many, strict=True):
        one_frame, one_problems = _single("assessments", entry)
        assert problems == one_problems
        pd.testing.assert_frame_equal(frame, one_frame)
        # order maps frame rows back to posted items
        if not problems and len(frame):
            posted = pd.to_datetime([entry.records[i]["date"] for i in order])
            assert (posted == frame["date"]).all()
    # the bad list really exercised the rules
    assert len(many[1][1]) >= 12
    # p4: only the item dated like a stored row without its id (item 1)
    assert {p.row for p in many[3][1]} == {1}


def test_rows_form_equals_the_frame_records() -> None:
    entries = _entries()
    frames = validate_records_many("assessments", entries, today=TODAY)
    rows = validate_records_many("assessments", entries, today=TODAY, as_rows=True)
    for (frame, problems, order), (recs, rproblems, rorder) in zip(frames, rows, strict=True):
        assert problems == rproblems
        np.testing.assert_array_equal(order, rorder)
        expected = frame.to_dict("records")
        assert len(recs) == len(expected)
        for got, want in zip(recs, expected, strict=True):
            assert list(got) == list(want)
            for key, value in want.items():
                if value is pd.NaT:  # a rejected date
                    assert got[key] is pd.NaT
                elif isinstance(value, float) and np.isnan(value):
                    assert np.isnan(got[key])
                else:
                    assert got[key] == value
                    assert type(got[key]) is type(value)


def test_sessions_many() -> None:
    good = [
        {"date": "2024-01-03", "kind": "induction", "psychotherapy": True, "id": "s1"},
        {"date": "2024-01-01", "kind": "maintenance", "route": "im", "dose_mg_per_kg": 0.5},
    ]
    bad = [
        {"date": "2024-01-01", "kind": "boost", "psychotherapy": 1},
        {"date": "2024-01-01", "kind": "induction", "route": "iv", "dissociation": 101},
    ]
    entries = [RecordsOf("a", good), RecordsOf("b", bad), RecordsOf("c", good)]
    for entry, (frame, problems, _) in zip(
        entries, validate_records_many("sessions", entries, today=TODAY), strict=True
    ):
        one_frame, one_problems = _single("sessions", entry)
        assert problems == one_problems
        pd.testing.assert_frame_equal(frame, one_frame)


@pytest.mark.parametrize(
    "values",
    [
        [3, 3.0, True, 1, False, 0, "3", None, float("nan"), [1], {"a": 1}, "x", 2.5, -0.0],
        [None, None],
        [],
        [True, 1, 1.0, False, 0.0],
        [10**400, 1e308, "2024-01-01", "2024-01-01 ", " 3"],
    ],
)
def test_short_columns_are_read_as_pandas_reads_them(
    values: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dict-based reader of short JSON columns must give what the pandas
    # factoriser gives (it is the reader of long columns).
    records = [{"date": "2024-01-01", "phq9_total": v, "cssrs_behavior": v} for v in values]
    small = validate_records("assessments", records, patient_id="p", today=TODAY)
    monkeypatch.setattr(data, "_SMALL", -1)
    large = validate_records("assessments", records, patient_id="p", today=TODAY)
    assert small[1] == large[1]
    pd.testing.assert_frame_equal(small[0], large[0])


def test_validate_patient_as_record_equals_the_frame_row() -> None:
    for record in (
        {"age": 44, "sex": "female", "diagnosis": "trd", "prior_treatments": 3},
        {},
        {"age": None, "sex": "male"},
        {"age": "old", "sex": "robot"},
    ):
        frame, problems = validate_patient(record, patient_id="p9")
        row, rproblems = validate_patient(record, patient_id="p9", as_record=True)
        assert problems == rproblems
        want = frame.iloc[0].to_dict()
        assert list(row) == list(want)
        for key, value in want.items():
            if isinstance(value, float) and np.isnan(value):
                assert np.isnan(row[key])
            else:
                assert row[key] == value
