"""The FHIR facade as a FHIR client and an EHR use it, with real-world Bundle shapes.

CapabilityStatement, read and search, OperationOutcome for every error, the
RiskAssessment a receiver reads (validated with fhir.resources), version
detection, and the import semantics of US Core, SDC, MII and Synthea shapes.
"""

from __future__ import annotations

import datetime as dt

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment

from forecast.fhir.capability import SEARCH_PARAMETERS
from forecast.instruments import LOINC_PHQ9_TOTAL
from tests.fixtures.clinic import (
    MII_ITEMS,
    MII_PATIENT,
    ROUTINE,
    bundle,
    dstu2_bundle,
    ketamine_procedure,
    observation,
    patient,
    phq2_items,
    phq2_total,
    phq9_panel,
    phq9_qr,
    sdc_nested_response,
    stu3_bundle,
    synthea_bundle,
    us_core_phq9_panel,
)
from tests.fixtures.service import client_for

FHIR = "application/fhir+json"


def post(c, doc, content_type=FHIR):
    return c.http.post("/fhir/r4", json=doc, headers={**c.headers(), "Content-Type": content_type})


def get(c, path, role="clinician"):
    return c.http.get(path, headers=c.headers(role) if role else {})


def ok_bundle(resp):
    assert resp.status_code == 200, resp.get_data(as_text=True)[:1500]
    assert resp.mimetype == FHIR
    doc = resp.get_json()
    Bundle.model_validate(doc)
    return doc


def outcome(resp, status):
    """An error answer: the status, FHIR JSON, a valid OperationOutcome."""
    assert resp.status_code == status, resp.get_data(as_text=True)[:800]
    assert resp.mimetype == FHIR
    doc = resp.get_json()
    OperationOutcome.model_validate(doc)
    assert doc["issue"][0]["severity"] in ("error", "fatal")  # errors first, then warnings
    return doc


def result(entry):
    (coding,) = entry["response"]["outcome"]["issue"][0]["details"]["coding"]
    assert coding["system"] == "urn:kap-forecast:fhir:import-result"
    return coding["code"]


def texts(entry):
    return [i["diagnostics"] for i in entry["response"]["outcome"]["issue"]]


def rows(c, pid):
    r = c.get(f"/api/v1/patients/{pid}")
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["assessments"]


@pytest.fixture
def c(make_app):
    return client_for(make_app())


# --- the CapabilityStatement lists exactly what is answered -----------------------------------
def test_metadata_is_open_and_lists_exactly_what_is_supported(c):
    r = c.http.get("/fhir/r4/metadata")  # no token: clients read it before authenticating
    assert r.status_code == 200
    assert r.mimetype == FHIR
    cs = r.get_json()
    parsed = CapabilityStatement.model_validate(cs)
    assert parsed.fhirVersion == "4.0.1"
    assert parsed.kind == "instance"
    assert set(parsed.format) == {"json", "application/fhir+json"}
    (rest,) = parsed.rest
    assert {i.code for i in rest.interaction} == {"transaction", "batch"}
    by_type = {res.type: res for res in rest.resource}
    assert set(by_type) == {
        "RiskAssessment", "Patient", "QuestionnaireResponse", "Observation", "Procedure",
        "Questionnaire",
    }
    assert {i.code for i in by_type["RiskAssessment"].interaction} == {"read", "search-type"}
    assert {p.name for p in by_type["RiskAssessment"].searchParam} == set(SEARCH_PARAMETERS)
    assert {i.code for i in by_type["Patient"].interaction} == {"read"}
    for t in ("QuestionnaireResponse", "Observation", "Procedure", "Questionnaire"):
        assert not by_type[t].interaction  # only inside a Bundle
    assert parsed.implementation.url == "http://localhost/fhir/r4"


def test_what_the_statement_does_not_list_is_an_operation_outcome(c):
    outcome(get(c, "/fhir/r4/Observation"), 404)
    outcome(get(c, "/fhir/r4/Observation/o1"), 404)
    outcome(c.http.delete("/fhir/r4/RiskAssessment/x", headers=c.headers()), 405)
    outcome(c.http.post("/fhir/r4/metadata", headers=c.headers()), 405)
    doc = outcome(get(c, "/fhir/r4/RiskAssessment?patient=p1&code=x"), 422)
    assert "code" in doc["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/fhir/r4", "post"),
        ("/fhir/r4/RiskAssessment?patient=p1", "get"),
        ("/fhir/r4/RiskAssessment/abc", "get"),
        ("/fhir/r4/Patient/p1", "get"),
    ],
)
def test_authentication_errors_are_operation_outcomes(c, path, method):
    call = getattr(c.http, method)
    doc = outcome(call(path), 401)
    assert doc["issue"][0]["code"] == "login"
    doc = outcome(call(path, headers={"Authorization": "Bearer nope"}), 401)
    doc = outcome(call(path, headers=c.headers("researcher")), 403)
    assert doc["issue"][0]["code"] == "forbidden"


