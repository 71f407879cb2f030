"""FHIR R4 endpoints (blueprint ``fhir_api``).

- ``POST /fhir/r4`` [clinician]: a Bundle (transaction, batch or collection)
  of Patient, QuestionnaireResponse, Observation and Procedure resources. The
  resources are validated and mapped by :mod:`forecast.fhir`, then written by
  :func:`service.ingest.ingest_many` (the JSON API's validation, one
  transaction, idempotent by the client id ``"<ResourceType>/<id>"``). The
  answer is a ``transaction-response`` (or ``batch-response``) Bundle; any
  error answers an OperationOutcome naming ``Bundle.entry[i].resource`` and
  the element, and nothing is written. A batch is processed all-or-nothing
  too (stricter than FHIR's batch semantics, on purpose: a half-imported
  questionnaire history would give wrong forecasts). Refused with 422: codes
  outside a required value set (``Patient.gender``, the ``status`` of
  Observation / QuestionnaireResponse / Procedure), a Patient without an id,
  a ``subject`` that is neither a Patient of the Bundle nor stored. Resources
  whose status is valid but not imported (``entered-in-error``, ``cancelled``,
  ``in-progress``, ...) are listed in the response: their entry has no
  ``location`` and an ``outcome`` warning that starts "not imported".
- ``GET /fhir/r4/RiskAssessment?subject=Patient/{id}`` [clinician]: a
  searchset Bundle with the patient's current forecast as a RiskAssessment
  (audited like every forecast served).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import pandas as pd
from flask import Blueprint, Response, request

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
from service.auth import current_principal, require_role
from service.clinic_openapi import FHIR_JSON, operation, outcome, query
from service.errors import ApiProblem
from service.ingest import ingest_many
from service.jsonbody import JsonBodyError, fhir_path, parse_body
from service.serving import forecast_for, questionnaires, store
from service.store import LEGACY_MERGE

bp = Blueprint("fhir_api", __name__)

_POINTER = "fhir-item"
_PATIENT_POINTER = "fhir-patient"
_HTTP_CODE = {
    400: "invalid",
    404: "not-found",
    409: "conflict",
    422: "processing",
    503: "transient",
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


def _outcome_for_api_problem(exc: ApiProblem, where: str = "Bundle") -> FhirProblem:
    """An ApiProblem (503 no model, 404, ...) as an OperationOutcome."""
    text = exc.detail or exc.title
    code = _HTTP_CODE.get(exc.status, "exception")
    return FhirProblem(exc.status, [FhirIssue("error", code, text, where)])


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
    raw = request.get_data(cache=True)
    try:
        return parse_body(raw)
    except JsonBodyError as exc:
        raise _body_problem(exc) from None


def _body_problem(exc: JsonBodyError) -> FhirProblem:
    """A body that is not strict JSON (the one place its error shape is chosen).

    An OperationOutcome (code ``structure``) as every /fhir/r4 error; a repeated
    key gets one issue per repeated member, its expression the member's path
    (``Bundle.entry[0].resource.valueQuantity.value``), its JSON pointer in the text.
    """
    if not exc.errors:
        text = exc.detail[:1].lower() + exc.detail[1:]
        return FhirProblem(400, [FhirIssue("error", "structure", text.rstrip("."), "Bundle")])
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


@bp.post("/fhir/r4")
@require_role("clinician")
@operation(
    "Import a FHIR R4 Bundle (transaction, batch or collection)",
    {
        "200": {
            "description": "transaction-response / batch-response Bundle",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        },
        "400": outcome("Not JSON or not a usable Bundle"),
        "409": outcome("A resource id re-sent with different content; nothing written"),
        "415": outcome("Content-Type is not JSON"),
        "422": outcome("Invalid resources; issues name Bundle.entry[i].resource and element"),
        "503": outcome("The store is not available"),
    },
    request_body={
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object"}}, "application/json": {}},
    },
)
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
    bundle_patients = {
        pid for (rtype, pid) in mapped.entries if rtype == "Patient" and pid is not None
    }
    groups = mapped.items()
    items = [(pid, table, recs, f"/{_POINTER}/{k}") for k, (pid, table, recs) in enumerate(groups)]
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
                if (merged := mapped.merged.get(("assessments", rec["id"])))
            },
            actor=None if (who := current_principal()) is None else who.name,
        )
    except ApiProblem as exc:
        if exc.status in (409, 422):
            raise FhirProblem(exc.status, _issues_from_fields(exc, mapped, groups)) from None
        raise _outcome_for_api_problem(exc) from None
    return fhir_response(_response_bundle(doc, mapped, result, groups))


def _withdrawal_issue(done: Mapping[str, Any], expr: str) -> FhirIssue:
    """What became of an ``entered-in-error`` resource (``ingest_many``'s retraction result)."""
    what = "session" if done["table"] == "sessions" else "assessment"
    if done["result"] == "retracted":
        text = (f"withdrawn: the {what} of {done['date']} stored as {done['id']} is removed; "
                "forecasts no longer use it")
    elif done["result"] == "already retracted":
        text = f"withdrawn before: {done['id']} was already removed (nothing changed)"
    elif done["result"] == "kept" and LEGACY_MERGE in done["missing"]:
        return FhirIssue(
            "warning",
            "business-rule",
            f"not withdrawn: the {what} of {done['date']} was imported before kap-forecast "
            "recorded which resources a row merges, and it holds both PHQ-9 and C-SSRS "
            "answers: removing it could drop a C-SSRS answer of another resource; correct it "
            "by hand",
            expr,
        )
    elif done["result"] == "kept":
        return FhirIssue(
            "warning",
            "business-rule",
            f"not withdrawn: the {what} of {done['date']} holds {done['id']} together with "
            + ", ".join(done["missing"])
            + " (merged on import), whose values would be lost with it; send those resources "
            "again (or entered-in-error) in the same Bundle as this one to withdraw it",
            expr,
        )
    else:
        text = (f"recorded: no stored {what} carries the id {done['id']} (a value merged into "
                "a questionnaire's row goes only with that questionnaire); the id will not be "
                "imported later")
    return FhirIssue("information", "informational", text, expr)


def _status_of(err: FhirError) -> int:
    """400 when the document is not a usable Bundle at all, else 422 (resource problems)."""
    errors = [i for i in err.issues if i.severity == "error"]
    if errors and all(".resource" not in i.expression for i in errors):
        return 400
    return 422


def _first_sessions(ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {}
    st = store()
    with st.read() as conn:
        sessions = st.history(conn, "sessions", ids)
    if not len(sessions):
        return {}
    return sessions.groupby("patient_id")["date"].min().to_dict()


def _response_bundle(
    doc: Mapping[str, Any],
    mapped: MappedRecords,
    result: Mapping[str, Any],
    groups: list[tuple[str, str, list[dict[str, Any]]]],
) -> dict[str, Any]:
    """One response entry per request entry: status, location, warnings."""
    by_id: dict[str, str] = {}
    for item in result.get("items", []):
        for r in item["results"]:
            if r.get("id"):
                by_id[str(r["id"])] = r["result"]
    patient_result = {p["patient_id"]: p["result"] for p in result.get("patients", [])}
    # Resources merged into one row share that row's result.
    row_of: dict[str, str] = {}
    for table in ("sessions", "assessments"):
        for (t, cid), exprs in mapped.sources.items():
            if t == table:
                for e in exprs:
                    row_of[e] = cid
    warnings: dict[str, list[FhirIssue]] = {}
    for issue in mapped.issues:
        key = issue.expression.split(".resource", 1)[0] + ".resource"
        warnings.setdefault(key, []).append(issue)
    withdrawn = {r["pointer"]: r for r in result.get("retractions", [])}
    entries = []
    for i, (rtype, rid) in enumerate(mapped.entries):
        expr = f"Bundle.entry[{i}].resource"
        status = "200 OK"
        location = None
        if rtype == "Patient" and rid is not None:
            res = patient_result.get(rid, "unchanged")
            status = "201 Created" if res == "created" else "200 OK"
            location = f"Patient/{rid}"
        elif expr in withdrawn:
            warnings.setdefault(expr, []).append(_withdrawal_issue(withdrawn[expr], expr))
        elif rid is not None:
            cid = row_of.get(expr, rid)
            status = "201 Created" if by_id.get(cid) == "created" else "200 OK"
            location = rid
            if by_id.get(cid) == "retracted":
                warnings.setdefault(expr, []).append(
                    FhirIssue(
                        "warning",
                        "business-rule",
                        f"not imported: {cid} was withdrawn as entered-in-error before; "
                        "a withdrawn resource is never stored again (send the correction "
                        "with a new id)",
                        expr,
                    )
                )
        entry: dict[str, Any] = {"response": {"status": status}}
        if location:
            entry["response"]["location"] = location
        if expr in warnings:
            entry["response"]["outcome"] = operation_outcome(warnings[expr])
        entries.append(entry)
    kind = "transaction-response" if doc.get("type") == "transaction" else "batch-response"
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


# --- RiskAssessment ----------------------------------------------------------------------------
def _subject_id() -> str:
    raw = request.args.get("subject") or request.args.get("patient")
    if not raw:
        raise FhirProblem(
            400,
            [
                FhirIssue(
                    "error",
                    "required",
                    "search parameter subject is required: subject=Patient/<id>",
                    "RiskAssessment.subject",
                )
            ],
        )
    pid = raw.split("/", 1)[1] if raw.startswith("Patient/") else raw
    if "/" in pid or not pid.strip():
        raise FhirProblem(
            400,
            [
                FhirIssue(
                    "error",
                    "value",
                    f"subject must be Patient/<id>; got {raw!r}",
                    "RiskAssessment.subject",
                )
            ],
        )
    return pid


def _basis(pid: str, as_of: str) -> list[str]:
    """References to the FHIR resources (stored by POST /fhir/r4) the forecast used."""
    st = store()
    with st.read() as conn:
        rows = st.history(conn, "assessments", [pid], with_ids=True)
    rows = rows[rows["date"] <= pd.Timestamp(as_of)]
    ids = rows["client_id"].dropna().astype(str)
    return [i for i in ids if i.split("/", 1)[0] in ("Observation", "QuestionnaireResponse")]


@bp.get("/fhir/r4/RiskAssessment")
@require_role("clinician")
@operation(
    "The patient's current forecast as a RiskAssessment (searchset Bundle)",
    {
        "200": {
            "description": "searchset Bundle (empty for an unknown patient)",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        },
        "400": outcome("subject missing or not Patient/<id>"),
        "503": outcome("No model loaded"),
    },
    parameters=[query("subject", "Patient/<id>", required=True)],
)
def risk_assessments() -> Response:
    """Search RiskAssessment by subject: the patient's current forecast."""
    pid = _subject_id()
    st = store()
    with st.read() as conn:
        known = bool(st.known_patients(conn, [pid]))
    if not known:
        return fhir_response(searchset([], request.url))
    try:
        answer, _ = forecast_for(pid, "fhir_risk_assessment")
    except ApiProblem as exc:
        raise _outcome_for_api_problem(exc, "RiskAssessment") from None
    rid = uuid.uuid5(
        uuid.NAMESPACE_URL, f"kap-forecast:{pid}:{answer['as_of']}:{answer.get('model_version')}"
    ).hex
    ra = risk_assessment(answer, basis=_basis(pid, answer["as_of"]), resource_id=rid)
    return fhir_response(searchset([ra], request.url))
