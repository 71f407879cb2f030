"""The JSON API under ``/api/v1`` (blueprint ``api``).

Routes (roles in brackets; admin may call everything):

- ``GET /health`` (open): model loaded? database reachable? No patient data.
- ``GET /model`` [clinician, researcher]: the live model card and version.
- ``POST /model/reload`` [admin]: switch to the registry's latest version.
- ``PUT /patients/{id}`` [clinician]: create or update covariates (with the
  declared ones of ``FORECAST_COVARIATES``).
- ``POST /patients/{id}/assessments`` and ``/sessions`` [clinician]: idempotent lists.
- ``DELETE /patients/{id}/assessments/{client id}`` and ``/sessions/...``
  [clinician]: withdraw a row entered in error (tombstoned; idempotent).
- ``GET /patients/{id}`` [clinician]: history and measured outcomes.
- ``GET /patients/{id}/forecast?as_of=&threshold=`` [clinician]: from the store.
- ``POST /forecast`` [clinician]: stateless, the history in the body.
- ``POST /forecast/batch`` [clinician]: many patients, one vectorised call.
- ``GET/POST /tokens``, ``DELETE /tokens/{name}`` [admin]: token management.
- ``GET /audit?patient_id=`` [admin]: the audit trail.

Every forecast served is written to the audit table before the response is
returned; if that write fails, the client gets a 5xx problem, not a forecast.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from flask import Blueprint, Response, current_app, g, jsonify, request

from forecast.cohort import Cohort
from service import schemas
from service.auth import current_principal, public, require_role
from service.errors import ApiProblem, field_errors
from service.ingest import check_patient_id, ingest_many
from service.jsonbody import JsonBodyError, parse_body
from service.logging import request_id
from service.modelstate import ModelState
from service.store import Store

bp = Blueprint("api", __name__)

JSON_TYPES = ("application/json",)


# --------------------------------------------------------------------------- helpers
def store() -> Store:
    """The app's store."""
    return current_app.extensions["kap_store"]


def model_state() -> ModelState:
    """The app's live-model holder."""
    return current_app.extensions["kap_model"]


def settings() -> Any:
    """The default ``PolicySettings`` of this app."""
    return current_app.extensions["kap_settings"]


def json_body() -> Any:
    """The parsed JSON body, or a 415/400/413 problem.

    Only ``application/json`` (or a ``+json`` type) is accepted; the size limit
    (``MAX_CONTENT_LENGTH``) is enforced by werkzeug before parsing. The body
    is strict JSON (:func:`service.jsonbody.parse_body`): a key repeated in an
    object, ``NaN`` / ``Infinity`` and too deep nesting are 400, a repeated key
    named by its JSON pointer in ``errors``. Also used by CDS Hooks.
    """
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise ApiProblem(
            415,
            detail="Send the body as JSON with 'Content-Type: application/json'.",
            errors=[{"field": "header/Content-Type", "message": f"got {mimetype or 'none'!r}"}],
        )
    raw = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    if not raw.strip():
        raise ApiProblem(400, "Empty body", "The request body is empty; send a JSON object.")
    try:
        return parse_body(raw)
    except JsonBodyError as exc:
        raise ApiProblem(400, exc.title, exc.detail, exc.errors) from None


#: Earliest accepted forecast date (pandas' nanosecond timestamps start in 1677).
EARLIEST_AS_OF = dt.date(1900, 1, 1)


def parse_as_of(value: str | None, field: str) -> pd.Timestamp:
    """A forecast date (``YYYY-MM-DD`` from 1900 to today UTC; default today)."""
    today = pd.Timestamp(dt.datetime.now(dt.UTC).date())
    if value is None or value == "":
        return today
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        parsed = dt.date.fromisoformat(value)
        if parsed < EARLIEST_AS_OF:
            raise ValueError
        day = pd.Timestamp(parsed)
    except ValueError:
        raise ApiProblem(
            422,
            "Invalid date",
            errors=[
                {"field": field, "message": f"got {value!r}; allowed: a date YYYY-MM-DD from 1900"}
            ],
        ) from None
    if day > today:
        raise ApiProblem(
            422,
            "Invalid date",
            errors=[{"field": field, "message": "a forecast date may not be in the future"}],
        )
    return day


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


