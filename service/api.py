"""The JSON API under ``/api/v1`` (blueprint ``api``).

Routes (roles in brackets; admin may call everything):

- ``GET /health`` (open): model loaded? database reachable? No patient data.
- ``GET /model`` [clinician, researcher]: the live model card and version.
- ``POST /model/reload`` [admin of the default clinic]: switch to the
  registry's latest version.
- ``PUT /patients/{id}`` [clinician]: create or update covariates (with the
  declared ones of ``FORECAST_COVARIATES``).
- ``POST /patients/{id}/assessments`` and ``/sessions`` [clinician]: idempotent lists.
- ``DELETE /patients/{id}/assessments/{client id}`` and ``/sessions/...``
  [clinician]: withdraw a row entered in error (tombstoned; idempotent).
- ``GET /patients/{id}`` [clinician]: history and measured outcomes.
- ``GET /patients/{id}/forecast?as_of=&threshold=`` [clinician]: from the store.
- ``POST /forecast`` [clinician]: stateless, the history in the body.
- ``POST /forecast/batch`` [clinician]: many patients, one vectorised call.
- ``GET/POST /tokens``, ``DELETE /tokens/{name}`` [admin]: the clinic's tokens.
- ``GET /audit?patient_id=&action=&actor=&outcome=&since=&until=&after=&limit=``
  [admin]: the clinic's audit trail, one page at a time.

Tenancy: every route sees only the caller's clinic (:func:`service.serving.store`
is scoped to it); a patient of another clinic is unknown (404). Every route
touching patient data, tokens or the model is audited (:func:`service.serving.audited`).

Every forecast served goes through :func:`service.serving.serve_forecasts`:
it is written to the audit table before the response is returned; if that
write fails, the client gets a 5xx problem, not a forecast. The OpenAPI
document (``/openapi.json``) is served by :mod:`service.openapi`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from flask import Blueprint, Response, current_app, jsonify, request

from forecast.cohort import Cohort
from forecast.contract import TABLES
from forecast.data import validate_patient
from forecast.instruments import score_assessments
from forecast.outcomes import OutcomeDefinition
from forecast.summary import patient_summary
from service import schemas
from service.auth import current_principal, public, require_role
from service.errors import ApiProblem, field_errors
from service.histories import (
    frame_json,
    histories_cohort,
    shape_of,
    stateless_cohort,
    without_covariates,
)
from service.ingest import check_patient_id, ingest_many
from service.jsonbody import bound_list, json_body
from service.serving import (
    audit_event,
    audited,
    declared_covariates,
    model_state,
    parse_as_of,
    parse_detail,
    serve_forecasts,
    settings,
    store,
    write_audit,
)
from service.store import ACTIONS, DEFAULT_CLINIC, LEGACY_MERGE, OUTCOMES, StoreError

bp = Blueprint("api", __name__)


# --------------------------------------------------------------------------- request values
def parse_threshold(value: Any, field: str) -> float:
    """A risk threshold strictly between 0 and 1 (default: the service's)."""
    if value is None or value == "":
        return float(settings().threshold)
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 < t < 1.0:
        raise ApiProblem(
            422,
            "Invalid threshold",
            errors=[
                {"field": field, "message": f"got {value!r}; allowed: a number between 0 and 1"}
            ],
        )
    return t


def _path_patient(patient_id: str) -> str:
    return check_patient_id(patient_id, "path/patient_id")


def _unknown_patient() -> ApiProblem:
    return ApiProblem(
        404,
        "Unknown patient",
        "No patient with this id is stored; create it with PUT /api/v1/patients/{id}.",
    )


def _require_patient(conn: Any, patient_id: str) -> None:
    if not store().known_patients(conn, [patient_id]):
        raise _unknown_patient()


# --------------------------------------------------------------------------- routes
@bp.get("/health")
@public
def health() -> tuple[Response, int]:
    """Liveness and readiness: database reachable, model loaded (no patient data)."""
    db_ok = store().ping()
    state = model_state()
    # Health says which version this worker serves, so it follows a reload made
    # by another worker the same way forecast routes do.
    version = state.sync() if db_ok else state.version
    body = {
        "status": "ok" if db_ok else "degraded",
        "database": "reachable" if db_ok else "unreachable",
        "model_loaded": version is not None,
        "model_version": version,
    }
    return jsonify(body), 200 if db_ok else 503


@bp.get("/model")
@require_role("clinician", "researcher")
def model_card() -> Response:
    """The live model's card and version."""
    model = model_state().get()
    return jsonify({"version": str(model.version), "live": True, "card": model.card})


@bp.post("/model/reload")
@require_role("admin")
def model_reload() -> Response:
    """Switch to the registry's latest version (409 and no change if it is refused)."""
    principal = current_principal()
    if principal is not None and principal.clinic != DEFAULT_CLINIC:
        audit_event("model.reload", outcome="refused", detail="not an admin of the default clinic")
        raise ApiProblem(
            403,
            detail="The model is shared by every clinic: only an admin of the "
            f"{DEFAULT_CLINIC!r} clinic may reload it.",
        )
    state = model_state()
    previous = state.version
    try:
        loaded = state.reload()
    except Exception as exc:
        status = int(getattr(exc, "status", 500) or 500)
        audit_event(
            "model.reload", outcome="refused" if status < 500 else "error",
            detail=f"from {previous}: refused ({status})",
        )
        raise
    audit_event("model.reload", detail=f"from {previous} to {loaded.version}")
    return jsonify({"version": str(loaded.version), "previous": previous})


@bp.put("/patients/<patient_id>")
@require_role("clinician")
@audited("patient.write", success=False)
def put_patient(patient_id: str) -> tuple[Response, int]:
    """Create or update a patient's covariates."""
    pid = _path_patient(patient_id)
    body = json_body()
    declared = declared_covariates()
    schemas.parse(schemas.PatientCovariates, without_covariates(body, declared))
    frame, problems = validate_patient(body, patient_id=pid, covariates=declared)
    if problems:
        raise ApiProblem(422, "Invalid patient", errors=field_errors(problems, ""))
    record = frame.iloc[0].to_dict()
    st = store()
    audit = write_audit()

    def work(conn: Any) -> str:
        done = st.upsert_patient(conn, record)
        if audit is not None:  # in the write's transaction: audited once if committed
            st.add_audit([{"token_name": audit["actor"], "action": "patient.write",
                           "patient_id": pid, "detail": f"patient {done}",
                           "request_id": audit["request_id"], "endpoint": audit["endpoint"]}],
                         conn)
        return done

    result = st.run_write(work)
    out = {"patient_id": pid, "result": result}
    return jsonify(out), 201 if result == "created" else 200


def _post_rows(patient_id: str, table: str) -> tuple[Response, int]:
    pid = _path_patient(patient_id)
    body = json_body()
    bound_list(body, table, int(current_app.config["KAP_MAX_ROWS"]))
    model = schemas.AssessmentsBody if table == "assessments" else schemas.SessionsBody
    schemas.parse(model, body)
    with store().read() as conn:
        _require_patient(conn, pid)
    result = ingest_many(store(), [(pid, table, body[table], f"/{table}")], audit=write_audit())
    results = result["items"][0]["results"]
    out = {
        "patient_id": pid,
        "created": result["created"],
        "unchanged": result["unchanged"],
        table: results,
    }
    if result.get("refused_retracted"):
        out["refused_retracted"] = result["refused_retracted"]  # ids withdrawn before
    return jsonify(out), 201 if result["created"] else 200


def _withdraw_row(patient_id: str, table: str, client_id: str) -> Response:
    """Withdraw the row stored under a client id as entered in error (see ingest_many)."""
    pid = _path_patient(patient_id)
    with store().read() as conn:
        _require_patient(conn, pid)
    principal = current_principal()
    result = ingest_many(
        store(), [], retractions=[{"patient_id": pid, "table": table, "id": client_id,
                                   "pointer": "path"}],
        actor=None if principal is None else principal.name,
        audit=write_audit(),
    )
    (done,) = result["retractions"]
    if done["result"] == "kept":
        detail = (
            f"The {table} row of {done['date']} was imported before merged resources were "
            "recorded and holds both PHQ-9 and C-SSRS answers; deleting it could drop an "
            "answer of another resource. Correct it by hand."
            if LEGACY_MERGE in done["missing"]
            else f"The {table} row of {done['date']} also holds "
            + ", ".join(done["missing"])
            + " (merged on a FHIR import); deleting it would lose their values. Withdraw it "
            "through POST /fhir/r4 together with those resources, sent again or "
            "entered-in-error."
        )
        raise ApiProblem(409, "Row holds other resources", detail)
    out = {"patient_id": pid, "table": table, "id": client_id,
           "result": done["result"], "date": done["date"]}
    return jsonify(out)


@bp.delete("/patients/<patient_id>/assessments/<path:client_id>")
@require_role("clinician")
@audited("patient.withdraw", success=False)
def withdraw_assessment(patient_id: str, client_id: str) -> Response:
    """Withdraw an assessment entered in error (by its client ``id``; idempotent)."""
    return _withdraw_row(patient_id, "assessments", client_id)


@bp.delete("/patients/<patient_id>/sessions/<path:client_id>")
@require_role("clinician")
@audited("patient.withdraw", success=False)
def withdraw_session(patient_id: str, client_id: str) -> Response:
    """Withdraw a session entered in error (by its client ``id``; idempotent)."""
    return _withdraw_row(patient_id, "sessions", client_id)


@bp.post("/patients/<patient_id>/assessments")
@require_role("clinician")
@audited("patient.write", success=False)
def post_assessments(patient_id: str) -> tuple[Response, int]:
    """Add assessments (idempotent by client ``id``; all or nothing)."""
    return _post_rows(patient_id, "assessments")


@bp.post("/patients/<patient_id>/sessions")
@require_role("clinician")
@audited("patient.write", success=False)
def post_sessions(patient_id: str) -> tuple[Response, int]:
    """Add sessions (idempotent by client ``id``; all or nothing)."""
    return _post_rows(patient_id, "sessions")


@bp.get("/patients/<patient_id>")
@require_role("clinician")
@audited("patient.read")
def get_patient(patient_id: str) -> Response:
    """The patient's covariates, history (scored) and measured outcomes."""
    pid = _path_patient(patient_id)
    st = store()
    with st.read() as conn:
        _require_patient(conn, pid)
        patients = st.history(conn, "patients", [pid])
        sessions = st.history(conn, "sessions", [pid], with_ids=True)
        assessments = st.history(conn, "assessments", [pid], with_ids=True)
        withdrawn = st.withdrawals(conn, pid)
    contract_cols = {t: [c.name for c in TABLES[t]] for t in TABLES}
    cohort = Cohort(
        patients,
        sessions[contract_cols["sessions"]],
        assessments[contract_cols["assessments"]],
    )
    live = model_state().current
    definition = getattr(live, "definition", None) or OutcomeDefinition()
    summary = patient_summary(cohort, definition)
    scored = score_assessments(cohort.assessments)
    scored["id"] = assessments["client_id"].to_numpy()
    sessions = sessions.rename(columns={"client_id": "id"})
    row_cols = ["id", "date"]
    out = {
        "patient": frame_json(patients, contract_cols["patients"] + list(st.covariates))[0],
        "sessions": frame_json(sessions, row_cols + contract_cols["sessions"][2:]),
        "assessments": frame_json(
            scored,
            row_cols
            + contract_cols["assessments"][2:]
            + ["phq9", "phq9_prorated", "severity", "safety", "safety_reason"],
        ),
        "outcomes": frame_json(summary, list(summary.columns))[0] if len(summary) else None,
        # Rows withdrawn as entered in error (no values kept): what no longer counts.
        "withdrawn": withdrawn,
        "outcome_definition": (definition.to_dict() if hasattr(definition, "to_dict") else None),
        "note": "Measured outcomes for decision support; the absence of a safety flag is "
        "not a clearance and nothing here is a suicide-risk assessment.",
    }
    return jsonify(out)


@bp.get("/patients/<patient_id>/forecast")
@require_role("clinician")
@audited("forecast", success=False)
def patient_forecast(patient_id: str) -> Response:
    """The forecast for a stored patient as of a date."""
    pid = _path_patient(patient_id)
    as_of = parse_as_of(request.args.get("as_of"), "query/as_of")
    threshold = parse_threshold(request.args.get("threshold"), "query/threshold")
    daily = parse_detail(request.args.get("detail"))
    model_state().get()  # 503 before touching the store when there is no model
    st = store()
    with st.read() as conn:
        cohort = st.cohort([pid], conn)
    if cohort.patients.empty:  # the patients row is the patient (one query less)
        raise _unknown_patient()
    queries = pd.DataFrame({"patient_id": [pid], "as_of": [as_of], "threshold": [threshold]})
    return jsonify(serve_forecasts(cohort, queries, "patient_forecast", daily=daily)[0])


@bp.post("/forecast")
@require_role("clinician")
@audited("forecast", success=False)
def stateless_forecast() -> Response:
    """Forecast from a history sent in the body (nothing about the patient is stored)."""
    body = json_body()
    parsed = schemas.parse(schemas.ForecastBody, shape_of(body))
    as_of = parse_as_of(parsed.as_of, "/as_of")
    threshold = parse_threshold(parsed.threshold, "/threshold")
    daily = parse_detail(request.args.get("detail"))
    model_state().get()
    cohort, ids = stateless_cohort([(body, "")])
    queries = pd.DataFrame({"patient_id": ids, "as_of": [as_of], "threshold": [threshold]})
    return jsonify(serve_forecasts(cohort, queries, "stateless_forecast", daily=daily)[0])


@bp.post("/forecast/batch")
@require_role("clinician")
@audited("forecast", success=False)
def batch_forecast() -> Response:
    """Forecasts for many patients in one vectorised call (stored or stateless)."""
    body = json_body()
    limit = int(current_app.config["KAP_MAX_BATCH"])
    bound_list(body, "patients", limit)  # before any entry is looked at
    bound_list(body, "histories", limit)
    parsed = schemas.parse(schemas.BatchBody, shape_of(body))
    if (parsed.patients is None) == (parsed.histories is None):
        raise ApiProblem(
            422,
            "Invalid request body",
            errors=[{"field": "/", "message": "give exactly one of 'patients' or 'histories'"}],
        )
    entries = parsed.patients if parsed.patients is not None else parsed.histories
    key = "patients" if parsed.patients is not None else "histories"
    limit = int(current_app.config["KAP_MAX_BATCH"])
    if len(entries) > limit:
        raise ApiProblem(
            413,
            "Batch too large",
            errors=[{"field": f"/{key}", "message": f"at most {limit} entries per call"}],
        )
    default_as_of = parse_as_of(parsed.as_of, "/as_of")
    default_t = parse_threshold(parsed.threshold, "/threshold")
    as_ofs = [
        parse_as_of(e.as_of, f"/{key}/{i}/as_of") if e.as_of else default_as_of
        for i, e in enumerate(entries)
    ]
    thresholds = [
        parse_threshold(e.threshold, f"/{key}/{i}/threshold") if e.threshold else default_t
        for i, e in enumerate(entries)
    ]
    daily = parse_detail(request.args.get("detail"))
    model_state().get()
    if key == "patients":
        ids = [
            check_patient_id(e.patient_id, f"/patients/{i}/patient_id")
            for i, e in enumerate(entries)
        ]
        st = store()
        with st.read() as conn:
            known = st.known_patients(conn, ids)
            missing = [
                {"field": f"/patients/{i}/patient_id", "message": "unknown patient"}
                for i, pid in enumerate(ids)
                if pid not in known
            ]
            if missing:
                raise ApiProblem(422, "Unknown patients", f"{len(missing)} unknown", missing)
            cohort = st.cohort(sorted(set(ids)), conn)
    else:
        cohort, ids = histories_cohort(body["histories"], "/histories")
    queries = pd.DataFrame({"patient_id": ids, "as_of": as_ofs, "threshold": thresholds})
    answers = serve_forecasts(cohort, queries, "batch_forecast", daily=daily)
    version = answers[0]["model_version"] if answers else model_state().version
    return jsonify({"model_version": version, "count": len(answers), "forecasts": answers})


# --------------------------------------------------------------------------- admin
@bp.get("/tokens")
@require_role("admin")
@audited("token.list")
def list_tokens() -> Response:
    """The clinic's tokens without secrets."""
    rows = store().list_tokens()  # the caller's clinic only
    return jsonify({"tokens": [{k: _iso(v) for k, v in r.items()} for r in rows]})


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime | dt.date) else value


