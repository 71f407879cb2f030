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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from forecast.cohort import Cohort, empty_frame
from forecast.contract import PHQ9_ITEMS, TABLES
from service import db

log = logging.getLogger("service.store")

ROLES: tuple[str, ...] = ("clinician", "researcher", "admin")
#: Arbitrary constant key of the PostgreSQL advisory lock guarding migrations.
_MIGRATION_LOCK_KEY = 0x6B6170  # "kap"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot do what was asked (unknown token name, duplicate name, ...)."""


def utcnow() -> dt.datetime:
    """Timezone-aware current time (UTC)."""
    return dt.datetime.now(dt.UTC)


def hash_token(token: str) -> str:
    """sha256 hex digest of a bearer token (the only form ever stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- hashing
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


def frame_records(table: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a canonical frame as plain Python values keyed by contract column."""
    cols = [c for c in TABLES[table] if c.name in frame.columns]
    out: list[dict[str, Any]] = [{} for _ in range(len(frame))]
    for c in cols:
        values = frame[c.name].to_numpy()
        for i, v in enumerate(values):
            out[i][c.name] = _db_value(c.kind, v)
    return out


def _db_value(kind: str, v: Any) -> Any:
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


# --------------------------------------------------------------------------- engine
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


class Store:
    """Typed access to the service database.

    Parameters
    ----------
    url : str or sqlalchemy.URL
        Database URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
    covariates : sequence of str
        Declared patient covariates kept besides the contract columns.
    **engine_kwargs
        Passed to :func:`sqlalchemy.create_engine` (tests pass ``connect_args``).
    """

    def __init__(
        self, url: str | sa.URL, *, covariates: Sequence[str] = (), **engine_kwargs: Any
    ) -> None:
        self.engine = make_engine(url, **engine_kwargs)
        #: Declared patient covariates (``FORECAST_COVARIATES``): stored with each
        #: patient, returned as numeric columns of the patients frame and the cohort.
        self.covariates = tuple(dict.fromkeys(covariates))
        self.dialect = self.engine.dialect.name
        # gunicorn --preload forks workers after create_app: a child must not reuse
        # the parent's pooled connections (SQLAlchemy's documented recipe).
        ref = weakref.ref(self)
        self._audit_group = GroupCommit(self._write_audit)

        def _after_fork() -> None:
            store = ref()
            if store is not None:
                store.engine.dispose(close=False)
                store._audit_group = GroupCommit(store._write_audit)

        os.register_at_fork(after_in_child=_after_fork)

    # ------------------------------------------------------------------ lifecycle
    def migrate(self, target: str = "head") -> str | None:
        """Apply the packaged Alembic migrations up to ``target`` (head; under a lock).

        Returns
        -------
        str or None
            The schema revision after the upgrade.
        """
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

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

    # ------------------------------------------------------------------ patients
    def lock_patients(self, conn: Connection, patient_ids: Iterable[str]) -> None:
        """Lock the patients' rows until commit (PostgreSQL; SQLite is already serialised)."""
        if self.dialect != "postgresql":
            return
        ids = sorted(set(patient_ids))
        if ids:
            conn.execute(
                sa.select(db.patients.c.patient_id)
                .where(db.patients.c.patient_id.in_(ids))
                .order_by(db.patients.c.patient_id)
                .with_for_update()
            ).all()

    def known_patients(self, conn: Connection, patient_ids: Iterable[str]) -> set[str]:
        """The subset of ``patient_ids`` that exist in the store."""
        ids = list(set(patient_ids))
        found: set[str] = set()
        for chunk in _chunks(ids, 900):
            found.update(
                conn.execute(
                    sa.select(db.patients.c.patient_id).where(db.patients.c.patient_id.in_(chunk))
                ).scalars()
            )
        return found

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
        values = {
            c.name: _db_value(c.kind, record.get(c.name))
            for c in TABLES["patients"]
            if c.name != "patient_id"
        }
        now = utcnow()
        found = conn.execute(
            sa.select(db.patients.c.content_hash, db.patients.c.covariates).where(
                db.patients.c.patient_id == pid
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
        if extra:  # without covariate values the digest is the contract row's, as before
            digest = hashlib.sha256(f"{digest}|{values['covariates']}".encode()).hexdigest()
        if current is None:
            conn.execute(
                sa.insert(db.patients).values(
                    patient_id=pid, **values, content_hash=digest, created_at=now, updated_at=now
                )
            )
            return "created"
        if current == digest:
            return "unchanged"
        conn.execute(
            sa.update(db.patients)
            .where(db.patients.c.patient_id == pid)
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
        columns = [_raw_column(t.c[n]) for n in names + extra]
        for chunk in _chunks(sorted(set(patient_ids)), 900):
            rows.extend(conn.execute(sa.select(*columns).where(t.c.patient_id.in_(chunk))).all())
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
        return _count_and_max(conn, t, t.c.row_id, patient_ids)

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
        payload = []
        for row in rows:
            item = {c.name: _db_value(c.kind, row.get(c.name)) for c in TABLES[table]}
            item["client_id"] = row.get("client_id")
            item["content_hash"] = row["content_hash"]
            item["created_at"] = now
            payload.append(item)
        conn.execute(sa.insert(t), payload)

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
        for chunk in _chunks(sorted(set(patient_ids)), 900):
            rows = conn.execute(
                sa.select(t.c.patient_id, t.c.table_name, t.c.client_id, t.c.retraction_id)
                .where(t.c.patient_id.in_(chunk))
            ).all()
            for pid, table, cid, key in rows:
                ids.setdefault(str(table), {}).setdefault(str(pid), set()).add(str(cid))
                seen.setdefault(str(pid), []).append(int(key))
        return ids, {pid: (len(keys), max(keys)) for pid, keys in seen.items()}

    def withdrawals(self, conn: Connection, patient_id: str) -> list[dict[str, Any]]:
        """The patient's tombstones, oldest first: table, id, the row's date, when and by whom."""
        t = db.retractions
        rows = conn.execute(
            sa.select(t.c.table_name, t.c.client_id, t.c.row_date, t.c.retracted_at,
                      t.c.retracted_by)
            .where(t.c.patient_id == patient_id)
            .order_by(t.c.retraction_id)
        ).all()
        return [
            {"table": r[0], "id": r[1], "date": _iso(r[2]),
             "withdrawn_at": _aware(r[3]).isoformat(timespec="seconds"), "by": r[4]}
            for r in rows
        ]

    def withdrawn_date(
        self, conn: Connection, table: str, patient_id: str, client_id: str
    ) -> str | None:
        """The date of the row a tombstone removed (None if it removed none)."""
        t = db.retractions
        return _iso(
            conn.execute(
                sa.select(t.c.row_date).where(
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
        return _count_and_max(conn, db.retractions, db.retractions.c.retraction_id, patient_ids)

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
        owner = conn.execute(
            sa.select(src.c.client_id).where(
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
                t.c.patient_id == patient_id, t.c.client_id == (owner or source_id)
            )
        ).first()
        if row is None:
            return None
        merged = {
            str(m)
            for m in conn.execute(
                sa.select(src.c.source_id).where(
                    src.c.patient_id == patient_id,
                    src.c.table_name == table,
                    src.c.client_id == row[0],
                )
            ).scalars()
        }
        others = ({str(row[0])} | merged) - {source_id}
        if not merged and answers and self._maybe_merged_before(conn, row[3], row[4:]):
            others.add(LEGACY_MERGE)
        return {"client_id": str(row[0]), "date": _iso(row[1]), "content_hash": row[2],
                "others": sorted(others)}

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
        if mark is None or _aware(created) >= dt.datetime.fromisoformat(mark):
            return False
        return any(v is not None for v in answers[:-2]) and any(
            v is not None for v in answers[-2:]
        )

    def add_row_sources(
        self, conn: Connection, table: str, sources: Sequence[tuple[str, str, str]]
    ) -> None:
        """Record ``(patient_id, row client id, merged resource id)`` triples (in the write)."""
        if sources:
            conn.execute(
                sa.insert(db.row_sources),
                [{"patient_id": p, "table_name": table, "client_id": c, "source_id": s}
                 for p, c, s in sources],
            )

    def retract(
        self, conn: Connection, table: str, patient_id: str, client_id: str,
        row: dict[str, Any] | None = None, by: str | None = None,
    ) -> None:
        """Withdraw the resource ``client_id`` in the open write transaction.

        Writes its tombstone (:data:`service.db.retractions`), which refuses a
        later import of the id, and deletes ``row`` (as :meth:`locate` returns
        it; None when no stored row holds the resource) with its merged-source
        records; ``by`` names who asked (a token name). Whether the row may go is
        the caller's decision
        (``service.ingest``: not while it holds other resources' values).
        """
        if row is not None:
            t, src = db.HISTORY[table], db.row_sources
            conn.execute(sa.delete(t).where(t.c.patient_id == patient_id,
                                            t.c.client_id == row["client_id"]))
            conn.execute(sa.delete(src).where(src.c.patient_id == patient_id,
                                              src.c.table_name == table,
                                              src.c.client_id == row["client_id"]))
        conn.execute(
            sa.insert(db.retractions),
            {
                "patient_id": patient_id,
                "table_name": table,
                "client_id": client_id,
                "row_date": None if row is None else dt.date.fromisoformat(row["date"]),
                "row_hash": None if row is None else row["content_hash"],
                "retracted_at": utcnow(),
                "retracted_by": by,
            },
        )

    def count(self, table: str, patient_id: str | None = None) -> int:
        """Number of rows of a table (optionally of one patient)."""
        t = db.metadata.tables[table]
        query = sa.select(sa.func.count()).select_from(t)
        if patient_id is not None:
            query = query.where(t.c.patient_id == patient_id)
        with self.read() as conn:
            return int(conn.execute(query).scalar_one())

    # ------------------------------------------------------------------ tokens
    def create_token(self, name: str, role: str) -> str:
        """Create a bearer token and return it (only its sha256 is stored).

        Raises
        ------
        StoreError
            If ``role`` is unknown or ``name`` is already used (revoked names
            stay taken so audit rows keep naming one token).
        """
        if role not in ROLES:
            raise StoreError(f"role {role!r}: allowed: {', '.join(ROLES)}")
        name = name.strip()
        if not name or len(name) > db.ID_LENGTH:
            raise StoreError(f"token name: allowed: 1 to {db.ID_LENGTH} characters")
        token = secrets.token_urlsafe(32)
        try:
            with self.write() as conn:
                conn.execute(
                    sa.insert(db.tokens).values(
                        name=name, role=role, token_hash=hash_token(token), created_at=utcnow()
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise StoreError(f"a token named {name!r} already exists") from exc
        return token

    def list_tokens(self) -> list[dict[str, Any]]:
        """All tokens without secrets: name, role, created_at, revoked_at."""
        t = db.tokens
        with self.read() as conn:
            rows = conn.execute(
                sa.select(t.c.name, t.c.role, t.c.created_at, t.c.revoked_at).order_by(t.c.name)
            ).all()
        return [_aware_times(dict(r._mapping)) for r in rows]

    def revoke_token(self, name: str) -> bool:
        """Revoke the token called ``name``; False if there is none (or already revoked)."""
        t = db.tokens
        with self.write() as conn:
            result = conn.execute(
                sa.update(t)
                .where(t.c.name == name, t.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return result.rowcount == 1

    def token_principal(self, token: str) -> tuple[str, str] | None:
        """``(name, role)`` of a live token, or None (unknown or revoked)."""
        digest = hash_token(token)
        t = db.tokens
        with self.read() as conn:
            row = conn.execute(
                sa.select(t.c.name, t.c.role, t.c.token_hash).where(
                    t.c.token_hash == digest, t.c.revoked_at.is_(None)
                )
            ).first()
        # The lookup is by hash (no timing signal about the token itself); compare
        # again in constant time so a collation quirk can never match a near miss.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return row.name, row.role

    # ------------------------------------------------------------------ audit
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
            return [_aware_times(dict(r._mapping)) for r in conn.execute(query).all()]

    # ------------------------------------------------------------------ CDS replay check
    def claim_jti(self, issuer: str, jti: str, keep_until: float) -> bool:
        """Record a CDS Hooks JWT id; True the first time, False on a replay.

        Shared by every worker and process on the store, so a token replayed to
        another gunicorn worker is refused too. ``keep_until`` (epoch seconds)
        is when the token can no longer pass the expiry check; the record is
        deleted after it. One statement decides, ``INSERT ... ON CONFLICT DO
        NOTHING``, so two workers racing on the same jti accept it once.
        """
        t = db.cds_jti
        key = hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()
        until = dt.datetime.fromtimestamp(keep_until, dt.UTC)
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert

        def work(conn: Connection) -> bool:
            conn.execute(sa.delete(t).where(t.c.expires_at < utcnow()))
            added = conn.execute(
                insert(t).values(jti_hash=key, expires_at=until)
                .on_conflict_do_nothing(index_elements=["jti_hash"])
                .returning(t.c.jti_hash)  # no row on a conflict (rowcount is -1 on psycopg)
            ).first()
            return added is not None

        return self.run_write(work)

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


#: service_state key written by migration 0003: when merged resources began to be
#: recorded (rows created before may merge resources without a record of which).
LEGACY_SOURCES_KEY = "row_sources_since"
#: Stands, in ``Store.locate``'s ``others``, for resources merged into a row before
#: merges were recorded; it is never in a request, so such a row is never deleted.
LEGACY_MERGE = "(resources merged before this version, not recorded)"


def _count_and_max(
    conn: Connection, t: sa.Table, key: sa.Column, patient_ids: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """``{patient_id: (row count, highest key)}`` of an insert-only keyed table."""
    out: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(sorted(set(patient_ids)), 900):
        rows = conn.execute(
            sa.select(t.c.patient_id, sa.func.count(), sa.func.max(key))
            .where(t.c.patient_id.in_(chunk))
            .group_by(t.c.patient_id)
        ).all()
        out.update({str(r[0]): (int(r[1]), int(r[2])) for r in rows})
    return out


def _aware(value: dt.datetime) -> dt.datetime:
    """A stored time as UTC-aware (SQLite returns naive datetimes)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _iso(value: Any) -> str | None:
    """A date read through SQLAlchemy (``date`` or ISO text) as ``YYYY-MM-DD``."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]


def _aware_times(row: dict[str, Any]) -> dict[str, Any]:
    """Mark stored times as UTC (SQLite returns them without a zone)."""
    for key, value in row.items():
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            row[key] = value.replace(tzinfo=dt.UTC)
    return row


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