def test_media_type_naming_another_fhir_version_is_refused(c):
    doc = outcome(post(c, bundle([patient("v1")]), f"{FHIR}; fhirVersion=3.0"), 415)
    text = doc["issue"][0]["diagnostics"]
    assert "fhirVersion=3.0 (STU3)" in text
    assert "R4 (4.0.1)" in text
    ok_bundle(post(c, bundle([patient("v1")]), f"{FHIR}; fhirVersion=4.0"))


# --- version detection: never a partial import of STU3 / DSTU2 --------------------------------
@pytest.mark.parametrize(
    ("doc", "version", "element"),
    [
        (stu3_bundle("s3"), "STU3", "Bundle.entry[1].resource.questionnaire"),
        (dstu2_bundle("d2"), "DSTU2", "Bundle.entry[0].resource.careProvider"),
    ],
)
def test_older_fhir_versions_are_refused_naming_the_version(c, doc, version, element):
    got = outcome(post(c, doc), 422)
    assert all(i["code"] == "not-supported" for i in got["issue"])
    assert element in [e for i in got["issue"] for e in i["expression"]]
    assert any(version in i["diagnostics"] and "R4 (4.0.1)" in i["diagnostics"]
               for i in got["issue"])
    assert c.get(f"/api/v1/patients/{doc['entry'][0]['resource']['id']}").status_code == 404


def test_an_stu3_patient_only_bundle_is_not_accepted_silently(c):
    pat = patient("s3p")
    pat["animal"] = {"species": {"text": "human?"}}  # STU3 only
    doc = outcome(post(c, bundle([pat])), 422)
    assert "Patient.animal" in doc["issue"][0]["diagnostics"]
    pat = patient("s3q")
    pat["meta"] = {"profile": ["http://hl7.org/fhir/STU3/StructureDefinition/Patient"]}
    outcome(post(c, bundle([pat])), 422)


# --- import semantics -------------------------------------------------------------------------
def test_synthea_transaction_with_hundreds_of_unrelated_resources(c):
    doc = synthea_bundle("syn1", unrelated=300, scores=[("2024-05-01", 19), ("2024-05-20", 7)],
                         sessions=["2024-05-03", "2024-05-06"])
    got = ok_bundle(post(c, doc))
    entries = got["entry"]
    assert len(entries) == len(doc["entry"])
    statuses = [e["response"]["status"] for e in entries]
    # The unrelated resources (one with invalid elements) are ignored, each saying so.
    assert statuses[1:301] == ["204 No Content"] * 300
    assert {result(e) for e in entries[1:301]} == {"ignored"}
    assert all("location" not in e["response"] for e in entries[1:301])
    assert any("not a PHQ-9 or C-SSRS code" in t for t in texts(entries[3]))
    assert statuses[0] == "201 Created"
    assert entries[0]["response"]["location"] == "Patient/syn1"
    assert statuses[301:] == ["201 Created"] * 4
    assert [(r["date"], r["phq9"]) for r in rows(c, "syn1")] == [
        ("2024-05-01", 19), ("2024-05-20", 7)
    ]
    # The same Bundle again (new urn:uuids would be fine too: ids decide) stores nothing.
    again = ok_bundle(post(c, doc))["entry"]
    assert [e["response"]["status"] for e in again][301:] == ["200 OK"] * 4
    assert {result(e) for e in again[301:]} == {"unchanged"}


def test_transaction_stays_all_or_nothing_for_what_is_imported(c):
    doc = synthea_bundle("syn2", unrelated=20, scores=[("2024-05-01", 19)])
    doc["entry"][-1]["resource"]["valueQuantity"]["value"] = "nineteen"
    got = outcome(post(c, doc), 422)
    assert got["issue"][0]["expression"][0].startswith(f"Bundle.entry[{len(doc['entry']) - 1}]")
    assert c.get("/api/v1/patients/syn2").status_code == 404


