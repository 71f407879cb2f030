"""Patients and their history rows (sessions, assessments) in the store."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from forecast.cohort import Cohort, empty_frame
from forecast.contract import TABLES
from service import db
from service.store.base import StoreBase
from service.store.values import chunks, count_and_max, db_value, row_hash, utcnow


class PatientRows(StoreBase):
    """Patients (covariates) and their history rows."""

    def lock_patients(self, conn: Connection, patient_ids: Iterable[str]) -> None:
        """Lock the patients' rows until commit (PostgreSQL; SQLite is already serialised)."""
        if self.dialect != "postgresql":
            return
        ids = sorted(set(patient_ids))
        if ids:
            conn.execute(
                sa.select(db.patients.c.patient_id)
                .where(db.patients.c.clinic == self.clinic_id(), db.patients.c.patient_id.in_(ids))
                .order_by(db.patients.c.patient_id)
                .with_for_update()
            ).all()

    def known_patients(self, conn: Connection, patient_ids: Iterable[str]) -> set[str]:
        """The subset of ``patient_ids`` stored in this store's clinic."""
        ids = list(set(patient_ids))
        clinic = self.clinic_id()
        found: set[str] = set()
        for chunk in chunks(ids, 900):
            found.update(
                conn.execute(
                    sa.select(db.patients.c.patient_id).where(
                        db.patients.c.clinic == clinic, db.patients.c.patient_id.in_(chunk)
                    )
                ).scalars()
            )
        return found

    def patient_ids(self, conn: Connection) -> list[str]:
        """Every patient id of this store's clinic, sorted."""
        t = db.patients
        return [
            str(p)
            for p in conn.execute(
                sa.select(t.c.patient_id).where(t.c.clinic == self.clinic_id()).order_by(
                    t.c.patient_id
                )
            ).scalars()
        ]

    def upsert_patient(self, conn: Connection, record: dict[str, Any]) -> str:
        """Insert or update one patient's covariates.

        Parameters
        ----------
        conn : Connection
            An open write transaction.
        record : dict
            ``patient_id`` plus canonical covariate values (contract columns and
            the declared :attr:`covariates`; a declared one left out is blank).

        Returns
        -------
        str
            ``"created"``, ``"updated"`` or ``"unchanged"``.
        """
        pid = str(record["patient_id"])
        clinic = self.clinic_id()
        values = {
            c.name: db_value(c.kind, record.get(c.name))
            for c in TABLES["patients"]
            if c.name != "patient_id"
        }
        now = utcnow()
        found = conn.execute(
            sa.select(db.patients.c.content_hash, db.patients.c.covariates).where(
                db.patients.c.clinic == clinic, db.patients.c.patient_id == pid
            )
        ).first()
        current = None if found is None else found[0]
        # Declared covariates replace their stored values (blank when not given, as the
        # contract columns); values of names not declared now are kept, never dropped.
        extra = {
            k: v
            for k, v in (json.loads(found[1]) if found is not None and found[1] else {}).items()
            if k not in self.covariates
        }
        extra.update(
            {
                c: float(record[c])
                for c in self.covariates
                if record.get(c) is not None and not pd.isna(record[c])
            }
        )
        values["covariates"] = json.dumps(extra, sort_keys=True) if extra else None
        digest = row_hash("patients", record)
        if extra:  # without covariate values the digest is the contract row's alone
            digest = hashlib.sha256(f"{digest}|{values['covariates']}".encode()).hexdigest()
        if current is None:
            conn.execute(
                sa.insert(db.patients).values(
                    clinic=clinic,
                    patient_id=pid,
                    **values,
                    content_hash=digest,
                    created_at=now,
                    updated_at=now,
                )
            )
            return "created"
        if current == digest:
            return "unchanged"
        conn.execute(
            sa.update(db.patients)
            .where(db.patients.c.clinic == clinic, db.patients.c.patient_id == pid)
            .values(**values, content_hash=digest, updated_at=now)
        )
        return "updated"

    def history(
        self, conn: Connection, table: str, patient_ids: Sequence[str], *, with_ids: bool = False
    ) -> pd.DataFrame:
        """Stored rows of ``table`` for the patients, as a canonical frame.

        With ``with_ids`` the frame also has ``client_id`` and ``content_hash``
        columns (aligned with the canonical sort order).
        """
        t = db.patients if table == "patients" else db.HISTORY[table]
        names = [c.name for c in TABLES[table]]
        declared = self.covariates if table == "patients" else ()
        if table == "patients":
            extra = ["covariates"] if declared else []  # one JSON column, expanded below
        else:
            extra = ["client_id", "content_hash"] if with_ids else []
        rows: list[Any] = []
        columns = _raw_columns(t.name, (*names, *extra))
        clinic = self.clinic_id()
        for chunk in chunks(sorted(set(patient_ids)), 900):
            rows.extend(
                conn.execute(
                    sa.select(*columns).where(t.c.clinic == clinic, t.c.patient_id.in_(chunk))
                ).all()
            )
        if not rows:
            frame = empty_frame(table)
            for name in declared or extra:
                frame[name] = pd.Series([], dtype=np.float64 if declared else object)
            return frame
        frame, order = _canonical_rows(table, rows)
        if declared:
            # Declared covariates: one float column each (NaN where not given).
            objs = [json.loads(r[len(names)]) if r[len(names)] else {} for r in rows]
            for name in declared:
                values = np.array([o.get(name, np.nan) for o in objs], dtype=np.float64)
                frame[name] = values[order]
            return frame
        for k, name in enumerate(extra, start=len(names)):
            # The same sort order as the contract columns.
            values = np.empty(len(rows), dtype=object)
            values[:] = [r[k] for r in rows]
            frame[name] = values[order]
        return frame

    def history_fingerprint(
        self, conn: Connection, table: str, patient_ids: Sequence[str]
    ) -> dict[str, tuple[int, int]]:
        """``{patient_id: (row count, highest row id)}`` of a history table.

        Rows are inserted, and deleted only by a withdrawal, which also inserts a
        tombstone (:meth:`retraction_fingerprint`): with both fingerprints
        unchanged the patients' stored rows are exactly those seen before.
        """
        t = db.HISTORY[table]
        return count_and_max(conn, t, t.c.row_id, patient_ids, self.clinic_id())

    def cohort(self, patient_ids: Sequence[str], conn: Connection | None = None) -> Cohort:
        """The stored history of the patients as one canonical :class:`Cohort`."""
        if conn is None:
            with self.read() as c:
                return self.cohort(patient_ids, c)
        return Cohort(
            self.history(conn, "patients", patient_ids),
            self.history(conn, "sessions", patient_ids),
            self.history(conn, "assessments", patient_ids),
            self.covariates,
        )

    def insert_history(self, conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert already validated rows (``patient_id``, ``client_id``, contract values)."""
        if not rows:
            return
        now = utcnow()
        t = db.HISTORY[table]
        clinic = self.clinic_id()
        payload = []
        for row in rows:
            item = {c.name: db_value(c.kind, row.get(c.name)) for c in TABLES[table]}
            item["clinic"] = clinic
            item["client_id"] = row.get("client_id")
            item["content_hash"] = row["content_hash"]
            item["created_at"] = now
            payload.append(item)
        conn.execute(sa.insert(t), payload)


@functools.lru_cache(maxsize=64)
def _raw_columns(table: str, names: tuple[str, ...]) -> tuple[Any, ...]:
    """:func:`_raw_column` of each named column of a store table (built once, not per read)."""
    t = db.metadata.tables[table]
    return tuple(_raw_column(t.c[n]) for n in names)


def _raw_column(column: sa.Column) -> Any:
    """Select ``column`` without SQLAlchemy's per-row result conversion where numpy does it.

    Dates come back as the driver gives them (``YYYY-MM-DD`` text on SQLite,
    ``date`` objects on PostgreSQL) and booleans as 0/1 or bool: both are read
    by one numpy call in :func:`_canonical_rows` instead of one Python call
    per cell (most of the time of loading a thousand patients).
    """
    if isinstance(column.type, sa.Date):
        return sa.type_coerce(column, sa.String).label(column.name)
    if isinstance(column.type, sa.Boolean):
        return sa.type_coerce(column, sa.Integer).label(column.name)
    return column


def _canonical_rows(table: str, rows: Sequence[Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """Stored rows (typed by the driver) as a canonical frame, sorted by patient and date.

    Equals :func:`forecast.cohort.canonicalize` of the same rows (a test checks
    it) but builds each column with one numpy call: the store's values are
    already valid and typed (``datetime.date``, numbers, booleans, text or
    None), so the generic coercions of ``canonicalize`` (a few milliseconds
    per frame) are not needed on the serving path. ``rows`` start with the
    table's contract columns in contract order (more may follow); the applied
    row order is returned for the caller's extra columns.
    """
    n = len(rows)
    columns = list(zip(*rows, strict=True)) if n else [() for _ in TABLES[table]]
    data: dict[str, np.ndarray] = {}
    for c, values in zip(TABLES[table], columns, strict=False):
        if c.kind == "date":
            # datetime.date objects or "YYYY-MM-DD" text (see _raw_column).
            days = np.array(["NaT" if v is None else v for v in values], dtype="datetime64[D]")
            data[c.name] = days.astype("datetime64[ns]")
        elif c.kind in ("int", "float", "bool"):
            data[c.name] = np.array(
                [np.nan if v is None else float(v) for v in values], dtype=np.float64
            )
        else:
            col = np.empty(n, dtype=object)
            col[:] = [v if v is None else str(v) for v in values]
            data[c.name] = col
    pid = data["patient_id"]
    if n > 1:
        codes, _ = pd.factorize(pid, sort=True)
        if "date" in data:
            order = np.lexsort((data["date"].view(np.int64), codes))
        else:
            order = np.argsort(codes, kind="stable")
    else:
        order = np.arange(n)
    # The arrays are fresh: no copy (and no block consolidation) needed.
    frame = pd.DataFrame({name: values[order] for name, values in data.items()}, copy=False)
    return frame, order
