"""The audit trail (one row per forecast served), written by group commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
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


class AuditLog(StoreBase):
    """Append-only audit rows, committed before a forecast is answered."""

    _audit_group: GroupCommit

    def add_audit(self, rows: list[dict[str, Any]], conn: Connection | None = None) -> None:
        """Append audit rows (one per forecast served); committed when this returns.

        Without ``conn`` the rows go through the store's group commit: rows of
        requests served at the same time by this process are written in one
        transaction (one fsync instead of one each), and every caller returns
        only after the transaction holding its rows has committed, or raises
        its error. With ``conn`` they are inserted in that open transaction.
        """
        if not rows:
            return
        if conn is None:
            self._audit_group.submit(rows)
            return
        now = utcnow()
        conn.execute(sa.insert(db.audit), [{"time": now, **r} for r in rows])

    def _write_audit(self, rows: list[dict[str, Any]]) -> None:
        with self.write() as conn:
            self.add_audit(rows, conn)

    def audit_rows(self, patient_id: str | None = None) -> list[dict[str, Any]]:
        """Audit rows, oldest first (optionally of one patient)."""
        t = db.audit
        query = sa.select(t).order_by(t.c.audit_id)
        if patient_id is not None:
            query = query.where(t.c.patient_id == patient_id)
        with self.read() as conn:
            return [utc_times(dict(r._mapping)) for r in conn.execute(query).all()]
