"""The ``check_*`` rules of the data contract, one function per rule.

Each rule reads its bounds and allowed values from :mod:`forecast.contract` and
returns :class:`~forecast.data.problems.Problem` objects; the files, the JSON
API and the FHIR importer all call these same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd

from forecast.contract import TABLES, Column
from forecast.data.cells import (
    _CSV,
    _JSON,
    _PARQUET,
    _allowed,
    _check_values,
    _parse_series,
    _Parsed,
    _show,
)
from forecast.data.problems import Problem
from forecast.instruments import MAX_MISSING_ITEMS, phq9_from_items

CSSRS_COLUMNS: tuple[str, ...] = ("cssrs_ideation", "cssrs_behavior")


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
                "rounded half up); phq9_total must equal the prorated total",
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
