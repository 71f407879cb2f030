"""The CSV/Parquet loader and ``forecast validate``: the data contract end to end."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from forecast.cli import main
from forecast.cohort import canonicalize
from forecast.data import (
    ContractError,
    Problem,
    check_folder,
    load_cohort,
    read_folder,
    validate_tables,
    write_cohort,
)
from tests.fixtures.data import CONTRACT_TODAY, csv_text

ITEMS = [f"phq9_{i}" for i in range(1, 10)]


def set_cell(tables, table, line, column, value):
    """Set the cell at CSV ``line`` (header = 1) and ``column`` of ``table``."""
    t = tables[table]
    t["rows"][line - 2][t["header"].index(column)] = value


def add_row(tables, table, **cells):
    t = tables[table]
    t["rows"].append([cells.get(c, "") for c in t["header"]])


def problems_of(folder, **kwargs):
    kwargs.setdefault("today", CONTRACT_TODAY)
    cohort, problems = check_folder(folder, **kwargs)
    assert (cohort is None) == bool(problems)
    return problems


# --- the valid data set -----------------------------------------------------------
def test_valid_folder_loads_with_canonical_values(contract_tables, make_folder):
    cohort = load_cohort(make_folder(contract_tables), today=CONTRACT_TODAY)
    p, s, a = cohort.patients, cohort.sessions, cohort.assessments
    assert list(p["patient_id"]) == ["p1", "p2"]
    assert p["age"].tolist()[0] == 45.0
    assert np.isnan(p["age"].tolist()[1])
    assert p["prior_treatments"].iloc[0] == 3.0
    assert s["psychotherapy"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(s["psychotherapy"].iloc[2])
    assert s["date"].dtype == "datetime64[ns]"
    assert list(s["date"].dt.strftime("%Y-%m-%d")) == ["2024-01-02", "2024-01-05", "2024-01-03"]
    assert a.loc[0, ITEMS].sum() == 17
    assert a.loc[0, "phq9_total"] == 17
    assert s["route"].tolist() == ["iv", "iv", "im"]
    # the total-only row keeps blank items
    assert a.loc[3, ITEMS].isna().all()
    assert a.loc[3, "phq9_total"] == 14


def test_c_ssrs_only_row_is_a_valid_assessment(contract_tables, make_folder):
    add_row(contract_tables, "assessments", patient_id="p1", date="2024-01-20", cssrs_ideation="0")
    add_row(contract_tables, "assessments", patient_id="p2", date="2024-01-20", cssrs_behavior="1")
    assert problems_of(make_folder(contract_tables)) == []


def test_prorated_total_is_accepted_when_it_matches(contract_tables, make_folder):
    # 8 answered items summing to 4: 4 x 9 / 8 = 4.5, rounded half up = 5 (the given total).
    set_cell(contract_tables, "assessments", 3, "phq9_1", "")
    # 7 answered items summing to 14: 14 x 9 / 7 = 18.
    add_row(
        contract_tables,
        "assessments",
        patient_id="p1",
        date="2024-02-01",
        phq9_1="2",
        phq9_2="2",
        phq9_3="2",
        phq9_4="2",
        phq9_5="2",
        phq9_6="2",
        phq9_7="2",
        phq9_total="18",
    )
    assert problems_of(make_folder(contract_tables)) == []


def test_loaded_frames_are_canonical(contract_tables, make_folder):
    # ids out of order (and "p10" < "p2" as text) to exercise the sort
    contract_tables["patients"]["rows"].append(["p10", "30", "", "", ""])
    add_row(contract_tables, "sessions", patient_id="p10", date="2024-01-01", kind="induction")
    add_row(contract_tables, "assessments", patient_id="p10", date="2024-01-03", phq9_total="9")
    add_row(contract_tables, "assessments", patient_id="p10", date="2023-12-30", phq9_total="20")
    cohort = load_cohort(make_folder(contract_tables), today=CONTRACT_TODAY)
    for table in ("patients", "sessions", "assessments"):
        frame = getattr(cohort, table)
        pd.testing.assert_frame_equal(frame, canonicalize(table, frame))
    assert cohort.patients["patient_id"].tolist() == ["p1", "p10", "p2"]
    assert cohort.assessments["phq9_total"].fillna(-1).tolist() == [17, 5, 20, 9, -1, 14]


# --- done-when (a) ------------------------------------------------------------------
def test_cli_reports_each_problem_with_file_row_and_column(contract_tables, make_folder):
    set_cell(contract_tables, "assessments", 3, "phq9_4", "4")
    set_cell(contract_tables, "assessments", 4, "date", "2024-1-2")
    add_row(contract_tables, "sessions", patient_id="p9", date="2024-01-04", kind="induction")
    folder = make_folder(contract_tables)
    result = CliRunner().invoke(main, ["validate", str(folder), "--today", "2024-06-01"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        "sessions.csv, row 5, column patient_id: unknown patient: got 'p9'; "
        "allowed: a patient_id listed in patients.csv",
        "assessments.csv, row 3, column phq9_4: got '4'; "
        "allowed: a whole number from 0 to 3 or blank",
        "assessments.csv, row 4, column date: got '2024-1-2'; "
        "allowed: a date written YYYY-MM-DD, not in the future",
        f"3 problem(s) found in {folder}",
    ]


def test_cli_success_prints_counts_and_exits_zero(contract_tables, make_folder):
    folder = make_folder(contract_tables)
    result = CliRunner().invoke(main, ["validate", str(folder), "--today", "2024-06-01"])
    assert result.exit_code == 0, result.output
    assert result.output == "OK: 2 patients, 3 sessions, 4 assessments\n"


def test_cli_today_option_rejects_later_dates(contract_tables, make_folder):
    folder = make_folder(contract_tables)
    result = CliRunner().invoke(main, ["validate", str(folder), "--today", "2024-01-08"])
    assert result.exit_code == 1
    # the two assessments dated after 2024-01-08
    assert "(after today, 2024-01-08)" in result.output
    assert result.output.count("after today") == 2


def test_cli_covariate_option_declares_extra_columns(contract_tables, make_folder):
    contract_tables["patients"]["header"].append("bmi")
    for row, bmi in zip(contract_tables["patients"]["rows"], ["31.5", ""], strict=True):
        row.append(bmi)
    folder = make_folder(contract_tables)
    runner = CliRunner()
    undeclared = runner.invoke(main, ["validate", str(folder), "--today", "2024-06-01"])
    assert undeclared.exit_code == 1
    assert "patients.csv, row 1, column bmi: unknown column" in undeclared.output
    assert "--covariate NAME" in undeclared.output
    declared = runner.invoke(
        main, ["validate", str(folder), "--covariate", "bmi", "--today", "2024-06-01"]
    )
    assert declared.exit_code == 0, declared.output
    cohort = load_cohort(folder, covariates=["bmi"], today=CONTRACT_TODAY)
    assert cohort.covariates == ("bmi",)
    assert cohort.patients["bmi"].iloc[0] == 31.5
    assert np.isnan(cohort.patients["bmi"].iloc[1])


def test_declared_covariate_must_be_numeric_and_present(contract_tables, make_folder):
    contract_tables["patients"]["header"].append("bmi")
    for row, bmi in zip(contract_tables["patients"]["rows"], ["obese", "30"], strict=True):
        row.append(bmi)
    folder = make_folder(contract_tables)
    assert [str(p) for p in problems_of(folder, covariates=["bmi", "height"])] == [
        "patients.csv, row 1, column height: declared covariate is not a column of this file",
        "patients.csv, row 2, column bmi: got 'obese'; allowed: a number from any to any or blank",
    ]
    assert any(
        "already a contract column" in p.message for p in problems_of(folder, covariates=["age"])
    )


# --- done-when (b) ------------------------------------------------------------------
def test_export_from_another_tool_validates(contract_tables, make_folder):
    """True/False booleans, empty C-SSRS columns, blank items, other column order,
    CRLF line endings and a UTF-8 byte-order mark are all within the contract."""
    t = contract_tables
    t["sessions"]["rows"][0][5] = "True"
    t["sessions"]["rows"][1][5] = "False"
    t["sessions"]["rows"][2][5] = "1"
    for row in t["assessments"]["rows"]:
        row[-2:] = ["", ""]
    set_cell(t, "assessments", 3, "phq9_1", "")  # prorated: 4 x 9 / 8 -> 5
    # reverse the column order of every file
    for table in t.values():
        table["header"] = table["header"][::-1]
        table["rows"] = [r[::-1] for r in table["rows"]]
    folder = make_folder(t, newline="\r\n", bom=True)
    raw = (folder / "assessments.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in raw
    cohort = load_cohort(folder, today=CONTRACT_TODAY)
    assert cohort.sessions["psychotherapy"].tolist() == [1.0, 0.0, 1.0]
    assert cohort.assessments[["cssrs_ideation", "cssrs_behavior"]].isna().all().all()
    assert list(cohort.patients.columns[:2]) == ["patient_id", "age"]
    assert cohort.assessments["phq9_1"].isna().sum() == 2


def test_whitespace_only_cells_count_as_blank(contract_tables, make_folder):
    set_cell(contract_tables, "patients", 3, "prior_treatments", "   ")
    set_cell(contract_tables, "assessments", 5, "cssrs_ideation", " \t")
    cohort = load_cohort(make_folder(contract_tables), today=CONTRACT_TODAY)
    assert np.isnan(cohort.patients["prior_treatments"].iloc[1])
    assert np.isnan(cohort.assessments["cssrs_ideation"].iloc[3])


def test_ints_written_with_point_zero_are_accepted(contract_tables, make_folder):
    set_cell(contract_tables, "assessments", 2, "phq9_1", "2.0")
    set_cell(contract_tables, "assessments", 2, "phq9_total", "17.0")
    assert problems_of(make_folder(contract_tables)) == []


# --- done-when (c): a corpus of malformed inputs ---------------------------------------
def _three_items_blank(t):
    for c in ("phq9_1", "phq9_2", "phq9_3"):
        set_cell(t, "assessments", 4, c, "")


def _prorated_mismatch(t):
    set_cell(t, "assessments", 3, "phq9_1", "")
    set_cell(t, "assessments", 3, "phq9_total", "4")


def _partial_total_impossible(t):
    for c in ("phq9_1", "phq9_2", "phq9_3", "phq9_4"):
        set_cell(t, "assessments", 2, c, "")
    set_cell(t, "assessments", 2, "phq9_total", "3")  # answered items alone sum to 9


def _no_answer(t):
    add_row(t, "assessments", patient_id="p1", date="2024-03-01")


def _dup_assessment(t):
    add_row(t, "assessments", patient_id="p1", date="2024-01-01", phq9_total="3")


def _dup_session(t):
    add_row(t, "sessions", patient_id="p2", date="2024-01-03", kind="maintenance")


def _dup_patient(t):
    add_row(t, "patients", patient_id="p1")


def _unknown_assessment_patient(t):
    add_row(t, "assessments", patient_id="p7", date="2024-03-01", phq9_total="3")


def _missing_kind_column(t):
    s = t["sessions"]
    k = s["header"].index("kind")
    s["header"].pop(k)
    for r in s["rows"]:
        r.pop(k)


def _extra_column(t):
    a = t["assessments"]
    a["header"].append("notes")
    for r in a["rows"]:
        r.append("x")


def _short_row(t):
    t["sessions"]["rows"][1] = ["p1", "2024-01-05", "induction"]


def _long_row(t):
    t["assessments"]["rows"][1].append("extra")


def _cell(table, line, column, value):
    return lambda t: set_cell(t, table, line, column, value)


CORPUS = [
    # (id, edit, file, row, column, message fragment)
    (
        "item_4",
        _cell("assessments", 2, "phq9_3", "4"),
        "assessments.csv",
        2,
        "phq9_3",
        "got '4'; allowed: a whole number from 0 to 3 or blank",
    ),
    (
        "item_negative",
        _cell("assessments", 3, "phq9_1", "-1"),
        "assessments.csv",
        3,
        "phq9_1",
        "got '-1'; allowed: a whole number from 0 to 3 or blank",
    ),
    (
        "item_fraction",
        _cell("assessments", 4, "phq9_2", "1.5"),
        "assessments.csv",
        4,
        "phq9_2",
        "got '1.5'; allowed: a whole number from 0 to 3 or blank",
    ),
    (
        "item_word",
        _cell("assessments", 4, "phq9_8", "often"),
        "assessments.csv",
        4,
        "phq9_8",
        "got 'often'; allowed: a whole number",
    ),
    (
        "item_nan",
        _cell("assessments", 4, "phq9_8", "NaN"),
        "assessments.csv",
        4,
        "phq9_8",
        "got 'NaN'; allowed: a whole number",
    ),
    (
        "total_28",
        _cell("assessments", 5, "phq9_total", "28"),
        "assessments.csv",
        5,
        "phq9_total",
        "got '28'; allowed: a whole number from 0 to 27 or blank",
    ),
    (
        "sum_disagrees",
        _cell("assessments", 2, "phq9_total", "18"),
        "assessments.csv",
        2,
        "phq9_total",
        "got 18 but the nine items sum to 17",
    ),
    (
        "prorated_disagrees",
        _prorated_mismatch,
        "assessments.csv",
        3,
        "phq9_total",
        "got 4 but the 8 answered items prorate to 5",
    ),
    (
        "three_missing_no_total",
        _three_items_blank,
        "assessments.csv",
        4,
        "phq9_total",
        "PHQ-9 cannot be scored: 3 of 9 items are blank and phq9_total is blank",
    ),
    (
        "partial_total_impossible",
        _partial_total_impossible,
        "assessments.csv",
        2,
        "phq9_total",
        "the 5 answered items sum to 9, so the total must lie between 9 and 21",
    ),
    ("no_answer", _no_answer, "assessments.csv", 6, "phq9_total", "the row holds no answer"),
    (
        "cssrs_6",
        _cell("assessments", 2, "cssrs_ideation", "6"),
        "assessments.csv",
        2,
        "cssrs_ideation",
        "allowed: a whole number from 0 to 5 or blank",
    ),
    (
        "behavior_2",
        _cell("assessments", 4, "cssrs_behavior", "2"),
        "assessments.csv",
        4,
        "cssrs_behavior",
        "allowed: a whole number from 0 to 1 or blank",
    ),
    (
        "date_slashes",
        _cell("assessments", 3, "date", "2024/01/09"),
        "assessments.csv",
        3,
        "date",
        "got '2024/01/09'; allowed: a date written YYYY-MM-DD, not in the future",
    ),
    (
        "date_feb_30",
        _cell("sessions", 2, "date", "2024-02-30"),
        "sessions.csv",
        2,
        "date",
        "got '2024-02-30' (no such date)",
    ),
    (
        "date_future",
        _cell("sessions", 3, "date", "2024-07-01"),
        "sessions.csv",
        3,
        "date",
        "got '2024-07-01' (after today, 2024-06-01)",
    ),
    (
        "date_with_time",
        _cell("sessions", 3, "date", "2024-01-05T10:00"),
        "sessions.csv",
        3,
        "date",
        "got '2024-01-05T10:00'; allowed: a date written YYYY-MM-DD",
    ),
    (
        "date_blank",
        _cell("assessments", 5, "date", " "),
        "assessments.csv",
        5,
        "date",
        "got ' '; allowed: a date written YYYY-MM-DD, not in the future",
    ),
    (
        "date_ancient",
        _cell("assessments", 5, "date", "0024-01-10"),
        "assessments.csv",
        5,
        "date",
        "(before 1900)",
    ),
    (
        "dup_assessment",
        _dup_assessment,
        "assessments.csv",
        6,
        "date",
        "duplicate: row 2 already has an assessment of this patient on this date",
    ),
    (
        "dup_session",
        _dup_session,
        "sessions.csv",
        5,
        "date",
        "duplicate: row 4 already has a session of this patient on this date",
    ),
    (
        "dup_patient",
        _dup_patient,
        "patients.csv",
        4,
        "patient_id",
        "duplicate: row 2 already has this patient_id",
    ),
    (
        "unknown_patient",
        _unknown_assessment_patient,
        "assessments.csv",
        6,
        "patient_id",
        "unknown patient: got 'p7'; allowed: a patient_id listed in patients.csv",
    ),
    (
        "kind_booster",
        _cell("sessions", 2, "kind", "booster"),
        "sessions.csv",
        2,
        "kind",
        "got 'booster'; allowed: one of induction, maintenance",
    ),
    (
        "route_upper",
        _cell("sessions", 2, "route", "IV"),
        "sessions.csv",
        2,
        "route",
        "got 'IV'; allowed: one of iv, im, intranasal, sublingual, oral or blank",
    ),
    (
        "sex_f",
        _cell("patients", 2, "sex", "f"),
        "patients.csv",
        2,
        "sex",
        "got 'f'; allowed: one of female, male, other, unknown or blank",
    ),
    (
        "diagnosis",
        _cell("patients", 3, "diagnosis", "depression"),
        "patients.csv",
        3,
        "diagnosis",
        "allowed: one of trd, mdd, bipolar",
    ),
    (
        "psychotherapy_yes",
        _cell("sessions", 4, "psychotherapy", "yes"),
        "sessions.csv",
        4,
        "psychotherapy",
        "got 'yes'; allowed: true/false (also True/False/1/0) or blank",
    ),
    (
        "dose_too_high",
        _cell("sessions", 2, "dose_mg_per_kg", "50"),
        "sessions.csv",
        2,
        "dose_mg_per_kg",
        "got '50'; allowed: a number from 0 to 20 or blank",
    ),
    (
        "dose_comma",
        _cell("sessions", 2, "dose_mg_per_kg", "0,5"),
        "sessions.csv",
        2,
        "dose_mg_per_kg",
        "got '0,5'; allowed: a number from 0 to 20 or blank",
    ),
    (
        "age_130",
        _cell("patients", 2, "age", "130"),
        "patients.csv",
        2,
        "age",
        "allowed: a number from 0 to 120 or blank",
    ),
    (
        "prior_fraction",
        _cell("patients", 2, "prior_treatments", "2.5"),
        "patients.csv",
        2,
        "prior_treatments",
        "got '2.5'; allowed: a whole number from 0 to 50 or blank",
    ),
    (
        "bp_low",
        _cell("sessions", 2, "systolic_bp_max", "30"),
        "sessions.csv",
        2,
        "systolic_bp_max",
        "allowed: a number from 50 to 300 or blank",
    ),
    (
        "dissociation_101",
        _cell("sessions", 2, "dissociation", "101"),
        "sessions.csv",
        2,
        "dissociation",
        "allowed: a number from 0 to 100 or blank",
    ),
    (
        "patient_id_blank",
        _cell("sessions", 4, "patient_id", ""),
        "sessions.csv",
        4,
        "patient_id",
        "got ''; allowed: non-empty text",
    ),
    (
        "missing_required_column",
        _missing_kind_column,
        "sessions.csv",
        1,
        "kind",
        "required column is missing",
    ),
    (
        "extra_column",
        _extra_column,
        "assessments.csv",
        1,
        "notes",
        "unknown column; allowed columns: patient_id, date, phq9_1",
    ),
    (
        "short_row",
        _short_row,
        "sessions.csv",
        3,
        None,
        "the row has 3 cells but the header names 8 columns",
    ),
    (
        "long_row",
        _long_row,
        "assessments.csv",
        3,
        None,
        "the row has 15 cells but the header names 14 columns",
    ),
]


@pytest.mark.parametrize(
    ("edit", "source", "row", "column", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CORPUS],
)
def test_malformed_input_gives_one_precise_problem(
    contract_tables, make_folder, edit, source, row, column, fragment
):
    edit(contract_tables)
    problems = problems_of(make_folder(contract_tables))
    assert len(problems) == 1, [str(p) for p in problems]
    p = problems[0]
    assert (p.source, p.row, p.column) == (source, row, column)
    assert fragment in p.message
    assert str(p).startswith(f"{source}, row {row}" + (f", column {column}:" if column else ":"))


def test_corpus_is_large_and_distinct():
    assert len(CORPUS) >= 25
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


def test_all_problems_are_reported_in_one_run(contract_tables, make_folder):
    # apply many cell edits to the same tables: each must still be reported
    edits = [c for c in CORPUS if c[0].startswith(("item_", "date_", "route", "sex", "age"))]
    for case in edits:
        case[1](contract_tables)
    problems = problems_of(make_folder(contract_tables))
    reported = {(p.source, p.row, p.column) for p in problems}
    for case in edits:
        assert (case[2], case[3], case[4]) in reported, case[0]


# --- file-level problems ---------------------------------------------------------------
def test_missing_and_doubled_files_are_named(contract_tables, make_folder):
    folder = make_folder({k: v for k, v in contract_tables.items() if k != "sessions"})
    pq.write_table(pa.table({"patient_id": ["p1"]}), folder / "patients.parquet")
    msgs = [str(p) for p in problems_of(folder)]
    assert (
        "patients.csv: both patients.csv and patients.parquet exist; keep only one of them" in msgs
    )
    assert "sessions.csv: missing file: the folder needs sessions.csv or sessions.parquet" in msgs
    # the readable file is still checked in the same run
    assert len(msgs) == 2


def test_empty_and_unreadable_files_are_named(contract_tables, make_folder):
    contract_tables["patients"] = ""
    folder = make_folder(contract_tables)
    (folder / "sessions.csv").write_bytes(b"patient_id,date\n\xff\xfe\x00bad")
    msgs = [str(p) for p in problems_of(folder)]
    assert msgs[0] == ("patients.csv: the file is empty: expected a header line naming the columns")
    assert msgs[1].startswith("sessions.csv: cannot be read as UTF-8 text")
    assert len(msgs) == 2


def test_not_a_folder(tmp_path):
    problems = problems_of(tmp_path / "nope")
    assert [p.message for p in problems] == ["not a folder"]
    with pytest.raises(ContractError) as info:
        load_cohort(tmp_path / "nope")
    assert info.value.problems == problems


def test_repeated_header_column(contract_tables, make_folder):
    contract_tables["patients"]["header"][1] = "sex"
    problems = problems_of(make_folder(contract_tables))
    assert [str(p) for p in problems] == [
        "patients.csv, row 1, column sex: column appears more than once in the header"
    ]


def test_row_numbers_are_line_numbers_with_blank_lines_and_quoted_newlines(
    contract_tables, make_folder
):
    text = csv_text(contract_tables["patients"])
    lines = text.splitlines()
    # a blank line after the header, a quoted multi-line cell... then a bad row
    patched = "\n".join([lines[0], "", lines[1], "", '"p3",,"other",,', "p4,,,,x"]) + "\n\n"
    contract_tables["patients"] = patched
    problems = problems_of(make_folder(contract_tables))
    assert [str(p) for p in problems] == [
        "patients.csv, row 6, column prior_treatments: got 'x'; "
        "allowed: a whole number from 0 to 50 or blank",
        # p2 was left out of patients: its rows now name an unknown patient
        "sessions.csv, row 4, column patient_id: unknown patient: got 'p2'; "
        "allowed: a patient_id listed in patients.csv",
        *[
            f"assessments.csv, row {r}, column patient_id: unknown patient: got 'p2'; "
            "allowed: a patient_id listed in patients.csv"
            for r in (4, 5)
        ],
    ]


def test_quoted_cells_with_commas_and_newlines_keep_line_numbers(contract_tables, make_folder):
    p = contract_tables["patients"]
    p["header"].append("note")
    p["rows"][0].append("line one,\nline two")
    p["rows"][1].append("")
    p["rows"][1][4] = "x"
    folder = make_folder(contract_tables)
    problems = problems_of(folder, covariates=())
    # the note column is unknown; p2 starts on line 4 because p1's cell spans two lines
    assert [(x.row, x.column) for x in problems] == [(1, "note"), (4, "prior_treatments")]


# --- Parquet ----------------------------------------------------------------------------
def _parquet_folder(tmp_path, contract_tables, make_folder, **overrides):
    folder = make_folder({k: v for k, v in contract_tables.items() if k != "assessments"})
    a = contract_tables["assessments"]
    cols = {h: [r[i] for r in a["rows"]] for i, h in enumerate(a["header"])}
    arrays = {}
    for name, cells in cols.items():
        if name in ("patient_id", "date"):
            arrays[name] = pa.array(cells)
        else:
            arrays[name] = pa.array([None if c == "" else int(c) for c in cells], pa.int64())
    if "date" in overrides:
        arrays["date"] = overrides.pop("date")
    arrays.update(overrides)
    pq.write_table(pa.table(arrays), folder / "assessments.parquet")
    (folder / "assessments.csv").unlink(missing_ok=True)
    return folder


def test_parquet_with_typed_columns_loads_like_csv(tmp_path, contract_tables, make_folder):
    from_csv = load_cohort(make_folder(contract_tables), today=CONTRACT_TODAY)
    folder = _parquet_folder(tmp_path, contract_tables, make_folder)
    from_pq = load_cohort(folder, today=CONTRACT_TODAY)
    pd.testing.assert_frame_equal(from_pq.assessments, from_csv.assessments)
    days = pa.array(pd.to_datetime(["2024-01-01", "2024-01-09", "2024-01-02", "2024-01-10"]))
    folder2 = _parquet_folder(tmp_path, contract_tables, make_folder, date=days.cast(pa.date32()))
    pd.testing.assert_frame_equal(
        load_cohort(folder2, today=CONTRACT_TODAY).assessments, from_csv.assessments
    )


def test_parquet_applies_the_same_rules(tmp_path, contract_tables, make_folder):
    folder = _parquet_folder(
        tmp_path,
        contract_tables,
        make_folder,
        phq9_1=pa.array([2.0, 1.5, 3.0, None]),
        phq9_2=pa.array(["2", "1", "3", None]),
        cssrs_behavior=pa.array([False, None, False, None]),
        date=pa.array(
            [
                pd.Timestamp("2024-01-01"),
                pd.Timestamp("2024-01-09 10:30"),
                pd.Timestamp("2024-01-02"),
                None,
            ]
        ),
    )
    msgs = [str(p) for p in problems_of(folder)]
    assert msgs == [
        "assessments.parquet, row 2, column phq9_2: got '2' (text); "
        "allowed: a whole number from 0 to 3 or blank",
        "assessments.parquet, row 2, column cssrs_behavior: got False (a boolean); "
        "allowed: a whole number from 0 to 1 or blank",
        "assessments.parquet, row 3, column date: got 2024-01-09 10:30:00 (has a time of day); "
        "allowed: a date written YYYY-MM-DD, not in the future",
        "assessments.parquet, row 3, column phq9_1: got 1.5; "
        "allowed: a whole number from 0 to 3 or blank",
        "assessments.parquet, row 3, column phq9_2: got '1' (text); "
        "allowed: a whole number from 0 to 3 or blank",
        "assessments.parquet, row 4, column phq9_2: got '3' (text); "
        "allowed: a whole number from 0 to 3 or blank",
        "assessments.parquet, row 4, column cssrs_behavior: got False (a boolean); "
        "allowed: a whole number from 0 to 1 or blank",
        "assessments.parquet, row 5, column date: got blank; "
        "allowed: a date written YYYY-MM-DD, not in the future",
    ]


def test_unreadable_parquet_is_named(contract_tables, make_folder):
    folder = make_folder({k: v for k, v in contract_tables.items() if k != "sessions"})
    (folder / "sessions.parquet").write_bytes(b"not parquet at all")
    msgs = [str(p) for p in problems_of(folder)]
    assert len(msgs) == 1
    assert msgs[0].startswith("sessions.parquet: cannot be read as Parquet")


# --- read_folder / validate_tables ---------------------------------------------------------
def test_read_folder_keeps_cells_as_text_and_line_numbers(contract_tables, make_folder):
    raw = read_folder(make_folder(contract_tables))
    a = raw["assessments"]
    assert a["phq9_1"].tolist() == ["2", "1", "3", ""]
    assert (a.index + 2).tolist() == [2, 3, 4, 5]
    assert a.attrs["source"] == "assessments.csv"
    cohort, problems = validate_tables(raw, today=CONTRACT_TODAY)
    assert problems == []
    assert len(cohort.assessments) == 4
    raw["patients"] = raw["patients"].iloc[:1]
    cohort, problems = validate_tables(raw, today=CONTRACT_TODAY)
    assert cohort is None
    assert {(p.source, p.column) for p in problems} == {
        ("sessions.csv", "patient_id"),
        ("assessments.csv", "patient_id"),
    }


def test_read_folder_raises_on_file_problems(tmp_path):
    with pytest.raises(ContractError, match="missing file"):
        read_folder(tmp_path)


def test_problem_text_and_dict():
    p = Problem("assessments.csv", 7, "phq9_3", "got '4'; allowed: x")
    assert str(p) == "assessments.csv, row 7, column phq9_3: got '4'; allowed: x"
    assert str(Problem("a.csv", None, None, "m")) == "a.csv: m"
    assert p.to_dict() == {
        "source": "assessments.csv",
        "row": 7,
        "column": "phq9_3",
        "message": "got '4'; allowed: x",
    }


def test_today_defaults_to_the_current_date(contract_tables, make_folder):
    next_year = date.today().replace(year=date.today().year + 1, day=1)
    set_cell(contract_tables, "sessions", 2, "date", next_year.isoformat())
    problems = check_folder(make_folder(contract_tables))[1]
    assert [p.column for p in problems] == ["date"]
    assert "after today" in problems[0].message


def test_write_cohort_format(contract_tables, make_folder, tmp_path):
    cohort = load_cohort(make_folder(contract_tables), today=CONTRACT_TODAY)
    write_cohort(cohort, tmp_path / "out")
    text = (tmp_path / "out" / "sessions.csv").read_text()
    assert text.splitlines()[1] == "p1,2024-01-02,induction,0.5,iv,true,20.0,150.0"
    assert (tmp_path / "out" / "assessments.csv").read_text().splitlines()[1] == (
        "p1,2024-01-01,2,2,2,2,2,2,2,2,1,17,1,0"
    )
    with pytest.raises(ValueError, match="fmt"):
        write_cohort(cohort, tmp_path / "out", fmt="xlsx")


RAW_ASSESSMENTS = [
    # (id, file text, expected problems as "row: message fragment" or [] for valid)
    ("cr_only_line_endings", "patient_id,date,phq9_total\rp1,2024-01-01,5\rp2,2024-01-02,7\r", []),
    ("header_only", "patient_id,date,phq9_total\n", []),
    ("no_trailing_newline", "patient_id,date,phq9_total\np1,2024-01-01,5", []),
    (
        "leading_blank_lines",
        "\n\npatient_id,date,phq9_total\np1,2024-01-01,5\np1,2024-01-02,x\n",
        [(5, "phq9_total", "got 'x'")],
    ),
    (
        "space_only_line",
        "patient_id,date,phq9_total\np1,2024-01-01,5\n   \np1,2024-01-02,x\n",
        [(4, "phq9_total", "got 'x'")],
    ),
    (
        "unclosed_quote",
        'patient_id,date,phq9_total\n"p1,2024-01-01,5\np1,2024-01-02,3\n',
        [
            (2, None, "the row has 1 cells but the header names 3 columns"),
            (2, None, 'a quote (") opened on this line is never closed'),
        ],
    ),
    (
        "stray_quote_in_cell",
        'patient_id,date,phq9_total\np1,2024-01-01,5\np1,2024-01-03,5" tall\n',
        [(3, "phq9_total", "got '5\" tall'")],
    ),
    (
        "quoted_cells",
        'patient_id,date,phq9_total\n"p1","2024-01-01","5"\n"p1","2024-01-02",""\n',
        [(3, "phq9_total", "the row holds no answer")],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(*case[1:], id=case[0]) for case in RAW_ASSESSMENTS]
)
def test_csv_layouts(contract_tables, make_folder, text, expected):
    contract_tables["assessments"] = text
    problems = problems_of(make_folder(contract_tables))
    assert [(p.row, p.column) for p in problems] == [(r, c) for r, c, _ in expected]
    for p, (_, _, fragment) in zip(problems, expected, strict=True):
        assert fragment in p.message


def test_unreadable_file_is_named(contract_tables, make_folder):
    folder = make_folder({k: v for k, v in contract_tables.items() if k != "sessions"})
    (folder / "sessions.csv").mkdir()  # exists but cannot be read as a file
    msgs = [str(p) for p in problems_of(folder)]
    assert len(msgs) == 1
    assert msgs[0].startswith("sessions.csv: cannot be read: ")


def test_cli_missing_folder_exits_one(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{tmp_path / 'absent'}: not a folder",
        f"1 problem(s) found in {tmp_path / 'absent'}",
    ]


def test_patients_without_id_column_is_one_problem(contract_tables, make_folder):
    p = contract_tables["patients"]
    p["header"] = p["header"][1:]
    p["rows"] = [r[1:] for r in p["rows"]]
    problems = problems_of(make_folder(contract_tables))
    assert [str(x) for x in problems] == [
        "patients.csv, row 1, column patient_id: required column is missing "
        "(Clinic's pseudonymous patient identifier)"
    ]