@bp.post("/tokens")
@require_role("admin")
def create_token() -> tuple[Response, int]:
    """Create a token of the caller's clinic; the answer is the only time it is shown."""
    body = json_body()
    parsed = schemas.parse(schemas.TokenBody, body)
    if not parsed.name.isprintable():
        raise ApiProblem(
            422,
            "Invalid token name",
            errors=[{"field": "/name", "message": "allowed: printable characters only"}],
        )
    what = f"token {parsed.name[:100]} ({parsed.role})"
    try:
        token = store().create_token(parsed.name, parsed.role)
    except StoreError as exc:
        audit_event("token.create", outcome="refused", detail=what)
        raise ApiProblem(409, "Token not created", str(exc)) from None
    audit_event("token.create", detail=what)
    return jsonify({"name": parsed.name, "role": parsed.role, "token": token}), 201


@bp.delete("/tokens/<path:name>")
@require_role("admin")
def revoke_token(name: str) -> Response:
    """Revoke a token of the caller's clinic by name."""
    what = f"token {name[:100]}"
    if not store().revoke_token(name):
        audit_event("token.revoke", outcome="not_found", detail=what)
        raise ApiProblem(404, "Unknown token", "No live token of this clinic has this name.")
    audit_event("token.revoke", detail=what)
    return jsonify({"name": name, "revoked": True})


