"""Clinician pages (blueprint ``pages``): server-rendered HTML, no external assets.

- ``GET /login`` / ``POST /login`` (open): paste a clinician token; the
  browser then holds a signed session cookie (``service.auth.login_session``).
- ``POST /logout`` (open): forget the session.
- ``GET /patients/{id}`` [clinician, session or bearer token]: the patient's
  PHQ-9 trajectory with severity bands and sessions, the risk curve with the
  threshold and the suggested date, the safety banner, drivers and caveats.
  Each view is a forecast served, so it is written to the audit table.

Without a session the page answers 401 with the login form (so a browser
user can sign in, and the auth rule "401 without a token" holds).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
from flask import (
    Blueprint,
    Response,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from forecast.instruments import score_assessments
from forecast.policy.texts import human_date
from forecast.safety import rule_safety
from service.auth import login_session, logout_session, public, require_role
from service.clinic_openapi import html, operation, query
from service.errors import ApiProblem
from service.page_charts import horizon_rows, phq9_chart, risk_chart
from service.serving import audited, forecast_for, parse_as_of, store

bp = Blueprint("pages", __name__, template_folder="templates")

_CSRF = "kap_csrf"


def _csrf_token() -> str:
    token = session.get(_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session[_CSRF] = token
    return token


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    good = session.get(_CSRF, "")
    if not (isinstance(good, str) and good and hmac.compare_digest(sent, good)):
        raise ApiProblem(400, "Form expired", "The form expired; reload the page and try again.")


def _safe_next(target: str | None) -> str | None:
    """Only local paths (no scheme, no host, no ``//``) are followed after login.

    Browsers drop tabs and newlines from a URL and read a backslash as ``/``,
    so ``/%09/evil.example`` would become ``//evil.example``: any control
    character, space or backslash refuses the target.
    """
    if not target or len(target) > 2048:
        return None
    for form in (target, unquote(target)):  # percent-encoded too (%09, %5C)
        if (
            not form.startswith("/")
            or form.startswith("//")
            or any(c <= " " or c in "\\\x7f" for c in form)
        ):
            return None
        parts = urlsplit(form)
        if parts.scheme or parts.netloc:
            return None
    return target


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"csrf_token": _csrf_token}


@bp.errorhandler(ApiProblem)
def _page_problem(exc: ApiProblem) -> Response:
    """Errors of pages are HTML: the login form for 401, a short page otherwise."""
    if exc.status == 401:
        body = render_template(
            "login.html", next=request.full_path.rstrip("?"), error=None, status=401
        )
        resp = make_response(body, 401)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="kap-forecast"'
        return resp
    body = render_template("error.html", status=exc.status, title=exc.title, detail=exc.detail)
    return make_response(body, exc.status)


@bp.get("/login")
@public
@operation("Sign-in form", {"200": html("The form")}, public=True)
def login_form() -> str:
    """The token login form."""
    return render_template("login.html", next=_safe_next(request.args.get("next")), error=None)


@bp.post("/login")
@public
@operation(
    "Sign in with a clinician token (form post)",
    {
        "302": {"description": "Signed in: to the requested page"},
        "400": html("The form expired"),
        "401": html("Unknown, revoked or non-clinician token"),
    },
    public=True,
    request_body={"required": True, "content": {"application/x-www-form-urlencoded": {}}},
)
def login() -> Response:
    """Check the pasted token, start a session, go to the requested page."""
    _check_csrf()
    token = (request.form.get("token") or "").strip()
    nxt = _safe_next(request.form.get("next"))
    principal = login_session(token) if token else None
    if principal is None or not principal.allowed(("clinician",)):
        logout_session()
        body = render_template(
            "login.html",
            next=nxt,
            error="This token is unknown, revoked or not a clinician token.",
        )
        return make_response(body, 401)
    session.permanent = False
    return redirect(nxt or url_for("pages.patient_lookup"))


@bp.post("/logout")
@public
@operation(
    "Sign out",
    {"302": {"description": "To the sign-in form"}, "400": html("The form expired")},
    public=True,
)
def logout() -> Response:
    """End the session."""
    _check_csrf()
    logout_session()
    session.pop(_CSRF, None)
    return redirect(url_for("pages.login_form"))


@bp.get("/patients")
@require_role("clinician", allow_session=True)
@operation(
    "Open a patient by id",
    {"200": html("The form"), "302": {"description": "To the patient page"}},
    parameters=[query("id", "patient id")],
    html_errors=True,
)
def patient_lookup() -> Response | str:
    """Open a patient by id (a small form; no list of all patients is shown)."""
    pid = (request.args.get("id") or "").strip()
    if pid:
        return redirect(url_for("pages.patient_page", patient_id=pid))
    return render_template("lookup.html")


def _history(pid: str) -> tuple[Any, pd.DataFrame, list[dict[str, Any]]]:
    """The patient's stored cohort, scored assessments and withdrawals (404 if unknown)."""
    st = store()
    with st.read() as conn:
        if not st.known_patients(conn, [pid]):
            raise ApiProblem(404, "Unknown patient", "No patient with this id is stored.")
        cohort = st.cohort([pid], conn)
        withdrawn = st.withdrawals(conn, pid)
    return cohort, score_assessments(cohort.assessments), withdrawn


@bp.get("/patients/<patient_id>")
@require_role("clinician", allow_session=True)
@operation(
    "The clinician page of one patient",
    {"200": html("The page"), "404": html("Unknown patient"), "422": html("Invalid as_of")},
    parameters=[query("as_of", "Forecast date YYYY-MM-DD (default today); the API's answer")],
    html_errors=True,
)
@audited("page.view")
def patient_page(patient_id: str) -> str:
    """The clinician page of one patient."""
    as_of_arg = parse_as_of(request.args.get("as_of"), "query/as_of")
    cohort, scored, withdrawn = _history(patient_id)
    answer = None
    model_note = None
    try:
        answer, _ = forecast_for(patient_id, "page", cohort, as_of=as_of_arg, daily=True)
    except ApiProblem as exc:
        if exc.status != 503:
            raise
        model_note = exc.detail
    safety = (answer or {}).get("safety") or rule_safety(cohort, as_of_arg)
    as_of = pd.Timestamp(answer["as_of"]) if answer else as_of_arg
    as_of = as_of.tz_localize(None) if as_of.tzinfo else as_of
    sug = (answer or {}).get("suggestion") or {}
    return render_template(
        "patient.html",
        pid=patient_id,
        answer=answer,
        model_note=model_note,
        safety=safety,
        suggestion=sug,
        phq9_svg=phq9_chart(
            scored,
            cohort.sessions,
            as_of,
            # No date line beside a flag in force: the review comes first.
            None if safety.get("level") else sug.get("session_by"),
        ),
        risk_svg=risk_chart(answer) if answer else None,
        horizons=horizon_rows(answer) if answer else [],
        n_sessions=len(cohort.sessions),
        n_assessments=len(cohort.assessments),
        withdrawn=withdrawn,
        human=human_date,
    )