def _require_patient(conn: Any, patient_id: str) -> None:
    if not store().known_patients(conn, [patient_id]):
        raise ApiProblem(
            404,
            "Unknown patient",
            "No patient with this id is stored; create it with PUT /api/v1/patients/{id}.",
        )


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        if np.isnan(f):
            return None
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    return value


def _records_json(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as JSON values: dates ``YYYY-MM-DD``, whole numbers as ints, blanks null.

    Boolean contract columns (``psychotherapy``, stored 1.0/0.0) become true/false,
    so a record read back can be posted again unchanged.
    """
    from forecast.contract import TABLES

    bools = {c.name for t in TABLES.values() for c in t if c.kind == "bool"}
    cols = [c for c in columns if c in frame.columns]
    out = []
    for row in frame[cols].itertuples(index=False, name=None):
        rec = {}
        for c, v in zip(cols, row, strict=True):
            value = _jsonable(v)
            rec[c] = bool(value) if c in bools and value is not None else value
        out.append(rec)
    return out


def records_json(frame: pd.DataFrame, table: str) -> list[dict[str, Any]]:
    """A canonical frame's rows as the API's JSON items (contract columns, no patient_id)."""
    from forecast.contract import TABLES

    return _records_json(frame, [c.name for c in TABLES[table] if c.name != "patient_id"])


# --------------------------------------------------------------------------- audit
def _lines(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Each row of ``frame`` as one CSV line (the canonical form hashed for the audit).

    Formats every cell as :func:`_lines_pandas` does (``DataFrame.to_csv`` with
    ``%.10g`` numbers, ``YYYY-MM-DD`` dates, empty blanks) and quotes them with
    the same ``csv`` writer, without the cost of ``to_csv`` (a millisecond per
    call, most of a one-patient hash); a test checks both agree.
    """
    n = len(frame)
    if not n:
        return np.array([], dtype=object)
    cells: list[list[str]] = []
    for name in columns:
        v = frame[name].to_numpy()
        if v.dtype.kind == "f":
            cells.append(["" if x != x else format(x, ".10g") for x in v.tolist()])
        elif v.dtype.kind == "M":
            text = np.datetime_as_string(v.astype("datetime64[D]"), unit="D").astype(object)
            text[np.isnat(v)] = ""
            cells.append(text.tolist())
        elif v.dtype == object:
            blank = pd.isna(v)
            cells.append(
                ["" if b else str(x) for x, b in zip(v.tolist(), blank.tolist(), strict=True)]
            )
        else:
            return _lines_pandas(frame, columns)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zip(*cells, strict=True))
    return np.array(buf.getvalue().split("\n")[:-1], dtype=object)


