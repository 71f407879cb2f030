"""A store at clinic scale for the benchmark: bulk-seeded, not ingested through the API.

``make bench``'s ``store`` section (bench/run.py) measures stored forecasts against a
store holding 100,000 patients and 3 million assessments (and a million audit rows),
on SQLite and on PostgreSQL. Ingesting that through the API would take an hour; the
rows are written here directly with the database driver (``executemany`` on SQLite,
``COPY`` on PostgreSQL) into a store migrated by :meth:`service.store.Store.migrate`,
so the tables, constraints and indexes are exactly the service's.

The histories are the simulator's (``forecast.simulation.simulate``, ids prefixed
``bulk-``); each patient also gets weekly pre-treatment PHQ-9 totals before its
first record, so that the assessment table reaches the requested size. Rows carry
no client id and a placeholder content hash (no retry ever compares them).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from forecast.contract import TABLES

#: Seeded patient ids start with this (the benchmark's own patients never do).
PREFIX = "bulk-"
_HASH = "0" * 64


def _pad_assessments(assessments: pd.DataFrame, target: int, seed: int) -> pd.DataFrame:
    """Weekly pre-treatment PHQ-9 totals before each patient's first row, up to ``target`` rows."""
    first = assessments.groupby("patient_id", sort=False)["date"].min()
    extra = max(0, target - len(assessments))
    if extra == 0 or first.empty:
        return assessments
    per, rest = divmod(extra, len(first))
    counts = np.full(len(first), per)
    counts[:rest] += 1
    pid = np.repeat(first.index.to_numpy(dtype=object), counts)
    starts = np.repeat(first.to_numpy(dtype="datetime64[D]"), counts)
    # j-th padding row of a patient: 60 + 7 j days before its first record.
    j = np.arange(len(pid)) - np.repeat(np.cumsum(counts) - counts, counts)
    dates = starts - (60 + 7 * j).astype("timedelta64[D]")
    rng = np.random.default_rng(seed)
    pad = pd.DataFrame(
        {"patient_id": pid, "date": dates.astype("datetime64[ns]"),
         "phq9_total": rng.integers(10, 26, len(pid)).astype(float)}
    )
    return pd.concat([assessments, pad], ignore_index=True)


def bulk_cohort(patients: int, assessments: int, seed: int = 7) -> dict[str, pd.DataFrame]:
    """Contract frames of ``patients`` simulated patients with ``assessments`` assessment rows."""
    from forecast.simulation import simulate

    cohort = simulate(patients, seed).cohort
    frames = {
        "patients": cohort.patients.copy(),
        "sessions": cohort.sessions.copy(),
        "assessments": _pad_assessments(cohort.assessments, assessments, seed),
    }
    for frame in frames.values():
        frame["patient_id"] = PREFIX + frame["patient_id"].astype(str)
    return frames


def _columns(table: str, frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    """Column names and per-column Python values (None for blanks, text dates) of a table."""
    names, cols = [], []
    for c in TABLES[table]:
        values = frame[c.name] if c.name in frame else pd.Series([None] * len(frame))
        if c.kind == "date":
            col = pd.to_datetime(values).dt.strftime("%Y-%m-%d").tolist()
        elif c.kind == "bool":
            col = [None if pd.isna(v) else bool(v) for v in values.tolist()]
        elif c.kind in ("int", "float"):
            arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            col = [None if v != v else (int(v) if c.kind == "int" else v) for v in arr.tolist()]
        else:
            col = [None if pd.isna(v) else str(v) for v in values.tolist()]
        names.append(c.name)
        cols.append(col)
    return names, cols


def _rows(table: str, frame: pd.DataFrame, clinic: str, now: str) -> tuple[list[str], list[tuple]]:
    names, cols = _columns(table, frame)
    n = len(frame)
    names = ["clinic", *names, "content_hash", "created_at"]
    cols = [[clinic] * n, *cols, [_HASH] * n, [now] * n]
    if table == "patients":
        names.append("updated_at")
        cols.append([now] * n)
    return names, list(zip(*cols, strict=True))


def _audit_rows(n: int, clinic: str, seed: int) -> tuple[list[str], list[tuple]]:
    """``n`` forecast audit rows with random inputs hashes (history of a busy clinic)."""
    rng = np.random.default_rng(seed)
    hashes = rng.bytes(32 * n)
    day = dt.date(2026, 1, 1)
    names = ["time", "clinic", "token_name", "action", "patient_id", "outcome", "as_of",
             "model_version", "inputs_hash", "status", "request_id", "endpoint"]
    rows = [
        ("2026-01-01 00:00:00.000000", clinic, "bulk", "forecast", f"{PREFIX}S{i % 100000:06d}",
         "ok", day.isoformat(), "bulk", hashes[32 * i: 32 * i + 32].hex(), "routine",
         f"bulk{i}", "bulk")
        for i in range(n)
    ]
    return names, rows


def _sqlite_insert(engine: sa.Engine, table: str, names: list[str], rows: list[tuple]) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        marks = ", ".join("?" for _ in names)
        cur.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows)
        cur.execute("COMMIT")
    finally:
        raw.close()


def _pg_text(v: Any) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _pg_copy(engine: sa.Engine, table: str, names: list[str], rows: list[tuple]) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        buf = io.StringIO()
        for r in rows:
            buf.write("\t".join(_pg_text(v) for v in r))
            buf.write("\n")
        with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
            copy.write(buf.getvalue())
        raw.commit()
    finally:
        raw.close()


def seed_store(
    store: Any, patients: int, assessments: int, audit_rows: int, seed: int = 7
) -> dict[str, Any]:
    """Write a bulk cohort (and audit rows) into a migrated, empty ``service.store.Store``.

    Returns the row counts written and the seconds taken (simulation and writing).
    """
    t0 = time.perf_counter()
    frames = bulk_cohort(patients, assessments, seed)
    t1 = time.perf_counter()
    insert = _pg_copy if store.dialect == "postgresql" else _sqlite_insert
    now = "2026-01-01 00:00:00.000000"
    counts = {}
    for table in ("patients", "sessions", "assessments"):
        names, rows = _rows(table, frames[table], store.clinic_id(), now)
        insert(store.engine, table, names, rows)
        counts[table] = len(rows)
    names, rows = _audit_rows(audit_rows, store.clinic_id(), seed)
    insert(store.engine, "audit", names, rows)
    counts["audit"] = len(rows)
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    else:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return {
        "rows": counts,
        "simulate_s": round(t1 - t0, 1),
        "write_s": round(time.perf_counter() - t1, 1),
        "patient_ids": frames["patients"]["patient_id"].tolist(),
    }


def cds_tokens(n: int, secret: str, issuer: str, audience: str) -> list[str]:
    """``n`` single-use CDS Hooks JWTs (HS256, distinct jti; the service accepts at most 5
    minutes of validity, so make them just before the run)."""
    import jwt

    now = int(time.time())
    return [
        jwt.encode(
            {"iss": issuer, "sub": "bench-ehr", "aud": audience, "iat": now,
             "exp": now + 280, "jti": f"bench-{i}"},
            secret,
            algorithm="HS256",
        )
        for i in range(n)
    ]
