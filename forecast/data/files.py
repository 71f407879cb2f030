"""Reading and writing a contract folder (one CSV or Parquet file per table).

CSV cells are read as text and parsed by :mod:`forecast.data.cells`; row numbers
are physical line numbers (the header is line 1). :func:`write_cohort` writes
files that :func:`load_cohort` reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import TABLES, Column
from forecast.data.checks import covariate_column
from forecast.data.fileio import _read_csv, _read_parquet, _write_parquet
from forecast.data.partitioned import check_partitioned, is_partitioned
from forecast.data.problems import ContractError, Problem
from forecast.data.tables import FORMATS, TABLE_NAMES, _sorted, _validate_tables


def _read_folder(
    path: Path | str,
) -> tuple[dict[str, pd.DataFrame], dict[str, str], list[Problem], list[str]]:
    folder = Path(path)
    problems: list[Problem] = []
    raw: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    unreadable: list[str] = []
    if not folder.is_dir():
        return raw, sources, [Problem(str(folder), None, None, "not a folder")], list(TABLE_NAMES)
    for table in TABLE_NAMES:
        found = [
            folder / f"{table}.{fmt}" for fmt in FORMATS if (folder / f"{table}.{fmt}").exists()
        ]
        sources[table] = found[0].name if len(found) == 1 else f"{table}.csv"
        if not found:
            problems.append(
                Problem(
                    f"{table}.csv",
                    None,
                    None,
                    f"missing file: the folder needs {table}.csv or {table}.parquet",
                )
            )
            unreadable.append(table)
            continue
        if len(found) > 1:
            problems.append(
                Problem(
                    f"{table}.csv",
                    None,
                    None,
                    f"both {table}.csv and {table}.parquet exist; keep only one of them",
                )
            )
            unreadable.append(table)
            continue
        reader = _read_csv if found[0].suffix == ".csv" else _read_parquet
        frame, probs = reader(found[0], table)
        problems += probs
        if frame is None:
            unreadable.append(table)
        else:
            raw[table] = frame
    return raw, sources, problems, unreadable


def read_folder(path: Path | str) -> dict[str, pd.DataFrame]:
    """Read the three contract files of a folder without interpreting the cells.

    Each table comes from ``<table>.csv`` or ``<table>.parquet`` (exactly one of
    them). CSV cells are text (UTF-8, an optional byte-order mark, LF or CRLF
    line endings); Parquet columns keep their types. Each frame's index is the
    row number minus 2 (so ``index + 2`` is the CSV line number) and
    ``frame.attrs`` holds ``source`` (file name) and ``format``.

    Raises
    ------
    ContractError
        When a file is missing, duplicated (CSV and Parquet), empty, unreadable,
        or has rows of the wrong width.
    """
    raw, _, problems, _ = _read_folder(path)
    if problems:
        raise ContractError(problems)
    return raw


def load_cohort(
    path: Path | str, *, covariates: Sequence[str] = (), today: date | None = None
) -> Cohort:
    """Read and validate a contract folder; return the canonical :class:`Cohort`.

    Parameters
    ----------
    path : path-like
        Folder with ``patients``, ``sessions`` and ``assessments`` files
        (``.csv`` or ``.parquet``), or a partitioned dataset (a folder of
        parts per table, :mod:`forecast.data.partitioned`; the parts are
        validated one by one and concatenated).
    covariates : sequence of str
        Extra numeric columns of the patients file to keep.
    today : datetime.date, optional
        Dates after it are errors (default: today).

    Raises
    ------
    ContractError
        With every problem found (files, header, cells, rows) in one list.
    """
    cohort, problems = check_folder(path, covariates=covariates, today=today)
    if cohort is None:
        raise ContractError(problems)
    return cohort


def check_folder(
    path: Path | str, *, covariates: Sequence[str] = (), today: date | None = None
) -> tuple[Cohort | None, list[Problem]]:
    """Like :func:`load_cohort` but return ``(cohort or None, problems)`` instead of raising.

    File-level problems (missing, empty, unreadable files) and every cell and
    row problem of the readable files are reported together.
    """
    if is_partitioned(path):
        return check_partitioned(path, covariates=covariates, today=today)
    raw, sources, file_problems, unreadable = _read_folder(path)
    cohort, problems = _validate_tables(
        raw, covariates=covariates, today=today, sources=sources, unreadable=unreadable
    )
    problems = _sorted(file_problems + problems, raw, sources)
    return (cohort if not problems else None), problems


def _text_column(col: Column, s: pd.Series) -> np.ndarray:
    """Cells of one canonical column as contract text (blank = empty string)."""
    if col.kind == "date":
        d = pd.to_datetime(s).to_numpy(dtype="datetime64[D]")
        text = np.datetime_as_string(d, unit="D").astype(object)
        text[np.isnat(d)] = ""
        return text
    if col.kind in ("int", "float", "bool"):
        x = pd.to_numeric(s).to_numpy(dtype=float)
        na = np.isnan(x)
        if col.kind == "int":
            text = np.nan_to_num(x).astype(np.int64).astype(str).astype(object)
        elif col.kind == "bool":
            text = np.where(x == 1.0, "true", "false").astype(object)
        else:
            # numpy's str of a float64 is the shortest text that reads back exactly.
            text = x.astype(str).astype(object)
        text[na] = ""
        return text
    v = s.to_numpy(dtype=object)
    text = v.copy()
    text[pd.isna(v)] = ""
    return text.astype(str).astype(object)


def write_cohort(cohort: Cohort, path: Path | str, fmt: str = "csv") -> None:
    """Write a cohort as the three contract files, readable by :func:`load_cohort`.

    CSV: dates ``YYYY-MM-DD``, booleans ``true``/``false``, whole-number
    columns without ``.0``, blank cells empty, LF line endings, UTF-8.
    Parquet: strings, nullable 64-bit integers, doubles, booleans and
    ``date32`` dates. Declared covariates are written as patient columns.

    Parameters
    ----------
    cohort : Cohort
        Canonical cohort.
    path : path-like
        Folder to write into (created if needed; existing files replaced).
    fmt : {"csv", "parquet"}
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "patients": cohort.patients,
        "sessions": cohort.sessions,
        "assessments": cohort.assessments,
    }
    for table, df in frames.items():
        specs = list(TABLES[table])
        if table == "patients":
            specs += [covariate_column(c) for c in cohort.covariates]
        other = folder / f"{table}.{'parquet' if fmt == 'csv' else 'csv'}"
        if other.exists():
            # A folder with both formats would be ambiguous to load.
            other.unlink()
        if fmt == "csv":
            out = pd.DataFrame({c.name: _text_column(c, df[c.name]) for c in specs})
            out.to_csv(folder / f"{table}.csv", index=False, lineterminator="\n")
        else:
            _write_parquet(specs, df, folder / f"{table}.parquet")