def _lines_pandas(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """:func:`_lines` by ``DataFrame.to_csv`` (the reference form)."""
    if not len(frame):
        return np.array([], dtype=object)
    text = frame[list(columns)].to_csv(
        header=False,
        index=False,
        date_format="%Y-%m-%d",
        float_format="%.10g",
        na_rep="",
        lineterminator="\n",
    )
    return np.array(text.split("\n")[:-1], dtype=object)


def inputs_hashes(cohort: Cohort, queries: pd.DataFrame, model_version: str | None) -> list[str]:
    """sha256 of each query's canonical inputs (history up to as-of, as-of, threshold, model).

    The canonical form is the contract columns written as CSV lines (dates
    ``YYYY-MM-DD``, numbers ``%.10g``, blanks empty) in the cohort's order, so
    the same history gives the same hash whichever route delivered it.
    """
    from forecast.contract import TABLES

    tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name in ("patients", "sessions", "assessments"):
        frame: pd.DataFrame = getattr(cohort, name)
        cols = [c.name for c in TABLES[name]]
        pids = frame["patient_id"].to_numpy(dtype=object)
        if pd.api.types.infer_dtype(pids, skipna=False) not in ("string", "empty"):
            pids = pids.astype(str).astype(object)
        dates = (
            frame["date"].to_numpy(dtype="datetime64[ns]")
            if "date" in frame
            else np.zeros(len(frame), dtype="datetime64[ns]")
        )
        tables[name] = (pids, dates, _lines(frame, cols))
    out = []
    for pid, as_of, threshold in zip(
        queries["patient_id"].astype(str).tolist(),
        pd.to_datetime(queries["as_of"]).to_numpy(dtype="datetime64[ns]"),
        queries["threshold"].to_numpy(dtype=float).tolist(),
        strict=True,
    ):
        h = hashlib.sha256()
        h.update(
            f"model={model_version}\nas_of={str(as_of)[:10]}\nthreshold={threshold:.10g}\n".encode()
        )
        for name, (pids, dates, lines) in tables.items():
            # Frames are sorted by patient then date: slice instead of scanning.
            lo = np.searchsorted(pids, pid, side="left")
            hi = np.searchsorted(pids, pid, side="right")
            if name != "patients":
                hi = lo + np.searchsorted(dates[lo:hi], as_of, side="right")
            h.update(f"{name}\n".encode())
            h.update("\n".join(lines[lo:hi]).encode())
            h.update(b"\n")
        out.append(h.hexdigest())
    return out


def serve_forecasts(cohort: Cohort, queries: pd.DataFrame, endpoint: str) -> list[dict[str, Any]]:
    """Forecast the queries with the live model and audit every answer before returning.

    The one serving path of every route that answers a forecast (JSON API,
    FHIR RiskAssessment, CDS Hooks, pages).

    Parameters
    ----------
    cohort : Cohort
        Histories of the queried patients.
    queries : DataFrame
        ``patient_id``, ``as_of`` and ``threshold`` per forecast.
    endpoint : str
        Short name of the route, written to the audit row.

    Returns
    -------
    list of dict
        The policy's answers, in query order; each is in the audit table.

    Raises
    ------
    ApiProblem
        503 when no model is loaded.
    """
    from forecast.policy import forecast_queries

    model = model_state().get()  # one reference for the whole request
    answers = forecast_queries(cohort, model, queries, settings())
    version = str(getattr(model, "version", None))
    hashes = inputs_hashes(cohort, queries, version)
    principal = g.get("principal")
    # A forecast without a principal means a route forgot its auth: the audit shows it.
    token_name = principal.name if principal is not None else "(unauthenticated)"
    rows = []
    for answer, digest in zip(answers, hashes, strict=True):
        sugg = answer.get("suggestion") or {}
        by = sugg.get("session_by")
        rows.append(
            {
                "token_name": token_name,
                "patient_id": str(answer["patient_id"]),
                "as_of": dt.date.fromisoformat(str(answer["as_of"])[:10]),
                "model_version": version,
                "inputs_hash": digest,
                "status": str(answer["status"]),
                "suggested_date": dt.date.fromisoformat(by) if by else None,
                "request_id": request_id(),
                "endpoint": endpoint,
            }
        )
    store().add_audit(rows)
    return answers


#: Former private name, kept for callers written against the first version.
_serve = serve_forecasts


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
    state = model_state()
    previous = state.version
    loaded = state.reload()
    return jsonify({"version": str(loaded.version), "previous": previous})


@bp.put("/patients/<patient_id>")
@require_role("clinician")
def put_patient(patient_id: str) -> tuple[Response, int]:
    """Create or update a patient's covariates."""
    pid = _path_patient(patient_id)
    body = json_body()
    declared = _declared()
    schemas.parse(schemas.PatientCovariates, _without(body, declared))
    from forecast.data import validate_patient

    frame, problems = validate_patient(body, patient_id=pid, covariates=declared)
    if problems:
        raise ApiProblem(422, "Invalid patient", errors=field_errors(problems, ""))
    record = frame.iloc[0].to_dict()
    result = store().run_write(lambda conn: store().upsert_patient(conn, record))
    out = {"patient_id": pid, "result": result}
    return jsonify(out), 201 if result == "created" else 200


def _declared() -> tuple[str, ...]:
    """The declared covariates of the running app's store (none outside an app)."""
    from flask import has_app_context

    if not has_app_context() or "kap_store" not in current_app.extensions:
        return ()
    return tuple(store().covariates)


def _without(body: Any, names: Sequence[str]) -> Any:
    """``body`` without the declared covariates, for the shape check of the contract's keys.

    The pydantic models list the contract's patient fields only; declared
    covariates (``FORECAST_COVARIATES``) are checked by ``validate_patient``
    (numbers or null), as the data contract checks them in files.
    """
    if not names or not isinstance(body, Mapping):
        return body
    return {k: v for k, v in body.items() if k not in names}


def _shape_of(body: Any) -> Any:
    """A stateless forecast body (single or batch) without declared covariates in its patients."""
    declared = _declared()
    if not declared or not isinstance(body, Mapping):
        return body
    out = dict(body)
    if isinstance(out.get("patient"), Mapping):
        out["patient"] = _without(out["patient"], declared)
    if isinstance(out.get("histories"), list):
        out["histories"] = [
            {**h, "patient": _without(h["patient"], declared)}
            if isinstance(h, Mapping) and isinstance(h.get("patient"), Mapping)
            else h
            for h in out["histories"]
        ]
    return out


def _post_rows(patient_id: str, table: str) -> tuple[Response, int]:
    pid = _path_patient(patient_id)
    body = json_body()
    model = schemas.AssessmentsBody if table == "assessments" else schemas.SessionsBody
    schemas.parse(model, body)
    with store().read() as conn:
        _require_patient(conn, pid)
    result = ingest_many(store(), [(pid, table, body[table], f"/{table}")])
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
    )
    (done,) = result["retractions"]
    if done["result"] == "kept":
        from service.store import LEGACY_MERGE

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
def withdraw_assessment(patient_id: str, client_id: str) -> Response:
    """Withdraw an assessment entered in error (by its client ``id``; idempotent)."""
    return _withdraw_row(patient_id, "assessments", client_id)


