"""The answer to an imported Bundle: one response entry per request entry, with its import result.

Each entry says what became of its resource, in its ``status`` and, coded, in
the first issue of its ``outcome`` (``details.coding`` of :data:`IMPORT_RESULT`):

========================  ==================  =========  ==========================================
result                    status              location   meaning
========================  ==================  =========  ==========================================
``created``               201 Created         yes        stored now
``updated``               200 OK              yes        a Patient whose covariates changed
``unchanged``             200 OK              yes        stored already (same id, or same content)
``screen``                201 Created/200 OK  yes        ignored as PHQ-9; its items 1/2/9 stored as
                                                         a screen row (item 9 reaches the safety
                                                         rules)
``withdrawn``             200 OK              no         entered-in-error: its row is withdrawn
``not-withdrawn``         200 OK              no         entered-in-error, but its row holds others
``ignored``               204 No Content      no         not imported; the warnings say why
``form``                  204 No Content      no         a Questionnaire, read to map responses
``withdrawn-before``      204 No Content      no         its id was withdrawn before: refused
========================  ==================  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forecast.fhir.resend import Resent
from forecast.fhir.results import FhirIssue, MappedRecords, operation_outcome

#: Code system of the import result each response entry names in its outcome
#: (``issue[0].details.coding[0]``).
IMPORT_RESULT = "urn:kap-forecast:fhir:import-result"
#: Import result -> (default entry status, issue severity, meaning).
RESULTS: dict[str, tuple[str, str, str]] = {
    "created": ("201 Created", "information", "stored"),
    "updated": ("200 OK", "information", "stored, replacing the patient's covariates"),
    "unchanged": ("200 OK", "information", "already stored with the same content"),
    "screen": (
        "201 Created",
        "warning",
        "ignored as PHQ-9: its items are stored as a screen row only (no PHQ-9 score)",
    ),
    "withdrawn": ("200 OK", "information", "withdrawn as entered-in-error"),
    "not-withdrawn": ("200 OK", "warning", "not withdrawn: the row holds other resources"),
    "ignored": ("204 No Content", "warning", "not imported: nothing of it is stored"),
    "form": ("204 No Content", "information", "Questionnaire read to map responses; not stored"),
    "withdrawn-before": (
        "204 No Content",
        "warning",
        "not imported: the id was withdrawn as entered-in-error before",
    ),
}


def _withdrawal_issue(done: Mapping[str, Any], expr: str, legacy: str) -> FhirIssue:
    """What became of an ``entered-in-error`` resource (``ingest_many``'s retraction result)."""
    what = "session" if done["table"] == "sessions" else "assessment"
    if done["result"] == "retracted":
        text = (f"withdrawn: the {what} of {done['date']} stored as {done['id']} is removed; "
                "forecasts no longer use it")
    elif done["result"] == "already retracted":
        text = f"withdrawn before: {done['id']} was already removed (nothing changed)"
    elif done["result"] == "kept" and legacy in done["missing"]:
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


def _result_issue(result: str, expr: str, text: str = "") -> FhirIssue:
    """The entry's import result, first issue of its outcome (details in :data:`IMPORT_RESULT`)."""
    _, severity, meaning = RESULTS[result]
    return FhirIssue(severity, "informational", f"{result}: {text or meaning}", expr)


def _entry_outcome(issues: list[FhirIssue], result: str) -> dict[str, Any]:
    """The entry's OperationOutcome: the import result first (coded), then the notes."""
    out = operation_outcome(issues)
    out["issue"][0]["details"] = {
        "coding": [{"system": IMPORT_RESULT, "code": result, "display": RESULTS[result][2]}]
    }
    return out


def _row_results(
    mapped: MappedRecords, result: Mapping[str, Any], resent: Mapping[str, list[Resent]]
) -> tuple[dict[str, str], dict[str, str], dict[str, Resent]]:
    """Per entry expression: its row's client id; per row id: its result; re-sent rows by id."""
    by_id: dict[str, str] = {}
    for item in result.get("items", []):
        for r in item["results"]:
            if r.get("id"):
                by_id[str(r["id"])] = r["result"]
    row_of: dict[str, str] = {}
    for (_, cid), exprs in mapped.sources.items():
        for e in exprs:
            row_of[e] = cid
    again = {r.record_id: r for found in resent.values() for r in found if r.same}
    return row_of, by_id, again


def _stored_row_outcome(
    expr: str,
    cid: str,
    rid: str,
    notes: list[FhirIssue],
    by_id: Mapping[str, str],
    again: Mapping[str, Resent],
    is_screen: bool,
) -> tuple[str, str | None, str, str, list[FhirIssue]]:
    """Outcome, location, text, status and notes of an entry that maps to a stored row."""
    text = status = ""
    location: str | None = rid
    base = "unchanged" if cid in again else by_id.get(cid, "unchanged")
    if cid in again:
        text = f"the same content is stored already from {again[cid].stored_id}"
    if base == "retracted":
        outcome_, location = "withdrawn-before", None
        notes = [
            *notes,
            FhirIssue(
                "warning",
                "business-rule",
                f"not imported: {cid} was withdrawn as entered-in-error before; a "
                "withdrawn resource is never stored again (send the correction with a "
                "new id)",
                expr,
            ),
        ]
    elif is_screen:
        outcome_ = "screen"
        status = "201 Created" if base == "created" else "200 OK"
        text = RESULTS["screen"][2] + ("" if base == "created" else " (stored already)")
    else:
        outcome_ = base
    return outcome_, location, text, status, notes


def response_bundle(
    doc: Mapping[str, Any],
    mapped: MappedRecords,
    result: Mapping[str, Any],
    resent: Mapping[str, list[Resent]],
    *,
    legacy: str = "",
) -> dict[str, Any]:
    """The transaction-response (or batch-response) Bundle of an import.

    Parameters
    ----------
    doc : mapping
        The Bundle posted.
    mapped : MappedRecords
        What the Bundle mapped to (``entries``, ``sources``, ``screens``, ``issues``).
    result : mapping
        What ``service.ingest.ingest_many`` answered (per-row and per-patient
        results, withdrawals).
    resent : mapping
        Rows that were stored content re-sent in another shape (not written).
    legacy : str
        The marker ``ingest_many`` puts among a kept withdrawal's ``missing``
        ids for a row merged before merges were recorded.

    Returns
    -------
    dict
        One entry per request entry: ``status``, ``location`` for what is
        stored, and an ``outcome`` whose first issue names the import result
        (:data:`RESULTS`, coded in :data:`IMPORT_RESULT`), then the warnings.
    """
    row_of, by_id, again = _row_results(mapped, result, resent)
    patient_result = {p["patient_id"]: p["result"] for p in result.get("patients", [])}
    warnings: dict[str, list[FhirIssue]] = {}
    for issue in mapped.issues:
        key = issue.expression.split(".resource", 1)[0] + ".resource"
        warnings.setdefault(key, []).append(issue)
    withdrawn = {r["pointer"]: r for r in result.get("retractions", [])}
    entries = []
    for i, (rtype, rid) in enumerate(mapped.entries):
        expr = f"Bundle.entry[{i}].resource"
        notes = warnings.get(expr, [])
        location = None
        text = status = ""
        if rtype == "Patient" and rid is not None:
            outcome_ = patient_result.get(rid, "unchanged")
            location = f"Patient/{rid}"
        elif expr in withdrawn:
            done = withdrawn[expr]
            notes = [*notes, _withdrawal_issue(done, expr, legacy)]
            outcome_ = "not-withdrawn" if done["result"] == "kept" else "withdrawn"
        elif rid is None:
            is_form = rtype == "Questionnaire" and not any(n.severity == "warning" for n in notes)
            outcome_ = "form" if is_form else "ignored"
        else:
            outcome_, location, text, status, notes = _stored_row_outcome(
                expr, row_of.get(expr, rid), rid, notes, by_id, again, expr in mapped.screens
            )
        if outcome_ != "screen":
            status = RESULTS[outcome_][0]
        entry: dict[str, Any] = {"response": {"status": status}}
        if location:
            entry["response"]["location"] = location
        entry["response"]["outcome"] = _entry_outcome(
            [_result_issue(outcome_, expr, text), *notes], outcome_
        )
        entries.append(entry)
    kind = "transaction-response" if doc.get("type") == "transaction" else "batch-response"
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


