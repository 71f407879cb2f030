"""/openapi.json: every route, its security and responses, schemas from the validators."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service import schemas
from service.errors import ApiProblem
from tests.fixtures.service import Client


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def test_every_rule_is_documented_with_its_security(client: Client) -> None:
    app = client.app
    doc = client.http.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z_]+:)?([A-Za-z0-9_]+)>", r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            assert op["responses"]["500"]["content"]["application/problem+json"]
            if getattr(view, "kap_public", False):
                assert op["security"] == []
            else:
                assert op["security"] == [{"bearer": []}]
                assert "401" in op["responses"]
                assert "403" in op["responses"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_request_bodies_use_the_validating_models(client: Client) -> None:
    doc = client.http.get("/openapi.json").json
    op = doc["paths"]["/api/v1/patients/{patient_id}/assessments"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = _resolve(doc, ref)
    assert body["additionalProperties"] is False
    item = _resolve(doc, body["properties"]["assessments"]["items"]["$ref"])
    assert item["additionalProperties"] is False
    phq9_3 = item["properties"]["phq9_3"]
    typed = next(s for s in phq9_3["anyOf"] if s.get("type") != "null")
    assert (typed["type"], typed["minimum"], typed["maximum"]) == ("integer", 0, 3)
    assert item["required"] == ["date"]
    sex = _resolve(doc, "#/components/schemas/PatientCovariates")["properties"]["sex"]
    assert next(s for s in sex["anyOf"] if "enum" in s)["enum"] == [
        "female",
        "male",
        "other",
        "unknown",
    ]
    for name in ("AssessmentsBody", "SessionsBody", "ForecastBody", "BatchBody"):
        assert name in doc["components"]["schemas"]
    # The document's schema is the one that rejects an unknown field.
    with pytest.raises(ApiProblem) as info:
        schemas.parse(schemas.AssessmentsBody, {"assessments": [{"date": "x", "bogus": 1}]})
    assert info.value.errors[0]["field"] == "/assessments/0/bogus"


def test_document_loads_in_schemathesis(client: Client) -> None:
    import schemathesis

    doc = client.http.get("/openapi.json").json
    schema = schemathesis.openapi.from_dict(doc)
    operations = list(schema.get_all_operations())
    assert len(operations) >= 15
