"""The audit trail: one row per access to patient data and per token or model change.

Rows are only inserted (group commit); the database refuses UPDATE and DELETE
of them (triggers of migration 0005). Actions are named in :data:`ACTIONS`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service import db
from service.store.base import StoreBase
from service.store.values import utc_times, utcnow


class _Batch:
    """Rows waiting for one commit, and how that commit ended."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Write rows of concurrent callers in shared transactions (group commit).

    The first caller to find no commit in progress becomes the leader: it
    takes every row queued so far and writes them with ``write(rows)`` (one
    transaction). Callers arriving meanwhile queue their rows for the next
    transaction and wait. Every caller returns only after the transaction
    holding its rows has committed, or raises that transaction's error, so an
    acknowledged row is as durable as with one transaction per caller; under
    load one fsync serves many requests.

    Parameters
    ----------
    write : callable
        Writes and commits a list of rows (raises on failure).
    """

    def __init__(self, write: Callable[[list[dict[str, Any]]], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._open = _Batch()
        self._busy = False

    def submit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue ``rows`` and return once they are committed (or raise the write's error)."""
        with self._cond:
            batch = self._open
            batch.rows.extend(rows)
            while not batch.done:
                if not self._busy:
                    # Lead: commit everything queued so far; later callers queue anew.
                    self._busy = True
                    self._open = _Batch()
                    break
                self._cond.wait()
            else:
                if batch.error is not None:
                    raise batch.error
                return
        try:
            self._write(batch.rows)
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            with self._cond:
                batch.done = True
                self._busy = False
                self._cond.notify_all()


#: The actions an audit row records (``audit.action``).
ACTIONS: tuple[str, ...] = (
    "forecast",  # a forecast served (JSON, FHIR RiskAssessment, CDS card, page)
    "patient.read",  # a patient's history read (JSON, FHIR search or read)
    "patient.write",  # covariates or rows stored (JSON API, forecast load)
    "patient.withdraw",  # a row withdrawn as entered in error
    "fhir.import",  # a FHIR Bundle imported (one row per patient it holds)
    "cds.call",  # a CDS Hooks patient-view call
    "page.view",  # a clinician page viewed
    "report.view",  # an aggregate report of the clinic
    "token.create",
    "token.revoke",
    "token.list",
    "audit.read",
    "model.reload",  # a model reloaded or activated
)
#: Outcomes: ``ok``; ``not_found`` (no such patient in the caller's clinic);
#: ``refused`` (invalid or conflicting request); ``error`` (the service failed).
OUTCOMES: tuple[str, ...] = ("ok", "not_found", "refused", "error")
#: Longest ``detail`` kept (longer text is cut).
DETAIL_LENGTH = 256
#: Most rows one page of :meth:`AuditLog.audit_page` returns.
MAX_PAGE = 1000