@bp.delete("/patients/<patient_id>/sessions/<path:client_id>")
@require_role("clinician")
def withdraw_session(patient_id: str, client_id: str) -> Response:
    """Withdraw a session entered in error (by its client ``id``; idempotent)."""
    return _withdraw_row(patient_id, "sessions", client_id)


@bp.post("/patients/<patient_id>/assessments")
@require_role("clinician")
def post_assessments(patient_id: str) -> tuple[Response, int]:
    """Add assessments (idempotent by client ``id``; all or nothing)."""
    return _post_rows(patient_id, "assessments")


@bp.post("/patients/<patient_id>/sessions")
@require_role("clinician")
def post_sessions(patient_id: str) -> tuple[Response, int]:
    """Add sessions (idempotent by client ``id``; all or nothing)."""
    return _post_rows(patient_id, "sessions")


@bp.get("/patients/<patient_id>")
@require_role("clinician")
def get_patient(patient_id: str) -> Response:
    """The patient's covariates, history (scored) and measured outcomes."""
    from forecast.contract import TABLES
    from forecast.instruments import score_assessments
    from forecast.outcomes import OutcomeDefinition
    from forecast.summary import patient_summary

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
        "patient": _records_json(patients, contract_cols["patients"] + list(st.covariates))[0],
        "sessions": _records_json(sessions, row_cols + contract_cols["sessions"][2:]),
        "assessments": _records_json(
            scored,
            row_cols
            + contract_cols["assessments"][2:]
            + ["phq9", "phq9_prorated", "severity", "safety", "safety_reason"],
        ),
        "outcomes": _records_json(summary, list(summary.columns))[0] if len(summary) else None,
        # Rows withdrawn as entered in error (no values kept): what no longer counts.
        "withdrawn": withdrawn,
        "outcome_definition": (definition.to_dict() if hasattr(definition, "to_dict") else None),
        "note": "Measured outcomes for decision support; the absence of a safety flag is "
        "not a clearance and nothing here is a suicide-risk assessment.",
    }
    return jsonify(out)


@bp.get("/patients/<patient_id>/forecast")
@require_role("clinician")
def patient_forecast(patient_id: str) -> Response:
    """The forecast for a stored patient as of a date."""
    pid = _path_patient(patient_id)
    as_of = parse_as_of(request.args.get("as_of"), "query/as_of")
    threshold = parse_threshold(request.args.get("threshold"), "query/threshold")
    model_state().get()  # 503 before touching the store when there is no model
    st = store()
    with st.read() as conn:
        _require_patient(conn, pid)
        cohort = st.cohort([pid], conn)
    queries = pd.DataFrame({"patient_id": [pid], "as_of": [as_of], "threshold": [threshold]})
    return jsonify(serve_forecasts(cohort, queries, "patient_forecast")[0])


