"""Clinics (tenancy): every route sees only the caller's clinic; ids are unique per clinic.

The walk below calls every authenticated route of the app with the tokens (and
the CDS client) of a second clinic, against a patient of the first: each
answers as for an unknown patient (404, an empty search, "unknown patient"),
never 403 and never with the patient's data; the same calls from the first
clinic succeed, so the 404s are not vacuous.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from service import db
from service.store import Store, StoreError
from tests.fixtures.clinic import (
    CDS_AUDIENCE,
    CDS_ISS,
    CDS_SECRET,
    ROUTINE,
    clinic_history,
    phq9_qr,
)
from tests.fixtures.clinic import bundle as fhir_bundle
from tests.fixtures.service import Client, Database, client_for

NORTH_ISS = "https://ehr.north.test"
NORTH_SECRET = "north-only-shared-secret-for-cds-hooks-hs256-at-least-64-bytes-long!!"
CDS_URL = "/cds-services/kap-forecast-maintenance"
FHIR = {"Content-Type": "application/fhir+json"}


def _jwt(iss: str, secret: str) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": CDS_AUDIENCE, "exp": now + 120, "iat": now,
              "jti": uuid.uuid4().hex}
    return jwt.encode(claims, secret, algorithm="HS256")


def _hook(pid: str) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": pid}}


@pytest.fixture
def clinics(make_app, clinic_models) -> tuple[Client, dict[str, str]]:
    """An app with ROUTINE stored in the default clinic, and tokens of clinic "north"."""
    app = make_app(
        models=clinic_models,
        KAP_CDS_CLIENTS={"clients": [
            {"iss": CDS_ISS, "name": "test-ehr", "secret": CDS_SECRET, "algorithms": ["HS256"]},
            {"iss": NORTH_ISS, "name": "north-ehr", "secret": NORTH_SECRET,
             "algorithms": ["HS256"], "clinic": "north"},
        ]},
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    c = client_for(app)
    r = c.http.post("/fhir/r4", json=clinic_history(ROUTINE, si=False),
                    headers={**c.headers(), **FHIR})
    assert r.status_code == 200, r.get_data(as_text=True)
    st = app.extensions["kap_store"]
    north = {role: st.create_token(f"north-{role}", role, "north")
             for role in ("clinician", "researcher", "admin")}
    return c, north


def _walk(c: Client, tok: dict[str, str], jwt_token: str, rid: str) -> dict[str, Any]:
    """Call every authenticated route about ROUTINE with ``tok``; answers by endpoint."""
    h = {role: {"Authorization": f"Bearer {t}"} for role, t in tok.items()}
    http = c.http
    assessment = {"assessments": [{"id": "x1", "date": "2025-01-06", "phq9_total": 9}]}
    session = {"sessions": [{"id": "y1", "date": "2025-01-06", "kind": "maintenance"}]}
    stray = fhir_bundle([phq9_qr("stray-q", ROUTINE, "2025-01-07", (1,) * 9)])
    calls = {
        "api.get_patient": http.get(f"/api/v1/patients/{ROUTINE}", headers=h["clinician"]),
        "api.patient_forecast": http.get(f"/api/v1/patients/{ROUTINE}/forecast",
                                         headers=h["clinician"]),
        "api.post_assessments": http.post(f"/api/v1/patients/{ROUTINE}/assessments",
                                          json=assessment, headers=h["clinician"]),
        "api.post_sessions": http.post(f"/api/v1/patients/{ROUTINE}/sessions", json=session,
                                       headers=h["clinician"]),
        "api.withdraw_assessment": http.delete(
            f"/api/v1/patients/{ROUTINE}/assessments/QuestionnaireResponse/{ROUTINE}-q3",
            headers=h["clinician"]),
        "api.withdraw_session": http.delete(
            f"/api/v1/patients/{ROUTINE}/sessions/Procedure/{ROUTINE}-s9",
            headers=h["clinician"]),
        "api.batch_forecast": http.post("/api/v1/forecast/batch",
                                        json={"patients": [{"patient_id": ROUTINE}]},
                                        headers=h["clinician"]),
        "api.stateless_forecast": http.post(
            "/api/v1/forecast",
            json={"patient": {"patient_id": "anon"}, "sessions": [], "assessments": []},
            headers=h["clinician"]),
        "api.model_card": http.get("/api/v1/model", headers=h["researcher"]),
        "api.model_reload": http.post("/api/v1/model/reload", headers=h["admin"]),
        "api.list_tokens": http.get("/api/v1/tokens", headers=h["admin"]),
        "api.revoke_token": http.delete("/api/v1/tokens/nobody-of-this-clinic",
                                        headers=h["admin"]),
        "api.audit_trail": http.get(f"/api/v1/audit?patient_id={ROUTINE}",
                                    headers=h["admin"]),
        "fhir_api.ingest_bundle": http.post("/fhir/r4", json=stray,
                                            headers={**h["clinician"], **FHIR}),
        "fhir_api.risk_assessments": http.get(f"/fhir/r4/RiskAssessment?patient={ROUTINE}",
                                              headers=h["clinician"]),
        "fhir_api.read_risk_assessment": http.get(f"/fhir/r4/RiskAssessment/{rid}",
                                                  headers=h["clinician"]),
        "fhir_api.read_patient": http.get(f"/fhir/r4/Patient/{ROUTINE}",
                                          headers=h["clinician"]),
        "cds.patient_view": http.post(CDS_URL, json=_hook(ROUTINE),
                                      headers={"Authorization": f"Bearer {jwt_token}"}),
        "pages.patient_lookup": http.get("/patients", headers=h["clinician"]),
        "pages.patient_page": http.get(f"/patients/{ROUTINE}", headers=h["clinician"]),
        "reports.outcomes": http.get("/api/v1/reports/outcomes", headers=h["researcher"]),
    }
    # Last: a PUT creates the caller's own patient of that id (checked below).
    calls["api.put_patient"] = http.put(f"/api/v1/patients/{ROUTINE}", json={"sex": "male"},
                                        headers=h["clinician"])
    calls["api.create_token"] = http.post("/api/v1/tokens",
                                          json={"name": f"made-{uuid.uuid4().hex[:6]}",
                                                "role": "clinician"}, headers=h["admin"])
    return calls


def test_every_route_hides_another_clinics_patient(clinics) -> None:
    c, north = clinics
    app = c.app
    own = c.get(f"/fhir/r4/RiskAssessment?patient={ROUTINE}").get_json()
    rid = own["entry"][0]["resource"]["id"]
    before = c.get(f"/api/v1/patients/{ROUTINE}").get_json()
    assert c.get(f"/fhir/r4/RiskAssessment/{rid}").status_code == 200

    got = _walk(c, north, _jwt(NORTH_ISS, NORTH_SECRET), rid)

    # The walk covers every route that needs a token, and the CDS service.
    protected = {
        endpoint for endpoint, view in app.view_functions.items()
        if getattr(view, "kap_roles", None) is not None
    } | {"cds.patient_view"}
    assert protected <= set(got), sorted(protected - set(got))
    status = {k: r.status_code for k, r in got.items()}
    for endpoint in ("api.get_patient", "api.patient_forecast", "api.post_assessments",
                     "api.post_sessions", "api.withdraw_assessment", "api.withdraw_session",
                     "fhir_api.read_risk_assessment", "fhir_api.read_patient",
                     "pages.patient_page", "api.revoke_token", "reports.outcomes"):
        assert status[endpoint] == 404, (endpoint, got[endpoint].get_data(as_text=True)[:300])
    # Never a 403 for a patient: only the shared model's reload is refused (not patient data).
    assert [k for k, s in status.items() if s == 403] == ["api.model_reload"]
    assert status["api.batch_forecast"] == 422
    assert "unknown patient" in got["api.batch_forecast"].get_data(as_text=True)
    assert status["fhir_api.ingest_bundle"] == 422  # the subject is not a patient of north
    search = got["fhir_api.risk_assessments"].get_json()
    assert search["total"] == 0
    assert search.get("entry", []) == []
    (card,) = got["cds.patient_view"].get_json()["cards"]
    assert card["summary"] == "kap-forecast has no ketamine-treatment history for this patient"
    assert [t["name"] for t in got["api.list_tokens"].get_json()["tokens"]] == [
        "north-admin", "north-clinician", "north-researcher"]
    # North's audit holds north's own attempts only: none served the patient's forecast.
    seen = got["api.audit_trail"].get_json()["audit"]
    assert {r["clinic"] for r in seen} == {"north"}
    assert not [r for r in seen if r["action"] == "forecast" and r["outcome"] == "ok"]
    assert {r["outcome"] for r in seen if r["action"] == "patient.read"} == {"not_found"}
    assert status["api.put_patient"] == 201  # north's own patient of that id: created
    assert status["api.create_token"] == 201
    assert status["api.stateless_forecast"] in (200, 422)  # no store access either way

    # The default clinic's patient is untouched, and its own calls still succeed.
    assert c.get(f"/api/v1/patients/{ROUTINE}").get_json() == before
    mine = _walk(c, c.tokens, _jwt(CDS_ISS, CDS_SECRET), rid)
    # (the walk's own POSTs changed the history: the RiskAssessment is found, and gone)
    assert mine["fhir_api.read_risk_assessment"].status_code == 410
    for endpoint in ("api.get_patient", "api.patient_forecast", "fhir_api.read_patient",
                     "pages.patient_page",
                     "reports.outcomes", "api.batch_forecast"):
        assert mine[endpoint].status_code == 200, endpoint
    (card,) = mine["cds.patient_view"].get_json()["cards"]
    assert card["summary"] != "kap-forecast has no ketamine-treatment history for this patient"
    # The north rows of the audit name north's actors; none is visible to the default admin.
    st = app.extensions["kap_store"]
    north_rows = st.scoped("north").audit_rows(action=None, outcome=None)
    assert north_rows
    assert {r["clinic"] for r in north_rows} == {"north"}
    assert {r["token_name"] for r in north_rows} <= {
        "north-clinician", "north-researcher", "north-admin", "cds:north-ehr"}
    default_view = c.get("/api/v1/audit?limit=1000", role="admin").get_json()["audit"]
    assert default_view
    assert all(r["clinic"] == "default" for r in default_view)


def test_same_patient_id_in_two_clinics_is_two_patients(store: Store) -> None:
    a, b = store.scoped("default"), store.scoped("north")
    today = dt.date(2026, 1, 31)
    from service.ingest import ingest_many

    rows_a = [{"id": "r1", "date": "2026-01-05", "phq9_total": 20}]
    rows_b = [{"id": "r1", "date": "2026-01-05", "phq9_total": 3},
              {"id": "r2", "date": "2026-01-19", "phq9_total": 4}]
    ingest_many(a, [("p1", "assessments", rows_a)],
                patients=[{"patient_id": "p1", "sex": "female"}], today=today)
    out = ingest_many(b, [("p1", "assessments", rows_b)],
                      patients=[{"patient_id": "p1", "sex": "male"}], today=today)
    assert out["created"] == 2  # the same client id in another clinic is another row
    assert a.cohort(["p1"]).assessments["phq9_total"].tolist() == [20.0]
    assert b.cohort(["p1"]).assessments["phq9_total"].tolist() == [3.0, 4.0]
    assert a.cohort(["p1"]).patients["sex"].tolist() == ["female"]
    assert b.cohort(["p1"]).patients["sex"].tolist() == ["male"]
    # A withdrawal in one clinic leaves the other's row alone.
    ingest_many(b, [], retractions=[{"patient_id": "p1", "table": "assessments", "id": "r1"}])
    assert a.count("assessments", "p1") == 1
    assert b.count("assessments", "p1") == 1
    with a.read() as conn:
        assert a.withdrawals(conn, "p1") == []
        assert a.patient_ids(conn) == ["p1"]
    assert store.scoped("south").cohort(["p1"]).patients.empty
    # A store without a clinic (a request not authenticated) refuses patient queries.
    with pytest.raises(StoreError, match="no clinic"):
        store.scoped(None).cohort(["p1"])
    with pytest.raises(StoreError, match="clinic"):
        store.scoped("bad clinic/../x")


def test_a_store_of_revision_0004_gets_the_default_clinic(database: Database) -> None:
    # A production store from before clinics: every row, token and audit row joins the
    # default clinic, and no history row is lost to the rebuild of the patient keys.
    st = Store(database.url, **database.engine_options)
    try:
        assert st.migrate("0004") == "0004"
        now = dt.datetime.now(dt.UTC)
        with st.write() as conn:
            conn.execute(sa.text(
                "INSERT INTO patients (patient_id, sex, content_hash, created_at, updated_at) "
                "VALUES ('old', 'female', 'h', :t, :t)"), {"t": now})
            conn.execute(sa.text(
                "INSERT INTO assessments (patient_id, client_id, date, phq9_total, content_hash,"
                " created_at) VALUES ('old', 'a1', :d, 17, 'h', :t)"),
                {"d": dt.date(2026, 1, 5), "t": now})
            conn.execute(sa.text(
                "INSERT INTO retractions (patient_id, table_name, client_id, retracted_at) "
                "VALUES ('old', 'assessments', 'a0', :t)"), {"t": now})
            conn.execute(sa.text(
                "INSERT INTO audit (time, token_name, patient_id, as_of, inputs_hash, status,"
                " request_id, endpoint) VALUES (:t, 'dr', 'old', :d, :h, 'routine', 'r', 'e')"),
                {"t": now, "d": dt.date(2026, 1, 5), "h": "0" * 64})
        token = "t" * 43
        from service.store import hash_token

        with st.write() as conn:
            conn.execute(sa.text(
                "INSERT INTO tokens (name, role, token_hash, created_at) "
                "VALUES ('dr', 'clinician', :h, :t)"), {"h": hash_token(token), "t": now})
        assert st.migrate() == "0007"
        assert st.cohort(["old"]).assessments["phq9_total"].tolist() == [17.0]
        with st.read() as conn:
            assert st.tombstones(conn, ["old"])[0] == {"assessments": {"old": {"a0"}}}
            for table in ("patients", "assessments", "retractions", "tokens", "audit"):
                clinics = conn.execute(sa.text(f"SELECT DISTINCT clinic FROM {table}")).all()
                assert [r[0] for r in clinics] == ["default"], table
        assert st.token_identity(hash_token(token)) == ("dr", "clinician", "default")
        (row,) = st.audit_rows("old")
        assert (row["action"], row["outcome"], row["clinic"]) == ("forecast", "ok", "default")
        # The rebuilt keys: rows cascade with their patient, ids are unique per clinic.
        north = st.scoped("north")
        north.run_write(lambda conn: north.upsert_patient(conn, {"patient_id": "old"}))
        with st.write() as conn:
            conn.execute(sa.delete(db.patients).where(db.patients.c.clinic == "default"))
        assert st.count("assessments") == 0
        with north.read() as conn:
            assert north.known_patients(conn, ["old"]) == {"old"}
    finally:
        st.dispose()


def test_cli_tokens_and_load_take_a_clinic(tmp_path, monkeypatch) -> None:
    from forecast.cli import main
    from forecast.data import load_cohort
    from forecast.simulation import simulate, write_simulation
    from service.app import open_store

    monkeypatch.setenv("FORECAST_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    runner = CliRunner()
    made = runner.invoke(main, ["tokens", "create", "--role", "clinician", "--name", "n1",
                                "--clinic", "north"])
    assert made.exit_code == 0, made.output
    bad = runner.invoke(main, ["tokens", "create", "--role", "clinician", "--name", "n2",
                               "--clinic", "no/slash"])
    assert bad.exit_code != 0
    listed = runner.invoke(main, ["tokens", "list"]).output.splitlines()
    assert listed[0] == "name\trole\tclinic\tcreated_at\trevoked_at"
    assert listed[1].split("\t")[:3] == ["n1", "clinician", "north"]
    folder = tmp_path / "cohort"
    write_simulation(simulate(3, seed=5), folder)
    ids = sorted(load_cohort(folder).patients["patient_id"].astype(str))
    loaded = runner.invoke(main, ["load", str(folder), "--clinic", "north"])
    assert loaded.exit_code == 0, loaded.output
    st = open_store()
    try:
        with st.read() as conn:
            assert st.scoped("north").patient_ids(conn) == ids
            assert st.patient_ids(conn) == []  # not the default clinic's
        rows = st.scoped("north").audit_rows(action="patient.write")
        assert sorted(r["patient_id"] for r in rows) == ids
        assert {r["token_name"] for r in rows} == {"cli:load"}
        (made_row,) = st.scoped("north").audit_rows(action="token.create")
        assert made_row["token_name"] == "cli:tokens"
    finally:
        st.dispose()
