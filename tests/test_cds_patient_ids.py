"""CDS Hooks with an EHR whose patient ids are not kap-forecast's: the identifier mapping.

The prefetched Patient's identifiers (system and value) name the stored
patient (``FORECAST_CDS_PATIENT_IDS``); cards carry the CDS Hooks 2.0 shapes
(``source.topic`` a Coding with a system, a reverse-domain extension key).
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from forecast.instruments import LOINC_PHQ9_ITEMS, LOINC_SYSTEM
from service.cds_prefetch import PatientLinkError, load_patient_links
from tests.fixtures.clinic import (
    CDS_AUDIENCE,
    CDS_ISS,
    CDS_SECRET,
    LA,
    ROUTINE,
    URGENT,
    bundle,
    clinic_history,
    observation,
)
from tests.fixtures.service import client_for
from tests.test_cds import call, hook, token

MRN = "https://ehr.example.org/fhir/sid/mrn"
KEY = "org.kap-forecast.forecast"


def ehr_patient(ehr_id, *identifiers):
    return {
        "resourceType": "Patient",
        "id": ehr_id,
        "identifier": [{"system": s, "value": v} for s, v in identifiers],
    }


@pytest.fixture
def linked_client(make_app, clinic_models):
    """The clinic app with two stored patients and an identifier mapping."""
    app = make_app(
        models=clinic_models,
        KAP_CDS_CLIENTS={"clients": [
            {"iss": CDS_ISS, "name": "test-ehr", "secret": CDS_SECRET, "algorithms": ["HS256"]}
        ]},
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
        KAP_CDS_PATIENT_IDS={
            "systems": [MRN],
            "identifiers": [
                {"system": "urn:oid:1.2.3", "value": "A-991", "patient_id": URGENT},
            ],
        },
    )
    c = client_for(app)
    for pid, si in ((ROUTINE, False), (URGENT, True)):
        r = c.http.post("/fhir/r4", json=clinic_history(pid, si=si),
                        headers={**c.headers(), "Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.get_data(as_text=True)
    return c


def one_card(c, body):
    r = call(c, body, token())
    assert r.status_code == 200, r.get_data(as_text=True)
    (card,) = r.get_json()["cards"]
    return card


@pytest.mark.slow
def test_an_identifier_system_names_the_stored_patient(linked_client):
    c = linked_client
    card = one_card(c, hook("ehr-4711", {"patient": ehr_patient("ehr-4711", (MRN, ROUTINE))}))
    data = card["extension"][KEY]
    assert data["patient_id"] == ROUTINE
    forecast = c.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    assert data["risks"] == {str(h["days"]): h["risk"] for h in forecast["risk"]["horizons"]}
    assert f"EHR patient ehr-4711 is kap-forecast patient {ROUTINE}" in card["detail"]
    assert card["links"][0]["url"].endswith(f"/patients/{ROUTINE}")
    # CDS Hooks 2.0 shapes: topic is a Coding with a system; the extension key reverse-domain.
    assert card["source"]["topic"] == {
        "system": "urn:kap-forecast:fhir:codes",
        "code": "kap-maintenance",
        "display": "Ketamine maintenance timing",
    }
    assert list(card["extension"]) == [KEY]


@pytest.mark.slow
def test_an_identifier_table_entry_names_the_stored_patient(linked_client):
    card = one_card(linked_client,
                    hook("ehr-9", {"patient": ehr_patient("ehr-9", ("urn:oid:1.2.3", "A-991"))}))
    assert card["indicator"] == "critical"  # URGENT's stored SI answers
    assert card["extension"][KEY]["patient_id"] == URGENT


@pytest.mark.slow
def test_an_unmapped_patient_never_gets_a_stored_history_of_the_same_id(linked_client):
    # The EHR's id equals a stored id, but nothing maps it: they may be two people.
    card = one_card(linked_client,
                    hook(URGENT, {"patient": ehr_patient(URGENT, ("urn:other", "x"))}))
    assert card["indicator"] == "info"
    assert "no identifier of the EHR's Patient is mapped" in card["detail"]
    assert "stored history is not used" in card["detail"]


@pytest.mark.slow
def test_prefetched_si_answers_of_a_mapped_patient_reach_the_safety_rules(linked_client):
    today = dt.datetime.now(dt.UTC).date().isoformat()
    item9 = observation("i9", "ehr-4711", today, LOINC_PHQ9_ITEMS[8],
                        {"valueCodeableConcept": {"coding": [{"system": LOINC_SYSTEM,
                                                              "code": LA[3]}]}})
    card = one_card(linked_client, hook("ehr-4711", {
        "patient": ehr_patient("ehr-4711", (MRN, ROUTINE)),
        "observations": bundle([item9], "searchset"),
    }))
    assert card["indicator"] == "critical"
    assert card["extension"][KEY]["patient_id"] == ROUTINE


@pytest.mark.slow
def test_identifiers_naming_two_patients_use_no_stored_history(linked_client):
    card = one_card(linked_client, hook("ehr-2", {"patient": ehr_patient(
        "ehr-2", (MRN, ROUTINE), ("urn:oid:1.2.3", "A-991"))}))
    assert "name several kap-forecast patients" in card["detail"]
    assert card["indicator"] == "info"


def test_the_mapping_file_is_checked_at_start(make_app, tmp_path):
    path = tmp_path / "ids.json"
    path.write_text(json.dumps({"systems": [MRN], "identifiers": [
        {"system": MRN, "value": "1", "patient_id": "P1"}]}))
    links = load_patient_links(str(path))
    assert links.systems == (MRN,)
    assert links.identifiers == {(MRN, "1"): "P1"}
    path.write_text(json.dumps({"systems": "not a list"}))
    with pytest.raises(PatientLinkError, match="systems must be a list"):
        make_app(KAP_CDS_PATIENT_IDS=str(path))
    with pytest.raises(PatientLinkError, match="unknown key"):
        load_patient_links({"system": [MRN]})
