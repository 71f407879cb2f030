"""The service's fast paths give exactly what the generic pandas code gives.

- ``Store.history`` builds canonical frames from typed rows with numpy: it must
  equal ``forecast.cohort.canonicalize`` of the same rows (both backends).
- The audit's inputs hash formats CSV lines by hand: they must equal
  ``DataFrame.to_csv`` lines, so hashes stay comparable with earlier ones.
- ``ingest_many`` of many patients validates in one pass: it stores exactly
  the posted cohort, answers per item in posted order, and a retry is unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecast.cohort import Cohort, canonicalize
from forecast.contract import TABLES
from service.histories import records_json
from service.ingest import ingest_many
from service.serving import _lines, _lines_pandas, inputs_hashes
from service.store import Store, row_hash


def _tricky_cohort() -> Cohort:
    patients = pd.DataFrame(
        {
            "patient_id": ["b,1", 'a"q', "c 3", "Z"],
            "age": [44.0, np.nan, 1 / 3, 120.0],
            "sex": ["female", None, "other", "male"],
            "diagnosis": [None, "trd", "mdd", "ptsd"],
            "prior_treatments": [3.0, np.nan, 0.0, 12.0],
        }
    )
    sessions = pd.DataFrame(
        {
            "patient_id": ["b,1", 'a"q', "b,1", "Z", "Z"],
            "date": pd.to_datetime(
                ["2024-03-01", "2024-01-01", "2024-01-05", "1999-12-31", "2024-02-29"]
            ),
            "kind": ["maintenance", "induction", "induction", "induction", "maintenance"],
            "dose_mg_per_kg": [0.5, np.nan, 1e-7, 0.123456789012, 20.0],
            "route": ["iv", None, "im", "oral", None],
            "psychotherapy": [1.0, 0.0, np.nan, 1.0, 0.0],
            "dissociation": [np.nan, 55.5, 100.0, 0.0, np.nan],
            "systolic_bp_max": [120.0, np.nan, 299.99, 50.0, np.nan],
        }
    )
    rng = np.random.default_rng(7)
    n = 9
    assessments = pd.DataFrame(
        {
            "patient_id": ["c 3", "b,1", "b,1", 'a"q', "Z", "Z", "Z", "c 3", "b,1"],
            "date": pd.to_datetime(
                [
                    "2024-01-02",
                    "2024-01-02",
                    "2023-12-30",
                    "2024-01-09",
                    "2024-02-01",
                    "2024-02-02",
                    "2024-03-01",
                    "2023-01-01",
                    "2024-03-09",
                ]
            ),
            **{
                f"phq9_{i}": np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 4, n))
                for i in range(1, 10)
            },
            "phq9_total": np.where(rng.random(n) < 0.3, np.nan, rng.integers(0, 28, n)),
            "cssrs_ideation": np.where(rng.random(n) < 0.5, np.nan, rng.integers(0, 6, n)),
            "cssrs_behavior": np.where(rng.random(n) < 0.5, np.nan, rng.integers(0, 2, n)),
        }
    )
    return Cohort(
        canonicalize("patients", patients),
        canonicalize("sessions", sessions),
        canonicalize("assessments", assessments),
    )


def _store_cohort(store: Store, cohort: Cohort) -> None:
    with store.write() as conn:
        for rec in cohort.patients.to_dict("records"):
            store.upsert_patient(conn, rec)
        for table in ("sessions", "assessments"):
            rows = getattr(cohort, table).to_dict("records")
            for k, r in enumerate(rows):
                r["client_id"] = f"c{k}" if k % 2 else None
            store.insert_history(
                conn, table, [{**r, "content_hash": row_hash(table, r)} for r in rows]
            )


def test_history_equals_canonicalize_of_the_stored_rows(store: Store) -> None:
    import sqlalchemy as sa

    from service import db

    cohort = _tricky_cohort()
    _store_cohort(store, cohort)
    ids = list(cohort.patients["patient_id"])
    with store.read() as conn:
        for table in ("patients", "sessions", "assessments"):
            got = store.history(conn, table, ids)
            pd.testing.assert_frame_equal(got, getattr(cohort, table))
            # the generic path on the raw typed rows gives the same frame
            t = db.patients if table == "patients" else db.HISTORY[table]
            names = [c.name for c in TABLES[table]]
            raw = pd.DataFrame.from_records(
                conn.execute(sa.select(*(t.c[n] for n in names))).all(), columns=names
            )
            pd.testing.assert_frame_equal(got, canonicalize(table, raw))
            if table != "patients":
                with_ids = store.history(conn, table, ids, with_ids=True)
                pd.testing.assert_frame_equal(with_ids[names], got)
                # client ids and hashes stay with their rows
                for rec, cid, digest in zip(
                    got.to_dict("records"),
                    with_ids["client_id"],
                    with_ids["content_hash"],
                    strict=True,
                ):
                    assert digest == row_hash(table, rec)
                    assert cid is None or cid.startswith("c")
        one = store.history(conn, "assessments", ["Z"])
        pd.testing.assert_frame_equal(
            one,
            cohort.assessments[cohort.assessments["patient_id"] == "Z"].reset_index(drop=True),
        )
        assert len(store.history(conn, "sessions", ["nobody"])) == 0


def test_audit_lines_equal_to_csv_lines() -> None:
    cohort = _tricky_cohort()
    for table in ("patients", "sessions", "assessments"):
        frame = getattr(cohort, table)
        cols = [c.name for c in TABLES[table]]
        np.testing.assert_array_equal(_lines(frame, cols), _lines_pandas(frame, cols))
        assert len(_lines(frame.iloc[:0], cols)) == 0
    # numbers %.10g writes in several notations
    odd = pd.DataFrame(
        {"x": [1e-20, 123456789012.0, 2.5, -0.0, 1 / 7, np.nan, 1e21], "s": list('a,b"c d')}
    )
    np.testing.assert_array_equal(_lines(odd, ["x", "s"]), _lines_pandas(odd, ["x", "s"]))


def test_inputs_hashes_equal_those_of_the_csv_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.serving as api

    cohort = _tricky_cohort()
    queries = pd.DataFrame(
        {
            "patient_id": ["b,1", "Z", "c 3", "b,1"],
            "as_of": pd.to_datetime(["2024-03-01", "2024-02-02", "2020-01-01", "2024-01-03"]),
            "threshold": [0.2, 0.15, 0.2, 0.5],
        }
    )
    fast = inputs_hashes(cohort, queries, "v1")
    monkeypatch.setattr(api, "_lines", _lines_pandas)
    assert inputs_hashes(cohort, queries, "v1") == fast
    assert len(set(fast)) == len(fast)


@pytest.mark.parametrize("n_patients", [1, 40])
def test_bulk_ingest_stores_exactly_the_cohort(database: object, n_patients: int) -> None:
    from forecast.simulation import simulate

    cohort = simulate(n_patients, 5).cohort
    pids = list(cohort.patients["patient_id"])
    by = {
        t: {p: records_json(g, t) for p, g in getattr(cohort, t).groupby("patient_id")}
        for t in ("sessions", "assessments")
    }
    patients = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in cohort.patients.to_dict("records")
    ]
    items = [
        (p, t, [dict(r, id=f"{p}-{t}-{i}") for i, r in enumerate(by[t].get(p, []))])
        for p in pids
        for t in ("sessions", "assessments")
    ]
    url = database.url  # type: ignore[attr-defined]
    opts = database.engine_options  # type: ignore[attr-defined]
    bulk = Store(url, **opts)
    bulk.migrate()
    try:
        out = ingest_many(bulk, items, patients=patients)
        again = ingest_many(bulk, items, patients=patients)
        got = bulk.cohort(pids)
    finally:
        bulk.dispose()
    assert out["created"] == sum(len(i[2]) for i in items)
    assert again["created"] == 0
    assert again["unchanged"] == out["created"]
    for table in ("patients", "sessions", "assessments"):
        pd.testing.assert_frame_equal(getattr(got, table), getattr(cohort, table))
    # each item's results name its posted items in order
    for item, result in zip(items, out["items"], strict=True):
        assert [r["index"] for r in result["results"]] == list(range(len(item[2])))
        assert [r["id"] for r in result["results"]] == [r["id"] for r in item[2]]


def _audit_row(i: int) -> dict[str, object]:
    import datetime as dt

    return {
        "token_name": "t",
        "patient_id": f"p{i % 3}",
        "as_of": dt.date(2024, 1, 1),
        "model_version": "v",
        "inputs_hash": f"{i:064d}",
        "status": "routine",
        "suggested_date": None,
        "request_id": f"r{i}",
        "endpoint": "e",
    }


def test_audit_group_commit_acknowledges_only_committed_rows(store: Store) -> None:
    import threading

    import sqlalchemy as sa

    from service import db

    failures: list[BaseException] = []
    missing: list[int] = []

    def serve(k: int) -> None:
        try:
            for j in range(8):
                i = k * 100 + j
                store.add_audit([_audit_row(i)])
                # Once add_audit returns, any other connection sees the row.
                with store.read() as conn:
                    found = conn.execute(
                        sa.select(sa.func.count())
                        .select_from(db.audit)
                        .where(db.audit.c.request_id == f"r{i}")
                    ).scalar_one()
                if found != 1:
                    missing.append(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    assert missing == []
    assert store.count("audit") == 12 * 8
    assert len({r["request_id"] for r in store.audit_rows()}) == 12 * 8


def test_audit_writer_fails_only_the_caller_of_a_bad_row_and_acknowledges_after_commit() -> None:
    import threading

    from service.store import AuditWriter

    written: list[list[dict[str, object]]] = []
    gate = threading.Event()

    def write(rows: list[dict[str, object]]) -> None:
        gate.wait(5)
        if any(r.get("bad") for r in rows):
            raise RuntimeError("disk full")
        written.append(list(rows))

    writer = AuditWriter(write)
    tickets = {i: writer.submit([{"i": i, "bad": i == 3}]) for i in range(6)}
    # Nothing is acknowledged before the transaction holding the rows committed.
    assert not any(t._done.is_set() for t in tickets.values())
    gate.set()
    outcome = {}
    for i, ticket in tickets.items():
        try:
            ticket.wait(10)
            outcome[i] = "ok"
        except RuntimeError:
            outcome[i] = "error"
    # A failed shared transaction is retried per caller: only row 3's caller fails.
    assert outcome == {0: "ok", 1: "ok", 2: "ok", 3: "error", 4: "ok", 5: "ok"}
    committed = sorted(r["i"] for rows in written for r in rows)
    assert committed == [0, 1, 2, 4, 5]
    writer.submit([{"i": 9, "bad": False}]).wait(10)  # it keeps working after a failure
    assert written[-1] == [{"i": 9, "bad": False}]
    writer.close()
    writer.submit([{"i": 10, "bad": False}]).wait(10)  # and restarts after close
    assert written[-1] == [{"i": 10, "bad": False}]
    writer.close()
