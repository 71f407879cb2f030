"""ingest_many: validation first, one transaction, idempotent by client id (both backends)."""

from __future__ import annotations

import threading
import time

import pytest

from service.errors import ApiProblem
from service.ingest import IngestItem, ingest_many
from service.store import Store


def _assess(i: int, total: int = 10, **extra: object) -> dict[str, object]:
    return {"id": f"a{i}", "date": f"2026-01-{i + 1:02d}", "phq9_total": total, **extra}


def test_create_then_retry_is_unchanged(store: Store) -> None:
    out = ingest_many(
        store,
        [("p1", "assessments", [_assess(0), _assess(1)])],
        patients=[{"patient_id": "p1", "age": 30}],
    )
    assert (out["created"], out["unchanged"]) == (2, 0)
    assert out["patients"] == [{"patient_id": "p1", "result": "created"}]
    # Same content written differently (3 vs 3.0, key order) is still the same row.
    retry = [
        {"phq9_total": 10.0, "date": "2026-01-01", "id": "a0"},
        _assess(1),
        _assess(2),
    ]
    again = ingest_many(store, [("p1", "assessments", retry)])
    assert (again["created"], again["unchanged"]) == (1, 2)
    results = again["items"][0]["results"]
    assert [r["result"] for r in results] == ["unchanged", "unchanged", "created"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert store.count("assessments") == 3


def test_results_follow_posted_order_when_dates_are_unsorted(store: Store) -> None:
    ingest_many(store, [], patients=[{"patient_id": "p1"}])
    rows = [_assess(5), _assess(1), _assess(3)]
    out = ingest_many(store, [("p1", "assessments", rows)])
    results = out["items"][0]["results"]
    assert [r["id"] for r in results] == ["a5", "a1", "a3"]
    assert [r["date"] for r in results] == ["2026-01-06", "2026-01-02", "2026-01-04"]


def test_same_id_other_content_is_409_and_nothing_is_written(store: Store) -> None:
    ingest_many(store, [("p1", "assessments", [_assess(0)])], patients=[{"patient_id": "p1"}])
    with pytest.raises(ApiProblem) as info:
        ingest_many(store, [("p1", "assessments", [_assess(1), _assess(0, total=11)])])
    assert info.value.status == 409
    assert info.value.errors[0]["field"] == "/assessments/1/id"
    assert store.count("assessments") == 1


def test_row_without_id_on_a_stored_date_is_a_validation_error(store: Store) -> None:
    ingest_many(store, [("p1", "assessments", [_assess(0)])], patients=[{"patient_id": "p1"}])
    with pytest.raises(ApiProblem) as info:
        ingest_many(store, [("p1", "assessments", [{"date": "2026-01-01", "phq9_total": 10}])])
    assert info.value.status == 422
    assert info.value.errors[0]["field"] == "/assessments/0/date"
    assert "already stored" in info.value.errors[0]["message"]


def test_whole_batch_is_all_or_nothing_across_patients_and_tables(store: Store) -> None:
    items = [
        IngestItem("p1", "sessions", [{"date": "2026-01-02", "kind": "induction"}], "/a"),
        IngestItem("p2", "assessments", [_assess(0), _assess(1, phq9_9=7)], "/b"),
    ]
    with pytest.raises(ApiProblem) as info:
        ingest_many(store, items, patients=[{"patient_id": "p1"}, {"patient_id": "p2"}])
    assert info.value.status == 422
    assert [e["field"] for e in info.value.errors] == ["/b/1/phq9_9"]
    assert store.count("patients") == 0
    assert store.count("sessions") == 0


def test_unknown_patient_is_rejected(store: Store) -> None:
    with pytest.raises(ApiProblem) as info:
        ingest_many(store, [("ghost", "assessments", [_assess(0)])])
    assert info.value.status == 422
    assert "unknown patient" in info.value.errors[0]["message"]


def test_invalid_patient_record_names_its_field(store: Store) -> None:
    with pytest.raises(ApiProblem) as info:
        ingest_many(store, [], patients=[{"patient_id": "p1", "sex": "f"}])
    assert info.value.errors[0]["field"] == "/patients/0/sex"
    with pytest.raises(ApiProblem):
        ingest_many(store, [], patients=[{"patient_id": ""}])
    # One answer lists the patient's and the rows' problems together.
    with pytest.raises(ApiProblem) as info:
        ingest_many(
            store,
            [("p1", "assessments", [_assess(0, phq9_1=5)])],
            patients=[{"patient_id": "p1", "age": -1}],
        )
    assert [e["field"] for e in info.value.errors] == ["/patients/0/age", "/assessments/0/phq9_1"]
    assert store.count("patients") == 0


def test_default_pointers_for_several_items(store: Store) -> None:
    ingest_many(store, [], patients=[{"patient_id": "p1"}])
    items = [
        ("p1", "sessions", [{"date": "2026-01-02", "kind": "induction"}]),
        ("p1", "assessments", [{"date": "2026-01-02", "phq9_total": 99}]),
    ]
    with pytest.raises(ApiProblem) as info:
        ingest_many(store, items)
    assert info.value.errors[0]["field"] == "/items/1/records/0/phq9_total"


@pytest.mark.slow
def test_concurrent_overlapping_batches_lose_nothing_and_duplicate_nothing(store: Store) -> None:
    patients = [f"p{k}" for k in range(3)]
    ingest_many(store, [], patients=[{"patient_id": p} for p in patients])
    n_rows = 12
    created = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        # Every worker posts overlapping windows of the same ids, in its own order.
        try:
            for start in range(0, n_rows, 3):
                lo = (start + seed) % n_rows
                window = [(lo + j) % n_rows for j in range(5)]
                items = [
                    (p, "assessments", [_assess(i, total=i % 27) for i in window])
                    for p in (patients if seed % 2 else patients[::-1])
                ]
                out = ingest_many(store, items)
                with lock:
                    created.append(out["created"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock: a writer never finished"
    assert failures == []
    assert time.monotonic() - began < 120
    assert sum(created) == store.count("assessments")
    for p in patients:
        cohort = store.cohort([p])
        assert cohort.assessments["date"].is_unique
        assert store.count("assessments", p) == n_rows


def test_ingest_behaves_like_a_set_of_first_writes(tmp_path) -> None:
    """Property: any sequence of batches drawn from one pool of rows (some changed)
    leaves exactly the first accepted version of every id; a batch holding a changed
    row is refused whole (409) and changes nothing."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hst

    st = Store(f"sqlite:///{tmp_path / 'prop.sqlite'}")
    st.migrate()
    counter = iter(range(10**6))
    pool = [_assess(i, total=i) for i in range(8)]
    batches = hst.lists(
        hst.lists(
            hst.tuples(hst.integers(0, 7), hst.booleans()),
            min_size=1,
            max_size=5,
            unique_by=lambda t: t[0],
        ),
        min_size=1,
        max_size=6,
    )

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batches)
    def check(sequence: list[list[tuple[int, bool]]]) -> None:
        pid = f"prop{next(counter)}"
        ingest_many(st, [], patients=[{"patient_id": pid}])
        stored: dict[str, int] = {}
        for batch in sequence:
            rows = [
                {**pool[i], "phq9_total": (pool[i]["phq9_total"] + 1) % 28} if changed else pool[i]
                for i, changed in batch
            ]
            conflict = any(r["id"] in stored and stored[r["id"]] != r["phq9_total"] for r in rows)
            if conflict:
                before = st.count("assessments", pid)
                with pytest.raises(ApiProblem) as info:
                    ingest_many(st, [(pid, "assessments", rows)])
                assert info.value.status == 409
                assert st.count("assessments", pid) == before  # the whole batch refused
                continue
            out = ingest_many(st, [(pid, "assessments", rows)])
            new = [r for r in rows if r["id"] not in stored]
            assert out["created"] == len(new)
            for r in new:
                stored[r["id"]] = r["phq9_total"]
        with st.read() as conn:
            got = st.history(conn, "assessments", [pid], with_ids=True)
        assert dict(zip(got["client_id"], got["phq9_total"].astype(int), strict=True)) == stored

    try:
        check()
    finally:
        st.dispose()
