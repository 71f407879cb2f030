"""Reading and writing a contract folder (one CSV or Parquet file per table).

CSV cells are read as text and parsed by :mod:`forecast.data.cells`; row numbers
are physical line numbers (the header is line 1). :func:`write_cohort` writes
files that :func:`load_cohort` reads back unchanged.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import TABLES, Column
from forecast.data.checks import check_header, covariate_column
from forecast.data.problems import ContractError, Problem
from forecast.data.tables import FORMATS, TABLE_NAMES, _sorted, _validate_tables

_CHUNK = 1 << 23


def _scan_records(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Locate CSV records without parsing them (RFC 4180 quoting, vectorised).

    A comma or newline is a delimiter when an even number of quote characters
    precede it (doubled quotes inside a quoted cell keep the parity).

    Returns
    -------
    start_line : ndarray of int
        Physical line number (1-based) on which each record starts.
    blank : ndarray of bool
        Empty records (blank lines). Lines of only spaces are not flagged
        here; the caller falls back to record-by-record reading for them.
    delimiters : int
        Number of delimiting commas in the whole file.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    n = arr.size
    newlines = np.flatnonzero(arr == 10)
    quotes = np.flatnonzero(arr == 34)
    comma = arr == 44
    delimiters = int(np.count_nonzero(comma))
    if quotes.size:
        ends = newlines[(np.searchsorted(quotes, newlines) & 1) == 0]
        bounds = quotes if quotes.size % 2 == 0 else np.append(quotes, n)
        where = np.flatnonzero(comma)
        inside = np.searchsorted(where, bounds[1::2]) - np.searchsorted(where, bounds[::2])
        delimiters -= int(inside.sum())
    else:
        ends = newlines
    starts = np.concatenate([[0], ends + 1]).astype(np.int64)
    stops = np.concatenate([ends, [n]]).astype(np.int64)
    if starts[-1] >= n:
        # The file ends with a newline: no record after it.
        starts, stops = starts[:-1], stops[:-1]
    length = stops - starts
    first = arr[np.minimum(starts, max(n - 1, 0))] if n else np.zeros(0, np.uint8)
    blank = (length == 0) | ((length == 1) & (first == 13))
    start_line = np.searchsorted(newlines, starts) + 1
    return start_line, blank, delimiters


def _read_csv(path: Path, table: str) -> tuple[pd.DataFrame | None, list[Problem]]:
    source = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [Problem(source, None, None, f"cannot be read: {exc.strerror or exc}")]
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [
            Problem(
                source,
                None,
                None,
                f"cannot be read as UTF-8 text (bad byte at position {exc.start}); "
                "save the file as UTF-8 CSV",
            )
        ]
    if data.count(b"\r") != data.count(b"\r\n") or data.count(b'"') % 2:
        # Lone carriage returns (old Mac line endings) or an unclosed quote:
        # the vectorised scan cannot follow these, the csv module can.
        return _read_csv_slow(data, table, source)
    start, blank, delimiters = _scan_records(data)
    keep = np.flatnonzero(~blank)
    if keep.size == 0:
        return None, [_empty_file(source)]
    head = keep[0]
    try:
        names = [h.strip() for h in next(csv.reader([_record_text(data, start[head])]))]
    except csv.Error:
        return _read_csv_slow(data, table, source)
    repeated = _repeated_columns(table, names, source, int(start[head]))
    if repeated:
        return None, repeated
    data_idx = keep[1:]
    frame = None
    # pandas pads short rows silently and rejects long ones; when every
    # non-blank record has exactly the header's width the comma count is
    # exact, otherwise read record by record to report the odd rows.
    if delimiters == (len(names) - 1) * keep.size:
        try:
            frame = pd.read_csv(
                io.BytesIO(data),
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                header=0,
                names=names,
                skiprows=int(start[head]) - 1,
                encoding="utf-8",
                skip_blank_lines=True,
            )
        except (pd.errors.ParserError, ValueError, csv.Error):
            frame = None
        if frame is not None and len(frame) != data_idx.size:
            frame = None
    if frame is None:
        return _read_csv_slow(data, table, source)
    frame.index = pd.Index(start[data_idx] - 2)
    frame.attrs.update(source=source, format="csv")
    return frame, []


def _empty_file(source: str) -> Problem:
    return Problem(
        source, None, None, "the file is empty: expected a header line naming the columns"
    )


def _repeated_columns(table: str, names: list[str], source: str, row: int) -> list[Problem]:
    """Header problems that make cells impossible to attribute (repeated names)."""
    return [
        p
        for p in check_header(table, names, source=source, row=row)
        if p.message.startswith("column appears more than once")
    ]


def _record_text(data: bytes, line: int) -> str:
    """Text of the physical line ``line`` (1-based) for the header."""
    lines = data.split(b"\n", int(line))
    return lines[int(line) - 1].decode("utf-8").rstrip("\r")


def _read_csv_slow(
    data: bytes, table: str, source: str
) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Record-by-record reading for files the fast reader cannot line up.

    Used for rows of the wrong width, lines of only spaces, lone carriage
    returns and unclosed quotes. Rows of the wrong width are reported, not
    guessed at.
    """
    text = data.decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[Problem] = []
    rows: list[list[str]] = []
    lines: list[int] = []
    names: list[str] | None = None
    last = 0
    last_record: list[str] = []
    last_line = 0
    try:
        for record in reader:
            line = last + 1
            last = reader.line_num
            last_record, last_line = record, line
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if names is None:
                names = [h.strip() for h in record]
                repeated = _repeated_columns(table, names, source, line)
                if repeated:
                    return None, repeated
                continue
            if len(record) != len(names):
                problems.append(
                    Problem(
                        source,
                        line,
                        None,
                        f"the row has {len(record)} cells but the header names "
                        f"{len(names)} columns",
                    )
                )
                continue
            rows.append(record)
            lines.append(line)
    except csv.Error as exc:
        problems.append(Problem(source, reader.line_num, None, f"cannot be parsed as CSV: {exc}"))
    if names is None:
        return None, problems or [_empty_file(source)]
    if data.count(b'"') % 2 and any("\n" in c or "\r" in c for c in last_record):
        # csv reads an unclosed quoted cell up to the end of the file.
        problems.append(
            Problem(
                source,
                last_line,
                None,
                'a quote (") opened on this line is never closed, so the rest of the file '
                "was read as one cell",
            )
        )
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    frame = pd.DataFrame(
        {name: pd.Series(list(c), dtype=object) for name, c in zip(names, cols, strict=True)}
    )
    frame.index = pd.Index(np.asarray(lines, dtype=np.int64) - 2)
    frame.attrs.update(source=source, format="csv")
    return frame, problems


