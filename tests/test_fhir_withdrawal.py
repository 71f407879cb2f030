"""Resources re-sent as entered-in-error withdraw what they stored, on both store backends.

A clinician marks a wrong PHQ-9 (or a session that did not happen) as
entered-in-error in the EHR, which sends it again with that status. The row
it made must stop feeding forecasts, a retry of the old request must not bring
it back, and nothing else that was accepted may be lost with it.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from service import db
from service.errors import ApiProblem
from service.ingest import ingest_many
from tests.fixtures.clinic import (
    bundle,
    cssrs_qr,
    ketamine_procedure,
    patient,
    phq9_qr,
)
from tests.fixtures.service import client_for

FHIR = "application/fhir+json"


@pytest.fixture
def c(make_app, database):
    return client_for(make_app(database=database))


def post(c, resources):
    r = c.http.post(
        "/fhir/r4", json=bundle(resources), headers={**c.headers("clinician"), "Content-Type": FHIR}
    )
    assert r.status_code == 200, r.get_data(as_text=True)[:800]
    return [e["response"] for e in r.get_json()["entry"]]


def rows(c, pid, table="assessments"):
    r = c.get(f"/api/v1/patients/{pid}")
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()[table]


def result(entry):
    """The entry's import result (the coded first issue of its outcome)."""
    return entry["outcome"]["issue"][0]["details"]["coding"][0]["code"]


def issue(entry):
    """The one note after the import result."""
    (only,) = entry["outcome"]["issue"][1:]
    return only["severity"], only["diagnostics"]


def in_error(resource):
    return {**resource, "status": "entered-in-error"}


def test_withdrawn_row_is_removed_and_no_retry_brings_it_back(c):
    wrong = phq9_qr("q1", "pw", "2025-02-03", (3,) * 9)  # 27: far off the patient's course
    other = phq9_qr("q2", "pw", "2025-02-17", (1,) * 9)
    first = [patient("pw"), wrong, other]
    post(c, first)
    assert [(r["date"], r["phq9"]) for r in rows(c, "pw")] == [
        ("2025-02-03", 27), ("2025-02-17", 9)
    ]

    (entry,) = post(c, [in_error(wrong)])
    assert entry["status"] == "200 OK"
    assert "location" not in entry
    severity, text = issue(entry)
    assert severity == "information"
    assert text.startswith("withdrawn: the assessment of 2025-02-03 stored as "
                           "QuestionnaireResponse/q1 is removed")
    assert [(r["date"], r["phq9"]) for r in rows(c, "pw")] == [("2025-02-17", 9)]
    st = c.app.extensions["kap_store"]
    with st.read() as conn:
        (tomb,) = conn.execute(db.retractions.select()).mappings().all()
    assert tomb["client_id"] == "QuestionnaireResponse/q1"
    assert tomb["retracted_by"] == "test-clinician"
    (shown,) = c.get("/api/v1/patients/pw").get_json()["withdrawn"]
    assert {k: shown[k] for k in ("table", "id", "date", "by")} == {
        "table": "assessments", "id": "QuestionnaireResponse/q1", "date": "2025-02-03",
        "by": "test-clinician"}
    assert dt.datetime.fromisoformat(shown["withdrawn_at"]).tzinfo is not None
    page = c.http.get("/patients/pw", headers=c.headers("clinician"))
    assert page.status_code == 200
    assert "Withdrawn as entered in error, not used:\n  questionnaire of 3 Feb 2025." in (
        page.get_data(as_text=True))

    # The same withdrawal again changes nothing.
    (entry,) = post(c, [in_error(wrong)])
    assert issue(entry)[1].startswith("withdrawn before:")

    # A retry of the request that first sent the wrong score does not restore it.
    entries = post(c, first)
    severity, text = issue(entries[1])
    assert severity == "warning"
    assert "QuestionnaireResponse/q1 was withdrawn as entered-in-error" in text
    assert entries[2]["status"] == "200 OK"  # q2: unchanged
    assert [(r["date"], r["phq9"]) for r in rows(c, "pw")] == [("2025-02-17", 9)]

    # The correction, under a new id, takes the freed date.
    (entry,) = post(c, [phq9_qr("q1-fixed", "pw", "2025-02-03", (1, 1, 1, 1, 1, 1, 1, 0, 0))])
    assert entry["status"] == "201 Created"
    assert [(r["date"], r["phq9"]) for r in rows(c, "pw")] == [
        ("2025-02-03", 7), ("2025-02-17", 9)
    ]


