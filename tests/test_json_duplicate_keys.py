"""A key repeated in a JSON object is refused on every surface (issue 19, part A).

Python's parser keeps the last value silently: ``"cssrs_ideation": 4,
"cssrs_ideation": 0`` was stored as "no ideation". The JSON API, /fhir/r4 and
CDS Hooks now answer 400 naming the repeated member by its JSON pointer, and
use nothing of the body.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from forecast.instruments import LOINC_PHQ9_TOTAL
from service.jsonbody import JsonBodyError, fhir_path, parse_body
from tests.fixtures.clinic import bundle, observation, patient
from tests.fixtures.service import Client, assert_problem, client_for

#: The body of the issue: C-SSRS ideation 4, then 0 in the same object.
ISSUE_ITEM = (
    '{"id": "x", "date": "2026-12-06", "phq9_total": 12, "cssrs_ideation": 4, "cssrs_ideation": 0}'
)
FHIR = "application/fhir+json"


def day(n: int) -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)).isoformat()


def with_repeat(doc: Any, marker: str, repeated: str) -> bytes:
    """``doc`` as JSON with the member ``"<marker>": ...`` renamed to ``repeated``.

    The marker member is written after the member it repeats, so the text has
    the key twice (``json.dumps`` of a dict never can).
    """
    text = json.dumps(doc)
    assert text.count(f'"{marker}"') == 1
    return text.replace(f'"{marker}"', f'"{repeated}"').encode()


def post_raw(c: Client, url: str, raw: bytes, role: str = "clinician", ctype: str = "") -> Any:
    return c.http.post(
        url, data=raw, headers={**c.headers(role), "Content-Type": ctype or "application/json"}
    )


def repeated_field(problem: dict[str, Any], pointer: str) -> dict[str, str]:
    (entry,) = [e for e in problem["errors"] if e["field"] == pointer]
    assert "repeated key" in entry["message"]
    return entry


# --- the parser -------------------------------------------------------------------------------
def test_parser_names_every_repeated_member_by_its_pointer() -> None:
    raw = (
        '{"a": 1, "list": [{"b": 1}, {"b": 1, "b": 2, "b": 3, "c/~": 1, "c/~": 2}],'
        ' "z": {"y": [{"q": 1, "q": 1}]}}'
    )
    with pytest.raises(JsonBodyError) as info:
        parse_body(raw.encode())
    assert info.value.title == "Repeated JSON key"
    assert [e["field"] for e in info.value.errors] == ["/list/1/b", "/list/1/c~1~0", "/z/y/0/q"]
    # Even an equal value is refused: the sender's intent is unclear.
    assert "'q'" in info.value.errors[2]["message"]
    with pytest.raises(JsonBodyError) as top:
        parse_body(ISSUE_ITEM)
    assert [e["field"] for e in top.value.errors] == ["/cssrs_ideation"]
    assert fhir_path("/entry/0/resource/valueInteger") == "Bundle.entry[0].resource.valueInteger"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": -Infinity}', "not valid JSON"),
        (b'{"a": 1,', "at line 1"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_parser_still_refuses_what_it_refused(raw: bytes, detail: str) -> None:
    with pytest.raises(JsonBodyError) as info:
        parse_body(raw)
    assert info.value.title == "Malformed JSON"
    assert detail in info.value.detail
    assert not info.value.errors


def test_parser_keeps_ordinary_documents() -> None:
    assert parse_body(b'{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}') == {
        "a": {"a": 1},
        "b": [{"a": 2}, {"a": 3}],
    }


# --- /api/v1 ----------------------------------------------------------------------------------
def test_posted_assessment_with_repeated_cssrs_answer_is_refused(client: Client) -> None:
    assert client.put("/api/v1/patients/p1", {}).status_code in (200, 201)
    raw = ('{"assessments": [' + ISSUE_ITEM + "]}").encode()
    problem = assert_problem(
        post_raw(client, "/api/v1/patients/p1/assessments", raw),
        400,
        field="/assessments/0/cssrs_ideation",
    )
    assert problem["title"] == "Repeated JSON key"
    repeated_field(problem, "/assessments/0/cssrs_ideation")
    st = client.app.extensions["kap_store"]
    assert st.count("assessments") == 0
    assert client.get("/api/v1/patients/p1").get_json()["assessments"] == []
    # The same item with the key once is stored (the refusal was the repeat).
    item = {"id": "x", "date": day(1), "phq9_total": 12, "cssrs_ideation": 4}
    ok = client.post("/api/v1/patients/p1/assessments", {"assessments": [item]})
    assert ok.status_code == 201, ok.get_data(as_text=True)
    assert st.count("assessments") == 1


def test_repeated_phq9_total_is_refused(client: Client) -> None:
    client.put("/api/v1/patients/p1", {})
    item = {"date": day(3), "phq9_total": 3, "DUP": 27}
    raw = with_repeat({"assessments": [item]}, "DUP", "phq9_total")
    assert b'"phq9_total": 3, "phq9_total": 27' in raw
    problem = assert_problem(
        post_raw(client, "/api/v1/patients/p1/assessments", raw),
        400,
        field="/assessments/0/phq9_total",
    )
    assert "'phq9_total'" in problem["errors"][0]["message"]
    assert client.app.extensions["kap_store"].count("assessments") == 0


def test_repeated_key_in_patient_and_token_bodies(client: Client) -> None:
    r = client.http.put(
        "/api/v1/patients/p2",
        data=b'{"age": 40, "age": 41}',
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    assert_problem(r, 400, field="/age")
    assert client.get("/api/v1/patients/p2").status_code == 404
    raw = b'{"name": "t", "role": "researcher", "role": "admin"}'
    assert_problem(post_raw(client, "/api/v1/tokens", raw, role="admin"), 400, field="/role")


def _history(pid: str) -> dict[str, Any]:
    return {
        "patient": {"patient_id": pid},
        "sessions": [
            {"date": day(40), "kind": "induction"},
            {"date": day(37), "kind": "induction"},
            {"date": day(34), "kind": "induction"},
            {"date": day(31), "kind": "induction"},
        ],
        "assessments": [
            {"date": day(41), "phq9_total": 20},
            {"date": day(20), "phq9_total": 6},
            {"date": day(6), "phq9_total": 12, "cssrs_ideation": 4, "DUP": 0},
        ],
    }


@pytest.mark.slow
def test_stateless_forecast_with_repeated_key_is_refused(model_client: Client) -> None:
    body = _history("s1")
    raw = with_repeat(body, "DUP", "cssrs_ideation")
    problem = assert_problem(
        post_raw(model_client, "/api/v1/forecast", raw), 400, field="/assessments/2/cssrs_ideation"
    )
    assert len(problem["errors"]) == 1
    st = model_client.app.extensions["kap_store"]
    assert st.audit_rows() == []  # no forecast was served
    # Without the repeat the same history is forecast, and the ideation answer flags it.
    del body["assessments"][2]["DUP"]
    ok = model_client.post("/api/v1/forecast", body)
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert ok.get_json()["safety"]["level"] is not None


@pytest.mark.slow
def test_batch_forecast_with_repeated_key_is_refused(model_client: Client) -> None:
    plain = _history("b0")
    del plain["assessments"][2]["DUP"]
    raw = with_repeat({"histories": [plain, _history("b1")]}, "DUP", "cssrs_ideation")
    assert_problem(
        post_raw(model_client, "/api/v1/forecast/batch", raw),
        400,
        field="/histories/1/assessments/2/cssrs_ideation",
    )
    assert model_client.app.extensions["kap_store"].audit_rows() == []


# --- /fhir/r4 ---------------------------------------------------------------------------------
def test_fhir_bundle_with_repeated_key_is_an_operation_outcome(make_app) -> None:
    from fhir.resources.R4B.operationoutcome import OperationOutcome

    c = client_for(make_app())
    obs = observation("o1", "f1", day(3), LOINC_PHQ9_TOTAL, {"valueInteger": 21, "DUP": 2})
    raw = with_repeat(bundle([patient("f1"), obs]), "DUP", "valueInteger")
    r = post_raw(c, "/fhir/r4", raw, ctype=FHIR)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.mimetype == FHIR
    doc = r.get_json()
    OperationOutcome.model_validate(doc)
    (issue,) = doc["issue"]
    assert issue["code"] == "structure"
    assert issue["expression"] == ["Bundle.entry[1].resource.valueInteger"]
    assert "repeated key 'valueInteger'" in issue["diagnostics"]
    assert "/entry/1/resource/valueInteger" in issue["diagnostics"]
    assert c.get("/api/v1/patients/f1").status_code == 404  # nothing written


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType": "Bundle", "type": "transaction", "entry": [], "total": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_fhir_bodies_that_are_not_strict_json_are_400(make_app, raw: bytes) -> None:
    c = client_for(make_app())
    r = post_raw(c, "/fhir/r4", raw, ctype=FHIR)
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    assert r.get_json()["issue"][0]["code"] == "structure"


# --- CDS Hooks --------------------------------------------------------------------------------
def test_cds_request_with_repeated_key_in_the_prefetch_is_refused(make_app) -> None:
    from tests.fixtures.clinic import CDS_AUDIENCE, CDS_ISS, CDS_SECRET
    from tests.test_cds import URL, hook, token

    app = make_app(
        KAP_CDS_CLIENTS={
            "clients": [{"iss": CDS_ISS, "secret": CDS_SECRET, "algorithms": ["HS256"]}]
        },
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    c = client_for(app)
    obs = observation("o1", "c1", day(3), LOINC_PHQ9_TOTAL, {"valueInteger": 21, "DUP": 2})
    body = hook("c1", {"observations": bundle([obs], "searchset")})
    raw = with_repeat(body, "DUP", "valueInteger")
    r = c.http.post(
        URL,
        data=raw,
        headers={"Authorization": f"Bearer {token()}", "Content-Type": "application/json"},
    )
    problem = assert_problem(r, 400, field="/prefetch/observations/entry/0/resource/valueInteger")
    assert problem["title"] == "Repeated JSON key"
    # The same request without the repeat is answered with a card.
    del body["prefetch"]["observations"]["entry"][0]["resource"]["DUP"]
    ok = c.http.post(URL, json=body, headers={"Authorization": f"Bearer {token()}"})
    assert ok.status_code == 200, ok.get_data(as_text=True)
