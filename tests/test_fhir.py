"""forecast.fhir: FHIR R4 resources -> contract records, forecasts -> RiskAssessment."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from forecast.fhir import (
    FhirError,
    map_bundle,
    map_resources,
    operation_outcome,
    risk_assessment,
)
from forecast.instruments import LOINC_PHQ9_ITEMS, LOINC_PHQ9_TOTAL
from tests.fixtures.clinic import (
    MII_ITEMS,
    MII_PATIENT,
    bundle,
    cssrs_qr,
    ketamine_procedure,
    local_phq9_form,
    local_phq9_response,
    observation,
    patient,
    phq9_panel,
    phq9_qr,
)


def _items(rec: dict) -> tuple:
    return tuple(rec.get(f"phq9_{i}") for i in range(1, 10))


def _error_exprs(err: FhirError) -> list[str]:
    return [i.expression for i in err.issues if i.severity == "error"]


# --- the real MII resources ---------------------------------------------------------
@pytest.mark.parametrize("order", ["qr_first", "obs_first"])
@pytest.mark.parametrize("kind", ["transaction", "batch", "collection"])
def test_mii_response_and_total_merge_into_one_assessment(mii_resources, order, kind):
    qr, obs = mii_resources
    res = [qr, obs] if order == "qr_first" else [obs, qr]
    m = map_bundle(bundle(res, kind))
    assert list(m.patients) == [MII_PATIENT]
    assert len(m.assessments) == 1
    rec = m.assessments[0]
    assert rec["patient_id"] == MII_PATIENT
    # Local date as written ("2024-03-15T10:00:00+01:00"), not shifted to UTC.
    assert rec["date"] == "2024-03-15"
    assert _items(rec) == MII_ITEMS
    assert rec["phq9_total"] == 8 == sum(MII_ITEMS)
    # The response's id wins whatever the order, so a retry maps to the same row.
    assert rec["id"] == f"QuestionnaireResponse/{qr['id']}"
    assert sorted(m.sources[("assessments", rec["id"])]) == [
        "Bundle.entry[0].resource",
        "Bundle.entry[1].resource",
    ]
    assert not [i for i in m.issues if i.severity != "information"]
    assert m.items() == [
        (MII_PATIENT, "assessments", [{k: v for k, v in rec.items() if k != "patient_id"}])
    ]


def test_total_observation_that_disagrees_with_response_is_a_conflict(mii_resources):
    qr, obs = mii_resources
    obs["valueQuantity"]["value"] = 9
    with pytest.raises(FhirError) as exc:
        map_bundle(bundle([qr, obs]))
    (issue,) = [i for i in exc.value.issues if i.severity == "error"]
    assert issue.code == "conflict"
    assert issue.expression == "Bundle.entry[1].resource.valueQuantity"
    assert "Bundle.entry[0].resource.item[9]" in issue.diagnostics


def test_derived_total_joins_the_response_even_on_another_day(mii_resources):
    qr, obs = mii_resources
    obs["effectiveDateTime"] = "2024-03-16T09:00:00+01:00"
    m = map_bundle(bundle([qr, obs]))
    assert [r["date"] for r in m.assessments] == ["2024-03-15"]


# --- other shapes seen in the wild ----------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueInteger": 12}, 12),
        ({"valueDecimal": 12.0}, 12),
        ({"valueQuantity": {"value": 12, "unit": "{score}"}}, 12),
        ({"valueString": "12"}, 12),
    ],
)
def test_total_observation_value_shapes(value, expected):
    m = map_bundle(bundle([observation("t1", "p1", "2025-01-10", LOINC_PHQ9_TOTAL, value)]))
    assert m.assessments == [
        {"patient_id": "p1", "id": "Observation/t1", "date": "2025-01-10", "phq9_total": expected}
    ]


@pytest.mark.parametrize("style", ["loinc", "integer", "sdc", "mii"])
def test_questionnaire_response_linkid_styles(style):
    items = (3, 2, 2, 1, 0, 1, 3, 2, 0)
    qr = phq9_qr("r1", "p1", "2025-02-01T08:30:00Z", items, style=style, total=sum(items))
    m = map_bundle(bundle([qr]))
    (rec,) = m.assessments
    assert _items(rec) == items
    assert rec["phq9_total"] == 14


def test_phq9_panel_with_members_becomes_one_row():
    items = (1, 2, 0, 0, 1, 1, 2, 0, 1)
    m = map_bundle(bundle(phq9_panel("panel", "p2", "2025-03-03", items)))
    (rec,) = m.assessments
    assert _items(rec) == items
    assert "phq9_total" not in rec
    assert not [i for i in m.issues if i.code == "not-found"]


def test_panel_member_outside_the_bundle_is_reported():
    panel, *members = phq9_panel("panel", "p2", "2025-03-03", (1,) * 9)
    m = map_bundle(bundle([panel, *members[:8]]))
    (warn,) = [i for i in m.issues if i.code == "not-found"]
    assert warn.expression == "Bundle.entry[0].resource.hasMember[8]"
    assert _items(m.assessments[0])[-1] is None


def test_item_observation_with_la_code_and_cssrs_questionnaire_merge():
    item9 = observation(
        "i9",
        "p3",
        "2025-04-01",
        LOINC_PHQ9_ITEMS[8],
        {"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA6570-1"}]}},
    )
    m = map_bundle(bundle([item9, cssrs_qr("c1", "p3", "2025-04-01", yes=(1, 2), behaviour=True)]))
    (rec,) = m.assessments
    assert rec["phq9_9"] == 2
    assert rec["cssrs_ideation"] == 2
    assert rec["cssrs_behavior"] == 1
    # The questionnaire response is the primary resource of the merged row.
    assert rec["id"] == "QuestionnaireResponse/c1"


def test_cssrs_all_no_is_level_zero():
    m = map_bundle(bundle([cssrs_qr("c2", "p3", "2025-04-02", yes=(), behaviour=False)]))
    assert m.assessments[0]["cssrs_ideation"] == 0
    assert m.assessments[0]["cssrs_behavior"] == 0


def test_items_and_total_must_agree_within_a_response():
    qr = phq9_qr("r1", "p1", "2025-02-01", (1,) * 9, total=10)
    with pytest.raises(FhirError) as exc:
        map_bundle(bundle([qr]))
    assert "give 9" in str(exc.value)


# --- sessions -----------------------------------------------------------------------------
def test_procedures_become_sessions_with_documented_kind_defaults():
    res = [
        patient("p4", birth="1980-06-01"),
        ketamine_procedure("s2", "p4", "2025-01-08"),
        ketamine_procedure("s1", "p4", "2025-01-05T10:00:00+01:00"),
        ketamine_procedure("s3", "p4", "2025-02-10", kind="induction"),
        ketamine_procedure("s4", "p4", "2025-03-10", text="Esketamine 84 mg nasal spray"),
        {
            "resourceType": "Procedure",
            "id": "s5",
            "status": "completed",
            "code": {"coding": [{"system": "urn:x", "code": "G2083"}]},
            "subject": {"reference": "Patient/p4"},
            "performedPeriod": {"start": "2025-04-01T09:00:00Z", "end": "2025-04-01T11:00:00Z"},
        },
    ]
    m = map_bundle(bundle(res))
    got = [(s["date"], s["kind"], s.get("route")) for s in m.sessions]
    assert got == [
        ("2025-01-05", "induction", "iv"),  # first session ever: induction
        ("2025-01-08", "maintenance", "iv"),  # kind not stated: maintenance
        ("2025-02-10", "induction", "iv"),  # stated by the extension
        ("2025-03-10", "maintenance", "intranasal"),
        ("2025-04-01", "maintenance", "intranasal"),  # HCPCS esketamine code
    ]
    assert m.patients["p4"] == {"patient_id": "p4", "sex": "female", "age": 44.0}


def test_first_session_on_record_makes_a_new_unstated_session_maintenance():
    res = [ketamine_procedure("s9", "p5", "2025-05-05")]
    m = map_bundle(bundle(res), known_first_session={"p5": "2025-01-01"})
    assert m.sessions[0]["kind"] == "maintenance"


def test_non_ketamine_procedure_is_ignored_with_a_warning():
    proc = ketamine_procedure("x", "p6", "2025-01-01", text="Electroconvulsive therapy")
    m = map_bundle(bundle([proc]))
    assert m.sessions == []
    assert [i.expression for i in m.issues] == ["Bundle.entry[0].resource.code"]


# --- errors name the resource and the element ------------------------------------------
def test_malformed_value_names_entry_and_element(mii_resources):
    qr, obs = mii_resources
    bad = observation("t2", "p1", "2025-01-10", LOINC_PHQ9_TOTAL, {"valueInteger": "twelve"})
    with pytest.raises(FhirError) as exc:
        map_bundle(bundle([qr, obs, bad]))
    assert _error_exprs(exc.value) == ["Bundle.entry[2].resource.valueInteger"]


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (
            observation("t3", "p1", "2025-01-10", LOINC_PHQ9_TOTAL, {"valueInteger": 30}),
            "Bundle.entry[0].resource.valueInteger",
        ),
        (
            observation("t4", "p1", "2025-01", LOINC_PHQ9_TOTAL, {"valueInteger": 3}),
            "Bundle.entry[0].resource.effectiveDateTime",
        ),
        (
            {
                **observation("t5", "p1", "2025-01-10", LOINC_PHQ9_TOTAL, {"valueInteger": 3}),
                "subject": {"reference": "Group/g1"},
            },
            "Bundle.entry[0].resource.subject",
        ),
        (
            phq9_qr("r5", "p1", "2025-01-10", (4, 0, 0, 0, 0, 0, 0, 0, 0), style="integer"),
            "Bundle.entry[0].resource.item[0].answer[0].valueInteger",
        ),
        (
            {**phq9_qr("r6", "p1", "2025-01-10", (1,) * 9), "id": None},
            "Bundle.entry[0].resource.id",
        ),
    ],
)
def test_bad_values_are_errors_naming_the_element(resource, expression):
    b = bundle([resource], "collection")
    for e in b["entry"]:
        e.pop("fullUrl", None)
    if resource.get("id") is None:
        b["entry"][0]["resource"].pop("id")
    with pytest.raises(FhirError) as exc:
        map_bundle(b)
    assert expression in _error_exprs(exc.value)


def test_not_a_bundle_and_unsupported_types_are_errors():
    with pytest.raises(FhirError, match="expected a Bundle"):
        map_bundle({"resourceType": "Observation"})
    with pytest.raises(FhirError, match="Bundle.type 'history'"):
        map_bundle({"resourceType": "Bundle", "type": "history", "entry": []})
    with pytest.raises(FhirError, match="not a FHIR R4 resource type"):
        map_resources([{"resourceType": "Nonsense"}])


def test_unmapped_link_ids_are_reported():
    qr = phq9_qr("r7", "p1", "2025-01-10", (1,) * 9)
    qr["item"].append({"linkId": "favourite-colour", "answer": [{"valueString": "blue"}]})
    m = map_bundle(
        bundle(
            [
                qr,
                {
                    "resourceType": "Encounter",
                    "id": "e",
                    "status": "finished",
                    "class": {"code": "AMB"},
                },
            ]
        )
    )
    msgs = " | ".join(i.diagnostics for i in m.issues)
    assert "'favourite-colour'" in msgs
    assert "Encounter resources are not imported" in msgs


def test_operation_outcome_is_valid_fhir():
    try:
        map_bundle(
            bundle([observation("t", "p", "2025-01-01", LOINC_PHQ9_TOTAL, {"valueInteger": "x"})])
        )
    except FhirError as err:
        oo = operation_outcome(err.issues)
    OperationOutcome.model_validate(oo)
    assert oo["issue"][0]["severity"] == "error"
    assert oo["issue"][0]["expression"] == ["Bundle.entry[0].resource.valueInteger"]


# --- output --------------------------------------------------------------------------------
ANSWER = {
    "patient_id": "p1",
    "as_of": "2025-06-01",
    "model_version": "20250601-abc",
    "status": "routine",
    "status_reason": "In response since the last session.",
    "safety": {"level": "review", "reasons": ["PHQ-9 item 9 answered 1"], "statement": "Review."},
    "risk": {
        "horizons": [
            {"days": 7, "risk": 0.05, "lower": 0.02, "upper": 0.09},
            {"days": 28, "risk": 0.31, "lower": 0.2, "upper": 0.4},
        ]
    },
    "median_remaining_days": 40.0,
    "suggestion": {
        "session_by": "2025-06-19",
        "window_start": "2025-06-12",
        "window_end": "2025-06-19",
        "threshold": 0.2,
        "rationale": "Risk reaches 20 % on 19 June.",
    },
    "caveats": ["Decision support only."],
}


def test_risk_assessment_is_valid_r4_and_carries_the_forecast():
    ra = risk_assessment(ANSWER, basis=["Observation/o1"], resource_id="ra1")
    parsed = RiskAssessment.model_validate(ra)
    assert parsed.status == "final"
    assert parsed.subject.reference == "Patient/p1"
    assert str(parsed.occurrenceDateTime) == "2025-06-01"
    assert "20250601-abc" in parsed.method.text
    assert [float(p.probabilityDecimal) for p in parsed.prediction] == [0.05, 0.31]
    # Absolute dates from the as-of date: no receiver can read the horizon as an age.
    periods = [(str(p.whenPeriod.start), str(p.whenPeriod.end)) for p in parsed.prediction]
    assert periods == [("2025-06-01", "2025-06-08"), ("2025-06-01", "2025-06-29")]
    assert all(p.whenRange is None for p in parsed.prediction)
    # The model that made it, as the performer: a contained Device with the version.
    (device,) = parsed.contained
    assert device.get_resource_type() == "Device"
    assert parsed.performer.reference == f"#{device.id}"
    assert [v.value for v in device.version] == ["20250601-abc"]
    assert parsed.method.coding[0].code == "survival-model"
    notes = [n.text for n in parsed.note]
    assert notes[0].startswith("SAFETY (review)")
    assert any("2025-06-19" in n for n in notes)
    assert any("not a suicide-risk assessment" in n for n in notes)
    assert parsed.basis[0].reference == "Observation/o1"


POPULATION_ANSWER = {
    **ANSWER,
    "status": "insufficient_data",
    "status_reason": "Only 1 PHQ-9 score(s) on record; too few for a personalised forecast.",
    "safety": {"level": None, "reasons": [], "statement": "No flag."},
    "risk": {
        "kind": "population",
        "horizons": [
            {"days": 7, "risk": 0.08, "lower": None, "upper": None},
            {"days": 28, "risk": 0.27, "lower": None, "upper": None},
        ],
    },
    "median_remaining_days": None,
    "suggestion": {**ANSWER["suggestion"], "basis": "population"},
}


def test_population_estimate_is_not_presented_as_the_patients_prediction():
    parsed = RiskAssessment.model_validate(risk_assessment(POPULATION_ANSWER))
    # Predictions of a RiskAssessment are read as the subject's own: none here.
    assert not parsed.prediction
    assert "population estimate, not personalised" in parsed.method.text
    notes = [n.text for n in parsed.note]
    (why,) = [n for n in notes if "No personalised prediction" in n]
    assert "insufficient_data" in why
    assert "population estimate, not personalised" in why
    assert "7 d 8%" in why
    assert "28 d 27%" in why
    (when,) = [n for n in notes if n.startswith("Suggested next maintenance session")]
    assert "(population estimate, not personalised)" in when
    # A personalised answer keeps its predictions and says nothing of the kind.
    personal = risk_assessment({**ANSWER, "risk": {**ANSWER["risk"], "kind": "personalised"}})
    assert len(personal["prediction"]) == 2
    assert "population" not in personal["method"]["text"]
    assert not [n for n in personal["note"] if "No personalised prediction" in n["text"]]


def test_nested_groups_and_cssrs_short_link_ids():
    items = (1, 2, 0, 1, 1, 0, 2, 1, 0)
    qr = phq9_qr("n1", "p7", "2025-05-05", items, style="sdc")
    qr["item"] = [{"linkId": "H1", "item": [{"linkId": "H1/T1", "item": qr["item"]}]}]
    cssrs = {
        "resourceType": "QuestionnaireResponse",
        "id": "c7",
        "status": "completed",
        "questionnaire": "https://example.org/Questionnaire/c-ssrs-screener",
        "subject": {"reference": "Patient/p7"},
        "authored": "2025-05-05",
        "item": [
            {"linkId": f"Q{i}", "answer": [{"valueCoding": {"code": "Y" if i <= 2 else "N"}}]}
            for i in range(1, 7)
        ],
    }
    (rec,) = map_bundle(bundle([qr, cssrs])).assessments
    assert _items(rec) == items
    assert rec["cssrs_ideation"] == 2
    assert rec["cssrs_behavior"] == 0


def _urn_transaction(pat: dict) -> dict:
    qr = phq9_qr("x", "ignored", "2025-06-01", (0,) * 9)
    qr.pop("id")
    qr["subject"] = {"reference": "urn:uuid:5e1f8f0e-0000-4000-8000-000000000001"}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5e1f8f0e-0000-4000-8000-000000000001",
                "resource": pat,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:5e1f8f0e-0000-4000-8000-000000000002",
                "resource": qr,
                "request": {"method": "POST", "url": "QuestionnaireResponse"},
            },
        ],
    }


def test_transaction_with_urn_uuid_references():
    # References through the Patient entry's urn:uuid fullUrl resolve to its id.
    pat = {"resourceType": "Patient", "id": "pu1", "gender": "male", "birthDate": "1970-01-01"}
    m = map_bundle(_urn_transaction(pat))
    assert m.patients == {"pu1": {"patient_id": "pu1", "sex": "male"}}
    (rec,) = m.assessments
    assert rec["patient_id"] == "pu1"
    assert rec["id"] == "QuestionnaireResponse/5e1f8f0e-0000-4000-8000-000000000002"


def test_patient_identity_must_be_stable():
    # A urn:uuid changes with every transaction: taking it as patient_id would make
    # a retried import a second patient, so a Patient without id is refused.
    pat = {"resourceType": "Patient", "gender": "male", "birthDate": "1970-01-01"}
    with pytest.raises(FhirError) as err:
        map_bundle(_urn_transaction(pat))
    assert "Bundle.entry[0].resource.id" in _error_exprs(err.value)
    assert "placeholder" in str(err.value)
    # A RESTful fullUrl carries the logical id.
    doc = _urn_transaction(pat)
    doc["entry"][0]["fullUrl"] = "https://ehr.example/fhir/Patient/rest-7"
    doc["entry"][1]["resource"]["subject"] = {"reference": "Patient/rest-7"}
    m = map_bundle(doc)
    assert list(m.patients) == ["rest-7"]
    assert m.assessments[0]["patient_id"] == "rest-7"


@pytest.mark.parametrize(
    ("index", "element", "value"),
    [
        (0, "gender", "F"),
        (1, "status", "done"),
        (2, "status", "finished"),
        (3, "status", "complete"),
    ],
    ids=["patient-gender", "observation-status", "procedure-status", "response-status"],
)
def test_codes_outside_required_value_sets_are_errors(index, element, value):
    res = [
        patient("pb"),
        observation("ob", "pb", "2025-01-05", LOINC_PHQ9_TOTAL, {"valueInteger": 18}),
        ketamine_procedure("sb", "pb", "2025-01-06"),
        phq9_qr("qb", "pb", "2025-01-15", (1,) * 9),
    ]
    res[index][element] = value
    with pytest.raises(FhirError) as err:
        map_bundle(bundle(res))
    issues = [i for i in err.value.issues if i.severity == "error"]
    assert [i.expression for i in issues] == [f"Bundle.entry[{index}].resource.{element}"]
    assert repr(value) in issues[0].diagnostics
    assert issues[0].code == "code-invalid"


@pytest.mark.parametrize(
    ("kind", "status", "imported"),
    [
        ("obs", "cancelled", False),
        ("obs", "registered", False),
        ("obs", "preliminary", True),
        ("qr", "in-progress", False),
        ("qr", "amended", True),
    ],
)
def test_valid_statuses_not_imported_are_listed(kind, status, imported):
    res = (
        observation("os", "ps", "2025-01-05", LOINC_PHQ9_TOTAL, {"valueInteger": 18})
        if kind == "obs"
        else phq9_qr("qs", "ps", "2025-01-05", (2,) * 9)
    )
    res["status"] = status
    m = map_bundle(bundle([patient("ps"), res]))
    assert len(m.assessments) == int(imported)
    notes = [i for i in m.issues if i.expression.startswith("Bundle.entry[1]")]
    if imported:
        assert m.assessments[0]["phq9_total" if kind == "obs" else "phq9_1"] in (18, 2)
        assert not [i for i in notes if "not imported" in i.diagnostics]
    else:
        (note,) = notes
        assert note.severity == "warning"
        assert note.expression == "Bundle.entry[1].resource.status"
        assert note.diagnostics.startswith("not imported:")
        assert repr(status) in note.diagnostics
        assert m.entries[1][1] is None


def test_entered_in_error_maps_to_a_withdrawal_of_the_resource_id():
    obs = observation("ow", "pw", "2025-01-05", LOINC_PHQ9_TOTAL, {"valueInteger": 18})
    qr = phq9_qr("qw", "pw", "2025-01-06", (2,) * 9)
    proc = ketamine_procedure("sw", "pw", "2025-01-04")
    stray = phq9_qr("qx", "elsewhere", "2025-01-06", (2,) * 9)
    res = [{**r, "status": "entered-in-error"} for r in (obs, qr, proc, stray)]
    m = map_bundle(bundle(res), known_patients={"pw"})
    assert m.assessments == []
    assert m.sessions == []
    assert sorted(m.retractions, key=lambda r: r["expr"]) == [
        {"patient_id": "pw", "table": t, "id": cid, "expr": f"Bundle.entry[{k}].resource"}
        for k, (t, cid) in enumerate([("assessments", "Observation/ow"),
                                      ("assessments", "QuestionnaireResponse/qw"),
                                      ("sessions", "Procedure/sw")])
    ]
    # A patient neither stored nor in the Bundle has nothing to withdraw: only listed.
    (note,) = [i for i in m.issues if i.expression.startswith("Bundle.entry[3]")]
    assert note.diagnostics.startswith("not imported:")
    assert "pw" in m.patients
    assert "elsewhere" not in m.patients


def test_resources_merged_into_one_row_are_recorded():
    qr = phq9_qr("qm", "pm", "2025-01-06", (2,) * 9)
    total = observation("om", "pm", "2025-01-06", LOINC_PHQ9_TOTAL, {"valueInteger": 18})
    m = map_bundle(bundle([patient("pm"), qr, total]))
    (row,) = m.assessments
    others = m.merged[("assessments", row["id"])]
    assert sorted([row["id"], *others]) == ["Observation/om", "QuestionnaireResponse/qm"]


def test_subject_must_be_in_the_bundle_or_stored():
    obs = observation("ou", "nobody", "2025-01-05", LOINC_PHQ9_TOTAL, {"valueInteger": 18})
    res = [patient("pk"), ketamine_procedure("su", "nobody", "2025-01-06"), obs]
    # Without a store to ask (the command line) a referenced patient is new.
    assert "nobody" in map_bundle(bundle(res)).patients
    with pytest.raises(FhirError) as err:
        map_bundle(bundle(res), known_patients=set())
    assert _error_exprs(err.value) == [
        "Bundle.entry[1].resource.subject",
        "Bundle.entry[2].resource.subject",
    ]
    assert "'nobody'" in str(err.value)
    # Stored patients and Patients of the same Bundle are fine.
    m = map_bundle(bundle(res), known_patients={"nobody"})
    assert {r["patient_id"] for r in m.sessions} == {"nobody"}
    assert map_bundle(bundle([patient("nobody"), *res[1:]]), known_patients=set()).assessments


def test_score_with_comparator_is_refused():
    value = {"valueQuantity": {"value": 10, "comparator": "<"}}
    obs = observation("oc", "pc", "2025-01-05", LOINC_PHQ9_TOTAL, value)
    with pytest.raises(FhirError) as err:
        map_bundle(bundle([obs]))
    assert _error_exprs(err.value) == ["Bundle.entry[0].resource.valueQuantity.comparator"]


def test_cssrs_observations_by_loinc_code():
    yes = {"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA33-6"}]}}
    no = {"valueBoolean": False}
    res = [
        observation("c1", "p8", "2025-07-01", "93246-7", yes),
        observation("c2", "p8", "2025-07-01", "93247-5", yes),
        observation("c3", "p8", "2025-07-01", "93248-3", yes),
        observation("c4", "p8", "2025-07-01", "93249-1", no),
        observation("c6", "p8", "2025-07-01", "93267-3", {"valueBoolean": True}),
    ]
    (rec,) = map_bundle(bundle(res)).assessments
    assert rec["cssrs_ideation"] == 3
    assert rec["cssrs_behavior"] == 1
    bad = observation("c9", "p8", "2025-07-02", "93246-7", {"valueString": "maybe"})
    with pytest.raises(FhirError, match="yes/no"):
        map_bundle(bundle([bad]))


def test_linkids_are_read_through_the_questionnaire_the_response_names():
    items = (0, 1, 2, 3, 0, 1, 2, 1, 0)
    qr = local_phq9_response("ql", "pq", "2025-01-06", items, total=sum(items))
    # Without the form its linkIds and answer codes mean nothing: nothing is imported.
    m = map_bundle(bundle([patient("pq"), qr]))
    assert m.assessments == []
    assert any("x1Qz" in i.diagnostics for i in m.issues)
    # With the form in the Bundle, or known to the caller, the answers are scored.
    for resources, known in (([local_phq9_form(), patient("pq"), qr], ()),
                             ([patient("pq"), qr], [local_phq9_form()])):
        m = map_bundle(bundle(resources), questionnaires=known)
        (rec,) = m.assessments
        assert _items(rec) == items
        assert rec["phq9_total"] == sum(items)
        assert not [i for i in m.issues if i.severity == "warning"]
    # The form's entry says what it was used for.
    m = map_bundle(bundle([local_phq9_form(), patient("pq"), qr]))
    (note,) = [i for i in m.issues if i.expression == "Bundle.entry[0].resource"]
    assert note.severity == "information"
    assert "maps 10 linkId(s)" in note.diagnostics
    assert "scores 36 answer option(s)" in note.diagnostics


def test_a_form_scoring_a_phq9_answer_outside_0_3_is_refused():
    qr = local_phq9_response("ql", "pq", "2025-01-06", (3,) * 9)
    with pytest.raises(FhirError) as err:
        map_bundle(bundle([local_phq9_form(weights=(0, 1, 2, 4)), patient("pq"), qr]))
    (issue,) = [i for i in err.value.issues if i.severity == "error"][:1]
    assert "scores this answer 4" in issue.diagnostics
    assert issue.expression == "Bundle.entry[2].resource.item[0].item[0].answer[0].valueCoding"


def test_a_response_carrying_its_own_questionnaire_is_read_through_it():
    items = (3, 2, 1, 0, 0, 1, 2, 3, 0)
    qr = local_phq9_response("qc", "pq", "2025-01-06", items)
    form = {**local_phq9_form(), "id": "form"}
    del form["url"]
    qr = {**qr, "questionnaire": "#form", "contained": [form]}
    (rec,) = map_bundle(bundle([patient("pq"), qr])).assessments
    assert _items(rec) == items