def test_a_correction_in_the_same_bundle_takes_the_date_of_the_row_it_replaces(c):
    wrong = phq9_qr("q1", "pc", "2025-03-03", (3,) * 9)
    post(c, [patient("pc"), wrong])
    entries = post(c, [in_error(wrong), phq9_qr("q1b", "pc", "2025-03-03", (2,) * 9)])
    assert issue(entries[0])[1].startswith("withdrawn:")
    assert entries[1]["status"] == "201 Created"
    assert [(r["date"], r["phq9"]) for r in rows(c, "pc")] == [("2025-03-03", 18)]


def test_a_row_merged_from_several_resources_is_kept_until_they_all_come_again(c):
    # A PHQ-9 and a C-SSRS screen of the same day form ONE row. Withdrawing the PHQ-9
    # alone would drop the C-SSRS answers (here suicidal ideation with intent) with it.
    phq = phq9_qr("qm", "pm", "2025-04-07", (2,) * 8 + (1,))
    screen = cssrs_qr("cm", "pm", "2025-04-07", yes=(1, 2, 3, 4), behaviour=False)
    post(c, [patient("pm"), phq, screen])
    (before,) = rows(c, "pm")
    assert before["phq9"] == 17
    assert before["cssrs_ideation"] == 4

    for withdrawn in (phq, screen):
        (entry,) = post(c, [in_error(withdrawn)])
        severity, text = issue(entry)
        assert severity == "warning"
        assert text.startswith("not withdrawn: the assessment of 2025-04-07 holds")
        other = screen if withdrawn is phq else phq
        assert f"QuestionnaireResponse/{other['id']}" in text
        assert rows(c, "pm") == [before]

    # Sent again beside the withdrawal, the screen's answers stay; the PHQ-9 goes.
    entries = post(c, [in_error(phq), screen])
    assert issue(entries[0])[1].startswith("withdrawn:")
    (after,) = rows(c, "pm")
    assert after["date"] == "2025-04-07"
    assert after["phq9"] is None
    assert after["phq9_9"] is None
    assert after["cssrs_ideation"] == 4
    # The screen's id now names the row: withdrawing it later needs nothing else.
    (entry,) = post(c, [in_error(screen)])
    assert issue(entry)[1].startswith("withdrawn:")
    assert rows(c, "pm") == []


def test_a_session_entered_in_error_is_withdrawn(c):
    sessions = [ketamine_procedure(f"s{k}", "ps", d, kind="induction")
                for k, d in enumerate(("2025-05-05", "2025-05-08"))]
    post(c, [patient("ps"), *sessions])
    (entry,) = post(c, [in_error(sessions[1])])
    assert issue(entry)[1].startswith("withdrawn: the session of 2025-05-08")
    assert [r["date"] for r in rows(c, "ps", "sessions")] == ["2025-05-05"]


def test_entered_in_error_for_an_unknown_patient_is_only_listed(c):
    (entry,) = post(c, [in_error(phq9_qr("qx", "nobody", "2025-02-03", (1,) * 9))])
    severity, text = issue(entry)
    assert severity == "warning"
    assert text.startswith("not imported:")
    assert c.get("/api/v1/patients/nobody").status_code == 404


def test_ingest_many_withdrawals_are_validated_and_idempotent(store):
    today = dt.date(2025, 12, 1)
    row = {"id": "a1", "date": "2025-06-02", "phq9_total": 12}
    ingest_many(store, [("pi", "assessments", [row])], patients=[{"patient_id": "pi"}],
                today=today)
    with pytest.raises(ApiProblem) as err:
        ingest_many(store, [], retractions=[
            {"patient_id": "nobody", "table": "assessments", "id": "a1", "pointer": "/w/0"},
            {"patient_id": "pi", "table": "visits", "id": "a1", "pointer": "/w/1"},
        ], today=today)
    assert err.value.status == 422
    assert [e["field"] for e in err.value.errors] == ["/w/1/table", "/w/0/patient_id"]
    assert store.count("assessments", "pi") == 1  # nothing written
    out = ingest_many(store, [], retractions=[{"patient_id": "pi", "table": "assessments",
                                               "id": "a1"}] * 2, today=today)
    assert [(r["result"], r["date"]) for r in out["retractions"]] == [("retracted", "2025-06-02")]
    assert store.count("assessments", "pi") == 0
    again = ingest_many(store, [("pi", "assessments", [row])], today=today)
    assert again["created"] == 0
    assert again["refused_retracted"] == 1
    assert again["items"][0]["results"][0]["result"] == "retracted"
    assert store.count("assessments", "pi") == 0
    # The tombstone keeps what was removed (date and content hash), not the values.
    with store.read() as conn:
        (tomb,) = conn.execute(db.retractions.select()).mappings().all()
    assert tomb["client_id"] == "a1"
    assert str(tomb["row_date"])[:10] == "2025-06-02"
    assert len(tomb["row_hash"]) == 64
    assert set(tomb) == {"retraction_id", "clinic", "patient_id", "table_name", "client_id",
                         "row_date", "row_hash", "retracted_at", "retracted_by"}
    assert tomb["retracted_by"] is None  # the Python API names no token


