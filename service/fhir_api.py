"""FHIR R4 facade (blueprint ``fhir_api``) at ``/fhir/r4``.

- ``GET /fhir/r4/metadata`` (open): the CapabilityStatement, listing exactly
  what is answered here (:mod:`forecast.fhir.capability`).
- ``POST /fhir/r4`` [clinician]: a Bundle (transaction, batch or collection)
  of Patient, QuestionnaireResponse, Observation and Procedure resources. The
  resources are validated and mapped by :mod:`forecast.fhir`, then written by
  :func:`service.ingest.ingest_many` (the JSON API's validation, one
  transaction, idempotent by the client id ``"<ResourceType>/<id>"``, and by
  content for a row re-sent in another shape). Every Bundle type is
  all-or-nothing for what it imports. The answer is a ``transaction-response``
  (or ``batch-response``) Bundle whose every entry names its import result
  (:data:`IMPORT_RESULT`): ``201 Created`` / ``200 OK`` with a ``location``
  for what is stored, ``204 No Content`` without one for what is ignored.
  An STU3 / DSTU2 Bundle, or a media type naming another ``fhirVersion``, is
  refused naming the version.
- ``GET /fhir/r4/RiskAssessment?patient=|subject=[&_count=]`` [clinician]: a
  searchset Bundle with the patient's forecast as of today (audited like
  every forecast served); ``GET /fhir/r4/RiskAssessment/{id}`` reads one
  served before, while it can be made again exactly.
- ``GET /fhir/r4/Patient/{id}`` [clinician]: a stored patient.

Every error under ``/fhir/r4`` is an OperationOutcome (``application/fhir+json``),
including 401, 403, 404 and 405 answered before any view runs: the service's
problem+json answers are turned into OperationOutcomes on the way out
(:func:`_errors_as_outcomes`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import pandas as pd
from flask import Blueprint, Response, current_app, request

from forecast.contract import TABLES
from forecast.fhir import (
    FhirError,
    FhirIssue,
    MappedRecords,
    map_bundle,
    operation_outcome,
    risk_assessment,
    searchset,
)
from forecast.fhir.answers import response_bundle
from forecast.fhir.capability import SEARCH_PARAMETERS, capability_statement
from forecast.fhir.resend import Resent, compare_with_stored
from forecast.fhir.results import outcome_from_problem
from forecast.fhir.versions import media_type_issue
from service.auth import current_principal, public, require_role
from service.clinic_openapi import FHIR_JSON, operation, outcome, query
from service.errors import PROBLEM_MIMETYPE, ApiProblem
from service.ingest import ingest_many
from service.jsonbody import JsonBodyError, bound_list, fhir_path, parse_body
from service.openapi import PROBLEM
from service.serving import (
    audit_event,
    audit_patient,
    audited,
    forecast_for,
    inputs_hashes,
    model_state,
    questionnaires,
    serve_forecasts,
    settings,
    store,
    write_audit,
)
from service.store import LEGACY_MERGE

bp = Blueprint("fhir_api", __name__)

PREFIX = "/fhir/r4"
_POINTER = "fhir-item"
_PATIENT_POINTER = "fhir-patient"
_HTTP_CODE = {
    400: "invalid",
    404: "not-found",
    409: "conflict",
    410: "deleted",
    422: "processing",
    503: "transient",
}
#: A FHIR id (what a read can name).
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

#: Errors every FHIR route may answer, documented as what they are: OperationOutcomes.
_ERRORS = {
    "401": outcome("Missing, unknown or revoked token"),
    "403": outcome("The token's role may not use this route"),
    # An OperationOutcome; problem+json is listed too, as on every route of the service
    # (the answer is converted on its way out, _errors_as_outcomes).
    "500": {
        "description": "The service failed; the request id names the log entry",
        "content": {
            FHIR_JSON: {"schema": {"type": "object"}},
            PROBLEM_MIMETYPE: {"schema": PROBLEM},
        },
    },
}


class FhirProblem(Exception):
    """An error answered as an OperationOutcome (status and issues)."""

    def __init__(self, status: int, issues: list[FhirIssue]):
        super().__init__(f"{status}: {issues[0] if issues else ''}")
        self.status = status
        self.issues = issues


def fhir_response(body: Mapping[str, Any], status: int = 200) -> Response:
    """A FHIR JSON response (``application/fhir+json``)."""
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=FHIR_JSON)


@bp.errorhandler(FhirProblem)
def _fhir_problem(exc: FhirProblem) -> Response:
    return fhir_response(operation_outcome(exc.issues), exc.status)


@bp.after_app_request
def _errors_as_outcomes(resp: Response) -> Response:
    """Every problem+json answer under /fhir/r4 as an OperationOutcome (same status, headers).

    This covers what no view of this blueprint answers itself: 401/403 of
    the token check, 404/405 of the router, 413, 422 of unknown query
    parameters, 500.
    """
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return resp
    if resp.mimetype != PROBLEM_MIMETYPE:
        return resp
    try:
        problem = json.loads(resp.get_data(as_text=True))
    except ValueError:
        problem = {}
    body = outcome_from_problem(problem if isinstance(problem, Mapping) else {}, resp.status_code)
    resp.set_data(json.dumps(body, ensure_ascii=False))
    resp.mimetype = FHIR_JSON
    return resp


def _outcome_for_api_problem(exc: ApiProblem, where: str = "Bundle") -> FhirProblem:
    """An ApiProblem (503 no model, 404, ...) as an OperationOutcome."""
    text = exc.detail or exc.title
    code = _HTTP_CODE.get(exc.status, "exception")
    return FhirProblem(exc.status, [FhirIssue("error", code, text, where)])


def _base() -> str:
    """The facade's base URL (``FORECAST_PUBLIC_URL`` when set, else the request's host)."""
    root = (
        current_app.config.get("KAP_PUBLIC_URL")
        or os.environ.get("FORECAST_PUBLIC_URL")
        or request.host_url
    )
    return root.rstrip("/") + PREFIX


def _body() -> Any:
    mimetype = request.mimetype or ""
    if mimetype not in ("application/json", FHIR_JSON) and not mimetype.endswith("+json"):
        raise FhirProblem(
            415,
            [
                FhirIssue(
                    "error",
                    "not-supported",
                    f"send the Bundle as {FHIR_JSON} (got {mimetype or 'no content type'})",
                    "Bundle",
                )
            ],
        )
    other = media_type_issue(request.headers.get("Content-Type"))
    if other is not None:
        raise FhirProblem(415, [other])
    raw = request.get_data(cache=True)
    try:
        doc = parse_body(raw)
    except JsonBodyError as exc:
        raise _body_problem(exc) from None
    # Before any entry is looked at: 413 beyond KAP_MAX_BUNDLE_ENTRIES.
    bound_list(doc, "entry", int(current_app.config["KAP_MAX_BUNDLE_ENTRIES"]))
    return doc


def _body_problem(exc: JsonBodyError) -> FhirProblem:
    """A body that is not strict JSON (the one place its error shape is chosen).

    An OperationOutcome (code ``structure``) as every /fhir/r4 error; a repeated
    key gets one issue per repeated member, its expression the member's path
    (``Bundle.entry[0].resource.valueQuantity.value``), its JSON pointer in the text.
    """
    if not exc.errors:
        text = exc.detail[:1].lower() + exc.detail[1:]
        # 413: an array or object too long (FHIR's too-costly); 422: a NUL in a string.
        code = {413: "too-costly", 422: "value"}.get(exc.status, "structure")
        return FhirProblem(exc.status, [FhirIssue("error", code, text.rstrip("."), "Bundle")])
    return FhirProblem(
        400,
        [
            FhirIssue(
                "error", "structure", f"{e['message']} (at {e['field']})", fhir_path(e["field"])
            )
            for e in exc.errors
        ],
    )


def _int_like(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _patients_to_write(mapped: MappedRecords, bundle_patients: set[str]) -> list[dict[str, Any]]:
    """Patient records for ingest_many.

    A patient with a Patient resource in the Bundle is created or updated
    (covariates the resource does not carry keep their stored value); a
    patient only referenced is stored already (the mapping refused unknown
    ones) and left alone (its covariates must not be blanked by a Bundle that
    lacks them).
    """
    st = store()
    ids = list(mapped.patients)
    with st.read() as conn:
        known = st.known_patients(conn, ids)
        stored = st.history(conn, "patients", sorted(known & bundle_patients)) if known else None
    stored_by_id: dict[str, dict[str, Any]] = {}
    if stored is not None and len(stored):
        names = [c.name for c in TABLES["patients"]] + list(st.covariates)
        for rec in stored[names].to_dict("records"):
            stored_by_id[str(rec["patient_id"])] = {
                k: _int_like(v) for k, v in rec.items() if v is not None and not pd.isna(v)
            }
    out = []
    for pid, rec in mapped.patients.items():
        if pid in bundle_patients:
            merged = {
                **stored_by_id.get(pid, {}),
                **{k: v for k, v in rec.items() if v is not None},
            }
            out.append({"record": merged, "pointer": f"/{_PATIENT_POINTER}/{pid}"})
        elif pid not in known:
            out.append({"record": {"patient_id": pid}, "pointer": f"/{_PATIENT_POINTER}/{pid}"})
    return out


def _resent(mapped: MappedRecords) -> dict[str, list[Resent]]:
    """Mapped rows dated like a stored row of another id, per table (compared by content).

    Ids withdrawn before (refused anyway), ids stored already (answered by
    id) and rows withdrawn by this Bundle (their date is free) are left out.
    """
    st = store()
    ids = sorted(mapped.patients)
    out: dict[str, list[Resent]] = {}
    if not ids:
        return out
    with st.read() as conn:
        tombs, _ = st.tombstones(conn, ids)
        freed = set()
        for r in mapped.retractions:
            loc = st.locate(conn, r["table"], r["patient_id"], r["id"])
            if loc is not None:
                freed.add(loc["client_id"])
        for table in ("sessions", "assessments"):
            records = getattr(mapped, table)
            if not records:
                continue
            stored = st.history(conn, table, ids, with_ids=True)
            skip = {c for by_pid in tombs.get(table, {}).values() for c in by_pid}
            skip |= {str(c) for c in stored["client_id"].dropna()} if len(stored) else set()
            found = compare_with_stored(table, records, stored, skip_ids=skip, freed=freed)
            if found:
                out[table] = found
    return out


def _resent_conflicts(mapped: MappedRecords, resent: Mapping[str, list[Resent]]) -> None:
    """Raise the 409 naming both rows when a row re-sent in another shape differs."""
    issues = []
    for table, found in resent.items():
        what = "session" if table == "sessions" else "assessment"
        for r in found:
            if r.same:
                continue
            exprs = mapped.sources.get((table, r.record_id)) or ["Bundle"]
            issues.append(
                FhirIssue(
                    "error",
                    "conflict",
                    f"the {what} of {r.date} is stored already from {r.stored_id} with other "
                    f"content ({'; '.join(r.differences)}); this Bundle sends it as "
                    f"{r.record_id}. A stored row is never changed by a re-send: withdraw "
                    f"{r.stored_id} (entered-in-error) to replace it",
                    exprs[0],
                )
            )
    if issues:
        raise FhirProblem(409, issues)


def _without_resent(mapped: MappedRecords, resent: Mapping[str, list[Resent]]) -> None:
    """Drop the rows that are stored content again: nothing of them is written."""
    for table, found in resent.items():
        gone = {r.record_id for r in found if r.same}
        setattr(mapped, table, [r for r in getattr(mapped, table) if r["id"] not in gone])


def _issues_from_fields(
    exc: ApiProblem, mapped: MappedRecords, groups: list[tuple[str, str, list[dict[str, Any]]]]
) -> list[FhirIssue]:
    """Translate ingest_many's field errors (JSON pointers) into FHIR issues."""
    code = "conflict" if exc.status == 409 else "invalid"
    issues = []
    for e in exc.errors or [{"field": "/", "message": exc.detail or exc.title}]:
        parts = e["field"].strip("/").split("/")
        expr = "Bundle"
        column = None
        if parts[0] == _POINTER and len(parts) >= 2 and parts[1].isdigit():
            pid, table, _ = groups[int(parts[1])]
            row = int(parts[2]) if len(parts) >= 3 and parts[2].isdigit() else 0
            expr = mapped.source_of(table, pid, row)
            column = parts[3] if len(parts) >= 4 else None
        elif parts[0] == _PATIENT_POINTER and len(parts) >= 2:
            expr = mapped.patient_sources.get(parts[1], "Bundle")
            column = parts[2] if len(parts) >= 3 else None
        text = f"{column}: {e['message']}" if column else e["message"]
        issues.append(FhirIssue("error", code, text, expr))
    return issues


