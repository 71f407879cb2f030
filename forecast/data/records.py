"""Validation of JSON records posted to the service.

Records are lists of JSON objects per table (row numbers are 0-based item
indices); client row ``id`` values, stored duplicates and the keys of each
object are checked here, the cells and row rules by the same functions as files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from forecast.contract import TABLES, Column
from forecast.data.cells import _JSON, _allowed, _object_array, _Parsed, _show
from forecast.data.checks import check_unique, covariate_column
from forecast.data.problems import Problem
from forecast.data.tables import _check_table, _frame_of, _today

#: Longest client ``id`` accepted by the JSON API.
MAX_CLIENT_ID_LENGTH = 200


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
    """Client ``id`` values: optional, non-empty printable text of at most 200 characters, unique.

    Returns the ids (None where absent or invalid) and the problems.
    """
    out = np.full(len(ids), None, dtype=object)
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, v in enumerate(ids):
        if v is None:
            continue
        if (
            not isinstance(v, str)
            or not v.strip()
            or len(v) > MAX_CLIENT_ID_LENGTH
            or not v.isprintable()  # no NUL or other control character: every store keeps it
        ):
            problems.append(
                Problem(
                    source,
                    i,
                    "id",
                    f"got {_show(v, _JSON)}; allowed: non-empty printable text of at most "
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
    lists, problems_of = _record_lists(entries, source)
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
    ok_idx = np.flatnonzero(date_ok)
    repeated = _entries_with_repeated_dates(owner[ok_idx], dates[ok_idx], k)
    # Sort every entry's rows by date (stable; rejected dates last, as canonicalize).
    sort_key = np.where(np.isnat(dates), np.iinfo(np.int64).max, dates.view(np.int64))
    order_all = np.lexsort((sort_key, owner))
    client_all = np.full(n, None, dtype=object)
    checked: list[tuple[list[Problem], np.ndarray]] = []
    for j, entry in enumerate(entries):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        client_ids, problems = _entry_problems(
            entry, problems_of[j], ids[lo:hi], dates[lo:hi], date_ok[lo:hi], local[lo:hi],
            repeated=bool(repeated[j]), source=source, word=word,
        )
        client_all[lo:hi] = client_ids
        checked.append((_sorted_json(problems), order_all[lo:hi] - lo))
    values = {c.name: parsed[c.name].values[order_all] for c in specs}
    values["client_id"] = client_all[order_all]
    tables = _entry_tables(entries, bounds, values, as_rows=as_rows)
    return [(t, problems, order) for t, (problems, order) in zip(tables, checked, strict=True)]


def _record_lists(
    entries: Sequence[RecordsOf], source: str
) -> tuple[list[list[Any]], list[list[Problem]]]:
    """Each entry's items as a list (empty when not a list) and its problems so far."""
    problems_of: list[list[Problem]] = [[] for _ in range(len(entries))]
    lists: list[list[Any]] = []
    for j, entry in enumerate(entries):
        records = entry.records
        if not isinstance(records, list | tuple):
            problems_of[j].append(Problem(source, None, None, "must be a JSON list of objects"))
            records = []
        lists.append(list(records))
    return lists, problems_of


def _entries_with_repeated_dates(keys: np.ndarray, dates: np.ndarray, k: int) -> np.ndarray:
    """Per entry, whether two of its accepted items (``keys``: their entry) share a date."""
    # Entries with a repeated date: only those need the duplicate rule's messages.
    repeated = np.zeros(k, dtype=bool)
    if keys.size > 1:
        day_keys = dates.view(np.int64)
        by = np.lexsort((day_keys, keys))
        same = (np.diff(keys[by]) == 0) & (np.diff(day_keys[by]) == 0)
        repeated[keys[by][1:][same]] = True
    return repeated


def _entry_problems(
    entry: RecordsOf,
    problems: list[Problem],
    ids: list[Any],
    dates: np.ndarray,
    date_ok: np.ndarray,
    rows: np.ndarray,
    *,
    repeated: bool,
    source: str,
    word: str,
) -> tuple[Any, list[Problem]]:
    """One entry's client ids, and its problems with the id, duplicate and patient rules'."""
    client_ids, id_problems = check_client_ids(ids, source=source)
    problems += id_problems
    if repeated:
        problems += check_unique(
            [dates.view(np.int64)],
            date_ok,
            source=source,
            rows=rows,
            column="date",
            what=f"{word} of this patient on this date",
            row_word="item",
        )
    problems += check_stored_duplicates(
        dates, client_ids, date_ok, entry.existing, source=source, what=word
    )
    if not entry.known_patient:
        problems.insert(
            0,
            Problem(
                source, None, None, "unknown patient: create the patient before adding rows"
            ),
        )
    return client_ids, problems


def _entry_tables(
    entries: Sequence[RecordsOf],
    bounds: np.ndarray,
    values: dict[str, np.ndarray],
    *,
    as_rows: bool,
) -> list[Any]:
    """Each entry's sorted rows: a DataFrame, or with ``as_rows`` a list of plain dicts."""
    names = ["patient_id", *values]
    if as_rows:
        # Plain Python values as DataFrame.to_dict("records") gives them.
        listed = {
            name: ([pd.Timestamp(x) for x in v] if v.dtype.kind == "M" else v.tolist())
            for name, v in values.items()
        }
    tables: list[Any] = []
    for j, entry in enumerate(entries):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        if as_rows:
            pid = entry.patient_id
            tables.append([
                dict(zip(names, (pid, *cells), strict=True))
                for cells in zip(*(listed[n][lo:hi] for n in names[1:]), strict=True)
            ])
        else:
            data: dict[str, Any] = {"patient_id": np.full(hi - lo, entry.patient_id, dtype=object)}
            data.update((name, v[lo:hi]) for name, v in values.items())
            tables.append(pd.DataFrame(data))
    return tables


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