def _read_parquet(path: Path, table: str) -> tuple[pd.DataFrame | None, list[Problem]]:
    import pyarrow.parquet as pq

    source = path.name
    try:
        tab = pq.read_table(path)
    except OSError as exc:
        return None, [Problem(source, None, None, f"cannot be read as Parquet: {exc}")]
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        return None, [Problem(source, None, None, f"cannot be read as Parquet: {exc}")]
    names = [str(n) for n in tab.column_names]
    dups = [
        Problem(source, 1, n, "column appears more than once in the header")
        for n in dict.fromkeys(names)
        if names.count(n) > 1
    ]
    if dups:
        return None, dups
    frame = tab.to_pandas(date_as_object=False)
    frame = frame.reset_index(drop=True)
    frame.attrs.update(source=source, format="parquet")
    return frame, []


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
        (``.csv`` or ``.parquet``).
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


def _write_parquet(specs: Sequence[Column], df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for col in specs:
        s = df[col.name]
        if col.kind == "date":
            d = pd.to_datetime(s).to_numpy(dtype="datetime64[D]")
            arrays[col.name] = pa.array(d, type=pa.date32(), from_pandas=True)
        elif col.kind == "int":
            x = pd.to_numeric(s).to_numpy(dtype=float)
            arrays[col.name] = pa.array(
                np.nan_to_num(x).astype(np.int64), type=pa.int64(), mask=np.isnan(x)
            )
        elif col.kind == "bool":
            x = pd.to_numeric(s).to_numpy(dtype=float)
            arrays[col.name] = pa.array(x == 1.0, type=pa.bool_(), mask=np.isnan(x))
        elif col.kind == "float":
            arrays[col.name] = pa.array(
                pd.to_numeric(s).to_numpy(dtype=float), type=pa.float64(), from_pandas=True
            )
        else:
            v = s.to_numpy(dtype=object)
            arrays[col.name] = pa.array(v, type=pa.string(), from_pandas=True)
    pq.write_table(pa.table(arrays), path)
