"""Browser, cookie and token hardening (issue 21, items 3-4), each finding as a regression test.

- every answer: a Content-Security-Policy without inline script or style,
  ``X-Content-Type-Options: nosniff``, ``frame-ancestors 'none'``, a
  Referrer-Policy; patient data (pages and API answers) ``Cache-Control: no-store``;
- the templates hold no inline script, style or event handler;
- the session cookie is HttpOnly, SameSite=Strict and Secure (unless configured
  for plain-HTTP development);
- logout ends the session server-side: a copy of the cookie no longer works;
- ``next`` after login follows local paths only (``/%09/evil.example`` gave
  ``Location: //evil.example``);
- tokens expire (``forecast tokens create --expires``) and record their last use.
"""

from __future__ import annotations

import datetime as dt
import re
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.app import CONTENT_SECURITY_POLICY
from tests.fixtures.service import Client, client_for

TEMPLATES = Path(__file__).resolve().parents[1] / "service" / "templates"


def _csrf(c: Client, url: str = "/login") -> str:
    page = c.http.get(url).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def _login(c: Client, token: str, next_url: str | None = None) -> Any:
    form = {"csrf": _csrf(c), "token": token}
    if next_url is not None:
        form["next"] = next_url
    return c.http.post("/login", data=form)


def _set_cookie(resp: Any) -> str:
    cookies = [v for k, v in resp.headers.items() if k.lower() == "set-cookie"]
    assert cookies, "no Set-Cookie"
    return cookies[-1]


# --------------------------------------------------------------------------- headers
def test_every_answer_carries_the_security_headers(client: Client) -> None:
    assert client.put("/api/v1/patients/p1", {}).status_code == 201
    answers = {
        "api patient": client.get("/api/v1/patients/p1"),
        "api problem": client.get("/api/v1/patients/nobody"),
        "health": client.http.get("/api/v1/health"),
        "page": client.http.get("/patients/p1"),  # 401 login form
        "login": client.http.get("/login"),
        "fhir": client.get("/fhir/r4/Patient/p1/RiskAssessment"),
    }
    for what, resp in answers.items():
        h = resp.headers
        assert h["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, what
        assert h["X-Content-Type-Options"] == "nosniff", what
        assert h["Referrer-Policy"] == "no-referrer", what
        assert h["X-Frame-Options"] == "DENY", what
        assert h["Cache-Control"] == "no-store", what
    csp = CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no script at all
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    static = client.http.get("/static/clinic.css")
    assert static.status_code == 200
    assert static.headers["X-Content-Type-Options"] == "nosniff"
    assert static.headers.get("Cache-Control") != "no-store"  # a stylesheet may be cached
    static.close()


def test_templates_hold_no_inline_script_or_style() -> None:
    for page in TEMPLATES.glob("*.html"):
        text = page.read_text(encoding="utf-8").lower()
        assert "<script" not in text, page.name
        assert "<style" not in text, page.name
        assert not re.search(r"\sstyle\s*=", text), page.name
        assert not re.search(r"\son[a-z]+\s*=", text), page.name
        assert "javascript:" not in text, page.name


def test_the_patient_page_has_no_inline_style_either(clinic_client: Any) -> None:
    from tests.fixtures.clinic import ROUTINE

    c = clinic_client
    assert _login(c, c.tokens["clinician"]).status_code == 302
    page = c.http.get(f"/patients/{ROUTINE}")
    assert page.status_code == 200
    html = page.get_data(as_text=True).lower()
    assert "<script" not in html
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert page.headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------- cookies
def test_the_session_cookie_is_httponly_samesite_strict_and_secure(client: Client) -> None:
    resp = _login(client, client.tokens["clinician"])
    assert resp.status_code == 302
    cookie = _set_cookie(resp)
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" in cookie


def test_plain_http_development_drops_only_secure(make_app: Any) -> None:
    c = client_for(make_app(KAP_PLAIN_HTTP=True))
    cookie = _set_cookie(_login(c, c.tokens["clinician"]))
    assert "Secure" not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie


def test_plain_http_is_read_from_the_environment(tmp_path: Path) -> None:
    from service.config import load_config

    assert load_config(tmp_path, environ={})["SESSION_COOKIE_SECURE"] is True
    cfg = load_config(tmp_path, environ={"FORECAST_PLAIN_HTTP": "1"})
    assert cfg["SESSION_COOKIE_SECURE"] is False


def test_logout_invalidates_the_session_server_side(client: Client) -> None:
    assert client.put("/api/v1/patients/p1", {}).status_code == 201
    resp = _login(client, client.tokens["clinician"])
    assert resp.status_code == 302
    morsel = SimpleCookie(_set_cookie(resp).replace("HttpOnly;", "").replace("Secure;", ""))
    name, value = next((k, m.value) for k, m in morsel.items())
    assert client.http.get("/patients/p1").status_code == 200
    assert client.http.post("/logout", data={"csrf": _csrf(client, "/patients")}).status_code == 302
    assert client.http.get("/patients/p1").status_code == 401
    # A copy of the cookie taken before logout (another tab, a stolen cookie) is dead too.
    other = client.app.test_client()
    other.set_cookie(name, value)
    assert other.get("/patients/p1").status_code == 401
    # A new login works again.
    assert _login(client, client.tokens["clinician"]).status_code == 302
    assert client.http.get("/patients/p1").status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "/%5Cevil.example",
    ],
)
def test_next_accepts_only_local_paths(client: Client, target: str) -> None:
    from urllib.parse import unquote

    for sent in {target, unquote(target)}:
        resp = _login(client, client.tokens["clinician"], next_url=sent)
        assert resp.status_code == 302
        location = resp.headers["Location"]
        assert location in ("/patients", "http://localhost/patients"), (sent, location)
    # The query string of the login form: a control character is refused outright.
    if "%09" in target:
        assert client.http.get(f"/login?next={target}").status_code == 422
    page = client.http.get("/login?next=//evil.example").get_data(as_text=True)
    assert "evil.example" not in page