def _stateless_cohort(
    entries: list[tuple[Any, str]],
) -> tuple[Cohort, list[str]]:
    """Validate stateless histories (body, pointer prefix) into one cohort."""
    from forecast.cohort import canonicalize
    from forecast.contract import TABLES
    from forecast.data import validate_patient, validate_records

    declared = _declared()
    errors: list[dict[str, str]] = []
    frames: dict[str, list[pd.DataFrame]] = {"patients": [], "sessions": [], "assessments": []}
    ids: list[str] = []
    seen: dict[str, str] = {}
    for body, prefix in entries:
        patient = dict(body["patient"])
        pid = patient.get("patient_id")
        try:
            check_patient_id(pid, f"{prefix}/patient/patient_id")
        except ApiProblem as exc:
            errors += exc.errors
            continue
        if pid in seen:
            errors.append(
                {
                    "field": f"{prefix}/patient/patient_id",
                    "message": f"duplicate: {seen[pid]} has the same patient_id",
                }
            )
            continue
        seen[pid] = prefix or "/"
        ids.append(pid)
        pframe, problems = validate_patient(patient, patient_id=pid, covariates=declared)
        errors += field_errors(problems, f"{prefix}/patient")
        frames["patients"].append(pframe)
        for table in ("sessions", "assessments"):
            frame, problems = validate_records(
                table, body.get(table) or [], patient_id=pid, known_patient=True
            )
            errors += field_errors(problems, f"{prefix}/{table}")
            frames[table].append(frame[[c.name for c in TABLES[table]]])
    if errors:
        raise ApiProblem(422, "Invalid data", f"{len(errors)} problem(s) in the histories", errors)
    if len(ids) == 1:
        # One patient's validated frames are canonical already (sorted by date).
        merged = {t: fs[0] for t, fs in frames.items()}
    else:
        merged = {t: canonicalize(t, pd.concat(fs, ignore_index=True)) for t, fs in frames.items()}
    return Cohort(merged["patients"], merged["sessions"], merged["assessments"], declared), ids


_ROW_REF = re.compile(r"\brow (\d+)\b")


def _item_of(pointers: list[str], match: re.Match[str]) -> str:
    k = int(match.group(1)) - 2
    return pointers[k] if 0 <= k < len(pointers) else match.group(0)


def histories_cohort(bodies: list[dict[str, Any]], prefix: str) -> tuple[Cohort, list[str]]:
    """Validate many stateless histories at once into one cohort (the batch path).

    One call of ``forecast.data.validate_tables`` (the folder validator, the
    same row rules, vectorised over patients) instead of one validation per
    patient and table: 1,000 histories take about 2 s instead of 16 s. Every
    problem is mapped back to its JSON pointer
    (``/histories/<i>/assessments/<j>/<column>``). The shape (JSON types,
    unknown keys) was already checked by :data:`schemas.BatchBody`.
    """
    from forecast.contract import TABLES
    from forecast.data import validate_tables

    declared = _declared()
    cols = {t: [c.name for c in TABLES[t]] for t in TABLES}
    cols["patients"] += list(declared)
    errors: list[dict[str, str]] = []
    ids: list[str] = []
    seen: dict[str, int] = {}
    patient_rows: list[dict[str, Any]] = []
    rows: dict[str, list[dict[str, Any]]] = {"sessions": [], "assessments": []}
    where: dict[str, list[str]] = {"patients": [], "sessions": [], "assessments": []}
    for i, body in enumerate(bodies):
        patient = body["patient"]
        pid = patient.get("patient_id")
        try:
            check_patient_id(pid, f"{prefix}/{i}/patient/patient_id")
        except ApiProblem as exc:
            errors += exc.errors
            continue
        if pid in seen:
            errors.append(
                {
                    "field": f"{prefix}/{i}/patient/patient_id",
                    "message": f"duplicate: {prefix}/{seen[pid]} has the same patient_id",
                }
            )
            continue
        seen[pid] = i
        ids.append(pid)
        patient_rows.append({c: patient.get(c) for c in cols["patients"]})
        where["patients"].append(f"{prefix}/{i}/patient")
        for table in ("sessions", "assessments"):
            for j, item in enumerate(body.get(table) or []):
                rows[table].append({**{c: item.get(c) for c in cols[table]}, "patient_id": pid})
                where[table].append(f"{prefix}/{i}/{table}/{j}")
    if errors:
        raise ApiProblem(422, "Invalid data", f"{len(errors)} problem(s) in the histories", errors)
    # Object columns keep JSON values as sent (None stays blank, 3 stays 3).
    raw = {
        "patients": pd.DataFrame(patient_rows, columns=cols["patients"], dtype=object),
        "sessions": pd.DataFrame(rows["sessions"], columns=cols["sessions"], dtype=object),
        "assessments": pd.DataFrame(rows["assessments"], columns=cols["assessments"], dtype=object),
    }
    cohort, problems = validate_tables(raw, covariates=declared, sources={t: t for t in raw})
    if problems or cohort is None:
        for p in problems:
            table = p.source if p.source in where else None
            if table is None or p.row is None:
                field = prefix
            else:
                field = where[table][p.row - 2]  # rows are numbered like CSV lines
            if p.column and p.column != "patient_id":
                field += "/" + p.column
            elif p.column == "patient_id" and table == "patients":
                field += "/patient_id"
            message = p.message
            if table is not None:
                # "row 22" means a CSV line of the combined table: name the item instead.
                message = _ROW_REF.sub(lambda m, t=table: _item_of(where[t], m), message)
            errors.append({"field": field, "message": message})
        raise ApiProblem(422, "Invalid data", f"{len(errors)} problem(s) in the histories", errors)
    return cohort, ids