def test_json_api_withdraws_by_client_id(c):
    h = c.headers("clinician")
    assert c.http.put("/api/v1/patients/pj", json={"sex": "male"}, headers=h).status_code == 201
    rows_ = [{"id": "a/1", "date": "2025-06-02", "phq9_total": 24},
             {"id": "a/2", "date": "2025-06-16", "phq9_total": 8}]
    r = c.http.post("/api/v1/patients/pj/assessments", json={"assessments": rows_}, headers=h)
    assert r.status_code == 201
    r = c.http.delete("/api/v1/patients/pj/assessments/a/1", headers=h)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json() == {"patient_id": "pj", "table": "assessments", "id": "a/1",
                            "result": "retracted", "date": "2025-06-02"}
    assert [x["date"] for x in rows(c, "pj")] == ["2025-06-16"]
    st = c.app.extensions["kap_store"]
    with st.read() as conn:
        (tomb,) = conn.execute(db.retractions.select()).mappings().all()
    assert tomb["retracted_by"] == "test-clinician"
    again = c.http.delete("/api/v1/patients/pj/assessments/a/1", headers=h).get_json()
    assert again["result"] == "already retracted"
    assert again["date"] == "2025-06-02"
    # A retry of the original POST stores nothing and says why.
    r = c.http.post("/api/v1/patients/pj/assessments", json={"assessments": rows_}, headers=h)
    assert r.status_code == 200
    body = r.get_json()
    assert [x["result"] for x in body["assessments"]] == ["retracted", "unchanged"]
    assert body["refused_retracted"] == 1
    assert [x["date"] for x in rows(c, "pj")] == ["2025-06-16"]
    # Clinicians only; unknown patients are 404.
    assert c.http.delete("/api/v1/patients/pj/sessions/s1",
                         headers=c.headers("researcher")).status_code == 403
    assert c.http.delete("/api/v1/patients/nobody/sessions/s1", headers=h).status_code == 404


def test_json_api_refuses_to_delete_a_merged_row(c):
    phq = phq9_qr("qj", "pk", "2025-04-07", (2,) * 9)
    screen = cssrs_qr("cj", "pk", "2025-04-07", yes=(1, 2), behaviour=False)
    post(c, [patient("pk"), phq, screen])
    (row,) = rows(c, "pk")
    r = c.http.delete("/api/v1/patients/pk/assessments/QuestionnaireResponse/qj",
                      headers=c.headers("clinician"))
    assert r.status_code == 409
    assert "QuestionnaireResponse/cj" in r.get_json()["detail"]
    assert rows(c, "pk") == [row]


