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

#: Longest wait for the audit writer to commit a caller's rows (then the caller fails).
COMMIT_TIMEOUT_S = 60.0


class AuditTicket:
    """The promise of one caller's audit rows: :meth:`wait` returns once they are committed."""

    __slots__ = ("_done", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None) -> None:
        """Record how the transaction holding the rows ended, and wake the waiter."""
        self.error = error
        self._done.set()

    def wait(self, timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Return once the rows are committed; raise the write's error (or a timeout)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"audit rows not committed within {timeout:g} s")
        if self.error is not None:
            raise self.error


class AuditWriter:
    """Commit audit rows in batches from a background thread (group commit).

    :meth:`submit` queues a caller's rows and returns at once with a ticket;
    the writer thread takes every row queued so far and writes them with
    ``write(rows)`` (one transaction: one fsync for many requests), then
    settles their tickets. A caller acknowledges its work (sends its answer)
    only after ``ticket.wait()`` returned, so an acknowledged row is as
    durable as with one transaction per caller; a crash can only lose rows
    whose requests were never answered. When a shared transaction fails,
    each caller's rows are retried alone, so one bad row fails only its own
    request.

    The thread starts with the first submission in each process (a forked
    gunicorn worker starts its own) and stops with :meth:`close` after
    committing what is queued.

    Parameters
    ----------
    write : callable
        Writes and commits a list of rows (raises on failure).
    """

    def __init__(self, write: Callable[[list[dict[str, Any]]], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._pending: list[tuple[list[dict[str, Any]], AuditTicket]] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, rows: Sequence[dict[str, Any]]) -> AuditTicket:
        """Queue ``rows`` for the next transaction; the ticket tells when they are committed."""
        ticket = AuditTicket()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="kap-audit-writer", daemon=True
                )
                self._thread.start()
            self._pending.append((list(rows), ticket))
            self._cond.notify()
        return ticket

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread (a later submission starts a new one)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._closed = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._thread = None
                    return
                batch, self._pending = self._pending, []
            self._commit(batch)

    def _commit(self, batch: list[tuple[list[dict[str, Any]], AuditTicket]]) -> None:
        try:
            self._write([row for rows, _ in batch for row in rows])
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting callers
            if len(batch) == 1:
                batch[0][1].settle(exc)
                return
            for rows, ticket in batch:  # alone, so only the bad rows' caller fails
                self._commit([(rows, ticket)])
            return
        for _, ticket in batch:
            ticket.settle(None)


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

    _audit_writer: AuditWriter

    def submit_audit(self, rows: list[dict[str, Any]]) -> AuditTicket:
        """Queue audit rows for the background writer; wait on the ticket before answering.

        The rows take the defaults of :meth:`add_audit`. The caller must not
        acknowledge what the rows describe (send the forecast) before
        ``ticket.wait()`` returned without error.
        """
        return self._audit_writer.submit([self._audit_defaults(r) for r in rows])

    def add_audit(self, rows: list[dict[str, Any]], conn: Connection | None = None) -> None:
        """Append audit rows; committed when this returns.

        A row without ``action`` is a forecast served (the original use:
        ``token_name``, ``patient_id``, ``as_of``, ``model_version``,
        ``inputs_hash``, ``status``, ``suggested_date``, ``request_id``,
        ``endpoint``); ``clinic`` defaults to this store's, ``outcome`` to ok.

        Without ``conn`` the rows go through the store's audit writer
        (:class:`AuditWriter`): rows of requests served at the same time by
        this process are written in one transaction (one fsync instead of one
        each), and this returns only after the transaction holding its rows
        has committed, or raises its error. With ``conn`` they are inserted
        in that open transaction.
        """
        if not rows:
            return
        if conn is None:
            self.submit_audit(rows).wait()
            return
        rows = [self._audit_defaults(r) for r in rows]
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
