"""Parsing and typing of cells: text, Parquet values and JSON values to contract values.

Cells are parsed column by column and vectorised (distinct values are parsed
once). A :class:`_Parsed` holds a column's values, which cells are blank, which
are bad and the note that says why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from forecast.contract import FALSE_STRINGS, TRUE_STRINGS, Column

#: Earliest year accepted in a date (older dates are typing errors, and
#: pandas' nanosecond timestamps cannot hold years before 1677).
MIN_YEAR = 1900


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


# Plain decimal notation with an optional exponent; rejects "nan", "inf",
# "1_000", "0x10" that Python's float() would take.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


_SHOW_MAX = 60


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


def _object_array(values: list[Any]) -> np.ndarray:
    """A 1-d object array of ``values`` (lists and dicts stay cells, not dimensions)."""
    return np.fromiter(values, dtype=object, count=len(values))