@bp.get("/audit")
@require_role("admin")
@audited("audit.read")
def audit_trail() -> Response:
    """One page of the clinic's audit rows, oldest first, with filters.

    ``next`` is the ``after`` of the next page (null on the last one).
    """
    args = request.args
    pid = args.get("patient_id")
    if pid is not None:
        check_patient_id(pid, "query/patient_id")
    action = _choice(args.get("action"), "query/action", ACTIONS)
    outcome = _choice(args.get("outcome"), "query/outcome", OUTCOMES)
    actor = args.get("actor")
    if actor is not None and not 0 < len(actor) <= 128:
        raise _invalid("query/actor", "allowed: 1 to 128 characters")
    after = _count(args.get("after"), "query/after", 0, None, 0)
    limit = _count(args.get("limit"), "query/limit", 1, 1000, 100)
    rows, nxt = store().audit_page(
        patient_id=pid,
        action=action,
        actor=actor,
        outcome=outcome,
        since=_when(args.get("since"), "query/since"),
        until=_when(args.get("until"), "query/until"),
        after=after,
        limit=limit,
    )
    return jsonify({"audit": [{k: _iso(v) for k, v in r.items()} for r in rows], "next": nxt})


def _invalid(field: str, message: str) -> ApiProblem:
    return ApiProblem(422, "Invalid query parameter", errors=[{"field": field, "message": message}])


def _choice(value: str | None, field: str, allowed: tuple[str, ...]) -> str | None:
    if value is None or value in allowed:
        return value
    raise _invalid(field, f"got {value[:40]!r}; allowed: {', '.join(allowed)}")


def _count(value: str | None, field: str, low: int, high: int | None, default: int) -> int:
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise _invalid(field, f"got {value[:40]!r}; allowed: a whole number")
    n = int(value)
    if n < low or (high is not None and n > high):
        top = f" to {high}" if high is not None else " or more"
        raise _invalid(field, f"got {n}; allowed: {low}{top}")
    return n


def _when(value: str | None, field: str) -> dt.datetime | None:
    """A date (midnight UTC) or an ISO time (UTC when it names no zone)."""
    if value is None or value == "":
        return None
    try:
        if len(value) > 40:
            raise ValueError
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(field, "allowed: a date YYYY-MM-DD or an ISO time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
