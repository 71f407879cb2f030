"""The persistent store: SQLAlchemy 2 engine, migrations, and typed queries.

One :class:`Store` per app lives in ``app.extensions["kap_store"]``. Writes go
through :meth:`Store.write`, a transaction that

- on SQLite starts with ``BEGIN IMMEDIATE`` (the database write lock is taken
  before anything is read, so read-validate-insert cannot interleave with
  another writer) and runs in WAL mode with ``synchronous=FULL`` and foreign
  keys on;
- on PostgreSQL runs at READ COMMITTED and locks the patient rows it touches
  (``SELECT ... FOR UPDATE`` in key order, so two writers never deadlock).

A write is acknowledged to a client only after :meth:`Store.write` has
committed. Migrations run on start under a lock (PostgreSQL advisory lock,
SQLite ``BEGIN IMMEDIATE``) so two workers starting together are safe.

:class:`Store` is composed of one part per aggregate:

- :mod:`service.store.base`: engine, transactions, migrations, shared settings;
- :mod:`service.store.patients`: patients and their history rows;
- :mod:`service.store.withdrawals`: tombstones and resources merged into rows;
- :mod:`service.store.tokens`: bearer tokens and CDS Hooks JWT ids;
- :mod:`service.store.audit`: the audit trail (group commit).
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from service.db import DEFAULT_CLINIC
from service.store.audit import ACTIONS, OUTCOMES, AuditLog, AuditTicket, AuditWriter
from service.store.base import MIGRATIONS_DIR, StoreError, make_engine
from service.store.patients import PatientRows
from service.store.tokens import ROLES, Credentials, check_clinic, hash_token
from service.store.values import row_hash, utcnow
from service.store.withdrawals import LEGACY_MERGE, LEGACY_SOURCES_KEY, Withdrawals

__all__ = [
    "ACTIONS",
    "DEFAULT_CLINIC",
    "OUTCOMES",
    "LEGACY_MERGE",
    "LEGACY_SOURCES_KEY",
    "MIGRATIONS_DIR",
    "ROLES",
    "AuditTicket",
    "AuditWriter",
    "Store",
    "StoreError",
    "check_clinic",
    "hash_token",
    "make_engine",
    "row_hash",
    "utcnow",
]


class Store(PatientRows, Withdrawals, Credentials, AuditLog):
    """Typed access to the service database.

    Parameters
    ----------
    url : str or sqlalchemy.URL
        Database URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
    covariates : sequence of str
        Declared patient covariates kept besides the contract columns.
    clinic : str
        The clinic whose patients this store's queries see (``"default"``:
        a single-clinic deployment). :meth:`scoped` gives the same store seen
        by another clinic (the service scopes each request to its caller's).
    **engine_kwargs
        Passed to :func:`sqlalchemy.create_engine` (tests pass ``connect_args``).
    """

    def __init__(
        self,
        url: str | sa.URL,
        *,
        covariates: Sequence[str] = (),
        clinic: str = DEFAULT_CLINIC,
        **engine_kwargs: Any,
    ) -> None:
        self.engine = make_engine(url, **engine_kwargs)
        self.clinic = check_clinic(clinic)
        self.covariates = tuple(dict.fromkeys(covariates))
        self.dialect = self.engine.dialect.name
        # gunicorn --preload forks workers after create_app: a child must not reuse
        # the parent's pooled connections (SQLAlchemy's documented recipe).
        ref = weakref.ref(self)
        self._audit_writer = AuditWriter(self._write_audit)

        def _after_fork() -> None:
            store = ref()
            if store is not None:
                store.engine.dispose(close=False)
                # The parent's writer thread does not exist in the child: a fresh writer.
                store._audit_writer = AuditWriter(store._write_audit)

        os.register_at_fork(after_in_child=_after_fork)

    def dispose(self) -> None:
        """Commit the queued audit rows, stop the audit writer, close pooled connections."""
        self._audit_writer.close()
        super().dispose()

    def scoped(self, clinic: str | None) -> Store:
        """This store (same engine and audit writer) seen by ``clinic``.

        Every patient query of the copy is filtered by ``clinic``; with None
        the copy refuses patient queries (a request not authenticated).
        """
        view = copy.copy(self)
        view.clinic = None if clinic is None else check_clinic(clinic)
        return view