def test_next_keeps_a_local_path(client: Client) -> None:
    resp = _login(client, client.tokens["clinician"], next_url="/patients/p1?as_of=2026-01-02")
    assert resp.headers["Location"].endswith("/patients/p1?as_of=2026-01-02")


# --------------------------------------------------------------------------- token lifetime
def test_an_expired_token_is_refused_and_use_is_recorded(client: Client) -> None:
    store = client.app.extensions["kap_store"]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    token = store.create_token("short-lived", "clinician", expires_at=soon)
    ok = {"Authorization": f"Bearer {token}"}
    assert client.http.get("/api/v1/patients/x", headers=ok).status_code == 404
    row = next(r for r in store.list_tokens() if r["name"] == "short-lived")
    assert row["last_used_at"] is not None
    assert row["expires_at"] == soon.replace(microsecond=soon.microsecond)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    import time

    time.sleep(max(0.0, (later - dt.datetime.now(dt.UTC)).total_seconds()))
    assert client.http.get("/api/v1/patients/x", headers=ok).status_code == 401


def test_tokens_create_expires_on_the_command_line(tmp_path: Path, monkeypatch: Any) -> None:
    from forecast.cli import main

    monkeypatch.setenv("FORECAST_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.delenv("FORECAST_DATABASE_URL", raising=False)
    runner = CliRunner()
    done = runner.invoke(main, ["tokens", "create", "--role", "clinician", "--name", "t1",
                                "--expires", "30d"])
    assert done.exit_code == 0, done.output
    for bad in ("yesterday", "2001-01-01", "0h"):
        refused = runner.invoke(main, ["tokens", "create", "--role", "clinician",
                                       "--name", f"t-{bad}", "--expires", bad])
        assert refused.exit_code != 0
        assert "--expires" in refused.output
    from service.app import open_store

    st = open_store({"INSTANCE_PATH": str(tmp_path / "instance")})
    try:
        (row,) = [r for r in st.list_tokens(all_clinics=True) if r["name"] == "t1"]
        left = row["expires_at"] - dt.datetime.now(dt.UTC)
        assert dt.timedelta(days=29) < left <= dt.timedelta(days=30)
        assert row["last_used_at"] is None
    finally:
        st.dispose()
    # The store file and the secret key are private to their owner.
    for name in ("forecast.sqlite", "secret_key"):
        mode = (tmp_path / "instance" / name).stat().st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))