@bp.post("/forecast")
@require_role("clinician")
def stateless_forecast() -> Response:
    """Forecast from a history sent in the body (nothing about the patient is stored)."""
    body = json_body()
    parsed = schemas.parse(schemas.ForecastBody, _shape_of(body))
    as_of = parse_as_of(parsed.as_of, "/as_of")
    threshold = parse_threshold(parsed.threshold, "/threshold")
    model_state().get()
    cohort, ids = _stateless_cohort([(body, "")])
    queries = pd.DataFrame({"patient_id": ids, "as_of": [as_of], "threshold": [threshold]})
    return jsonify(serve_forecasts(cohort, queries, "stateless_forecast")[0])


@bp.post("/forecast/batch")
@require_role("clinician")
def batch_forecast() -> Response:
    """Forecasts for many patients in one vectorised call (stored or stateless)."""
    body = json_body()
    parsed = schemas.parse(schemas.BatchBody, _shape_of(body))
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
    answers = serve_forecasts(cohort, queries, "batch_forecast")
    version = answers[0]["model_version"] if answers else model_state().version
    return jsonify({"model_version": version, "count": len(answers), "forecasts": answers})


# --------------------------------------------------------------------------- admin
@bp.get("/tokens")
@require_role("admin")
def list_tokens() -> Response:
    """Tokens without secrets."""
    rows = store().list_tokens()
    return jsonify({"tokens": [{k: _iso(v) for k, v in r.items()} for r in rows]})


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime | dt.date) else value


@bp.post("/tokens")
@require_role("admin")
def create_token() -> tuple[Response, int]:
    """Create a token; the answer is the only time the token is shown."""
    from service.store import StoreError

    body = json_body()
    parsed = schemas.parse(schemas.TokenBody, body)
    try:
        token = store().create_token(parsed.name, parsed.role)
    except StoreError as exc:
        raise ApiProblem(409, "Token not created", str(exc)) from None
    return jsonify({"name": parsed.name, "role": parsed.role, "token": token}), 201


@bp.delete("/tokens/<name>")
@require_role("admin")
def revoke_token(name: str) -> Response:
    """Revoke a token by name."""
    if not store().revoke_token(name):
        raise ApiProblem(404, "Unknown token", "No live token has this name.")
    return jsonify({"name": name, "revoked": True})


@bp.get("/audit")
@require_role("admin")
def audit_trail() -> Response:
    """Audit rows (optionally of one patient), oldest first."""
    pid = request.args.get("patient_id")
    if pid is not None:
        check_patient_id(pid, "query/patient_id")
    rows = store().audit_rows(pid)
    return jsonify({"audit": [{k: _iso(v) for k, v in r.items()} for r in rows]})


@public
def openapi_document() -> Response:
    """The OpenAPI 3 document (open; registered at ``/openapi.json``)."""
    from service.openapi import build_document

    doc = current_app.extensions.get("kap_openapi")
    if doc is None:
        doc = current_app.extensions["kap_openapi"] = build_document(current_app)
    return jsonify(doc)
