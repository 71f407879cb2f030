"""Validation of the three tables together, shared by files and JSON records.

:func:`validate_tables` checks every cell and row rule of ``patients``,
``sessions`` and ``assessments``, the keys across tables, and builds the
canonical :class:`~forecast.cohort.Cohort` when nothing is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import PHQ9_ITEMS, TABLES, Column
from forecast.data.cells import _empty_values, _Parsed
from forecast.data.checks import (
    CSSRS_COLUMNS,
    check_any_instrument,
    check_cells,
    check_covariates,
    check_header,
    check_known_patients,
    check_phq9_agrees,
    check_phq9_scorable,
    check_unique,
    covariate_column,
)
from forecast.data.problems import Problem

#: The three contract tables, in the order files are checked and reported.
TABLE_NAMES: tuple[str, ...] = ("patients", "sessions", "assessments")


#: File formats a folder may use (one per table).
FORMATS: tuple[str, ...] = ("csv", "parquet")


def _check_table(
    table: str,
    frame: pd.DataFrame | Mapping[str, np.ndarray],
    *,
    source: str,
    rows: np.ndarray,
    today: date,
    mode: str,
    covariates: Sequence[str] = (),
    skip: Mapping[str, np.ndarray] | None = None,
    row_rules: np.ndarray | None = None,
    row_word: str = "row",
) -> tuple[dict[str, _Parsed], list[Problem]]:
    """Check every present column's cells and the row rules of one table.

    ``frame`` is a DataFrame or a mapping of column name to object array
    (JSON items; all of length ``len(rows)``). ``skip`` masks cells already
    reported (per column); ``row_rules`` masks the rows the row rules apply to
    (default all).
    """
    n = len(rows)
    specs: list[Column] = list(TABLES[table])
    if table == "patients":
        specs += [covariate_column(c) for c in covariates]
    parsed: dict[str, _Parsed] = {}
    problems: list[Problem] = []
    for col in specs:
        if col.name not in frame:
            continue
        p, probs = check_cells(
            col,
            frame[col.name],
            source=source,
            rows=rows,
            today=today,
            mode=mode,
            skip=None if skip is None else skip.get(col.name),
        )
        parsed[col.name] = p
        problems += probs
    # Absent optional columns are blank.
    for col in specs:
        if col.name not in parsed:
            blank = np.ones(n, dtype=bool)
            parsed[col.name] = _Parsed(_empty_values(col, n), blank, ~blank)
    if table == "assessments":
        names = [*PHQ9_ITEMS, "phq9_total", *CSSRS_COLUMNS]
        # Row rules look only at rows whose PHQ-9/C-SSRS cells all parsed; a
        # bad cell has already been reported and would only echo here.
        usable = np.ones(n, dtype=bool)
        for c in names:
            usable &= ~parsed[c].bad
        if row_rules is not None:
            usable &= row_rules
        items = np.empty((n, len(PHQ9_ITEMS)))
        for j, c in enumerate(PHQ9_ITEMS):
            items[:, j] = parsed[c].values
        total = parsed["phq9_total"].values
        cssrs = np.empty((n, len(CSSRS_COLUMNS)))
        for j, c in enumerate(CSSRS_COLUMNS):
            cssrs[:, j] = parsed[c].values
        problems += check_phq9_scorable(items, total, usable, source=source, rows=rows)
        problems += check_phq9_agrees(items, total, usable, source=source, rows=rows)
        problems += check_any_instrument(items, total, cssrs, usable, source=source, rows=rows)
    return parsed, problems


def _frame_of(table: str, parsed: Mapping[str, _Parsed], extra: Sequence[str] = ()) -> pd.DataFrame:
    """The canonical frame (contract dtypes, sorted) built from valid parsed columns.

    Equivalent to :func:`forecast.cohort.canonicalize` for valid data (a test
    checks it) but sorts integer codes instead of strings, which matters on
    cohorts of millions of rows.
    """
    pid = parsed["patient_id"].values
    codes, _ = pd.factorize(pid, sort=True)
    if "date" in parsed:
        order = np.lexsort((parsed["date"].values.view(np.int64), codes))
    else:
        order = np.argsort(codes, kind="stable")
    data: dict[str, Any] = {}
    for col in TABLES[table]:
        data[col.name] = parsed[col.name].values[order]
    for name in extra:
        data[name] = parsed[name].values[order].astype(float)
    return pd.DataFrame(data)


def _today(today: date | datetime | str | None) -> date:
    if today is None:
        return date.today()
    if isinstance(today, datetime):
        return today.date()
    if isinstance(today, str):
        return date.fromisoformat(today)
    return today


def _row_numbers(df: pd.DataFrame) -> np.ndarray:
    """File row numbers: frames from :func:`read_folder` keep ``index = line - 2``."""
    if pd.api.types.is_integer_dtype(df.index.dtype):
        return df.index.to_numpy(dtype=np.int64) + 2
    return np.arange(len(df), dtype=np.int64) + 2


def _source_of(table: str, df: pd.DataFrame | None, sources: Mapping[str, str] | None) -> str:
    if sources and table in sources:
        return sources[table]
    if df is not None and "source" in df.attrs:
        return str(df.attrs["source"])
    return f"{table}.csv"


def _mode_of(df: pd.DataFrame, source: str) -> str:
    fmt = df.attrs.get("format")
    if fmt in FORMATS:
        return "parquet" if fmt == "parquet" else "csv"
    return "parquet" if source.endswith(".parquet") else "csv"


def validate_tables(
    raw: Mapping[str, pd.DataFrame],
    *,
    covariates: Sequence[str] = (),
    today: date | None = None,
    sources: Mapping[str, str] | None = None,
) -> tuple[Cohort | None, list[Problem]]:
    """Validate the three raw tables and build the canonical cohort.

    Parameters
    ----------
    raw : mapping of str to DataFrame
        ``patients``, ``sessions`` and ``assessments`` as read by
        :func:`read_folder` (CSV cells as text; Parquet columns typed). Frames
        built by hand are read like CSV (text and plain Python values).
    covariates : sequence of str
        Extra numeric columns of ``patients`` to keep (declared covariates).
    today : datetime.date, optional
        Dates after it are errors; default :func:`datetime.date.today`.
    sources : mapping of str to str, optional
        Name of each table's file for messages (default ``<table>.csv``).

    Returns
    -------
    cohort : Cohort or None
        The canonical cohort, or None when there is any problem.
    problems : list of Problem
        Every violation found, in file, row and column order.
    """
    return _validate_tables(raw, covariates=covariates, today=today, sources=sources)


def _validate_tables(
    raw: Mapping[str, pd.DataFrame],
    *,
    covariates: Sequence[str],
    today: date | None,
    sources: Mapping[str, str] | None,
    unreadable: Sequence[str] = (),
) -> tuple[Cohort | None, list[Problem]]:
    day = _today(today)
    covariates = tuple(dict.fromkeys(covariates))
    parsed, rows_of, problems = _check_each_table(
        raw, covariates=covariates, day=day, sources=sources, unreadable=unreadable
    )
    problems += _check_across_tables(raw, parsed, rows_of, sources=sources, unreadable=unreadable)
    problems = _sorted(problems, raw, sources)
    if problems or len(parsed) < len(TABLE_NAMES):
        return None, problems
    cohort = Cohort(
        _frame_of("patients", parsed["patients"], covariates),
        _frame_of("sessions", parsed["sessions"]),
        _frame_of("assessments", parsed["assessments"]),
        covariates,
    )
    return cohort, problems


def _check_each_table(
    raw: Mapping[str, pd.DataFrame],
    *,
    covariates: tuple[str, ...],
    day: date,
    sources: Mapping[str, str] | None,
    unreadable: Sequence[str],
) -> tuple[dict[str, dict[str, _Parsed]], dict[str, np.ndarray], list[Problem]]:
    """Header and cell rules of each table on its own: parsed cells, row numbers, problems."""
    contract_names = {c.name for t in TABLES.values() for c in t}
    problems: list[Problem] = []
    parsed: dict[str, dict[str, _Parsed]] = {}
    rows_of: dict[str, np.ndarray] = {}
    for table in TABLE_NAMES:
        df = raw.get(table)
        source = _source_of(table, df, sources)
        if df is None:
            if table not in unreadable:
                problems.append(Problem(source, None, None, f"the {table} table is missing"))
            continue
        names = [str(c) for c in df.columns]
        header = check_header(table, names, source=source, covariates=covariates)
        if table == "patients":
            header += check_covariates(covariates, names, source=source)
        problems += header
        rows = _row_numbers(df)
        p, probs = _check_table(
            table,
            df,
            source=source,
            rows=rows,
            today=day,
            mode=_mode_of(df, source),
            covariates=[c for c in covariates if c in names and c not in contract_names],
        )
        problems += probs
        parsed[table] = p
        rows_of[table] = rows
    return parsed, rows_of, problems


def _check_across_tables(
    raw: Mapping[str, pd.DataFrame],
    parsed: dict[str, dict[str, _Parsed]],
    rows_of: dict[str, np.ndarray],
    *,
    sources: Mapping[str, str] | None,
    unreadable: Sequence[str],
) -> list[Problem]:
    """Unique patient ids, one row per patient and date, and rows of known patients only."""
    problems: list[Problem] = []
    known = None
    # Without a patient_id column every row would echo as "unknown patient".
    if "patients" in parsed and "patient_id" in raw["patients"].columns:
        pid = parsed["patients"]["patient_id"]
        source = _source_of("patients", raw.get("patients"), sources)
        problems += check_unique(
            [pid.values],
            pid.ok,
            source=source,
            rows=rows_of["patients"],
            column="patient_id",
            what="this patient_id",
        )
        known = pd.Index(pid.values[pid.ok])
    for table in ("sessions", "assessments"):
        if table not in parsed:
            continue
        p = parsed[table]
        source = _source_of(table, raw.get(table), sources)
        pid, day_col = p["patient_id"], p["date"]
        word = "a session" if table == "sessions" else "an assessment"
        problems += check_unique(
            [pid.values, day_col.values.view(np.int64)],
            pid.ok & day_col.ok,
            source=source,
            rows=rows_of[table],
            column="date",
            what=f"{word} of this patient on this date",
        )
        if known is not None and "patients" not in unreadable:
            problems += check_known_patients(
                pid.values,
                known,
                pid.ok,
                source=source,
                rows=rows_of[table],
                patients_source=_source_of("patients", raw.get("patients"), sources),
            )
    return problems


def _sorted(
    problems: list[Problem], raw: Mapping[str, pd.DataFrame], sources: Mapping[str, str] | None
) -> list[Problem]:
    order = {_source_of(t, raw.get(t), sources): i for i, t in enumerate(TABLE_NAMES)}
    colpos = {c.name: i for t in TABLES.values() for i, c in enumerate(t)}
    return sorted(
        problems,
        key=lambda p: (
            order.get(p.source, -1),
            -1 if p.row is None else p.row,
            colpos.get(p.column or "", 99),
        ),
    )