class AuditLog(StoreBase):
    """Append-only audit rows, committed before the answer they describe is returned."""

    _audit_group: GroupCommit

    def add_audit(self, rows: list[dict[str, Any]], conn: Connection | None = None) -> None:
        """Append audit rows; committed when this returns.

        A row without ``action`` is a forecast served (the original use:
        ``token_name``, ``patient_id``, ``as_of``, ``model_version``,
        ``inputs_hash``, ``status``, ``suggested_date``, ``request_id``,
        ``endpoint``); ``clinic`` defaults to this store's, ``outcome`` to ok.

        Without ``conn`` the rows go through the store's group commit: rows of
        requests served at the same time by this process are written in one
        transaction (one fsync instead of one each), and every caller returns
        only after the transaction holding its rows has committed, or raises
        its error. With ``conn`` they are inserted in that open transaction.
        """
        if not rows:
            return
        rows = [self._audit_defaults(r) for r in rows]
        if conn is None:
            self._audit_group.submit(rows)
            return
        now = utcnow()
        conn.execute(sa.insert(db.audit), [{"time": now, **r} for r in rows])

    def _audit_defaults(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {"action": "forecast", "outcome": "ok", **row}
        if out.get("clinic") is None:
            out["clinic"] = self.clinic_id()
        if out.get("detail") is not None:
            out["detail"] = str(out["detail"])[:DETAIL_LENGTH]
        return out

    def record_audit(
        self,
        actor: str,
        clinic: str | None,
        action: str,
        patient: str | None = None,
        outcome: str = "ok",
        detail: str | None = None,
        *,
        endpoint: str = "",
        request_id: str = "",
        conn: Connection | None = None,
    ) -> None:
        """Append one audit row (any action); committed when this returns.

        Parameters
        ----------
        actor : str
            Who: a token name, ``cds:<client>``, or ``cli:<command>``.
        clinic : str or None
            The clinic concerned (None: this store's).
        action : str
            One of :data:`ACTIONS`.
        patient : str, optional
            The patient id concerned (never clinical values).
        outcome : str
            One of :data:`OUTCOMES`.
        detail : str, optional
            Short text without clinical values (cut to 256 characters).
        endpoint, request_id : str
            The route and the request's id (empty outside a request).
        conn : Connection, optional
            Insert in this open write transaction instead of the group commit.
        """
        if action not in ACTIONS:
            raise ValueError(f"audit action {action!r}: allowed: {', '.join(ACTIONS)}")
        if outcome not in OUTCOMES:
            raise ValueError(f"audit outcome {outcome!r}: allowed: {', '.join(OUTCOMES)}")
        self.add_audit(
            [
                {
                    "clinic": clinic,
                    "token_name": str(actor)[: db.ID_LENGTH],
                    "action": action,
                    "patient_id": None if patient is None else str(patient)[: db.ID_LENGTH],
                    "outcome": outcome,
                    "detail": detail,
                    "request_id": request_id[:64],
                    "endpoint": endpoint[:64],
                }
            ],
            conn,
        )

    def _write_audit(self, rows: list[dict[str, Any]]) -> None:
        with self.write() as conn:
            self.add_audit(rows, conn)

    def audit_rows(
        self,
        patient_id: str | None = None,
        *,
        action: str | None = "forecast",
        outcome: str | None = "ok",
    ) -> list[dict[str, Any]]:
        """Audit rows of this store's clinic, oldest first.

        By default the forecasts served (optionally of one patient), as before
        other actions were audited; ``action=None, outcome=None`` gives every row.
        """
        t = db.audit
        query = sa.select(t).where(t.c.clinic == self.clinic_id()).order_by(t.c.audit_id)
        if patient_id is not None:
            query = query.where(t.c.patient_id == patient_id)
        if action is not None:
            query = query.where(t.c.action == action)
        if outcome is not None:
            query = query.where(t.c.outcome == outcome)
        with self.read() as conn:
            return [utc_times(dict(r._mapping)) for r in conn.execute(query).all()]

    def audit_page(
        self,
        *,
        patient_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of this clinic's audit rows, oldest first, with filters.

        Keyset pagination: rows with ``audit_id > after``; returns the rows and
        the ``after`` of the next page (None on the last page). ``since`` is
        inclusive, ``until`` exclusive.
        """
        limit = max(1, min(int(limit), MAX_PAGE))
        t = db.audit
        where = [t.c.clinic == self.clinic_id(), t.c.audit_id > after]
        for column, value in (
            (t.c.patient_id, patient_id),
            (t.c.action, action),
            (t.c.token_name, actor),
            (t.c.outcome, outcome),
        ):
            if value is not None:
                where.append(column == value)
        if since is not None:
            where.append(t.c.time >= since)
        if until is not None:
            where.append(t.c.time < until)
        query = sa.select(t).where(*where).order_by(t.c.audit_id).limit(limit + 1)
        with self.read() as conn:
            rows = [utc_times(dict(r._mapping)) for r in conn.execute(query).all()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1]["audit_id"] if more else None)

    def audit_export(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        clinic: str | None = None,
        batch: int = 5000,
    ) -> Iterator[dict[str, Any]]:
        """Every audit row (of every clinic, or of ``clinic``), oldest first, in batches.

        For the operator's ``forecast audit export``; ``since`` inclusive,
        ``until`` exclusive.
        """
        t = db.audit
        after = 0
        while True:
            where = [t.c.audit_id > after]
            if clinic is not None:
                where.append(t.c.clinic == clinic)
            if since is not None:
                where.append(t.c.time >= since)
            if until is not None:
                where.append(t.c.time < until)
            query = sa.select(t).where(*where).order_by(t.c.audit_id).limit(batch)
            with self.read() as conn:
                rows = [utc_times(dict(r._mapping)) for r in conn.execute(query).all()]
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1]["audit_id"]

    def forecast_audited(self, conn: Connection, inputs_hash: str) -> Any:
        """``(patient_id, as_of, model_version)`` of this clinic's latest forecast
        audited with ``inputs_hash`` (a FHIR RiskAssessment id), or None."""
        t = db.audit
        return conn.execute(
            sa.select(t.c.patient_id, t.c.as_of, t.c.model_version)
            .where(
                t.c.clinic == self.clinic_id(),
                t.c.action == "forecast",
                t.c.inputs_hash == inputs_hash,
            )
            .order_by(t.c.audit_id.desc())
            .limit(1)
        ).first()
