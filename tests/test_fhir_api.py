"""POST /fhir/r4 (Bundle ingest) and GET /fhir/r4/RiskAssessment."""

from __future__ import annotations

import datetime as dt

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from forecast.instruments import LOINC_PHQ9_TOTAL
from tests.fixtures.clinic import (
    MII_ITEMS,
    MII_PATIENT,
    bundle,
    ketamine_procedure,
    local_phq9_form,
    local_phq9_response,
    observation,
    patient,
    phq9_qr,
)
from tests.fixtures.service import client_for

FHIR = "application/fhir+json"


def post_bundle(c, doc, role="clinician"):
    return c.http.post("/fhir/r4", json=doc, headers={**c.headers(role), "Content-Type": FHIR})


def outcome(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)[:800]
    assert resp.mimetype == FHIR
    doc = resp.get_json()
    OperationOutcome.model_validate(doc)
    return doc


def result_of(response):
    """An entry's import result: the code of its outcome's first issue."""
    (coding,) = response["outcome"]["issue"][0]["details"]["coding"]
    assert coding["system"] == "urn:kap-forecast:fhir:import-result"
    return coding["code"]


def stored(c, pid):
    r = c.get(f"/api/v1/patients/{pid}")
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


@pytest.fixture
def fhir_client(make_app):
    return client_for(make_app())


def test_real_mii_resources_become_one_phq9_row(fhir_client, mii_resources):
    qr, obs = mii_resources
    resp = post_bundle(fhir_client, bundle([patient(MII_PATIENT), qr, obs]))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    doc = resp.get_json()
    Bundle.model_validate(doc)
    assert doc["type"] == "transaction-response"
    assert [e["response"]["status"] for e in doc["entry"]] == ["201 Created"] * 3
    assert doc["entry"][2]["response"]["location"] == f"Observation/{obs['id']}"

    hist = stored(fhir_client, MII_PATIENT)
    (row,) = hist["assessments"]
    assert row["date"] == "2024-03-15"
    assert tuple(row[f"phq9_{i}"] for i in range(1, 10)) == MII_ITEMS
    assert row["phq9_total"] == 8
    assert row["phq9"] == 8
    assert row["id"] == f"QuestionnaireResponse/{qr['id']}"

    # A retry of the same Bundle (any type) changes nothing and says so; the
    # patient is stored now, so the Bundle need not carry the Patient again.
    again = post_bundle(fhir_client, bundle([obs, qr], "batch"))
    assert again.status_code == 200
    assert again.get_json()["type"] == "batch-response"
    assert {e["response"]["status"] for e in again.get_json()["entry"]} == {"200 OK"}
    assert len(stored(fhir_client, MII_PATIENT)["assessments"]) == 1


def test_malformed_resource_gets_operation_outcome_and_nothing_is_written(
    fhir_client, mii_resources
):
    qr, obs = mii_resources
    bad = observation("bad", "p-other", "2025-01-10", LOINC_PHQ9_TOTAL, {"valueInteger": "x"})
    res = [patient("p-other"), qr, obs, bad]
    doc = outcome(post_bundle(fhir_client, bundle(res)), 422)
    (issue,) = [i for i in doc["issue"] if i["severity"] == "error"]
    assert issue["expression"] == ["Bundle.entry[3].resource.valueInteger"]
    assert issue["code"] == "invalid"
    for pid in (MII_PATIENT, "p-other"):
        assert fhir_client.get(f"/api/v1/patients/{pid}").status_code == 404


def test_contract_validation_error_names_the_resource(fhir_client):
    # A future date passes the FHIR mapping but not forecast.data's rules.
    future = phq9_qr("r-future", "p1", "2999-01-01", (1,) * 9)
    ok = phq9_qr("r-ok", "p1", "2025-01-01", (1,) * 9)
    doc = outcome(post_bundle(fhir_client, bundle([patient("p1"), ok, future])), 422)
    (issue,) = doc["issue"]
    assert issue["expression"] == ["Bundle.entry[2].resource"]
    assert issue["diagnostics"].startswith("date:")
    assert fhir_client.get("/api/v1/patients/p1").status_code == 404


def test_retry_with_changed_content_is_a_conflict(fhir_client):
    first = phq9_qr("r1", "p2", "2025-01-01", (1,) * 9)
    assert post_bundle(fhir_client, bundle([patient("p2"), first])).status_code == 200
    changed = phq9_qr("r1", "p2", "2025-01-01", (2,) * 9)
    doc = outcome(post_bundle(fhir_client, bundle([changed])), 409)
    assert doc["issue"][0]["expression"] == ["Bundle.entry[0].resource"]
    assert doc["issue"][0]["code"] == "conflict"


