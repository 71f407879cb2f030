"""``validate_records`` / ``validate_patient``: the JSON API side of the data contract."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from forecast.contract import columns
from forecast.data import MAX_CLIENT_ID_LENGTH, validate_patient, validate_records

TODAY = date(2024, 6, 1)


def where(problems):
    return [(p.row, p.column) for p in problems]


def assessments(records, **kw):
    kw.setdefault("today", TODAY)
    return validate_records("assessments", records, patient_id="p1", **kw)


def sessions(records, **kw):
    kw.setdefault("today", TODAY)
    return validate_records("sessions", records, patient_id="p1", **kw)


def test_valid_records_become_a_canonical_frame_with_client_ids():
    frame, problems = assessments(
        [
            {"date": "2024-02-01", "phq9_total": 12, "id": "b"},
            {
                "date": "2024-01-15",
                **{f"phq9_{i}": 1 for i in range(1, 10)},
                "phq9_total": 9.0,
                "cssrs_ideation": None,
            },
            {"date": "2024-01-20", "cssrs_ideation": 2, "cssrs_behavior": 0, "id": "c"},
        ]
    )
    assert problems == []
    assert frame["patient_id"].tolist() == ["p1"] * 3
    # sorted by date, client ids carried along with their rows
    assert frame["date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-01-15",
        "2024-01-20",
        "2024-02-01",
    ]
    assert frame["client_id"].tolist() == [None, "c", "b"]
    assert frame["phq9_total"].tolist()[0] == 9.0
    assert frame["phq9_total"].tolist()[2] == 12.0
    assert frame["cssrs_ideation"].tolist()[1] == 2.0
    assert frame["date"].dtype == "datetime64[ns]"
    assert frame["phq9_1"].dtype == float


def test_json_types_are_strict():
    _, problems = sessions(
        [
            {"date": "2024-01-01", "kind": "induction", "psychotherapy": True},
            {"date": "2024-01-02", "kind": "induction", "psychotherapy": "true"},
            {"date": "2024-01-03", "kind": "induction", "psychotherapy": 1},
            {"date": "2024-01-04", "kind": "induction", "dose_mg_per_kg": "0.5"},
            {"date": "2024-01-05", "kind": "induction", "dose_mg_per_kg": True},
            {"date": 20240106, "kind": "induction"},
            {"date": "2024-01-07", "kind": 1},
        ]
    )
    assert where(problems) == [
        (1, "psychotherapy"),
        (2, "psychotherapy"),
        (3, "dose_mg_per_kg"),
        (4, "dose_mg_per_kg"),
        (5, "date"),
        (6, "kind"),
    ]
    msgs = [p.message for p in problems]
    assert msgs[0] == 'got "true" (text); allowed: true or false, or null'
    assert msgs[1] == "got 1 (a number); allowed: true or false, or null"
    assert msgs[2] == 'got "0.5" (text); allowed: a number from 0 to 20 as a JSON number, or null'
    assert msgs[3].startswith("got true (a boolean)")
    assert msgs[4].startswith("got 20240106 (a number); allowed: a date written YYYY-MM-DD")


def test_numeric_string_rejected_in_json_with_the_contract_bounds():
    """The allowed text comes from the contract column (shared with CSV and OpenAPI)."""
    _, problems = assessments([{"date": "2024-01-01", "phq9_total": "3"}])
    col = columns("assessments")["phq9_total"]
    assert problems[0].message == (
        'got "3" (text); allowed: a whole number from 0 to 27 as a JSON number, or null'
    )
    assert col.allowed_text() == "a whole number from 0 to 27 or blank"
    _, problems = assessments([{"date": "2024-01-01", "phq9_total": 28}])
    assert problems[0].message == (
        "got 28; allowed: a whole number from 0 to 27 as a JSON number, or null"
    )


def test_same_clinical_rules_as_files():
    items = {f"phq9_{i}": 2 for i in range(1, 10)}
    _, problems = assessments(
        [
            {"date": "2024-01-01", **items, "phq9_total": 17},  # sum is 18
            {"date": "2024-01-02", **{**items, "phq9_1": None}, "phq9_total": 18},  # 16*9/8
            {"date": "2024-01-03", **{**items, "phq9_1": None, "phq9_2": None}, "phq9_total": 17},
            {"date": "2024-01-04", "phq9_1": 1, "phq9_4": 1},  # 7 missing, no total
            {"date": "2024-01-05"},  # no instrument at all
            {"date": "2024-01-06", "cssrs_behavior": 1},  # C-SSRS only: valid
            {"date": "2024-07-01", "phq9_total": 3},  # after today
            {"date": "2024-01-08", "phq9_4": 4},
            {"date": "2024-01-09", "phq9_1": 1, "phq9_2": 1, "phq9_9": 2},  # a screen: valid
            {"date": "2024-01-10", "phq9_9": 1},  # item 9 alone: valid
        ]
    )
    assert where(problems) == [
        (0, "phq9_total"),
        (2, "phq9_total"),
        (3, "phq9_total"),
        (4, "phq9_total"),
        (6, "date"),
        (7, "phq9_4"),
    ]
    assert "the nine items sum to 18" in problems[0].message
    assert "the 7 answered items prorate to 18" in problems[1].message
    assert "PHQ-9 cannot be scored: 7 of 9 items are blank" in problems[2].message
    assert problems[3].message.startswith("the row holds no answer")
    assert "(after today, 2024-06-01)" in problems[4].message


def test_keys_are_checked():
    _, problems = sessions(
        [
            {"date": "2024-01-01", "kind": "induction", "patient_id": "p1", "dose": 1},
            {"kind": "induction"},
            "not an object",
            {"date": "2024-01-04", "kind": "induction", "id": "x"},
        ],
        allow_id=False,
    )
    assert where(problems) == [
        (0, "patient_id"),
        (0, "dose"),
        (1, "date"),
        (2, None),
        (3, "id"),
    ]
    assert problems[0].message.startswith("unknown field; allowed fields: date, kind,")
    assert problems[2].message.startswith("required field is missing; allowed: a date")
    assert problems[3].message == 'each item must be a JSON object; got "not an object"'


def test_client_ids():
    long_id = "x" * (MAX_CLIENT_ID_LENGTH + 1)
    frame, problems = sessions(
        [
            {"date": "2024-01-01", "kind": "induction", "id": "a"},
            {"date": "2024-01-02", "kind": "induction", "id": "a"},
            {"date": "2024-01-03", "kind": "induction", "id": ""},
            {"date": "2024-01-04", "kind": "induction", "id": 7},
            {"date": "2024-01-05", "kind": "induction", "id": long_id},
            {"date": "2024-01-06", "kind": "induction", "id": "x" * MAX_CLIENT_ID_LENGTH},
        ]
    )
    assert where(problems) == [(1, "id"), (2, "id"), (3, "id"), (4, "id")]
    assert problems[0].message == "duplicate: item 0 already has this id"
    assert frame["client_id"].tolist()[-1] == "x" * MAX_CLIENT_ID_LENGTH


def test_duplicates_within_the_batch_and_against_stored_rows():
    stored, problems = sessions([{"date": "2024-01-01", "kind": "induction", "id": "s1"}])
    assert problems == []
    _, problems = sessions(
        [
            {"date": "2024-01-01", "kind": "induction", "id": "s1"},  # retry: caller's concern
            {"date": "2024-01-01", "kind": "maintenance", "id": "s2"},  # clash with stored
            {"date": "2024-01-08", "kind": "maintenance"},
            {"date": "2024-01-08", "kind": "maintenance"},  # clash within the batch
        ],
        existing=stored,
    )
    msgs = [(p.row, p.message) for p in problems]
    assert (1, "duplicate: a session of this patient on 2024-01-01 is already stored") in msgs
    assert (3, "duplicate: item 2 already has a session of this patient on this date") in msgs
    assert {row for row, _ in msgs} == {1, 3}


def test_stored_rows_without_client_ids():
    stored = pd.DataFrame(
        {"date": pd.to_datetime(["2024-01-01"]), "client_id": pd.Series([None], dtype=object)}
    )
    _, problems = sessions([{"date": "2024-01-01", "kind": "induction"}], existing=stored)
    assert where(problems) == [(0, "date")]


def test_unknown_patient_and_wrong_table():
    _, problems = sessions([{"date": "2024-01-01", "kind": "induction"}], known_patient=False)
    assert [(p.row, p.column) for p in problems] == [(None, None)]
    assert problems[0].message.startswith("unknown patient")
    with pytest.raises(ValueError, match="sessions"):
        validate_records("patients", [], patient_id="p1")


def test_not_a_list():
    frame, problems = sessions({"date": "2024-01-01"})
    assert [p.message for p in problems] == ["must be a JSON list of objects"]
    assert len(frame) == 0


def test_validate_patient():
    frame, problems = validate_patient(
        {"age": 41.5, "sex": "female", "diagnosis": "ptsd", "prior_treatments": 2},
        patient_id="p9",
    )
    assert problems == []
    assert frame.iloc[0].to_dict() == {
        "patient_id": "p9",
        "age": 41.5,
        "sex": "female",
        "diagnosis": "ptsd",
        "prior_treatments": 2.0,
    }
    frame, problems = validate_patient(
        {"age": "41", "sex": "F", "patient_id": "p8", "height": 170, "prior_treatments": 1.5},
        patient_id="p9",
    )
    assert [(p.row, p.column) for p in problems] == [
        (None, "patient_id"),
        (None, "height"),
        (None, "age"),
        (None, "sex"),
        (None, "prior_treatments"),
    ]
    assert np.isnan(frame["age"].iloc[0])
    _, problems = validate_patient({"height": 170.0}, patient_id="p9", covariates=("height",))
    assert problems == []
    _, problems = validate_patient([1], patient_id="p9")
    assert problems[0].message.startswith("must be a JSON object")


def test_nan_and_huge_numbers_are_not_taken_for_blank_or_numbers():
    # Python's JSON reader accepts NaN and arbitrarily large integers.
    _, problems = assessments(
        [
            {"date": "2024-01-01", "phq9_total": float("nan"), "cssrs_ideation": 1},
            {"date": "2024-01-02", "phq9_total": 10**400},
            {"date": "2024-01-03", "phq9_total": float("inf")},
        ]
    )
    assert where(problems) == [(0, "phq9_total"), (1, "phq9_total"), (2, "phq9_total")]
    assert problems[0].message.startswith("got NaN (NaN is not a JSON value)")
    assert "(too large)" in problems[1].message
    assert problems[2].message.startswith("got Infinity;")


def test_arrays_and_objects_are_rejected_not_crashing():
    _, problems = assessments(
        [
            {"date": "2024-01-01", "phq9_total": [1], "phq9_1": {"a": 1}, "cssrs_ideation": 1},
            {"date": ["2024-01-02"], "phq9_total": 3, "id": ["x"]},
        ]
    )
    assert where(problems) == [(0, "phq9_1"), (0, "phq9_total"), (1, "date"), (1, "id")]
    assert problems[0].message.startswith('got {"a": 1} (an object); allowed: a whole number')
    assert problems[2].message.startswith('got ["2024-01-02"] (an array); allowed: a date')
