"""Validation of the data contract: one implementation for files and the JSON API.

A clinic's data arrives as a folder of three files (``patients``, ``sessions``,
``assessments``; CSV or Parquet), as JSON lists posted to the service, or from
the FHIR importer. Every path goes through the same small ``check_*`` rule
functions below, which read their rules (kinds, bounds, allowed values,
required/nullable) from :mod:`forecast.contract`, so the files, the JSON API and
the OpenAPI document agree.

Nothing is silently dropped or coerced: CSV cells are read as text and parsed
here, column by column and vectorised; every violation becomes a
:class:`Problem` naming the file (or table), the row, the column and what is
allowed, and all problems of a run are reported together.

Row numbers: for CSV files the physical line number of the record (the header
is line 1, so the first data row is normally 2); for Parquet files the same
convention (first data row = 2); for JSON lists the 0-based index of the item.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import FALSE_STRINGS, PHQ9_ITEMS, TABLES, TRUE_STRINGS, Column
from forecast.instruments import MAX_MISSING_ITEMS, phq9_from_items

__all__ = [
    "FORMATS",
    "MAX_CLIENT_ID_LENGTH",
    "TABLE_NAMES",
    "ContractError",
    "Problem",
    "RecordsOf",
    "check_any_instrument",
    "check_cells",
    "check_client_ids",
    "check_covariates",
    "check_folder",
    "check_header",
    "check_known_patients",
    "check_phq9_agrees",
    "check_phq9_scorable",
    "check_record_keys",
    "check_stored_duplicates",
    "check_unique",
    "load_cohort",
    "screen_only",
    "read_folder",
    "validate_patient",
    "validate_records",
    "validate_records_many",
    "validate_tables",
    "write_cohort",
]

#: The three contract tables, in the order files are checked and reported.
TABLE_NAMES: tuple[str, ...] = ("patients", "sessions", "assessments")
#: File formats a folder may use (one per table).
FORMATS: tuple[str, ...] = ("csv", "parquet")
#: Longest client ``id`` accepted by the JSON API.
MAX_CLIENT_ID_LENGTH = 200
CSSRS_COLUMNS: tuple[str, ...] = ("cssrs_ideation", "cssrs_behavior")
#: Earliest year accepted in a date (older dates are typing errors, and
#: pandas' nanosecond timestamps cannot hold years before 1677).
MIN_YEAR = 1900

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Plain decimal notation with an optional exponent; rejects "nan", "inf",
# "1_000", "0x10" that Python's float() would take.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SHOW_MAX = 60
_CHUNK = 1 << 23


# --- problems ------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One violation of the data contract.

    Parameters
    ----------
    source : str
        File name (``"assessments.csv"``) or table name for JSON input.
    row : int or None
        CSV line number (header = line 1; Parquet rows use the same numbering)
        or the 0-based item index of a JSON list; None for file-level problems.
    column : str or None
        Column (or JSON key) concerned; None when the problem is not about one.
    message : str
        What is wrong and what is allowed.
    """

    source: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.source]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return ", ".join(where) + ": " + self.message

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready mapping (keys source, row, column, message)."""
        return {
            "source": self.source,
            "row": self.row,
            "column": self.column,
            "message": self.message,
        }


class ContractError(ValueError):
    """Raised when data violate the contract; ``.problems`` lists every violation."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        shown = "\n".join(str(p) for p in self.problems[:20])
        more = len(self.problems) - 20
        tail = f"\n... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the data:\n{shown}{tail}")


# --- input modes ----------------------------------------------------------------
@dataclass(frozen=True)
class _Mode:
    """How strictly cell types are read (CSV text, typed Parquet, JSON)."""

    name: str
    #: numeric columns accept numerals written as text ("3", "3.0")
    numbers_from_text: bool
    #: boolean columns accept "true"/"1" text and the numbers 0/1
    loose_bools: bool
    #: date columns accept date/datetime objects (Parquet date/timestamp types)
    date_objects: bool


_CSV = _Mode("csv", True, True, True)
_PARQUET = _Mode("parquet", False, True, True)
_JSON = _Mode("json", False, False, False)


def _allowed(col: Column, mode: _Mode) -> str:
    text = col.allowed_text()
    if mode is _JSON:
        blank = text.endswith(" or blank")
        if blank:
            text = text[: -len(" or blank")]
        if col.kind in ("int", "float"):
            text += " as a JSON number"
        elif col.kind == "bool":
            text = "true or false"
        if blank:
            text += ", or null"
    return text


