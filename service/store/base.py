"""The store's engine, transactions, migrations and shared settings (``service_state``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from service import db
from service.store.values import utcnow

#: Arbitrary constant key of the PostgreSQL advisory lock guarding migrations.
_MIGRATION_LOCK_KEY = 0x6B6170  # "kap"
MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot do what was asked (unknown token name, duplicate name, ...)."""


def _is_sqlite(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite"


def make_engine(url: str | sa.URL, **kwargs: Any) -> Engine:
    """Create the engine with the durability settings of the store.

    SQLite: WAL journal, ``synchronous=FULL`` (a commit survives power loss),
    foreign keys on, a 30 s busy timeout, and transactions started by us so
    that writes can use ``BEGIN IMMEDIATE``. PostgreSQL: pre-ping pooled
    connections (a restarted server does not fail the first request).
    """
    url = sa.make_url(url)
    if _is_sqlite(url):
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30, "check_same_thread": False}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN (pysqlite's own is deferred-only).
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("kap_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.get_backend_name() == "postgresql":
        # Fail a request (503) in seconds, not after the OS's TCP timeout.
        connect_args = {"connect_timeout": 10, **kwargs.pop("connect_args", {})}
        kwargs["connect_args"] = connect_args
    return sa.create_engine(url, **kwargs)


def _retryable(exc: BaseException) -> bool:
    """Whether a failed write transaction may succeed when run again."""
    if isinstance(exc, sa.exc.IntegrityError):
        return True  # a concurrent writer inserted the same key first; re-read and decide
    if isinstance(exc, sa.exc.OperationalError):
        text = str(exc.orig).lower() if exc.orig is not None else ""
        return any(
            word in text
            for word in ("locked", "busy", "deadlock", "could not serialize", "serialization")
        )
    return False


class StoreBase:
    """The engine and transactions every part of :class:`service.store.Store` uses."""

    engine: Engine
    dialect: str
    #: Declared patient covariates (``FORECAST_COVARIATES``): stored with each
    #: patient, returned as numeric columns of the patients frame and the cohort.
    covariates: tuple[str, ...]
    #: The clinic every patient query of this store sees (tenancy); None: none
    #: (a request not yet authenticated), and a patient query raises.
    clinic: str | None

    def clinic_id(self) -> str:
        """The clinic of this store's patient queries (raises when it has none)."""
        if self.clinic is None:
            raise StoreError("no clinic: patient data are read only for an authenticated caller")
        return self.clinic

    def migrate(self, target: str = "head") -> str | None:
        """Apply the packaged Alembic migrations up to ``target`` (head; under a lock).

        Returns
        -------
        str or None
            The schema revision after the upgrade.
        """
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))

        def upgrade(conn: Connection) -> str | None:
            if self.dialect == "postgresql":
                # Held until commit: a second worker waits, then finds head applied.
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
            return MigrationContext.configure(conn).get_current_revision()

        # Workers starting together on a fresh SQLite file can meet "database is
        # locked" while another converts it to WAL; the upgrade is transactional
        # and idempotent, so it is simply run again.
        return self.run_write(upgrade)

    def dispose(self) -> None:
        """Close pooled connections (call when the app or test is done)."""
        self.engine.dispose()

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (snapshot on SQLite WAL, READ COMMITTED on PostgreSQL)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; committed on normal exit, rolled back on error."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.execution_options(kap_write=True)
            with conn.begin():
                yield conn

    def run_write(
        self, work: Callable[[Connection], T], *, attempts: int = 6, base_delay: float = 0.02
    ) -> T:
        """Run ``work(conn)`` in a write transaction, retrying on write conflicts.

        ``work`` must be safe to repeat: it re-reads what it depends on inside
        the transaction. Retries cover a concurrent insert of the same unique
        key, a busy SQLite file and PostgreSQL deadlock/serialization errors.
        """
        for attempt in range(attempts):
            try:
                with self.write() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                if attempt == attempts - 1 or not _retryable(exc):
                    raise
                # Jittered backoff so two retrying writers do not collide again.
                time.sleep(base_delay * (2**attempt) * (0.5 + secrets.randbelow(1000) / 1000))
        raise AssertionError("unreachable")  # pragma: no cover

    def count(self, table: str, patient_id: str | None = None) -> int:
        """Number of rows of a table in this store's clinic (optionally of one patient)."""
        t = db.metadata.tables[table]
        query = sa.select(sa.func.count()).select_from(t)
        if "clinic" in t.c:
            query = query.where(t.c.clinic == self.clinic_id())
        if patient_id is not None:
            query = query.where(t.c.patient_id == patient_id)
        with self.read() as conn:
            return int(conn.execute(query).scalar_one())

    # ------------------------------------------------------------------ shared state
    def get_state(self, key: str) -> str | None:
        """A shared setting (e.g. ``live_model_version``), or None."""
        t = db.service_state
        with self.read() as conn:
            return conn.execute(sa.select(t.c.value).where(t.c.key == key)).scalar_one_or_none()

    def set_state(self, key: str, value: str) -> None:
        """Set a shared setting (insert or update, atomically)."""
        t = db.service_state

        def work(conn: Connection) -> None:
            now = utcnow()
            done = conn.execute(
                sa.update(t).where(t.c.key == key).values(value=value, updated_at=now)
            )
            if done.rowcount == 0:
                conn.execute(sa.insert(t).values(key=key, value=value, updated_at=now))

        self.run_write(work)