def test_phq2_items_and_total_are_ignored_as_phq9_alike(c):
    items = phq2_items("p2", "pq", "2024-06-01", 2, 1)
    total = phq2_total("p2-t", "pq", "2024-06-02", 3)
    entries = ok_bundle(post(c, bundle([patient("pq"), *items, total])))["entry"]
    # Items: kept as a screen row (the models ignore it), with a status of their own.
    for e in entries[1:3]:
        assert e["response"]["status"] == "201 Created"
        assert result(e) == "screen"
        assert texts(e)[0].startswith("screen: ignored as PHQ-9")
    assert any("do not make a PHQ-9" in t for t in texts(entries[1]))
    # Total: nothing to keep, so ignored; the same words.
    assert entries[3]["response"]["status"] == "204 No Content"
    assert result(entries[3]) == "ignored"
    assert any(t.startswith("ignored as PHQ-9: a PHQ-2 total") for t in texts(entries[3]))
    (row,) = rows(c, "pq")
    assert (row["date"], row["phq9_1"], row["phq9_2"], row["phq9"]) == ("2024-06-01", 2, 1, None)
    # Sent again: the same statuses, nothing new.
    again = ok_bundle(post(c, bundle([*items, total])))["entry"]
    assert [e["response"]["status"] for e in again] == ["200 OK", "200 OK", "204 No Content"]
    assert [result(e) for e in again] == ["screen", "screen", "ignored"]


def test_us_core_panel_with_difficulty_member_and_value_string_total(c):
    items = (1, 2, 1, 0, 1, 1, 2, 0, 0)
    res = us_core_phq9_panel("uc", "pu", "2024-07-01", items, total=8)
    entries = ok_bundle(post(c, bundle([patient("pu"), *res])))["entry"]
    every = [t for e in entries for t in texts(e)]
    assert not any("is not in this Bundle" in t for t in every)  # the difficulty item is
    assert result(entries[1]) == "created"  # the panel shares its members' row
    assert entries[1]["response"]["location"] == "Observation/uc"
    assert result(entries[11]) == "ignored"  # the difficulty question is not scored
    (row,) = rows(c, "pu")
    assert (row["phq9_total"], row["phq9"]) == (8, 8)


def test_sdc_response_with_nested_groups(c):
    items = (0, 1, 2, 3, 0, 1, 2, 3, 0)
    ok_bundle(post(c, bundle([patient("ps"), sdc_nested_response("sdc", "ps", "2024-08-01",
                                                                 items, 12)])))
    (row,) = rows(c, "ps")
    assert tuple(row[f"phq9_{i}"] for i in range(1, 10)) == items


# --- idempotency across shapes ------------------------------------------------------------------
def test_stored_content_resent_in_any_shape_is_unchanged(c, mii_resources):
    qr, obs = mii_resources
    ok_bundle(post(c, bundle([patient(MII_PATIENT), qr, obs])))
    when = "2024-03-15"
    total_alone = observation("tot-2", MII_PATIENT, when, LOINC_PHQ9_TOTAL, {"valueInteger": 8})
    shapes = [
        [obs],  # the total Observation alone (it came with its response before)
        [total_alone],  # the same total under another id
        phq9_panel("panel-2", MII_PATIENT, when, MII_ITEMS),  # a panel with members
        phq9_panel("panel-3", MII_PATIENT, when, MII_ITEMS)[1:],  # the items alone
        [phq9_qr("qr-2", MII_PATIENT, when, MII_ITEMS, total=8)],  # a response with total
    ]
    for shape in shapes:
        entries = ok_bundle(post(c, bundle(shape)))["entry"]
        assert {e["response"]["status"] for e in entries} == {"200 OK"}, texts(entries[0])
        assert {result(e) for e in entries} == {"unchanged"}
        assert "stored already from QuestionnaireResponse/" in texts(entries[-1])[0]
    (row,) = rows(c, MII_PATIENT)
    assert row["id"] == f"QuestionnaireResponse/{qr['id']}"


def test_other_content_for_a_stored_date_is_a_conflict_naming_both(c, mii_resources):
    qr, obs = mii_resources
    ok_bundle(post(c, bundle([patient(MII_PATIENT), qr, obs])))
    other = observation("tot-9", MII_PATIENT, "2024-03-15", LOINC_PHQ9_TOTAL, {"valueInteger": 9})
    doc = outcome(post(c, bundle([other])), 409)
    (issue,) = doc["issue"]
    assert issue["code"] == "conflict"
    assert issue["expression"] == ["Bundle.entry[0].resource"]
    assert f"QuestionnaireResponse/{qr['id']}" in issue["diagnostics"]
    assert "Observation/tot-9" in issue["diagnostics"]
    assert "phq9_total 9 here, 8 stored" in issue["diagnostics"]


# --- the RiskAssessment a receiver reads ------------------------------------------------------
def _search(c, query):
    doc = ok_bundle(get(c, f"/fhir/r4/RiskAssessment?{query}"))
    assert doc["type"] == "searchset"
    return doc