def _show(value: Any, mode: _Mode) -> str:
    """Render a rejected cell for a message (quoted text, JSON literals for JSON)."""
    if mode is _JSON:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    elif value is None or (np.ndim(value) == 0 and not isinstance(value, str) and pd.isna(value)):
        text = "''" if mode is _CSV else "blank"
    elif isinstance(value, str):
        text = "'" + value + "'"
    else:
        text = str(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


# --- cell parsing (one column at a time, vectorised) -----------------------------
@dataclass
class _Parsed:
    """A parsed column: typed values, blank and bad masks, notes for bad cells."""

    values: np.ndarray
    blank: np.ndarray
    bad: np.ndarray
    #: Per-cell remark shown after a rejected value; allocated on first use.
    note: np.ndarray | None = None

    def set_note(self, mask: np.ndarray, text: np.ndarray | str) -> None:
        if self.note is None:
            self.note = np.full(len(self.bad), "", dtype=object)
        self.note[mask] = text

    def reject(self, mask: np.ndarray, note: str = "") -> None:
        new = mask & ~self.bad
        self.bad |= new
        if note and new.any():
            self.set_note(new, note)

    def notes(self, idx: np.ndarray) -> np.ndarray:
        """Remarks of the cells at positions ``idx``."""
        if self.note is None:
            return np.full(len(idx), "", dtype=object)
        return self.note[idx]

    @property
    def ok(self) -> np.ndarray:
        """Cells holding a valid, non-blank value."""
        return ~self.blank & ~self.bad


_BLANK = object()


def _empty_values(col: Column, n: int) -> np.ndarray:
    if col.kind == "date":
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    if col.kind in ("int", "float", "bool"):
        return np.full(n, np.nan)
    return np.full(n, None, dtype=object)


def _parse_one(col: Column, v: Any, mode: _Mode) -> tuple[Any, str | None]:
    """Parse one distinct cell value: (value, None), (_BLANK, None) or (None, note)."""
    kind = col.kind
    if isinstance(v, str):
        t = v.strip()
        if not t:
            return _BLANK, None
        if kind == "string":
            return t, None
        if kind == "category":
            return (t, None) if t in (col.allowed or ()) else (None, "")
        if kind == "date":
            if not _DATE_RE.fullmatch(t):
                return None, ""
            try:
                d = date.fromisoformat(t)
            except ValueError:
                return None, " (no such date)"
            return np.datetime64(d, "D"), None
        if kind == "bool":
            if mode.loose_bools and t in TRUE_STRINGS:
                return 1.0, None
            if mode.loose_bools and t in FALSE_STRINGS:
                return 0.0, None
            return None, " (text)" if mode is _JSON else ""
        # int / float
        if not mode.numbers_from_text:
            return None, " (text)"
        if not _NUMBER_RE.fullmatch(t):
            return None, ""
        return float(t), None
    if isinstance(v, bool | np.bool_):
        if kind == "bool":
            return float(bool(v)), None
        return None, " (a boolean)"
    if isinstance(v, int | float | np.integer | np.floating):
        try:
            x = float(v)
        except OverflowError:
            return None, " (too large)"
        if kind in ("int", "float"):
            return x, None
        if kind == "bool" and mode.loose_bools and x in (0.0, 1.0):
            return x, None
        return None, " (a number)"
    if isinstance(v, datetime | date | np.datetime64):
        if kind != "date" or not mode.date_objects:
            return None, " (a date object)"
        ts = pd.Timestamp(v)
        if ts.tzinfo is not None:
            ts = ts.tz_localize(None)
        if ts != ts.normalize():
            return None, " (has a time of day)"
        return np.datetime64(ts.date(), "D"), None
    if isinstance(v, _Unhashable):
        return None, f" ({v.what})"
    return None, f" (a {type(v).__name__})"


class _Unhashable:
    """Stand-in for a JSON array or object cell (hashable by identity)."""

    __slots__ = ("what",)

    def __init__(self, value: Any) -> None:
        self.what = "an array" if isinstance(value, list) else "an object"


#: Up to this many cells a dict loop factorises faster than pandas (JSON items).
_SMALL = 512
#: Cell types the small-column factoriser handles; anything else goes to pandas.
_PLAIN = (str, int, float, bool, type(None), list, dict)


def _factorize_small(arr: np.ndarray) -> tuple[np.ndarray, list[Any]] | None:
    """:func:`_factorize_objects` for a short column of plain JSON values, else None.

    Same codes as pandas' factorisation with booleans apart: null and NaN are
    -1, ``3`` and ``3.0`` share a code, ``True`` and ``1`` do not, and every
    JSON array or object is a distinct value.
    """
    codes = np.empty(len(arr), dtype=np.int64)
    uniques: list[Any] = []
    seen: dict[tuple[bool, Any], int] = {}
    for i, v in enumerate(arr):
        t = type(v)
        if t not in _PLAIN:
            return None
        if v is None or (t is float and v != v):
            codes[i] = -1
            continue
        if t is list or t is dict:
            codes[i] = len(uniques)
            uniques.append(_Unhashable(v))
            continue
        key = (t is bool, v)
        code = seen.get(key)
        if code is None:
            code = seen[key] = len(uniques)
            uniques.append(v)
        codes[i] = code
    return codes, uniques


def _factorize_objects(s: pd.Series | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Codes and distinct values of an object column; -1 marks null cells.

    Booleans are factorised apart from numbers because ``True == 1`` would
    otherwise merge them into one distinct value.
    """
    if len(s) <= _SMALL:
        small = _factorize_small(np.asarray(s, dtype=object))
        if small is not None:
            return small
    if isinstance(s, np.ndarray):
        s = pd.Series(s, dtype=object)
    try:
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
    except TypeError:
        # JSON arrays and objects cannot be hashed: stand-ins keep them apart.
        s = pd.Series(
            [_Unhashable(v) if isinstance(v, list | dict) else v for v in s], dtype=object
        )
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
    # Hashing merges True with 1 and False with 0; only then factorise apart.
    merged = any(
        isinstance(u, bool | np.bool_) or (not isinstance(u, str) and u in (0, 1)) for u in uniques
    )
    if not merged:
        return np.asarray(codes), list(uniques)
    arr = s.to_numpy(dtype=object)
    isbool = np.fromiter((isinstance(v, bool | np.bool_) for v in arr), bool, len(arr))
    codes = np.full(len(arr), -1, dtype=np.int64)
    uniques: list[Any] = []
    for mask in (isbool, ~isbool):
        c, u = pd.factorize(arr[mask], use_na_sentinel=True)
        c = np.asarray(c)
        codes[mask] = np.where(c >= 0, c + len(uniques), -1)
        uniques.extend(u)
    return codes, uniques


def _parse_series(col: Column, s: pd.Series | np.ndarray, mode: _Mode) -> _Parsed:
    """Turn raw cells into typed values plus blank/bad masks (format stage).

    ``s`` is a Series, or an object array of JSON values (no pandas overhead
    for the API's short lists).
    """
    n = len(s)
    if isinstance(s, np.ndarray):
        if s.dtype != object:
            s = pd.Series(s)
        else:
            return _parse_objects(col, s, mode)
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        s = s.astype(object)
        dtype = s.dtype
    if not pd.api.types.is_object_dtype(dtype):
        # typed (Parquet) columns: blank/invalid cells keep this empty value
        values = _empty_values(col, n)
    if pd.api.types.is_bool_dtype(dtype):
        b = s.astype("boolean")
        blank = b.isna().to_numpy()
        bad = np.zeros(n, dtype=bool)
        if col.kind == "bool":
            values = b.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        else:
            bad = ~blank
        p = _Parsed(values, blank, bad)
        if col.kind != "bool":
            p.set_note(bad, " (a boolean)")
        return p
    if pd.api.types.is_numeric_dtype(dtype):
        x = pd.Series(s).astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        blank = np.isnan(x)
        bad = np.zeros(n, dtype=bool)
        if col.kind in ("int", "float"):
            values = x
        elif col.kind == "bool" and mode.loose_bools:
            good = (x == 0.0) | (x == 1.0)
            values = np.where(good, x, np.nan)
            bad = ~blank & ~good
        else:
            bad = ~blank
        p = _Parsed(values, blank, bad)
        if col.kind not in ("int", "float") and not (col.kind == "bool" and mode.loose_bools):
            p.set_note(bad, " (a number)")
        return p
    if pd.api.types.is_datetime64_any_dtype(dtype):
        t = pd.Series(s)
        if getattr(t.dt, "tz", None) is not None:
            t = t.dt.tz_localize(None)
        t = t.astype("datetime64[ns]")
        blank = t.isna().to_numpy()
        bad = np.zeros(n, dtype=bool)
        if col.kind == "date" and mode.date_objects:
            timed = (t != t.dt.normalize()).to_numpy() & ~blank
            values = t.to_numpy(dtype="datetime64[ns]")
            values = np.where(timed, np.datetime64("NaT"), values).astype("datetime64[ns]")
            p = _Parsed(values, blank, timed)
            p.set_note(timed, " (has a time of day)")
        else:
            p = _Parsed(values, blank, ~blank)
            p.set_note(~blank, " (a date object)")
        return p

    plain = isinstance(dtype, np.dtype) and dtype.kind == "O"
    return _parse_objects(col, s if plain else s.astype(object), mode)


def _parse_objects(col: Column, s: pd.Series | np.ndarray, mode: _Mode) -> _Parsed:
    """:func:`_parse_series` of an object column (text or JSON values)."""
    n = len(s)
    codes, uniques = _factorize_objects(s)
    m = len(uniques)
    # One extra slot at the end describes null cells: code -1 indexes it.
    u_values = _empty_values(col, m + 1)
    u_blank = np.zeros(m + 1, dtype=bool)
    u_blank[m] = True
    u_bad = np.zeros(m + 1, dtype=bool)
    u_note = np.full(m + 1, "", dtype=object)
    # A loop over *distinct* values only: a cohort has few of them per column.
    for j, v in enumerate(uniques):
        val, why = _parse_one(col, v, mode)
        if val is _BLANK:
            u_blank[j] = True
        elif why is not None:
            u_bad[j] = True
            u_note[j] = why
        else:
            u_values[j] = val
    p = _Parsed(u_values[codes], u_blank[codes], u_bad[codes])
    if u_bad.any():
        p.set_note(p.bad, u_note[codes[p.bad]])
    if mode is _JSON and p.blank.any():
        # Python's JSON reader accepts NaN, which factorising would take for null.
        arr = np.asarray(s, dtype=object)
        nan = np.fromiter((isinstance(v, float) and v != v for v in arr), bool, n)
        p.blank &= ~nan
        p.reject(nan, " (NaN is not a JSON value)")
    return p


def _check_values(col: Column, p: _Parsed, today: date) -> None:
    """Value stage: bounds, whole numbers, dates in range, required cells."""
    if col.kind in ("int", "float"):
        x = p.values
        ok = p.ok
        with np.errstate(invalid="ignore"):
            wrong = ok & ~np.isfinite(x)
            if col.kind == "int":
                wrong |= ok & np.isfinite(x) & (x != np.floor(x))
            if col.minimum is not None:
                wrong |= ok & (x < col.minimum)
            if col.maximum is not None:
                wrong |= ok & (x > col.maximum)
        p.reject(wrong)
    elif col.kind == "date":
        d = p.values
        ok = p.ok
        p.reject(ok & (d > np.datetime64(today, "ns")), f" (after today, {today.isoformat()})")
        p.reject(ok & (d < np.datetime64(f"{MIN_YEAR}-01-01", "ns")), f" (before {MIN_YEAR})")
    if not col.nullable:
        p.reject(p.blank & ~p.bad)
    # A rejected cell carries no value downstream (row rules skip it).
    if p.bad.any():
        if col.kind == "date":
            p.values[p.bad] = np.datetime64("NaT")
        elif col.kind in ("int", "float", "bool"):
            p.values[p.bad] = np.nan
        else:
            p.values[p.bad] = None


def check_cells(
    col: Column,
    cells: pd.Series | np.ndarray,
    *,
    source: str,
    rows: np.ndarray,
    today: date,
    mode: str = "csv",
    skip: np.ndarray | None = None,
) -> tuple[_Parsed, list[Problem]]:
    """Parse and check every cell of one column against its contract ``Column``.

    Parameters
    ----------
    col : Column
        Contract specification (kind, bounds, allowed values, nullable).
    cells : pandas.Series or object ndarray
        Raw cells: text (CSV), typed values (Parquet) or JSON values.
    source : str
        File or table name used in problems.
    rows : ndarray of int
        Row number of each cell (CSV line number or JSON item index).
    today : datetime.date
        Dates after this day are rejected.
    mode : {"csv", "parquet", "json"}
        How strictly types are read: CSV accepts numerals written as text,
        Parquet and JSON require numbers in numeric columns; JSON requires
        true/false in boolean columns.
    skip : ndarray of bool, optional
        Cells already reported elsewhere (e.g. a missing JSON key).

    Returns
    -------
    parsed : _Parsed
        Typed values (NaN / NaT / None where blank or rejected) and masks.
    problems : list of Problem
        One per rejected cell: ``got <cell>; allowed: <what the contract allows>``.
    """
    m = {"csv": _CSV, "parquet": _PARQUET, "json": _JSON}[mode]
    p = _parse_series(col, cells, m)
    _check_values(col, p, today)
    bad = p.bad if skip is None else p.bad & ~skip
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return p, []
    raw = np.asarray(cells, dtype=object)[idx]
    allowed = _allowed(col, m)
    problems = [
        Problem(source, int(r), col.name, f"got {_show(v, m)}{why}; allowed: {allowed}")
        for r, v, why in zip(rows[idx], raw, p.notes(idx), strict=True)
    ]
    return p, problems


# --- table-level and row-level rules ---------------------------------------------
def check_header(
    table: str,
    names: Sequence[str],
    *,
    source: str,
    covariates: Sequence[str] = (),
    row: int | None = 1,
) -> list[Problem]:
    """Required columns present, no unknown or repeated columns.

    Declared ``covariates`` are extra numeric columns allowed in ``patients``.
    """
    spec = TABLES[table]
    known = [c.name for c in spec]
    extra_ok = list(covariates) if table == "patients" else []
    problems = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append(
                Problem(source, row, name, "column appears more than once in the header")
            )
        seen.add(name)
    for c in spec:
        if c.required and c.name not in seen:
            problems.append(
                Problem(source, row, c.name, f"required column is missing ({c.description})")
            )
    hint = (
        "; declare extra numeric patient columns as covariates (--covariate NAME)"
        if table == "patients"
        else ""
    )
    for name in dict.fromkeys(names):
        if name not in known and name not in extra_ok:
            problems.append(
                Problem(
                    source,
                    row,
                    name,
                    "unknown column; allowed columns: " + ", ".join(known + extra_ok) + hint,
                )
            )
    return problems


def check_covariates(
    covariates: Sequence[str], names: Sequence[str] | None, *, source: str
) -> list[Problem]:
    """Declared covariates must be new names and columns of the patients table."""
    problems = []
    contract = {c.name for t in TABLES.values() for c in t}
    for name in dict.fromkeys(covariates):
        if name in contract:
            problems.append(
                Problem(
                    source,
                    1,
                    name,
                    "declared covariate is already a contract column; declare only extra columns",
                )
            )
        elif names is not None and name not in names:
            problems.append(
                Problem(source, 1, name, "declared covariate is not a column of this file")
            )
    return problems


def covariate_column(name: str) -> Column:
    """The contract-style specification of a declared covariate (any number or blank)."""
    return Column(name, "float", False, True, f"Declared covariate {name}")


#: Items that may be answered without a total: the PHQ-2 (items 1-2) and item 9.
SCREEN_ITEMS: tuple[int, ...] = (0, 1, 8)


def screen_only(items: np.ndarray) -> np.ndarray:
    """Rows whose answered PHQ-9 items are all PHQ-2 items (1, 2) or item 9.

    Such a row is a screen, not a partial PHQ-9: EHRs send the PHQ-2 and item 9
    on their own. It has no PHQ-9 total unless one is given; the models ignore
    it and the safety rules read its item 9.
    """
    others = np.delete(np.asarray(items, dtype=float), list(SCREEN_ITEMS), axis=1)
    return np.all(np.isnan(others), axis=1)


def check_phq9_scorable(
    items: np.ndarray, total: np.ndarray, usable: np.ndarray, *, source: str, rows: np.ndarray
) -> list[Problem]:
    """With 3 or more PHQ-9 items missing the total must be given, except for a screen.

    Prorating allows at most two missing items (Kroenke et al. 2001; see the
    docs' data contract), so a partial questionnaire without ``phq9_total``
    cannot be scored. A row answering only PHQ-2 items and/or item 9
    (:func:`screen_only`) is a valid screen without a total. Rows with no
    PHQ-9 item at all are left to :func:`check_any_instrument`.
    """
    answered = np.sum(~np.isnan(items), axis=1)
    wrong = (
        usable
        & (answered > 0)
        & (answered < 9 - MAX_MISSING_ITEMS)
        & np.isnan(total)
        & ~screen_only(items)
    )
    idx = np.flatnonzero(wrong)
    return [
        Problem(
            source,
            int(rows[i]),
            "phq9_total",
            f"PHQ-9 cannot be scored: {9 - int(answered[i])} of 9 items are blank and "
            f"phq9_total is blank; prorating allows at most {MAX_MISSING_ITEMS} "
            "missing items, so give the total or the missing items (a row with only "
            "phq9_1, phq9_2 and/or phq9_9 is accepted as a screen without a total)"
            + (
                f"; this row's item 9 answer ({_fmt_num(items[i, 8])}) is not recorded "
                "until the row is fixed"
                if not np.isnan(items[i, 8])
                else ""
            ),
        )
        for i in idx
    ]


def check_phq9_agrees(
    items: np.ndarray, total: np.ndarray, usable: np.ndarray, *, source: str, rows: np.ndarray
) -> list[Problem]:
    """Items and ``phq9_total`` must agree when both are given.

    Complete items: their sum must equal the total. One or two missing: the
    prorated total of :func:`forecast.instruments.phq9_from_items` (sum x 9 /
    answered, rounded half up) must equal it. Three or more missing: the
    total must lie between the sum of the answered items and that sum plus 3
    for each missing item (anything else is impossible).
    """
    answered = np.sum(~np.isnan(items), axis=1)
    s = np.nansum(items, axis=1)
    prorated, _ = phq9_from_items(items)
    given = usable & ~np.isnan(total) & (answered > 0)
    problems: list[Problem] = []
    full = given & (answered == 9) & (s != total)
    for i in np.flatnonzero(full):
        problems.append(
            Problem(
                source,
                int(rows[i]),
                "phq9_total",
                f"got {_fmt_num(total[i])} but the nine items sum to {_fmt_num(s[i])}; "
                "phq9_total must equal the sum of the items",
            )
        )
    part = given & (answered >= 9 - MAX_MISSING_ITEMS) & (answered < 9) & (prorated != total)
    for i in np.flatnonzero(part):
        problems.append(
            Problem(
                source,
                int(rows[i]),
                "phq9_total",
                f"got {_fmt_num(total[i])} but the {int(answered[i])} answered items prorate "
                f"to {_fmt_num(prorated[i])} (sum {_fmt_num(s[i])} x 9 / {int(answered[i])}, "
                "rounded half up; DOMAIN.md); phq9_total must equal the prorated total",
            )
        )
    few = given & (answered < 9 - MAX_MISSING_ITEMS)
    high = s + 3.0 * (9 - answered)
    out = few & ((total < s) | (total > high))
    for i in np.flatnonzero(out):
        problems.append(
            Problem(
                source,
                int(rows[i]),
                "phq9_total",
                f"got {_fmt_num(total[i])} but the {int(answered[i])} answered items sum to "
                f"{_fmt_num(s[i])}, so the total must lie between {_fmt_num(s[i])} and "
                f"{_fmt_num(high[i])}",
            )
        )
    return problems


def check_any_instrument(
    items: np.ndarray,
    total: np.ndarray,
    cssrs: np.ndarray,
    usable: np.ndarray,
    *,
    source: str,
    rows: np.ndarray,
) -> list[Problem]:
    """An assessment needs a PHQ-9 (items or total) or a C-SSRS answer.

    A row with only C-SSRS answers is a valid C-SSRS-only assessment.
    ``cssrs`` has shape (n, 2) (ideation, behaviour).
    """
    none = (
        usable & np.all(np.isnan(items), axis=1) & np.isnan(total) & np.all(np.isnan(cssrs), axis=1)
    )
    return [
        Problem(
            source,
            int(rows[i]),
            "phq9_total",
            "the row holds no answer: give PHQ-9 items (phq9_1..phq9_9), phq9_total, "
            "or a C-SSRS answer (cssrs_ideation, cssrs_behavior)",
        )
        for i in np.flatnonzero(none)
    ]


def check_unique(
    keys: Sequence[np.ndarray],
    usable: np.ndarray,
    *,
    source: str,
    rows: np.ndarray,
    column: str,
    what: str,
    row_word: str = "row",
) -> list[Problem]:
    """Rows sharing the same key (e.g. patient_id and date) are duplicates.

    Every repeat after the first is reported and names the row it repeats.
    """
    idx = np.flatnonzero(usable)
    if idx.size < 2:
        return []
    codes = [pd.factorize(k[idx], use_na_sentinel=True)[0] for k in keys]
    key = pd.DataFrame({str(i): c for i, c in enumerate(codes)})
    dup = key.duplicated(keep="first").to_numpy()
    if not dup.any():
        return []
    # The first occurrence of each repeated key, to name it in the message.
    group = key.groupby(list(key.columns), sort=False).ngroup().to_numpy()
    first = pd.Series(np.arange(idx.size)).groupby(group).transform("min").to_numpy()
    return [
        Problem(
            source,
            int(rows[idx[j]]),
            column,
            f"duplicate: {row_word} {int(rows[idx[first[j]]])} already has {what}",
        )
        for j in np.flatnonzero(dup)
    ]


def check_known_patients(
    patient_ids: np.ndarray,
    known: np.ndarray | pd.Index,
    usable: np.ndarray,
    *,
    source: str,
    rows: np.ndarray,
    patients_source: str = "patients.csv",
) -> list[Problem]:
    """Rows must belong to a patient listed in the patients table."""
    mask = usable & ~pd.Series(patient_ids).isin(pd.Index(known)).to_numpy()
    return [
        Problem(
            source,
            int(rows[i]),
            "patient_id",
            f"unknown patient: got {_show(patient_ids[i], _CSV)}; allowed: a patient_id "
            f"listed in {patients_source}",
        )
        for i in np.flatnonzero(mask)
    ]


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- table validation shared by files and JSON --------------------------------------
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


# --- reading files --------------------------------------------------------------------
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


# --- JSON records ----------------------------------------------------------------------
def check_record_keys(
    records: Sequence[Any], allowed: Sequence[Column], *, source: str, allow_id: bool
) -> tuple[list[Problem], dict[str, np.ndarray], np.ndarray]:
    """Each JSON item must be an object with known keys and the required ones.

    Returns the problems, a mask per column of items missing that required
    key (so that the cell check does not report them twice), and a mask of
    items that are not objects.
    """
    names = [c.name for c in allowed]
    known = set(names) | ({"id"} if allow_id else set())
    listing = ", ".join(names + (["id"] if allow_id else []))
    n = len(records)
    missing = {c.name: np.zeros(n, dtype=bool) for c in allowed if c.required}
    not_object = np.zeros(n, dtype=bool)
    problems: list[Problem] = []
    # A loop over posted items: JSON bodies are parsed item by item anyway.
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            not_object[i] = True
            problems.append(
                Problem(
                    source, i, None, f"each item must be a JSON object; got {_show(rec, _JSON)}"
                )
            )
            continue
        for key in rec:
            if key not in known:
                problems.append(
                    Problem(source, i, str(key), f"unknown field; allowed fields: {listing}")
                )
        for name, mask in missing.items():
            if name not in rec:
                mask[i] = True
                col = next(c for c in allowed if c.name == name)
                problems.append(
                    Problem(
                        source,
                        i,
                        name,
                        f"required field is missing; allowed: {_allowed(col, _JSON)}",
                    )
                )
    return problems, missing, not_object


def check_client_ids(ids: Sequence[Any], *, source: str) -> tuple[np.ndarray, list[Problem]]:
    """Client ``id`` values: optional, non-empty text of at most 200 characters, unique.

    Returns the ids (None where absent or invalid) and the problems.
    """
    out = np.full(len(ids), None, dtype=object)
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, v in enumerate(ids):
        if v is None:
            continue
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_CLIENT_ID_LENGTH:
            problems.append(
                Problem(
                    source,
                    i,
                    "id",
                    f"got {_show(v, _JSON)}; allowed: non-empty text of at most "
                    f"{MAX_CLIENT_ID_LENGTH} characters, or no id",
                )
            )
            continue
        if v in first:
            problems.append(
                Problem(source, i, "id", f"duplicate: item {first[v]} already has this id")
            )
            continue
        first[v] = i
        out[i] = v
    return out, problems


def check_stored_duplicates(
    dates: np.ndarray,
    client_ids: np.ndarray,
    usable: np.ndarray,
    existing: pd.DataFrame | Mapping[str, Any] | None,
    *,
    source: str,
    what: str,
) -> list[Problem]:
    """A new row may not share its date with a row already stored for the patient.

    Rows whose client id matches a stored row's ``client_id`` are retries of
    that row; the caller (the service) decides on idempotency or conflict.
    ``existing`` is a frame (or a mapping of arrays) with ``date`` and
    optionally ``client_id``.
    """
    if existing is None or len(existing["date"]) == 0:
        return []
    stored_dates = pd.to_datetime(np.asarray(existing["date"])).to_numpy(dtype="datetime64[ns]")
    stored_ids = (
        {str(c) for c in existing["client_id"] if c is not None and c == c}
        if "client_id" in existing
        else set()
    )
    retry = np.array([c is not None and c in stored_ids for c in client_ids], dtype=bool)
    clash = usable & ~retry & np.isin(dates, stored_dates)
    return [
        Problem(
            source,
            i,
            "date",
            f"duplicate: {what} of this patient on {str(dates[i])[:10]} is already stored",
        )
        for i in np.flatnonzero(clash)
    ]


@dataclass(frozen=True)
class RecordsOf:
    """JSON items of one table for one patient: one entry of :func:`validate_records_many`.

    Attributes are the arguments of :func:`validate_records` of the same names;
    ``existing`` may also be a mapping of arrays (``date``, ``client_id``).
    """

    patient_id: str
    records: Any
    known_patient: bool = True
    existing: pd.DataFrame | Mapping[str, Any] | None = None


def validate_records(
    table: str,
    records: Sequence[Any],
    *,
    patient_id: str,
    known_patient: bool = True,
    existing: pd.DataFrame | None = None,
    today: date | None = None,
    allow_id: bool = True,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Validate posted JSON sessions or assessments of one patient.

    Parameters
    ----------
    table : {"sessions", "assessments"}
        Which contract table the items belong to.
    records : list of dict
        JSON objects with the contract columns minus ``patient_id`` plus an
        optional client ``id``. JSON types are strict: numbers for numeric
        fields (a numeral in a string such as ``"3"`` is rejected), ``true`` /
        ``false`` for ``psychotherapy``, ``"YYYY-MM-DD"`` strings for dates,
        ``null`` or an absent key for blank.
    patient_id : str
        The patient the items belong to (from the URL or request body).
    known_patient : bool
        False when the patient does not exist: one problem is reported.
    existing : DataFrame, optional
        Canonical rows of this table already stored for the patient, with a
        ``client_id`` column; a new item dated like a stored row is a
        duplicate unless its client id matches a stored row (a retry, which
        the caller handles).
    today : datetime.date, optional
        Dates after it are errors (default: today).
    allow_id : bool
        Whether items may carry a client ``id``.

    Returns
    -------
    frame : DataFrame
        Canonical rows (sorted by date) with ``patient_id`` filled in and a
        ``client_id`` column (None when absent). Rejected cells are blank;
        use the frame only when ``problems`` is empty.
    problems : list of Problem
        ``row`` is the 0-based item index, ``column`` the JSON key.
    """
    entry = RecordsOf(patient_id, records, known_patient, existing)
    frame, problems, _ = _validate_records_many(table, [entry], today=today, allow_id=allow_id)[0]
    return frame, problems


def validate_records_many(
    table: str,
    entries: Sequence[RecordsOf],
    *,
    today: date | None = None,
    allow_id: bool = True,
    as_rows: bool = False,
) -> list[tuple[Any, list[Problem], np.ndarray]]:
    """:func:`validate_records` of many patients' lists in one vectorised pass.

    The cell and row rules run once over all items of all entries (the same
    rule functions as files and single lists); rules about one list (its
    client ids, its duplicate dates, its stored rows) then run per entry only
    where they can apply. Each entry's result equals ``validate_records`` of
    that entry alone.

    Parameters
    ----------
    table : {"sessions", "assessments"}
    entries : sequence of RecordsOf
        One list of JSON items per entry, with its patient and stored rows.
    today : datetime.date, optional
        Dates after it are errors (default: today).
    allow_id : bool
        Whether items may carry a client ``id``.
    as_rows : bool
        Give each entry's rows as a list of dicts (the frame's
        ``to_dict("records")``: dates as ``Timestamp``, numbers as floats)
        instead of a frame; building thousands of small frames is what makes
        a bulk load slow.

    Returns
    -------
    list of (frame, problems, order)
        Per entry, in the given order: the frame (or rows) and problems of
        :func:`validate_records`, and ``order``, the item index of each
        frame row (the frame is sorted by date).
    """
    return _validate_records_many(table, entries, today=today, allow_id=allow_id, as_rows=as_rows)


def _validate_records_many(
    table: str,
    entries: Sequence[RecordsOf],
    *,
    today: date | None,
    allow_id: bool,
    as_rows: bool = False,
) -> list[tuple[Any, list[Problem], np.ndarray]]:
    if table not in ("sessions", "assessments"):
        raise ValueError(f"table must be 'sessions' or 'assessments', got {table!r}")
    day = _today(today)
    source = table
    specs = [c for c in TABLES[table] if c.name != "patient_id"]
    k = len(entries)
    problems_of: list[list[Problem]] = [[] for _ in range(k)]
    lists: list[list[Any]] = []
    for j, entry in enumerate(entries):
        records = entry.records
        if not isinstance(records, list | tuple):
            problems_of[j].append(Problem(source, None, None, "must be a JSON list of objects"))
            records = []
        lists.append(list(records))
    sizes = np.array([len(r) for r in lists], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    n = int(bounds[-1])
    all_records = [r for records in lists for r in records]
    owner = np.repeat(np.arange(k), sizes)
    local = np.arange(n, dtype=np.int64) - bounds[owner]
    # Rules run over all items at once with global rows; each problem is then
    # handed to its entry with the item's index in that entry's list.
    rows = np.arange(n, dtype=np.int64)
    found, missing, not_object = check_record_keys(
        all_records, specs, source=source, allow_id=allow_id
    )
    objs = [r if isinstance(r, Mapping) else {} for r in all_records]
    cells = {c.name: _object_array([r.get(c.name) for r in objs]) for c in specs}
    parsed, cell_problems = _check_table(
        table,
        cells,
        source=source,
        rows=rows,
        today=day,
        mode="json",
        skip={c.name: missing.get(c.name, False) | not_object for c in specs},
        row_rules=~not_object,
        row_word="item",
    )
    for p in found + cell_problems:
        g = int(p.row)  # type: ignore[arg-type]  # item-level rules always name a row
        problems_of[owner[g]].append(Problem(p.source, int(local[g]), p.column, p.message))
    date_col = parsed["date"]
    dates = date_col.values
    date_ok = date_col.ok
    ids = [r.get("id") if allow_id else None for r in objs]
    word = "a session" if table == "sessions" else "an assessment"
    # Entries with a repeated date: only those need the duplicate rule's messages.
    ok_idx = np.flatnonzero(date_ok)
    repeated = np.zeros(k, dtype=bool)
    if ok_idx.size > 1:
        keys = owner[ok_idx]
        day_keys = dates[ok_idx].view(np.int64)
        by = np.lexsort((day_keys, keys))
        same = (np.diff(keys[by]) == 0) & (np.diff(day_keys[by]) == 0)
        repeated[keys[by][1:][same]] = True
    # Sort every entry's rows by date (stable; rejected dates last, as canonicalize).
    sort_key = np.where(np.isnat(dates), np.iinfo(np.int64).max, dates.view(np.int64))
    order_all = np.lexsort((sort_key, owner))
    client_all = np.full(n, None, dtype=object)
    out: list[tuple[Any, list[Problem], np.ndarray]] = []
    for j, entry in enumerate(entries):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        problems = problems_of[j]
        client_ids, id_problems = check_client_ids(ids[lo:hi], source=source)
        client_all[lo:hi] = client_ids
        problems += id_problems
        if repeated[j]:
            problems += check_unique(
                [dates[lo:hi].view(np.int64)],
                date_ok[lo:hi],
                source=source,
                rows=local[lo:hi],
                column="date",
                what=f"{word} of this patient on this date",
                row_word="item",
            )
        problems += check_stored_duplicates(
            dates[lo:hi], client_ids, date_ok[lo:hi], entry.existing, source=source, what=word
        )
        if not entry.known_patient:
            problems.insert(
                0,
                Problem(
                    source, None, None, "unknown patient: create the patient before adding rows"
                ),
            )
        out.append((None, _sorted_json(problems), order_all[lo:hi] - lo))
    names = ["patient_id", *(c.name for c in specs), "client_id"]
    values = {c.name: parsed[c.name].values[order_all] for c in specs}
    values["client_id"] = client_all[order_all]
    if as_rows:
        # Plain Python values as DataFrame.to_dict("records") gives them.
        listed = {
            name: ([pd.Timestamp(x) for x in v] if v.dtype.kind == "M" else v.tolist())
            for name, v in values.items()
        }
    for j, entry in enumerate(entries):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        if as_rows:
            pid = entry.patient_id
            rows = [
                dict(zip(names, (pid, *cells), strict=True))
                for cells in zip(*(listed[n][lo:hi] for n in names[1:]), strict=True)
            ]
            out[j] = (rows, out[j][1], out[j][2])
        else:
            data: dict[str, Any] = {"patient_id": np.full(hi - lo, entry.patient_id, dtype=object)}
            data.update((name, v[lo:hi]) for name, v in values.items())
            out[j] = (pd.DataFrame(data), out[j][1], out[j][2])
    return out


def _object_array(values: list[Any]) -> np.ndarray:
    """A 1-d object array of ``values`` (lists and dicts stay cells, not dimensions)."""
    return np.fromiter(values, dtype=object, count=len(values))


def _sorted_json(problems: list[Problem]) -> list[Problem]:
    colpos = {c.name: i for t in TABLES.values() for i, c in enumerate(t)}
    return sorted(
        problems, key=lambda p: (-1 if p.row is None else p.row, colpos.get(p.column or "", 99))
    )


def validate_patient(
    record: Any, *, patient_id: str, covariates: Sequence[str] = (), as_record: bool = False
) -> tuple[Any, list[Problem]]:
    """Validate one patient's covariates posted as a JSON object (PUT /patients/{id}).

    Keys are the patients columns (``age``, ``sex``, ``diagnosis``,
    ``prior_treatments``, plus any declared ``covariates``); ``patient_id``
    may be given only if it equals the one of the URL. Unknown keys are
    rejected. Problems have ``row=None``.

    With ``as_record`` the row is returned as a dict of plain Python values
    (``frame.iloc[0].to_dict()`` without building the frame; for bulk loads).

    Returns
    -------
    frame : DataFrame or dict
        One canonical patients row (rejected cells blank).
    problems : list of Problem
    """
    source = "patient"
    specs = [c for c in TABLES["patients"] if c.name != "patient_id"]
    specs += [covariate_column(c) for c in covariates]
    problems: list[Problem] = []
    if not isinstance(record, Mapping):
        problems.append(
            Problem(source, None, None, f"must be a JSON object; got {_show(record, _JSON)}")
        )
        record = {}
    names = [c.name for c in specs]
    for key in record:
        if key == "patient_id":
            if record[key] != patient_id:
                problems.append(
                    Problem(
                        source,
                        None,
                        "patient_id",
                        f"got {_show(record[key], _JSON)}; allowed: the patient_id of the "
                        "request or no patient_id",
                    )
                )
        elif key not in names:
            problems.append(
                Problem(
                    source,
                    None,
                    str(key),
                    "unknown field; allowed fields: " + ", ".join(["patient_id", *names]),
                )
            )
    cells = {c.name: _object_array([record.get(c.name)]) for c in specs}
    parsed, cell_problems = _check_table(
        "patients",
        cells,
        source=source,
        rows=np.zeros(1, dtype=np.int64),
        today=date.today(),
        mode="json",
        covariates=tuple(covariates),
    )
    problems += [Problem(p.source, None, p.column, p.message) for p in cell_problems]
    parsed["patient_id"] = _Parsed(
        np.array([patient_id], dtype=object),
        np.zeros(1, bool),
        np.zeros(1, bool),
    )
    if as_record:
        names = [c.name for c in TABLES["patients"]] + list(covariates)
        return {n: parsed[n].values[:1].tolist()[0] for n in names}, problems
    return _frame_of("patients", parsed, tuple(covariates)), problems


# --- writing ------------------------------------------------------------------------
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