def test_patient_covariates_and_sessions(fhir_client):
    c = fhir_client
    res = [
        patient("p3", gender="male", birth="1990-02-01"),
        ketamine_procedure("s1", "p3", "2025-01-06"),
        ketamine_procedure("s2", "p3", "2025-01-09"),
    ]
    assert post_bundle(c, bundle(res)).status_code == 200
    # Covariates only the JSON API knows survive a later Bundle with the Patient.
    assert c.put(
        "/api/v1/patients/p3", {"sex": "male", "age": 34, "diagnosis": "trd"}
    ).status_code in (
        200,
        201,
    )
    later = [patient("p3", gender="male"), ketamine_procedure("s3", "p3", "2025-02-20")]
    assert post_bundle(c, bundle(later)).status_code == 200
    hist = stored(c, "p3")
    assert hist["patient"]["diagnosis"] == "trd"
    assert hist["patient"]["sex"] == "male"
    assert [(s["date"], s["kind"]) for s in hist["sessions"]] == [
        ("2025-01-06", "induction"),
        ("2025-01-09", "maintenance"),
        ("2025-02-20", "maintenance"),
    ]


def test_ingest_needs_a_clinician_token(fhir_client, mii_resources):
    r = post_bundle(fhir_client, bundle(list(mii_resources)), role="researcher")
    assert r.status_code == 403
    r = fhir_client.http.post("/fhir/r4", json=bundle(list(mii_resources)))
    assert r.status_code == 401


def test_not_json_and_not_a_bundle(fhir_client):
    r = fhir_client.http.post(
        "/fhir/r4", data=b"{not json", headers={**fhir_client.headers(), "Content-Type": FHIR}
    )
    assert outcome(r, 400)["issue"][0]["code"] == "structure"
    doc = outcome(post_bundle(fhir_client, {"resourceType": "Patient", "id": "x"}), 400)
    assert "expected a Bundle" in doc["issue"][0]["diagnostics"]


def test_risk_assessment_search_without_model_and_for_unknown_patient(fhir_client):
    c = fhir_client
    empty = c.get("/fhir/r4/RiskAssessment?subject=Patient/nobody")
    assert empty.status_code == 200
    assert empty.get_json()["total"] == 0
    outcome(c.get("/fhir/r4/RiskAssessment"), 400)
    scores = phq9_qr("r9", "p9", "2025-01-01", (1,) * 9)
    assert post_bundle(c, bundle([patient("p9"), scores])).status_code == 200
    doc = outcome(c.get("/fhir/r4/RiskAssessment?subject=Patient/p9"), 503)
    assert doc["issue"][0]["code"] == "transient"


@pytest.mark.slow
def test_risk_assessment_matches_the_json_forecast_and_is_audited(clinic_client):
    from fhir.resources.R4B.riskassessment import RiskAssessment

    from tests.fixtures.clinic import ROUTINE, URGENT

    c = clinic_client
    r = c.get(f"/fhir/r4/RiskAssessment?subject=Patient/{ROUTINE}")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == FHIR
    doc = r.get_json()
    Bundle.model_validate(doc)
    assert doc["type"] == "searchset"
    assert doc["total"] == 1
    ra = RiskAssessment.model_validate(doc["entry"][0]["resource"])
    forecast = c.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    assert ra.status == "final"
    assert ra.subject.reference == f"Patient/{ROUTINE}"
    assert str(ra.occurrenceDateTime) == forecast["as_of"]
    assert forecast["model_version"] in ra.method.text
    # Each horizon from the as-of date to an absolute date (never a bare 0..h days).
    as_of = dt.date.fromisoformat(forecast["as_of"])
    got = {
        (p.whenPeriod.end - p.whenPeriod.start).days: float(p.probabilityDecimal)
        for p in ra.prediction
    }
    want = {h["days"]: h["risk"] for h in forecast["risk"]["horizons"] if h["risk"] is not None}
    assert got == pytest.approx(want, abs=1e-4)
    assert all(p.whenPeriod.start == as_of for p in ra.prediction)
    # Basis: every resource imported through FHIR that the forecast used, sessions included.
    assert {b.reference for b in ra.basis} == {
        f"QuestionnaireResponse/{ROUTINE}-q{k}" for k in range(4)
    } | {f"Procedure/{ROUTINE}-s{k}" for k in (0, 1, 2, 3, 9)}
    notes = " ".join(n.text for n in ra.note)
    assert forecast["suggestion"]["session_by"] in notes
    assert "not a suicide-risk assessment" in notes
    assert not notes.startswith("SAFETY")
    url = f"/api/v1/audit?patient_id={ROUTINE}&action=forecast"
    audit = c.get(url, role="admin").get_json()["audit"]
    assert "fhir_risk_assessment" in [a["endpoint"] for a in audit]

    urgent = c.get(f"/fhir/r4/RiskAssessment?subject=Patient/{URGENT}").get_json()
    first_note = urgent["entry"][0]["resource"]["note"][0]["text"]
    assert first_note.startswith("SAFETY (urgent)")