@bp.post(PREFIX)
@require_role("clinician")
@operation(
    "Import a FHIR R4 Bundle (transaction, batch or collection)",
    {
        **_ERRORS,
        "200": {
            "description": "transaction-response / batch-response Bundle",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        },
        "400": outcome("Not JSON or not a usable Bundle"),
        "409": outcome("Stored content re-sent changed (same id, or same date); nothing written"),
        "415": outcome("Content-Type is not JSON, or names a fhirVersion other than 4.0"),
        "422": outcome(
            "Invalid resources, or an STU3/DSTU2 Bundle; issues name Bundle.entry[i].resource "
            "and element"
        ),
        "503": outcome("The store is not available"),
    },
    request_body={
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object"}}, "application/json": {}},
    },
)
@audited("fhir.import", success=False)
def ingest_bundle() -> Response:
    """Import a FHIR R4 Bundle; answer a response Bundle or an OperationOutcome."""
    doc = _body()
    try:
        forms = questionnaires()
        mapped = map_bundle(doc, questionnaires=forms)
        # Map again knowing what is stored: a subject that is neither a Patient
        # of the Bundle nor a stored patient is refused (as the JSON API refuses
        # records of an unknown patient), and a session of unstated kind is an
        # induction only when it is the patient's first ever.
        ids = list(mapped.patients)
        if ids:
            with store().read() as conn:
                known = store().known_patients(conn, ids)
            mapped = map_bundle(doc, known_first_session=_first_sessions(ids), known_patients=known,
                                questionnaires=forms)
    except FhirError as err:
        raise FhirProblem(_status_of(err), err.issues) from None
    resent = _resent(mapped)
    _resent_conflicts(mapped, resent)
    _without_resent(mapped, resent)
    bundle_patients = {
        pid for (rtype, pid) in mapped.entries if rtype == "Patient" and pid is not None
    }
    groups = mapped.items()
    items = [(pid, table, recs, f"/{_POINTER}/{k}") for k, (pid, table, recs) in enumerate(groups)]
    kept = {r["id"] for r in mapped.assessments}
    try:
        result = ingest_many(
            store(),
            items,
            patients=_patients_to_write(mapped, bundle_patients),
            retractions=[
                {**{k: r[k] for k in ("patient_id", "table", "id")}, "pointer": r["expr"]}
                for r in mapped.retractions
            ],
            sources={
                (rec["patient_id"], "assessments", rec["id"]): merged
                for rec in mapped.assessments
                if (merged := mapped.merged.get(("assessments", rec["id"]))) and rec["id"] in kept
            },
            actor=None if (who := current_principal()) is None else who.name,
            audit=write_audit("fhir.import"),
        )
    except ApiProblem as exc:
        if exc.status in (409, 422):
            raise FhirProblem(exc.status, _issues_from_fields(exc, mapped, groups)) from None
        raise _outcome_for_api_problem(exc) from None
    return fhir_response(response_bundle(doc, mapped, result, resent, legacy=LEGACY_MERGE))


