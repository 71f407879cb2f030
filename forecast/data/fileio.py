"""Reading and writing one contract file (CSV or Parquet) without interpreting the cells.

Shared by flat contract folders (:mod:`forecast.data.files`) and partitioned
datasets (:mod:`forecast.data.partitioned`). ``source`` is the name problems
carry (the file name, or ``table/part`` for a part).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.contract import Column
from forecast.data.checks import check_header
from forecast.data.problems import Problem

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


def _read_csv(
    path: Path, table: str, source: str | None = None
) -> tuple[pd.DataFrame | None, list[Problem]]:
    source = source or path.name
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


def _read_parquet(
    path: Path, table: str, source: str | None = None
) -> tuple[pd.DataFrame | None, list[Problem]]:
    import pyarrow.parquet as pq

    source = source or path.name
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
