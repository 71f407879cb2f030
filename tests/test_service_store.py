"""The store on SQLite and PostgreSQL: migrations, durability settings, tokens, audit."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service import db
from service.store import Store, StoreError, row_hash
from tests.fixtures.service import Database


def test_migrations_create_exactly_the_declared_tables(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, db.metadata)
        revision = ctx.get_current_revision()
    assert diff == []
    assert revision == "0007"


def _together(call: Callable[[Store], object], stores: list[Store]) -> list[object]:
    """``call(store)`` for every store in its own thread, started together; results or
    exceptions, in completion order."""
    results: list[object] = []
    barrier = threading.Barrier(len(stores))

    def run(st: Store) -> None:
        barrier.wait()
        try:
            results.append(call(st))
        except Exception as exc:  # noqa: BLE001 - collected and asserted by the caller
            results.append(exc)

    threads = [threading.Thread(target=run, args=(st,)) for st in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_migrate_is_idempotent_and_safe_when_workers_start_together(database: Database) -> None:
    stores = [Store(database.url, **database.engine_options) for _ in range(3)]
    results = _together(lambda st: st.migrate(), stores)
    try:
        assert results == ["0007"] * 3
        assert stores[0].migrate() == "0007"
    finally:
        for st in stores:
            st.dispose()


def test_sqlite_runs_in_wal_with_full_sync_and_foreign_keys(sqlite_database: Database) -> None:
    st = Store(sqlite_database.url)
    try:
        st.migrate()
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        with pytest.raises(sa.exc.IntegrityError), st.write() as conn:
            conn.execute(
                sa.insert(db.sessions).values(
                    patient_id="ghost",
                    date=dt.date(2026, 1, 1),
                    kind="induction",
                    content_hash="x",
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
    finally:
        st.dispose()


def test_unique_constraints_hold_on_both_backends(store: Store) -> None:
    with store.write() as conn:
        store.upsert_patient(conn, {"patient_id": "p1"})
    row = {
        "patient_id": "p1",
        "client_id": "a",
        "date": pd.Timestamp("2026-01-01"),
        "phq9_total": 5,
    }
    row["content_hash"] = row_hash("assessments", row)
    with store.write() as conn:
        store.insert_history(conn, "assessments", [row])
    for clash in ({**row, "client_id": "b"}, {**row, "date": pd.Timestamp("2026-01-02")}):
        with pytest.raises(sa.exc.IntegrityError), store.write() as conn:
            store.insert_history(conn, "assessments", [clash])
    assert store.count("assessments") == 1


def test_patient_upsert_reports_created_updated_unchanged(store: Store) -> None:
    with store.write() as conn:
        assert store.upsert_patient(conn, {"patient_id": "p1", "age": 40.0}) == "created"
    with store.write() as conn:
        assert store.upsert_patient(conn, {"patient_id": "p1", "age": 40}) == "unchanged"
        assert store.upsert_patient(conn, {"patient_id": "p1", "age": 41.0}) == "updated"
    cohort = store.cohort(["p1"])
    assert cohort.patients["age"].tolist() == [41.0]


def test_history_round_trips_to_canonical_frames(store: Store) -> None:
    from forecast.simulation import simulate

    sim = simulate(3, seed=11).cohort
    with store.write() as conn:
        for rec in sim.patients.to_dict("records"):
            store.upsert_patient(conn, rec)
        for table in ("sessions", "assessments"):
            frame = getattr(sim, table)
            rows = [
                {**r, "client_id": f"{table}-{i}", "content_hash": row_hash(table, r)}
                for i, r in enumerate(frame.to_dict("records"))
            ]
            store.insert_history(conn, table, rows)
    back = store.cohort(sim.patients["patient_id"].tolist())
    for table in ("patients", "sessions", "assessments"):
        expected = getattr(sim, table)
        pd.testing.assert_frame_equal(
            getattr(back, table)[list(expected.columns)], expected, check_dtype=True
        )


def test_tokens_lifecycle(store: Store) -> None:
    token = store.create_token("alice", "clinician")
    assert store.token_principal(token) == ("alice", "clinician")
    assert store.token_principal(token + "x") is None
    with pytest.raises(StoreError, match="already exists"):
        store.create_token("alice", "admin")
    with pytest.raises(StoreError, match="role"):
        store.create_token("eve", "root")
    assert store.revoke_token("alice")
    assert not store.revoke_token("alice")
    assert store.token_principal(token) is None
    (row,) = store.list_tokens()
    assert row["name"] == "alice"
    assert row["revoked_at"] is not None
    assert "token_hash" not in row


def test_audit_rows_append(store: Store) -> None:
    store.add_audit(
        [
            {
                "token_name": "alice",
                "patient_id": "p1",
                "as_of": dt.date(2026, 3, 1),
                "model_version": "v1",
                "inputs_hash": "0" * 64,
                "status": "routine",
                "suggested_date": dt.date(2026, 3, 20),
                "request_id": "r1",
                "endpoint": "patient_forecast",
            }
        ]
    )
    (row,) = store.audit_rows("p1")
    assert row["suggested_date"] == dt.date(2026, 3, 20)
    assert row["time"] is not None
    assert store.audit_rows("p2") == []


def test_ping_reports_an_unreachable_database(tmp_path) -> None:
    st = Store(f"sqlite:///{tmp_path}/missing/dir/x.sqlite")
    (tmp_path / "missing" / "dir").rmdir()  # make_engine created it; take it away
    try:
        assert st.ping() is False
    finally:
        st.dispose()


def test_claim_jti_once_per_issuer_across_racing_stores_then_expires(database: Database) -> None:
    stores = [Store(database.url, **database.engine_options) for _ in range(4)]
    try:
        stores[0].migrate()
        later = time.time() + 300
        results = _together(lambda st: st.claim_jti("https://ehr", "jti-1", later), stores)
        assert sorted(results, key=str) == [False, False, False, True]
        # the same jti from another issuer is another token
        assert stores[1].claim_jti("https://other-ehr", "jti-1", later) is True
        # a record whose token can no longer pass the expiry check is dropped
        assert stores[2].claim_jti("https://ehr", "jti-2", time.time() - 1) is True
        assert stores[3].claim_jti("https://ehr", "jti-2", later) is True
        with stores[0].read() as conn:
            kept = conn.execute(sa.select(sa.func.count()).select_from(db.cds_jti)).scalar()
        assert kept == 3
    finally:
        for st in stores:
            st.dispose()


def test_a_store_at_revision_0001_upgrades_to_head_and_keeps_its_rows(database: Database) -> None:
    # A production database created before the shared replay check: the next start
    # migrates it in place.
    st = Store(database.url, **database.engine_options)
    try:
        assert st.migrate("0001") == "0001"
        assert "cds_jti" not in sa.inspect(st.engine).get_table_names()
        with st.write() as conn:  # a token made by the code of that revision (no clinic yet)
            conn.execute(
                sa.text(
                    "INSERT INTO tokens (name, role, token_hash, created_at) "
                    "VALUES ('dr-old', 'clinician', :h, :t)"
                ),
                {"h": "0" * 64, "t": dt.datetime.now(dt.UTC)},
            )
        assert st.migrate() == "0007"
        assert {"cds_jti", "retractions", "row_sources"} <= set(
            sa.inspect(st.engine).get_table_names()
        )
        assert [t["name"] for t in st.list_tokens()] == ["dr-old"]
        assert st.claim_jti("https://ehr", "after-upgrade", time.time() + 60) is True
        assert st.claim_jti("https://ehr", "after-upgrade", time.time() + 60) is False
    finally:
        st.dispose()


def test_declared_covariates_are_stored_and_never_dropped_by_a_store_that_lacks_them(
    database: Database,
) -> None:
    with_bmi = Store(database.url, covariates=("bmi",), **database.engine_options)
    plain = Store(database.url, **database.engine_options)
    try:
        with_bmi.migrate()
        rec = {"patient_id": "pv", "sex": "female", "bmi": 27.5}
        assert with_bmi.run_write(lambda conn: with_bmi.upsert_patient(conn, rec)) == "created"
        assert with_bmi.run_write(lambda conn: with_bmi.upsert_patient(conn, rec)) == "unchanged"
        moved = {**rec, "bmi": 30.0}
        assert with_bmi.run_write(lambda conn: with_bmi.upsert_patient(conn, moved)) == "updated"
        # A store (service) not declaring bmi updates the contract columns only.
        other = {"patient_id": "pv", "sex": "male"}
        assert plain.run_write(lambda conn: plain.upsert_patient(conn, other)) == "updated"
        assert "bmi" not in plain.cohort(["pv"]).patients.columns
        got = with_bmi.cohort(["pv"])
        assert got.covariates == ("bmi",)
        assert got.patients[["sex", "bmi"]].to_dict("records") == [{"sex": "male", "bmi": 30.0}]
        # Declared but not given: blank, as a contract column left out of a PUT.
        blank = {"patient_id": "pv", "sex": "male"}
        assert with_bmi.run_write(lambda conn: with_bmi.upsert_patient(conn, blank)) == "updated"
        assert pd.isna(with_bmi.cohort(["pv"]).patients["bmi"].iloc[0])
    finally:
        with_bmi.dispose()
        plain.dispose()
