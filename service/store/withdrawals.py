"""Withdrawals (tombstones of rows entered in error) and the FHIR resources merged into rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from forecast.contract import PHQ9_ITEMS
from service import db
from service.store.base import StoreBase
from service.store.values import as_utc, chunks, count_and_max, iso_day, utcnow

#: service_state key written by migration 0003: when merged resources began to be
#: recorded (rows created before may merge resources without a record of which).
LEGACY_SOURCES_KEY = "row_sources_since"
#: Stands, in ``Store.locate``'s ``others``, for resources merged into a row before
#: merges were recorded; it is never in a request, so such a row is never deleted.
LEGACY_MERGE = "(resources merged before this version, not recorded)"


class Withdrawals(StoreBase):
    """Tombstones of withdrawn rows and the resources merged into stored rows."""

    def tombstones(
        self, conn: Connection, patient_ids: Sequence[str]
    ) -> tuple[dict[str, dict[str, set[str]]], dict[str, tuple[int, int]]]:
        """The patients' withdrawals in one query.

        Returns ``{table: {patient_id: client ids}}`` and the
        :meth:`retraction_fingerprint` of the same rows.
        """
        t = db.retractions
        ids: dict[str, dict[str, set[str]]] = {}
        seen: dict[str, list[int]] = {}
        for chunk in chunks(sorted(set(patient_ids)), 900):
            rows = conn.execute(
                sa.select(t.c.patient_id, t.c.table_name, t.c.client_id, t.c.retraction_id).where(
                    t.c.clinic == self.clinic_id(), t.c.patient_id.in_(chunk)
                )
            ).all()
            for pid, table, cid, key in rows:
                ids.setdefault(str(table), {}).setdefault(str(pid), set()).add(str(cid))
                seen.setdefault(str(pid), []).append(int(key))
        return ids, {pid: (len(keys), max(keys)) for pid, keys in seen.items()}

    def withdrawals(self, conn: Connection, patient_id: str) -> list[dict[str, Any]]:
        """The patient's tombstones, oldest first: table, id, the row's date, when and by whom."""
        t = db.retractions
        rows = conn.execute(
            sa.select(
                t.c.table_name, t.c.client_id, t.c.row_date, t.c.retracted_at, t.c.retracted_by
            )
            .where(t.c.clinic == self.clinic_id(), t.c.patient_id == patient_id)
            .order_by(t.c.retraction_id)
        ).all()
        return [
            {
                "table": r[0],
                "id": r[1],
                "date": iso_day(r[2]),
                "withdrawn_at": as_utc(r[3]).isoformat(timespec="seconds"),
                "by": r[4],
            }
            for r in rows
        ]

    def withdrawn_date(
        self, conn: Connection, table: str, patient_id: str, client_id: str
    ) -> str | None:
        """The date of the row a tombstone removed (None if it removed none)."""
        t = db.retractions
        return iso_day(
            conn.execute(
                sa.select(t.c.row_date).where(
                    t.c.clinic == self.clinic_id(),
                    t.c.patient_id == patient_id,
                    t.c.table_name == table,
                    t.c.client_id == client_id,
                )
            ).scalar_one_or_none()
        )

    def retraction_fingerprint(
        self, conn: Connection, patient_ids: Sequence[str]
    ) -> dict[str, tuple[int, int]]:
        """``{patient_id: (tombstone count, highest id)}``; tombstones are only inserted."""
        return count_and_max(
            conn, db.retractions, db.retractions.c.retraction_id, patient_ids, self.clinic_id()
        )

    def locate(
        self, conn: Connection, table: str, patient_id: str, source_id: str
    ) -> dict[str, Any] | None:
        """The stored row that holds the resource ``source_id``, or None.

        A row holds the resource it was imported with (its ``client_id``) and
        those merged into it (:data:`service.db.row_sources`). Returns
        ``client_id``, ``date``, ``content_hash`` and ``others``: the ids of
        the other resources the row holds.
        """
        t, src = db.HISTORY[table], db.row_sources
        clinic = self.clinic_id()
        owner = conn.execute(
            sa.select(src.c.client_id).where(
                src.c.clinic == clinic,
                src.c.patient_id == patient_id,
                src.c.table_name == table,
                src.c.source_id == source_id,
            )
        ).scalar()
        answers = (
            [t.c[c] for c in (*PHQ9_ITEMS, "phq9_total", "cssrs_ideation", "cssrs_behavior")]
            if table == "assessments"
            else []
        )
        row = conn.execute(
            sa.select(t.c.client_id, t.c.date, t.c.content_hash, t.c.created_at, *answers).where(
                t.c.clinic == clinic,
                t.c.patient_id == patient_id,
                t.c.client_id == (owner or source_id),
            )
        ).first()
        if row is None:
            return None
        merged = {
            str(m)
            for m in conn.execute(
                sa.select(src.c.source_id).where(
                    src.c.clinic == clinic,
                    src.c.patient_id == patient_id,
                    src.c.table_name == table,
                    src.c.client_id == row[0],
                )
            ).scalars()
        }
        others = ({str(row[0])} | merged) - {source_id}
        if not merged and answers and self._maybe_merged_before(conn, row[3], row[4:]):
            others.add(LEGACY_MERGE)
        return {
            "client_id": str(row[0]),
            "date": iso_day(row[1]),
            "content_hash": row[2],
            "others": sorted(others),
        }

    def _maybe_merged_before(
        self, conn: Connection, created: dt.datetime, answers: Sequence[Any]
    ) -> bool:
        """Whether a row may hold resources merged before they were recorded (migration 0003).

        Rows stored before then kept no list of the resources merged into them. The
        only merge whose loss would drop an answer is PHQ-9 values with C-SSRS ones
        (other merges repeat the same answers), so such a row counts as merged.
        ``answers``: the row's PHQ-9 items and total, then its two C-SSRS columns.
        """
        mark = conn.execute(
            sa.select(db.service_state.c.value).where(db.service_state.c.key == LEGACY_SOURCES_KEY)
        ).scalar_one_or_none()
        if mark is None or as_utc(created) >= dt.datetime.fromisoformat(mark):
            return False
        return any(v is not None for v in answers[:-2]) and any(v is not None for v in answers[-2:])

    def merged_sources(
        self, conn: Connection, table: str, patient_id: str, client_ids: Sequence[str]
    ) -> list[tuple[str, str]]:
        """``(row client id, merged resource id)`` of the patient's rows ``client_ids``."""
        src = db.row_sources
        out: list[tuple[str, str]] = []
        for chunk in chunks(sorted(set(client_ids)), 900):
            out += [
                (str(c), str(s))
                for c, s in conn.execute(
                    sa.select(src.c.client_id, src.c.source_id).where(
                        src.c.clinic == self.clinic_id(),
                        src.c.patient_id == patient_id,
                        src.c.table_name == table,
                        src.c.client_id.in_(chunk),
                    )
                ).all()
            ]
        return out

    def add_row_sources(
        self, conn: Connection, table: str, sources: Sequence[tuple[str, str, str]]
    ) -> None:
        """Record ``(patient_id, row client id, merged resource id)`` triples (in the write)."""
        if sources:
            conn.execute(
                sa.insert(db.row_sources),
                [
                    {
                        "clinic": self.clinic_id(),
                        "patient_id": p,
                        "table_name": table,
                        "client_id": c,
                        "source_id": s,
                    }
                    for p, c, s in sources
                ],
            )

    def retract(
        self,
        conn: Connection,
        table: str,
        patient_id: str,
        client_id: str,
        row: dict[str, Any] | None = None,
        by: str | None = None,
    ) -> None:
        """Withdraw the resource ``client_id`` in the open write transaction.

        Writes its tombstone (:data:`service.db.retractions`), which refuses a
        later import of the id, and deletes ``row`` (as :meth:`locate` returns
        it; None when no stored row holds the resource) with its merged-source
        records; ``by`` names who asked (a token name). Whether the row may go is
        the caller's decision
        (``service.ingest``: not while it holds other resources' values).
        """
        clinic = self.clinic_id()
        if row is not None:
            t, src = db.HISTORY[table], db.row_sources
            conn.execute(
                sa.delete(t).where(
                    t.c.clinic == clinic,
                    t.c.patient_id == patient_id,
                    t.c.client_id == row["client_id"],
                )
            )
            conn.execute(
                sa.delete(src).where(
                    src.c.clinic == clinic,
                    src.c.patient_id == patient_id,
                    src.c.table_name == table,
                    src.c.client_id == row["client_id"],
                )
            )
        conn.execute(
            sa.insert(db.retractions),
            {
                "clinic": clinic,
                "patient_id": patient_id,
                "table_name": table,
                "client_id": client_id,
                "row_date": None if row is None else dt.date.fromisoformat(row["date"]),
                "row_hash": None if row is None else row["content_hash"],
                "retracted_at": utcnow(),
                "retracted_by": by,
            },
        )