def _first_sessions(ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {}
    st = store()
    with st.read() as conn:
        sessions = st.history(conn, "sessions", ids)
    if not len(sessions):
        return {}
    return sessions.groupby("patient_id")["date"].min().to_dict()



def _status_of(err: FhirError) -> int:
    """400 when the document is not a usable Bundle at all, else 422 (resource problems)."""
    errors = [i for i in err.issues if i.severity == "error"]
    if errors and all(".resource" not in i.expression for i in errors):
        return 400
    return 422


# --- the facade: metadata, RiskAssessment search and read, Patient read -------------------------
@bp.get(f"{PREFIX}/metadata")
@public
@operation(
    "The CapabilityStatement of the FHIR facade (open)",
    {
        "500": _ERRORS["500"],
        "200": {
            "description": "CapabilityStatement",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        }
    },
    public=True,
)
def capabilities() -> Response:
    """CapabilityStatement: exactly the interactions, search parameters and formats answered."""
    try:
        version = metadata.version("kap-forecast")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        version = "unknown"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return fhir_response(capability_statement(_base(), version, today))


def _patient_param() -> str:
    """The patient of a RiskAssessment search (``patient`` or ``subject``: Patient/<id> or <id>)."""
    given = {k: request.args.getlist(k) for k in ("patient", "subject") if k in request.args}
    values = [v for vs in given.values() for v in vs]
    if not values:
        raise FhirProblem(
            400,
            [
                FhirIssue(
                    "error",
                    "required",
                    "search parameter patient (or subject) is required: patient=Patient/<id>",
                    "RiskAssessment.subject",
                )
            ],
        )
    ids = set()
    for raw in values:
        pid = raw.split("/", 1)[1] if raw.startswith("Patient/") else raw
        if "/" in pid or not pid.strip():
            raise FhirProblem(
                400,
                [
                    FhirIssue(
                        "error",
                        "value",
                        f"patient and subject must be Patient/<id> or <id>; got {raw!r}",
                        "RiskAssessment.subject",
                    )
                ],
            )
        ids.add(pid)
    if len(ids) > 1:
        raise FhirProblem(
            400,
            [
                FhirIssue(
                    "error",
                    "value",
                    "patient and subject name different patients: " + ", ".join(sorted(ids)),
                    "RiskAssessment.subject",
                )
            ],
        )
    return ids.pop()


def _count_param() -> int | None:
    raw = request.args.get("_count")
    if raw is None:
        return None
    if not raw.isdigit():
        raise FhirProblem(
            400,
            [FhirIssue("error", "value", f"_count must be a whole number >= 0; got {raw!r}",
                       "_count")],
        )
    return int(raw)


def _basis(pid: str, as_of: str) -> list[str]:
    """Every FHIR resource (stored by POST /fhir/r4) the forecast as of ``as_of`` used.

    The resource each session and assessment row was imported with and the
    resources merged into a row (a total Observation beside its response),
    dated up to ``as_of``; rows from the JSON API have no FHIR resource.
    """
    st = store()
    cutoff = pd.Timestamp(as_of)
    refs: list[tuple[Any, str]] = []
    with st.read() as conn:
        for table in ("sessions", "assessments"):
            rows = st.history(conn, table, [pid], with_ids=True)
            rows = rows[rows["date"] <= cutoff]
            ids = [str(c) for c in rows["client_id"] if c is not None]
            refs += [(d, str(c)) for d, c in zip(rows["date"], rows["client_id"], strict=True)
                     if c is not None]
            if ids:
                merged = st.merged_sources(conn, table, pid, ids)
                day = dict(zip(rows["client_id"], rows["date"], strict=True))
                refs += [(day[c], str(s)) for c, s in merged]
    refs.sort(key=lambda x: (x[0], x[1]))
    out: list[str] = []
    for _, ref in refs:
        if ref.split("/", 1)[0] in ("Observation", "QuestionnaireResponse", "Procedure") and (
            ref not in out
        ):
            out.append(ref)
    return out


def _resource_id(cohort: Any, answer: Mapping[str, Any]) -> str:
    """The RiskAssessment id: the audited inputs hash of its forecast (read finds it by it)."""
    queries = pd.DataFrame(
        {
            "patient_id": [str(answer["patient_id"])],
            "as_of": [pd.Timestamp(str(answer["as_of"])[:10])],
            "threshold": [float(settings().threshold)],
        }
    )
    return inputs_hashes(cohort, queries, str(answer.get("model_version")))[0]


@bp.get(f"{PREFIX}/RiskAssessment")
@require_role("clinician")
@operation(
    "The patient's forecast as of today as a RiskAssessment (searchset Bundle)",
    {
        **_ERRORS,
        "200": {
            "description": "searchset Bundle (empty for an unknown patient)",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        },
        "400": outcome("patient/subject missing or not Patient/<id>; _count not a number"),
        "422": outcome("Unknown search parameter"),
        "503": outcome("No model loaded"),
    },
    parameters=[
        query(name, text) for name, (_, _, text) in SEARCH_PARAMETERS.items()
    ],
)
@audited("forecast", success=False)
def risk_assessments() -> Response:
    """Search RiskAssessment by patient (or subject): the patient's forecast as of today."""
    pid = _patient_param()
    count = _count_param()
    st = store()
    with st.read() as conn:
        known = bool(st.known_patients(conn, [pid]))
    if not known:  # unknown in the caller's clinic (another clinic's patient too)
        audit_event("patient.read", pid, "not_found")
        return fhir_response(searchset([], request.url, base=_base()))
    if count == 0:  # the total only: no forecast is made
        audit_event("patient.read", pid)
        return fhir_response(searchset([], request.url, base=_base(), total=1))
    try:
        answer, cohort = forecast_for(pid, "fhir_risk_assessment")
    except ApiProblem as exc:
        raise _outcome_for_api_problem(exc, "RiskAssessment") from None
    ra = risk_assessment(
        answer, basis=_basis(pid, answer["as_of"]), resource_id=_resource_id(cohort, answer)
    )
    return fhir_response(searchset([ra], request.url, base=_base()))


def _not_found(what: str, rid: str) -> FhirProblem:
    return FhirProblem(404, [FhirIssue("error", "not-found", f"no {what} with id {rid!r}", what)])


@bp.get(f"{PREFIX}/RiskAssessment/<rid>")
@require_role("clinician")
@operation(
    "Read a RiskAssessment served before (made again from the same inputs)",
    {
        **_ERRORS,
        "200": {"description": "RiskAssessment", "content": {FHIR_JSON: {}}},
        "404": outcome("No RiskAssessment with this id was served"),
        "410": outcome("Its inputs (history up to its date, threshold, model) changed since"),
        "503": outcome("No model loaded"),
    },
)
@audited("forecast", success=False)
def read_risk_assessment(rid: str) -> Response:
    """One RiskAssessment served by a search, while it can be made again exactly.

    The id is the audited hash of the forecast's inputs (the history up to
    its date, the date, the threshold and the model version). A read finds
    the audit row, makes the forecast again as of that date and answers it
    when the inputs hash the same; otherwise 410 Gone says what changed.
    """
    if not _FHIR_ID.match(rid):
        raise _not_found("RiskAssessment", rid)
    st = store()
    with st.read() as conn:
        row = st.forecast_audited(conn, rid)  # the caller's clinic only
        if row is None:
            raise _not_found("RiskAssessment", rid)
        pid, as_of, version = str(row[0]), pd.Timestamp(row[1]), row[2]
        audit_patient(pid)
        cohort = st.cohort([pid], conn)
    try:
        live = str(getattr(model_state().get(), "version", None))
    except ApiProblem as exc:
        raise _outcome_for_api_problem(exc, "RiskAssessment") from None
    queries = pd.DataFrame(
        {"patient_id": [pid], "as_of": [as_of], "threshold": [float(settings().threshold)]}
    )
    if live != str(version) or inputs_hashes(cohort, queries, live)[0] != rid:
        why = (
            f"it was made by model {version} and the service now runs {live}"
            if live != str(version)
            else f"the patient's history up to {as_of.date().isoformat()} or the threshold "
            "changed since"
        )
        raise FhirProblem(
            410,
            [
                FhirIssue(
                    "error",
                    "deleted",
                    f"RiskAssessment {rid} can no longer be made again exactly: {why}; search "
                    f"RiskAssessment?patient=Patient/{pid} for the current one",
                    "RiskAssessment",
                )
            ],
        )
    try:
        answer = serve_forecasts(cohort, queries, "fhir_risk_assessment")[0]
    except ApiProblem as exc:
        raise _outcome_for_api_problem(exc, "RiskAssessment") from None
    return fhir_response(risk_assessment(answer, basis=_basis(pid, answer["as_of"]),
                                         resource_id=rid))


@bp.get(f"{PREFIX}/Patient/<pid>")
@require_role("clinician")
@operation(
    "Read a stored patient",
    {
        **_ERRORS,
        "200": {"description": "Patient", "content": {FHIR_JSON: {}}},
        "404": outcome("No stored patient with this id"),
    },
)
@audited("patient.read")
def read_patient(pid: str) -> Response:
    """A stored patient as a Patient resource (id and gender; no birth date is kept)."""
    st = store()
    with st.read() as conn:
        rows = st.history(conn, "patients", [pid]) if _FHIR_ID.match(pid) else None
    if rows is None or not len(rows):
        raise _not_found("Patient", pid)
    sex = rows.iloc[0].get("sex")
    out: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if isinstance(sex, str) and sex in ("female", "male", "other", "unknown"):
        out["gender"] = sex
    return fhir_response(out)