def test_search_by_patient_or_subject_with_count_and_full_url(clinic_client):
    c = clinic_client
    by_patient = _search(c, f"patient=Patient/{ROUTINE}")
    by_subject = _search(c, f"subject={ROUTINE}")
    (entry,) = by_patient["entry"]
    assert entry["fullUrl"] == f"http://localhost/fhir/r4/RiskAssessment/{entry['resource']['id']}"
    assert by_subject["entry"][0]["resource"]["id"] == entry["resource"]["id"]
    counted = _search(c, f"patient={ROUTINE}&_count=0")
    assert counted["total"] == 1
    assert "entry" not in counted
    assert _search(c, "patient=nobody")["total"] == 0
    outcome(get(c, "/fhir/r4/RiskAssessment"), 400)
    outcome(get(c, f"/fhir/r4/RiskAssessment?patient={ROUTINE}&subject=other"), 400)
    outcome(get(c, f"/fhir/r4/RiskAssessment?patient={ROUTINE}&_count=-1"), 400)


def test_risk_assessment_as_a_receiver_reads_it(clinic_client):
    c = clinic_client
    (entry,) = _search(c, f"patient={ROUTINE}")["entry"]
    ra = entry["resource"]
    parsed = RiskAssessment.model_validate(ra)
    today = dt.datetime.now(dt.UTC).date()
    assert str(parsed.occurrenceDateTime) == today.isoformat()
    forecast = c.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    # One prediction per horizon, each from the as-of date to as-of + horizon (absolute dates).
    horizons = [h for h in forecast["risk"]["horizons"] if h["risk"] is not None]
    assert [(str(p.whenPeriod.start), str(p.whenPeriod.end)) for p in parsed.prediction] == [
        (today.isoformat(), (today + dt.timedelta(days=h["days"])).isoformat()) for h in horizons
    ]
    assert [float(p.probabilityDecimal) for p in parsed.prediction] == [
        round(h["risk"], 4) for h in horizons
    ]
    # The performer is the model, named with its version; the method is coded.
    (device,) = parsed.contained
    assert parsed.performer.reference == f"#{device.id}"
    assert [v.value for v in device.version] == [forecast["model_version"]]
    assert parsed.method.coding[0].system == "urn:kap-forecast:fhir:codes"
    assert any("not a suicide-risk assessment" in n.text for n in parsed.note)
    # Basis: every resource used, the session Procedures included.
    basis = {b.reference for b in parsed.basis}
    assert {f"Procedure/{ROUTINE}-s{k}" for k in (0, 1, 2, 3, 9)} <= basis
    assert {f"QuestionnaireResponse/{ROUTINE}-q{k}" for k in range(4)} <= basis
    # The shape of the R4 examples (riskassessment-example*): the elements a receiver reads.
    assert {"status", "subject", "occurrenceDateTime", "performer", "basis", "prediction",
            "method", "code", "note"} <= set(ra)
    for p in ra["prediction"]:
        assert set(p) <= {"outcome", "probabilityDecimal", "whenPeriod", "rationale"}


def test_a_total_merged_into_its_response_row_is_in_the_basis(clinic_client, mii_resources):
    c = clinic_client
    qr, obs = mii_resources
    for r in (qr, obs):
        r["subject"] = {"reference": f"Patient/{ROUTINE}"}
        r["authored" if r is qr else "effectiveDateTime"] = (
            dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    ok_bundle(post(c, bundle([qr, obs])))
    (entry,) = _search(c, f"patient={ROUTINE}")["entry"]
    basis = [b["reference"] for b in entry["resource"]["basis"]]
    assert f"QuestionnaireResponse/{qr['id']}" in basis
    assert f"Observation/{obs['id']}" in basis


def test_read_by_id_while_it_can_be_made_again(clinic_client):
    c = clinic_client
    (entry,) = _search(c, f"patient={ROUTINE}")["entry"]
    rid = entry["resource"]["id"]
    r = get(c, f"/fhir/r4/RiskAssessment/{rid}")
    assert r.status_code == 200
    assert r.mimetype == FHIR
    assert r.get_json() == entry["resource"]
    outcome(get(c, "/fhir/r4/RiskAssessment/unknown-id"), 404)
    # A session recorded since changes the inputs: the old RiskAssessment is gone.
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    ok_bundle(post(c, bundle([ketamine_procedure("late", ROUTINE, yesterday)])))
    doc = outcome(get(c, f"/fhir/r4/RiskAssessment/{rid}"), 410)
    assert doc["issue"][0]["code"] == "deleted"
    assert f"RiskAssessment?patient=Patient/{ROUTINE}" in doc["issue"][0]["diagnostics"]


def test_patient_read(clinic_client):
    c = clinic_client
    r = get(c, f"/fhir/r4/Patient/{ROUTINE}")
    assert r.status_code == 200
    assert r.mimetype == FHIR
    parsed = Patient.model_validate(r.get_json())
    assert (parsed.id, parsed.gender) == (ROUTINE, "female")
    outcome(get(c, "/fhir/r4/Patient/nobody"), 404)