def test_bundle_refused_for_required_bindings_and_unknown_subjects(fhir_client):
    c = fhir_client
    good = [
        patient("pr"),
        ketamine_procedure("sr", "pr", "2025-01-06"),
        phq9_qr("qr-pr", "pr", "2025-01-15", (1,) * 9),
    ]
    cases = [
        (0, "gender", "F", "Bundle.entry[0].resource.gender"),
        (2, "status", "done", "Bundle.entry[2].resource.status"),
        (1, "subject", {"reference": "Patient/nobody"}, "Bundle.entry[1].resource.subject"),
    ]
    for index, element, value, expression in cases:
        res = [dict(r) for r in good]
        res[index][element] = value
        doc = outcome(post_bundle(c, bundle(res)), 422)
        errors = [i for i in doc["issue"] if i["severity"] == "error"]
        assert [i["expression"] for i in errors] == [[expression]], (element, errors)
        # All or nothing: the valid Patient of the same Bundle is not stored either.
        assert c.get("/api/v1/patients/pr").status_code == 404
    # Once the patient is stored, a later Bundle may reference it without the Patient.
    assert post_bundle(c, bundle(good)).status_code == 200
    later = phq9_qr("qr-pr-2", "pr", "2025-01-29", (2,) * 9)
    assert post_bundle(c, bundle([later])).status_code == 200
    assert len(stored(c, "pr")["assessments"]) == 2


def test_statuses_not_imported_are_listed_in_the_response(fhir_client):
    c = fhir_client
    wrong = observation("o-err", "pe", "2025-01-05", LOINC_PHQ9_TOTAL, {"valueInteger": 25})
    wrong["status"] = "entered-in-error"
    draft = phq9_qr("q-draft", "pe", "2025-01-06", (3,) * 9)
    draft["status"] = "in-progress"
    prelim = observation("o-pre", "pe", "2025-01-07", LOINC_PHQ9_TOTAL, {"valueInteger": 12})
    prelim["status"] = "preliminary"
    resp = post_bundle(c, bundle([patient("pe"), wrong, draft, prelim]))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    doc = resp.get_json()
    Bundle.model_validate(doc)
    entries = [e["response"] for e in doc["entry"]]
    for k in (1, 2):
        assert "location" not in entries[k]
    # Not imported: a status of its own, never "200 OK" as if it were stored.
    assert entries[2]["status"] == "204 No Content"
    assert result_of(entries[2]) == "ignored"
    (issue,) = entries[2]["outcome"]["issue"][1:]
    assert issue["severity"] == "warning"
    assert issue["diagnostics"].startswith("not imported:")
    assert repr("in-progress") in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[2].resource.status"]
    # entered-in-error is a withdrawal: nothing was stored under the id, so it is only
    # recorded, and refuses the id later (tests/test_fhir_withdrawal.py).
    assert result_of(entries[1]) == "withdrawn"
    (issue,) = entries[1]["outcome"]["issue"][1:]
    assert issue["severity"] == "information"
    assert issue["diagnostics"].startswith("recorded: no stored assessment carries")
    assert entries[3]["location"] == "Observation/o-pre"
    assert (entries[3]["status"], result_of(entries[3])) == ("201 Created", "created")
    rows = stored(c, "pe")["assessments"]
    assert [(r["date"], r["phq9"]) for r in rows] == [("2025-01-07", 12)]


def test_clinic_questionnaires_folder_reads_its_own_forms(make_app, tmp_path):
    import json

    from service.config import ConfigError

    forms = tmp_path / "forms"
    forms.mkdir()
    (forms / "phq9-local.json").write_text(json.dumps(local_phq9_form()))
    c = client_for(make_app(KAP_QUESTIONNAIRES_DIR=str(forms)))
    items = (2, 2, 1, 1, 0, 0, 3, 1, 0)
    entries = post_bundle(c, bundle([patient("pf"),
                                     local_phq9_response("qf", "pf", "2025-01-06", items)]))
    assert entries.status_code == 200, entries.get_data(as_text=True)
    (row,) = stored(c, "pf")["assessments"]
    assert tuple(row[f"phq9_{i}"] for i in range(1, 10)) == items
    # A file that is no Questionnaire stops the start, naming it.
    (forms / "broken.json").write_text(json.dumps({"resourceType": "Patient", "id": "x"}))
    with pytest.raises(ConfigError, match="broken.json"):
        make_app(KAP_QUESTIONNAIRES_DIR=str(forms))


def test_a_patient_resource_keeps_the_declared_covariates(make_app):
    c = client_for(make_app(KAP_COVARIATES=("bmi",)))
    assert c.put("/api/v1/patients/pb", {"sex": "female", "bmi": 31.0}).status_code == 201
    assert post_bundle(c, bundle([patient("pb", gender="male")])).status_code == 200
    got = stored(c, "pb")["patient"]
    assert got["sex"] == "male"
    assert got["bmi"] == 31.0
