"""Content already stored, re-sent in another shape: idempotent, or a conflict naming both.

One assessment row per patient and day may come as a QuestionnaireResponse
with its total, a total Observation alone, a panel with members, or item
Observations; each shape has other resource ids. A mapped row dated like a
stored row of another id is therefore compared by content
(:func:`compare_with_stored`): when every value it gives equals the stored
row's, it is the same answer re-sent (``same``: nothing to store); when any
differs, or it brings a value the stored row lacks, it is a conflict naming
both rows (``differs``), since a stored row is never changed by a re-send.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forecast.contract import TABLES


@dataclass(frozen=True)
class Resent:
    """A mapped record dated like a stored row of another id.

    Attributes
    ----------
    record_id : str
        The mapped record's client id.
    stored_id : str
        The stored row's client id (the resource it was imported with).
    date : str
    differences : tuple of str
        ``"phq9_total 9 here, 8 stored"`` per column that differs; empty when
        the record is the stored content again.
    """

    record_id: str
    stored_id: str
    date: str
    differences: tuple[str, ...]

    @property
    def same(self) -> bool:
        return not self.differences


def _shown(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "none"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _equal(a: Any, b: Any) -> bool:
    """Equal as stored values (numbers as numbers, booleans and texts as they are)."""
    missing_a = a is None or (isinstance(a, float) and np.isnan(a))
    missing_b = b is None or (isinstance(b, float) and np.isnan(b)) or b is pd.NA
    if missing_a or missing_b:
        return missing_a and missing_b
    if isinstance(a, bool) or isinstance(b, bool | np.bool_):
        return bool(a) == bool(b)
    if isinstance(a, int | float | np.number) and isinstance(b, int | float | np.number):
        return float(a) == float(b)
    return str(a) == str(b)


def compare_with_stored(
    table: str,
    records: Sequence[Mapping[str, Any]],
    stored: pd.DataFrame,
    *,
    skip_ids: Collection[str] = (),
    freed: Collection[str] = (),
) -> list[Resent]:
    """Mapped records dated like a stored row that carries another client id.

    Parameters
    ----------
    table : {"sessions", "assessments"}
    records : sequence of mapping
        Mapped records (``patient_id``, ``id``, ``date`` and contract columns).
    stored : DataFrame
        The patients' stored rows (``Store.history(..., with_ids=True)``).
    skip_ids : collection of str
        Record ids not compared: withdrawn ids (refused anyway) and ids
        stored already (the store answers those by id).
    freed : collection of str
        Client ids of stored rows withdrawn in the same request: their date
        is free.

    Returns
    -------
    list of Resent
        One per record that meets such a row, in record order.
    """
    if not len(stored):
        return []
    columns = [c.name for c in TABLES[table] if c.name not in ("patient_id", "date")]
    by_key: dict[tuple[str, str], Mapping[str, Any]] = {}
    for rec in stored.to_dict("records"):
        cid = rec.get("client_id")
        if cid is None or cid in freed:
            continue
        by_key[(str(rec["patient_id"]), pd.Timestamp(rec["date"]).strftime("%Y-%m-%d"))] = rec
    out = []
    for r in records:
        if r.get("id") in skip_ids:
            continue
        row = by_key.get((str(r["patient_id"]), str(r["date"])[:10]))
        if row is None or row["client_id"] == r.get("id"):
            continue
        diffs = tuple(
            f"{c} {_shown(r[c])} here, {_shown(row.get(c))} stored"
            for c in columns
            if r.get(c) is not None and not _equal(r[c], row.get(c))
        )
        out.append(Resent(str(r.get("id")), str(row["client_id"]), str(r["date"])[:10], diffs))
    return out
