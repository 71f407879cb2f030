"""Bearer tokens, roles, and proof that no route is left open."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from service import db
from service.auth import Principal, principal_from_token, require_role
from service.store import hash_token
from tests.fixtures.service import Client, assert_problem, client_for

#: (rule, method) pairs open on purpose: health, the OpenAPI document and CDS Hooks
#: discovery, static files, and the page login form (it takes the token).
OPEN = {
    ("/api/v1/health", "GET"),
    ("/openapi.json", "GET"),
    ("/static/<path:filename>", "GET"),
    ("/cds-services", "GET"),
    # FHIR clients read the CapabilityStatement before they authenticate (no patient data).
    ("/fhir/r4/metadata", "GET"),
    ("/login", "GET"),
    ("/login", "POST"),
    ("/logout", "POST"),
}


def _sample_url(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([A-Za-z0-9_]+)>", "x1", rule)


def test_every_non_public_route_answers_401_without_a_token(make_app) -> None:
    app = make_app()
    http = app.test_client()
    checked = set()
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if (rule.rule, method) in OPEN:
                continue
            # Views marked public (e.g. CDS Hooks services with their own JWT) must
            # still refuse a request that carries no credentials at all.
            resp = http.open(_sample_url(rule.rule), method=method)
            assert resp.status_code == 401, (rule.rule, method, resp.status_code)
            assert resp.headers["WWW-Authenticate"], rule.rule
            checked.add((rule.rule, method))
    # Every route of the JSON API was among those checked.
    api_ops = {
        (r.rule, m)
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/api/v1/") and r.endpoint != "api.health"
        for m in (r.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert api_ops <= checked
    assert len(api_ops) >= 14


def test_open_routes_are_exactly_the_reviewed_ones(make_app) -> None:
    app = make_app()
    marked = {
        (rule.rule, m)
        for rule in app.url_map.iter_rules()
        if getattr(app.view_functions[rule.endpoint], "kap_public", False)
        for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    # A public mark outside the reviewed list must be a view with its own auth (CDS JWT).
    for rule, method in marked - OPEN:
        assert rule.startswith("/cds-services/"), (rule, method)


def test_health_and_openapi_are_open(client: Client) -> None:
    assert client.http.get("/api/v1/health").status_code == 200
    assert client.http.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("role", "method", "url", "expected"),
    [
        ("researcher", "get", "/api/v1/patients/p1", 403),
        ("researcher", "post", "/api/v1/forecast", 403),
        ("clinician", "post", "/api/v1/model/reload", 403),
        ("clinician", "get", "/api/v1/tokens", 403),
        ("researcher", "get", "/api/v1/audit", 403),
        ("admin", "get", "/api/v1/tokens", 200),
        ("admin", "get", "/api/v1/patients/p1", 404),  # admin may do everything
    ],
)
def test_roles(client: Client, role: str, method: str, url: str, expected: int) -> None:
    resp = getattr(client, method)(url, role=role, **({"body": {}} if method == "post" else {}))
    if expected >= 400:
        assert_problem(resp, expected)
    else:
        assert resp.status_code == expected


def test_unknown_and_revoked_tokens_get_401(client: Client) -> None:
    bad = client.http.get("/api/v1/patients/p1", headers={"Authorization": "Bearer nope"})
    assert_problem(bad, 401, detail="unknown or revoked")
    resp = client.http.delete("/api/v1/tokens/test-clinician", headers=client.headers("admin"))
    assert resp.status_code == 200
    assert_problem(client.get("/api/v1/patients/p1"), 401)
    assert_problem(
        client.http.get("/api/v1/patients/p1", headers={"Authorization": "Basic x"}), 401
    )


def test_tokens_are_stored_as_sha256_only(client: Client) -> None:
    st = client.app.extensions["kap_store"]
    with st.read() as conn:
        rows = conn.execute(sa.select(db.tokens)).mappings().all()
    stored = {r["token_hash"] for r in rows}
    for token in client.tokens.values():
        assert token not in str(rows)
        assert hash_token(token) in stored
        assert len(token) >= 43  # token_urlsafe(32)


def test_token_api_create_list_revoke(client: Client) -> None:
    resp = client.post("/api/v1/tokens", {"name": "bob", "role": "researcher"}, role="admin")
    assert resp.status_code == 201
    token = resp.json["token"]
    card = client.http.get("/api/v1/model", headers={"Authorization": f"Bearer {token}"})
    assert_problem(card, 503)  # authenticated; no model in this app
    listed = client.get("/api/v1/tokens", role="admin").json["tokens"]
    assert {"name", "role", "clinic", "created_at", "revoked_at", "expires_at",
            "last_used_at"} == set(listed[0])
    assert token not in str(listed)
    dup = client.post("/api/v1/tokens", {"name": "bob", "role": "admin"}, role="admin")
    assert_problem(dup, 409)
    assert_problem(
        client.post("/api/v1/tokens", {"name": "x", "role": "root"}, role="admin"),
        422,
        field="/role",
    )


def test_principal_from_token_and_require_role_for_other_blueprints(make_app) -> None:
    app = make_app()
    token = app.extensions["kap_store"].create_token("carol", "clinician")

    @app.get("/custom")
    @require_role("researcher")
    def custom() -> str:
        return "ok"

    with app.test_request_context():
        assert principal_from_token(token) == Principal("carol", "clinician")
        assert principal_from_token("nope") is None
        assert principal_from_token(None) is None
    http = app.test_client()
    assert http.get("/custom", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_session_login_for_pages(make_app) -> None:
    from flask import g

    from service.auth import login_session, logout_session

    app = make_app()
    token = app.extensions["kap_store"].create_token("dana", "clinician")

    @app.post("/login-test")
    def login() -> str:
        return "yes" if login_session(token) else "no"

    @app.get("/page-test")
    @require_role("clinician", allow_session=True)
    def page() -> str:
        return g.principal.name

    @app.get("/api-like")
    @require_role("clinician")
    def api_like() -> str:
        return "x"

    @app.post("/logout-test")
    def logout() -> str:
        logout_session()
        return "bye"

    http = app.test_client()
    assert http.get("/page-test").status_code == 401
    assert http.post("/login-test").get_data(as_text=True) == "yes"
    assert http.get("/page-test").get_data(as_text=True) == "dana"
    # The cookie never authenticates a bearer-only (JSON API) view.
    assert http.get("/api-like").status_code == 401
    app.extensions["kap_store"].revoke_token("dana")
    assert http.get("/page-test").status_code == 401
    http.post("/logout-test")


def test_require_role_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        require_role("superuser")


def test_cli_tokens_create_list_revoke(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forecast.cli import main
    from service.app import open_store

    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    monkeypatch.setenv("FORECAST_DATABASE_URL", url)
    monkeypatch.setenv("FORECAST_INSTANCE_PATH", str(tmp_path / "instance"))
    runner = CliRunner()
    result = runner.invoke(main, ["tokens", "create", "--role", "admin", "--name", "ops"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n"  # only the token on stdout
    st = open_store()
    try:
        assert st.token_principal(token) == ("ops", "admin")
        again = runner.invoke(main, ["tokens", "create", "--role", "admin", "--name", "ops"])
        assert again.exit_code != 0
        assert "already exists" in again.output
        listed = runner.invoke(main, ["tokens", "list"])
        assert listed.exit_code == 0
        assert "ops" in listed.stdout
        assert token not in listed.stdout
        revoked = runner.invoke(main, ["tokens", "revoke", "ops"])
        assert revoked.exit_code == 0
        assert st.token_principal(token) is None
        assert runner.invoke(main, ["tokens", "revoke", "ops"]).exit_code != 0
        bad = runner.invoke(main, ["tokens", "create", "--role", "root", "--name", "x"])
        assert bad.exit_code == 2
    finally:
        st.dispose()


def test_client_for_helper_tokens_work(make_app) -> None:
    c = client_for(make_app())
    assert c.get("/api/v1/tokens", role="admin").status_code == 200