def test_concurrent_withdrawals_and_corrections_settle_to_one_answer(database):
    # Four workers (own connection pools) withdraw the same row at once while two
    # others post its correction on the same date: every call succeeds, the row is
    # withdrawn exactly once, and exactly one correction row ends up stored.
    import threading

    from service.store import Store

    stores = [Store(database.url, **database.engine_options) for _ in range(6)]
    stores[0].migrate()
    try:
        row = {"id": "a1", "date": "2025-06-02", "phq9_total": 24}
        ingest_many(stores[0], [("pc", "assessments", [row])], patients=[{"patient_id": "pc"}],
                    today=dt.date(2025, 12, 1))
        fix = {"id": "a1-fixed", "date": "2025-06-02", "phq9_total": 4}
        barrier = threading.Barrier(len(stores))
        results: list[object] = []

        def work(k: int) -> None:
            barrier.wait()
            try:
                if k < 4:
                    out = ingest_many(stores[k], [], retractions=[
                        {"patient_id": "pc", "table": "assessments", "id": "a1"}])
                    results.append(out["retractions"][0]["result"])
                else:
                    out = ingest_many(stores[k], [("pc", "assessments", [fix])],
                                      retractions=[{"patient_id": "pc", "table": "assessments",
                                                    "id": "a1"}], today=dt.date(2025, 12, 1))
                    results.append(out["retractions"][0]["result"])
                    results.append(out["items"][0]["results"][0]["result"])
            except Exception as exc:  # noqa: BLE001 - asserted below
                results.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not [r for r in results if isinstance(r, Exception)], results
        assert sorted(results) == ["already retracted"] * 5 + ["created", "retracted",
                                                               "unchanged"]
        with stores[0].read() as conn:
            frame = stores[0].history(conn, "assessments", ["pc"], with_ids=True)
            tombs = conn.execute(db.retractions.select()).mappings().all()
        assert frame["client_id"].tolist() == ["a1-fixed"]
        assert [t["client_id"] for t in tombs] == ["a1"]
    finally:
        for st in stores:
            st.dispose()


def test_rows_merged_before_the_upgrade_keep_their_safety_answers(make_app, database):
    # Rows stored before merged resources were recorded (revision 0002): one holding
    # PHQ-9 and C-SSRS answers may merge two resources, so it is never deleted for one
    # of them; one holding PHQ-9 answers only can go.
    from service.store import Store, row_hash

    st = Store(database.url, **database.engine_options)
    try:
        assert st.migrate("0002") == "0002"
        legacy = [
            {"date": "2025-03-03", "phq9_total": 14, "cssrs_ideation": 3,
             "client_id": "QuestionnaireResponse/qa"},
            {"date": "2025-03-17", "phq9_total": 9, "client_id": "QuestionnaireResponse/qb"},
        ]
        rows_ = [{**r, "patient_id": "pu", "content_hash": row_hash("assessments", r)}
                 for r in legacy]
        def write(conn):  # the schema of revision 0002 (no clinic yet), so no store helpers
            now = dt.datetime.now(dt.UTC)
            old_patients = sa.table("patients", *(sa.column(n) for n in (
                "patient_id", "content_hash", "created_at", "updated_at")))
            conn.execute(sa.insert(old_patients).values(
                patient_id="pu", content_hash=row_hash("patients", {}), created_at=now,
                updated_at=now))
            names = ("patient_id", "client_id", "date", "phq9_total", "cssrs_ideation",
                     "content_hash", "created_at")
            old_rows = sa.table("assessments", *(sa.column(n) for n in names))
            conn.execute(sa.insert(old_rows), [
                {**{n: r.get(n) for n in names}, "date": dt.date.fromisoformat(r["date"]),
                 "created_at": now} for r in rows_])

        st.run_write(write)
    finally:
        st.dispose()
    c = client_for(make_app(database=database))  # migrates to head
    (entry,) = post(c, [in_error(phq9_qr("qa", "pu", "2025-03-03", (1,) * 9))])
    severity, text = issue(entry)
    assert severity == "warning"
    assert "imported before kap-forecast recorded which resources a row merges" in text
    (entry,) = post(c, [in_error(phq9_qr("qb", "pu", "2025-03-17", (1,) * 9))])
    assert issue(entry)[1].startswith("withdrawn: the assessment of 2025-03-17")
    assert [(r["date"], r["cssrs_ideation"]) for r in rows(c, "pu")] == [("2025-03-03", 3)]
    r = c.http.delete("/api/v1/patients/pu/assessments/QuestionnaireResponse/qa",
                      headers=c.headers("clinician"))
    assert r.status_code == 409
    assert "Correct it by hand" in r.get_json()["detail"]
    # A row stored after the upgrade from ONE resource holding both kinds of answer can go.
    h = c.headers("clinician")
    both = {"id": "j1", "date": "2025-04-01", "phq9_total": 12, "cssrs_ideation": 1}
    assert c.http.post("/api/v1/patients/pu/assessments", json={"assessments": [both]},
                       headers=h).status_code == 201
    assert c.http.delete("/api/v1/patients/pu/assessments/j1", headers=h).get_json()[
        "result"] == "retracted"
