"""Every 4xx/5xx answer is application/problem+json naming the failing field."""

from __future__ import annotations

import json
import logging

import pytest

from service.errors import ApiProblem
from tests.fixtures.service import Client, assert_problem


def test_unknown_route_and_method_are_problems(client: Client) -> None:
    assert_problem(client.http.get("/api/v1/nowhere"), 404)
    resp = client.http.delete("/api/v1/health")
    assert_problem(resp, 405)
    assert "GET" in resp.headers["Allow"]


def test_malformed_json_is_400(client: Client) -> None:
    resp = client.http.put(
        "/api/v1/patients/p1",
        data=b'{"age": 4',
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    assert_problem(resp, 400, detail="not valid JSON")


def test_empty_body_is_400(client: Client) -> None:
    resp = client.http.put(
        "/api/v1/patients/p1",
        data=b"",
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    assert_problem(resp, 400)


def test_wrong_content_type_is_415(client: Client) -> None:
    resp = client.http.put(
        "/api/v1/patients/p1",
        data=b"age=40",
        headers={**client.headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(resp, 415, field="header/Content-Type")


def test_oversized_body_is_413(make_app) -> None:
    from tests.fixtures.service import client_for

    c = client_for(make_app(MAX_CONTENT_LENGTH=2048))
    c.put("/api/v1/patients/p1", {})
    rows = [{"date": "2026-01-01", "phq9_total": 3}] * 200
    resp = c.post("/api/v1/patients/p1/assessments", {"assessments": rows})
    assert_problem(resp, 413)
    assert c.app.extensions["kap_store"].count("assessments") == 0


def test_wrong_types_and_unknown_fields_name_the_field(client: Client) -> None:
    client.put("/api/v1/patients/p1", {})
    body = {
        "assessments": [
            {"date": "2026-01-01", "phq9_total": 5},
            {"date": "2026-01-02", "phq9_total": "12", "colour": "blue"},
        ]
    }
    problem = assert_problem(
        client.post("/api/v1/patients/p1/assessments", body), 422, field="/assessments/1/phq9_total"
    )
    assert "/assessments/1/colour" in [e["field"] for e in problem["errors"]]
    assert "whole number from 0 to 27" in problem["errors"][0]["message"]


def test_out_of_range_item_names_the_field(client: Client) -> None:
    client.put("/api/v1/patients/p1", {})
    body = {"assessments": [{"date": "2026-01-01", "phq9_3": 4, "phq9_total": 9}]}
    assert_problem(
        client.post("/api/v1/patients/p1/assessments", body), 422, field="/assessments/0/phq9_3"
    )


def test_body_that_is_not_an_object_is_422(client: Client) -> None:
    assert_problem(client.put("/api/v1/patients/p1", [1, 2]), 422)
    assert_problem(client.post("/api/v1/forecast", "text"), 422)


def test_unexpected_exception_is_500_problem_without_its_message(
    make_app, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret patient P-123")

    with caplog.at_level(logging.ERROR, logger="service"):
        resp = app.test_client().get("/boom")
    problem = assert_problem(resp, 500)
    assert "P-123" not in resp.get_data(as_text=True)
    assert "P-123" not in caplog.text
    assert problem["instance"].endswith(resp.headers["X-Request-ID"])


def test_api_problem_carries_headers_and_errors(make_app) -> None:
    app = make_app()

    @app.get("/teapot")
    def teapot() -> None:
        raise ApiProblem(
            429,
            detail="slow down",
            errors=[{"field": "/x", "message": "m"}],
            headers={"Retry-After": "3"},
        )

    resp = app.test_client().get("/teapot")
    body = assert_problem(resp, 429, field="/x", detail="slow down")
    assert body["title"] == "Too Many Requests"
    assert resp.headers["Retry-After"] == "3"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's recursion limit
        b'{"assessments": [{"date": "2026-01-01", "phq9_total": NaN}]}',
        b'{"assessments": [{"date": "2026-01-01", "phq9_total": Infinity}]}',
        b"\xff\xfe{}",
    ],
)
def test_hostile_bodies_are_400_not_500(client: Client, body: bytes) -> None:
    client.put("/api/v1/patients/p1", {})
    resp = client.http.post(
        "/api/v1/patients/p1/assessments",
        data=body,
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    assert_problem(resp, 400)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (None, "/", "must be a JSON object"),
        ({"assessments": None}, "/assessments", "must be a JSON list"),
        ({"assessments": [None]}, "/assessments/0", "must be a JSON object"),
        ({"assessments": [{"phq9_total": 3}]}, "/assessments/0/date", "required field"),
    ],
)
def test_body_shape_errors_name_the_field(
    client: Client, body: object, field: str, message: str
) -> None:
    client.put("/api/v1/patients/p1", {})
    resp = client.http.post(
        "/api/v1/patients/p1/assessments",
        data=json.dumps(body),
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    problem = assert_problem(resp, 422, field=field)
    assert message in problem["errors"][0]["message"]


def test_unreachable_database_is_503_not_500(make_app, tmp_path) -> None:
    from tests.fixtures.service import client_for

    c = client_for(make_app())
    c.put("/api/v1/patients/p1", {})
    st = c.app.extensions["kap_store"]
    st.engine.dispose()
    (tmp_path / "store.sqlite").rename(tmp_path / "moved.sqlite")
    (tmp_path / "store.sqlite").mkdir()  # a directory where the database file was
    problem = assert_problem(c.get("/api/v1/patients/p1"), 503, detail="database")
    assert problem["title"] == "Database unavailable"
    health = c.http.get("/api/v1/health")
    assert health.status_code == 503
    assert health.json["database"] == "unreachable"
