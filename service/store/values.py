"""Value helpers shared by the store's parts: canonical row hashes, database values, times."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from forecast.contract import TABLES

T = TypeVar("T")


def utcnow() -> dt.datetime:
    """Timezone-aware current time (UTC)."""
    return dt.datetime.now(dt.UTC)


def _canonical_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        return pd.Timestamp(value).strftime("%Y-%m-%d")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        return None if math.isnan(f) else f
    if value is pd.NaT:
        return None
    return str(value)


def row_hash(table: str, row: dict[str, Any]) -> str:
    """sha256 of one canonical row's contract values (patient_id excluded).

    Numbers are compared as floats and booleans as 1.0/0.0, so ``3`` and
    ``3.0`` (or ``true`` and the stored boolean) hash alike.
    """
    payload = {
        c.name: _canonical_value(row.get(c.name)) for c in TABLES[table] if c.name != "patient_id"
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def db_value(kind: str, v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if kind == "date":
        if isinstance(v, np.datetime64):
            if np.isnat(v):
                return None
            return pd.Timestamp(v).date()
        return pd.Timestamp(v).date()
    if kind == "int":
        return int(v)
    if kind == "float":
        return float(v)
    if kind == "bool":
        return bool(v)
    return str(v)


def count_and_max(
    conn: Connection, t: sa.Table, key: sa.Column, patient_ids: Sequence[str], clinic: str
) -> dict[str, tuple[int, int]]:
    """``{patient_id: (row count, highest key)}`` of an insert-only keyed table (one clinic)."""
    out: dict[str, tuple[int, int]] = {}
    for chunk in chunks(sorted(set(patient_ids)), 900):
        rows = conn.execute(
            sa.select(t.c.patient_id, sa.func.count(), sa.func.max(key))
            .where(t.c.clinic == clinic, t.c.patient_id.in_(chunk))
            .group_by(t.c.patient_id)
        ).all()
        out.update({str(r[0]): (int(r[1]), int(r[2])) for r in rows})
    return out


def as_utc(value: dt.datetime) -> dt.datetime:
    """A stored time as UTC-aware (SQLite returns naive datetimes)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def iso_day(value: Any) -> str | None:
    """A date read through SQLAlchemy (``date`` or ISO text) as ``YYYY-MM-DD``."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]


def utc_times(row: dict[str, Any]) -> dict[str, Any]:
    """Mark stored times as UTC (SQLite returns them without a zone)."""
    for key, value in row.items():
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            row[key] = value.replace(tzinfo=dt.UTC)
    return row


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
