"""What a FHIR mapping gives back: issues and :class:`MappedRecords`.

Issues are :class:`FhirIssue` objects (an OperationOutcome issue each);
:class:`FhirError` carries the errors that stop an import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from forecast.contract import TABLES


@dataclass(frozen=True)
class FhirIssue:
    """One problem (or note) about one element of one resource.

    Parameters
    ----------
    severity : {"error", "warning", "information"}
        OperationOutcome issue severity.
    code : str
        OperationOutcome issue type (``invalid``, ``required``, ``value``,
        ``conflict``, ``not-supported``, ``business-rule``, ``duplicate``, ...).
    diagnostics : str
        What is wrong and what is allowed, for a human.
    expression : str
        FHIRPath to the element, e.g. ``Bundle.entry[3].resource.valueQuantity``.
    """

    severity: str
    code: str
    diagnostics: str
    expression: str

    def __str__(self) -> str:
        return f"{self.expression}: {self.diagnostics}"


class FhirError(ValueError):
    """FHIR input that cannot be imported; ``.issues`` lists every problem."""

    def __init__(self, issues: Sequence[FhirIssue]):
        self.issues = list(issues)
        errors = [i for i in self.issues if i.severity == "error"] or self.issues
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}" if errors else "invalid FHIR input")


def operation_outcome(issues: Iterable[FhirIssue]) -> dict[str, Any]:
    """An OperationOutcome resource (as JSON) listing ``issues``."""
    out = []
    for i in issues:
        out.append(
            {
                "severity": i.severity,
                "code": i.code,
                "diagnostics": i.diagnostics,
                "expression": [i.expression],
            }
        )
    if not out:
        out.append({"severity": "information", "code": "informational", "diagnostics": "ok"})
    return {"resourceType": "OperationOutcome", "issue": out}


def _path(loc: Sequence[Any]) -> str:
    """Turn a pydantic error location into a FHIRPath suffix (``item[0].answer``)."""
    parts: list[str] = []
    for x in loc:
        if isinstance(x, int):
            if parts:
                parts[-1] += f"[{x}]"
        else:
            parts.append(str(x))
    return ".".join(parts)


def _validation_issues(err: ValidationError, prefix: str) -> list[FhirIssue]:
    issues = []
    for e in err.errors():
        sub = _path(e.get("loc", ()))
        expr = f"{prefix}.{sub}" if sub else prefix
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {str(got)[:40]!r})"
        code = "required" if e.get("type") == "missing" else "invalid"
        issues.append(FhirIssue("error", code, f"{e.get('msg', 'invalid')}{shown}", expr))
    return issues


@dataclass
class MappedRecords:
    """Contract records mapped from FHIR resources, ready for forecast.data.

    Attributes
    ----------
    patients : dict
        ``patient_id`` -> patient record (``patient_id`` plus any covariates
        found in a Patient resource). Every referenced patient is present.
    sessions, assessments : list of dict
        Records with ``patient_id``, contract columns and the client ``id``
        ``"<ResourceType>/<id>"`` of the resource they came from.
    sources : dict
        ``(table, client id)`` -> FHIRPath expressions of the resources merged
        into that record (so validation errors can name the resource).
    patient_sources : dict
        ``patient_id`` -> expression of its Patient resource (or of the first
        reference to it).
    issues : list of FhirIssue
        Warnings and notes: what was recognised but not imported, and why.
    retractions : list of dict
        Resources sent with status ``entered-in-error``: ``patient_id``,
        ``table``, the client ``id`` the row was imported with, and the
        resource's FHIRPath ``expr``.
    merged : dict
        ``(table, client id)`` -> client ids of the other resources merged
        into that record (one assessment row per patient and day).
    """

    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    assessments: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    patient_sources: dict[str, str] = field(default_factory=dict)
    issues: list[FhirIssue] = field(default_factory=list)
    retractions: list[dict[str, str]] = field(default_factory=list)
    merged: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: Per entry index: (resourceType, id) of what it became, for response bundles
    #: (id None: nothing of the resource is stored; ``issues`` say why).
    entries: list[tuple[str, str | None]] = field(default_factory=list)
    #: Expressions (``Bundle.entry[i].resource``) of the resources whose PHQ-9 items
    #: made only a screen row (no PHQ-9: items 1, 2 and/or 9 without a total).
    screens: set[str] = field(default_factory=set)

    def items(self) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """Group the records as ``(patient_id, table, records)`` for ``ingest_many``.

        Records lose their ``patient_id`` key (it is the item's), keep ``id``.
        Sessions come before assessments; patients in order of appearance.
        """
        out: list[tuple[str, str, list[dict[str, Any]]]] = []
        for table, rows in (("sessions", self.sessions), ("assessments", self.assessments)):
            by_patient: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                rec = {k: v for k, v in r.items() if k != "patient_id"}
                by_patient.setdefault(r["patient_id"], []).append(rec)
            out.extend((pid, table, recs) for pid, recs in by_patient.items())
        return out

    def source_of(self, table: str, patient_id: str, index: int) -> str:
        """Expression of the resource behind record ``index`` of ``items()``'s group."""
        rows = self.sessions if table == "sessions" else self.assessments
        mine = [r for r in rows if r["patient_id"] == patient_id]
        if 0 <= index < len(mine):
            exprs = self.sources.get((table, mine[index]["id"]), [])
            if exprs:
                return exprs[0]
        return self.patient_sources.get(patient_id, "Bundle")

    def frames(self) -> dict[str, pd.DataFrame]:
        """The records as raw string frames (as :func:`forecast.data.read_folder` gives).

        Used by ``forecast import-fhir``; client ids are dropped because the
        folder contract has no id column.
        """

        def frame(rows: list[dict[str, Any]], table: str) -> pd.DataFrame:
            names = [c.name for c in TABLES[table]]
            df = pd.DataFrame([{k: r.get(k) for k in names} for r in rows], columns=names)
            return df.map(_cell)

        return {
            "patients": frame(list(self.patients.values()), "patients"),
            "sessions": frame(self.sessions, "sessions"),
            "assessments": frame(self.assessments, "assessments"),
        }


def _cell(v: Any) -> str:
    """A raw CSV cell: blank for None/NaN, lower-case booleans, plain numbers."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


#: OperationOutcome issue type of an HTTP status (an error answered without its own issues).
HTTP_ISSUE_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    500: "exception",
    503: "transient",
}


def outcome_from_problem(problem: Mapping[str, Any], status: int) -> dict[str, Any]:
    """An RFC 9457 problem document as an OperationOutcome (every error of the FHIR facade).

    Each field-level error becomes one issue (its JSON pointer or query
    parameter in the text); a problem without them becomes one issue with
    its ``detail`` (or ``title``).
    """
    code = HTTP_ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")
    severity = "fatal" if status >= 500 else "error"
    title = str(problem.get("title") or "")
    detail = str(problem.get("detail") or title or f"HTTP {status}")
    errors = problem.get("errors") or []
    issues = []
    for e in errors if isinstance(errors, list) else []:
        if not isinstance(e, Mapping):
            continue
        where = str(e.get("field") or "")
        text = str(e.get("message") or detail)
        issues.append(
            {
                "severity": severity,
                "code": code,
                "diagnostics": f"{title}: {where}: {text}" if where else f"{title}: {text}",
            }
        )
    if not issues:
        issues.append({"severity": severity, "code": code, "diagnostics": detail})
    if problem.get("instance"):  # the request id, which names the log entry
        issues[0]["diagnostics"] += f" (request {str(problem['instance']).rsplit(':', 1)[-1]})"
    return {"resourceType": "OperationOutcome", "issue": issues}
