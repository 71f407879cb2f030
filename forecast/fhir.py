"""FHIR R4 in and out: map Bundles to contract records, forecasts to RiskAssessments.

Pure functions, no Flask. The service (``service.fhir_api``, ``service.cds``)
and the command line (``forecast import-fhir``) call them; validation of the
mapped records is done by :mod:`forecast.data`, exactly as for CSV files and
the JSON API.

Resources are parsed and validated with ``fhir.resources`` (its ``R4B``
package: R4B is R4 plus a few additions, and every element used here is the
same in R4). What is accepted (see README.md (clinic section) for the full table):

- ``Patient``: ``id`` becomes ``patient_id``; ``gender`` becomes ``sex``;
  ``birthDate`` gives ``age`` at the patient's first session in the Bundle.
- ``QuestionnaireResponse`` (status completed or amended): PHQ-9 items found by
  their ``linkId`` through :data:`LINKID_COLUMNS` (LOINC item codes, the MII
  ``phq-phq9-q01`` .. ``q09`` form, the SDC ``Q1`` .. ``Q9`` form, the contract
  names); answers as LOINC answer codes LA6568-5 .. LA6571-9, the SDC
  CodeSystem codes or displays, an ``ordinalValue`` / ``itemWeight``
  extension, ``valueInteger`` or ``valueDecimal``; the C-SSRS screener by its
  LOINC item codes. A response naming a known ``Questionnaire`` (in the
  Bundle, or passed by the caller) is read through that form's item codes
  and answer scores first (:class:`QuestionnaireMap`).
- ``Observation`` (status final, amended, corrected or preliminary): PHQ-9
  total 44261-6 (or SNOMED 720433000) as ``valueInteger``, ``valueDecimal``,
  ``valueQuantity`` or ``valueString``; PHQ-9 and C-SSRS items by LOINC code;
  the 44249-1 / 93373-9 panels with ``component`` or ``hasMember``.
- ``Procedure`` (status completed): a ketamine session, recognised by
  :func:`is_ketamine_procedure`.

All resources of one patient dated the same day become one assessment row;
answers given twice must agree. An Observation ``derivedFrom`` a
QuestionnaireResponse in the same Bundle joins that response's row.

Refused (an error naming the element; nothing is imported): a code outside
the required value set of ``Patient.gender``, ``Observation.status``,
``QuestionnaireResponse.status`` or ``Procedure.status`` (fhir.resources does
not check these bindings); a Patient without an ``id`` (a ``urn:uuid``
fullUrl is a placeholder, not an identity); a score with a
``valueQuantity.comparator``; and, when the caller knows the stored patients,
a ``subject`` that is neither a Patient of the Bundle nor stored.

Not imported, and listed as such in the answer (a warning on the entry), never
silently: resources with a valid status outside the imported ones, e.g.
``cancelled`` Observations, ``in-progress`` or ``stopped``
QuestionnaireResponses. ``preliminary`` Observations are imported (see
:data:`OBSERVATION_STATUSES`).

Withdrawn: a QuestionnaireResponse, Observation or (ketamine) Procedure with
status ``entered-in-error`` whose subject is a known patient becomes a
retraction (:attr:`MappedRecords.retractions`): the row stored under its
client id is removed and the id can never be imported again
(``service.ingest.ingest_many``). One whose patient is unknown is only
listed as not imported: nothing of it can be stored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from forecast.contract import HORIZONS, PHQ9_ITEMS
from forecast.instruments import (
    LOINC_CSSRS_BEHAVIOR,
    LOINC_CSSRS_IDEATION,
    LOINC_CSSRS_PANEL,
    LOINC_CSSRS_RISK,
    LOINC_PHQ2_PANEL,
    LOINC_PHQ2_TOTAL,
    LOINC_PHQ9_ANSWERS,
    LOINC_PHQ9_DIFFICULTY,
    LOINC_PHQ9_ITEMS,
    LOINC_PHQ9_PANEL,
    LOINC_PHQ9_TOTAL,
    LOINC_SYSTEM,
    MAX_MISSING_ITEMS,
    SNOMED_PHQ9_SCORE,
    SNOMED_SYSTEM,
    phq9_from_items,
)

# --- Codes and URLs of our own ---------------------------------------------------
#: Extension on Procedure: ``valueCode`` induction | maintenance.
EXT_SESSION_KIND = "urn:kap-forecast:fhir:session-kind"
#: Extension on Procedure: ``valueCode`` iv | im | intranasal | sublingual | oral.
EXT_ROUTE = "urn:kap-forecast:fhir:route"
#: Extension on Procedure: ``valueDecimal`` ketamine dose in mg per kg.
EXT_DOSE = "urn:kap-forecast:fhir:dose-mg-per-kg"
#: Extension on Procedure: ``valueBoolean`` psychotherapy attached to the session.
EXT_PSYCHOTHERAPY = "urn:kap-forecast:fhir:psychotherapy"
#: Extension on Procedure: ``valueDecimal`` dissociation severity 0-100.
EXT_DISSOCIATION = "urn:kap-forecast:fhir:dissociation"
#: Extension on Procedure: ``valueDecimal`` highest systolic blood pressure (mmHg).
EXT_SYSTOLIC = "urn:kap-forecast:fhir:systolic-bp-max"
#: Our own code system for a ketamine session (Procedure.code).
KAP_CODE_SYSTEM = "urn:kap-forecast:fhir:procedure"
KAP_SESSION_CODE = "ketamine-session"
#: HCPCS Level II: esketamine nasal self-administration with observation (<= 56 mg / > 56 mg).
HCPCS_SYSTEM = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
HCPCS_ESKETAMINE: frozenset[str] = frozenset({"G2082", "G2083"})
UCUM_SYSTEM = "http://unitsofmeasure.org"
SDC_PHQ9_SYSTEM = "http://hl7.org/fhir/uv/sdc/CodeSystem/CSPHQ9"
ORDINAL_EXTENSIONS: frozenset[str] = frozenset(
    {
        "http://hl7.org/fhir/StructureDefinition/ordinalValue",
        "http://hl7.org/fhir/StructureDefinition/itemWeight",
    }
)

# --- linkId and code tables -------------------------------------------------------
_DIFFICULTY = "_difficulty"  # recognised, not scored (PHQ-9 question 10)
_IGNORED_GROUP = "_group"  # panel/group codes: containers, no answer of their own
_CSSRS_Q = tuple(f"_cssrs_q{i}" for i in range(1, 6))  # screener Q1-Q5 (yes/no)
#: Items that make a screen without a total (PHQ-2 and item 9; forecast.data.screen_only).
_SCREEN_ITEMS = frozenset({"phq9_1", "phq9_2", "phq9_9"})

#: PHQ-9 linkIds (matched case-insensitively on the last ``/``-separated part).
LINKID_COLUMNS: dict[str, str] = {
    # LOINC item codes as linkIds (US Core, LHC-Forms "/44249-1/44250-9").
    **{code.lower(): item for code, item in zip(LOINC_PHQ9_ITEMS, PHQ9_ITEMS, strict=True)},
    LOINC_PHQ9_TOTAL: "phq9_total",
    LOINC_PHQ9_DIFFICULTY: _DIFFICULTY,
    LOINC_PHQ9_PANEL: _IGNORED_GROUP,
    # Medical Informatics Initiative (Germany) PRO module.
    **{f"phq-phq9-q{i:02d}": item for i, item in enumerate(PHQ9_ITEMS, start=1)},
    "phq-phq9-score-total": "phq9_total",
    "phq-phq9-q10": _DIFFICULTY,
    # FHIR SDC example (linkIds "H1/T1/Q1" .. "H1/TS").
    **{f"q{i}": item for i, item in enumerate(PHQ9_ITEMS, start=1)},
    "ts": "phq9_total",
    "q10": _DIFFICULTY,
    # Our own contract names.
    **{item: item for item in PHQ9_ITEMS},
    "phq9_total": "phq9_total",
    # C-SSRS screener by LOINC code.
    **dict(zip(LOINC_CSSRS_IDEATION, _CSSRS_Q, strict=True)),
    LOINC_CSSRS_BEHAVIOR: "cssrs_behavior",
    LOINC_CSSRS_PANEL: _IGNORED_GROUP,
    LOINC_CSSRS_RISK: _IGNORED_GROUP,
}
#: C-SSRS linkIds used when the questionnaire is recognised as the C-SSRS
#: screener (its URL or title mentions "ssrs" or the panel code 93373-9).
CSSRS_SHORT_LINKIDS: dict[str, str] = {
    **{f"q{i}": col for i, col in enumerate(_CSSRS_Q, start=1)},
    "q6": "cssrs_behavior",
}

#: Observation LOINC codes mapped to assessment columns.
OBSERVATION_CODES: dict[str, str] = {
    **dict(zip(LOINC_PHQ9_ITEMS, PHQ9_ITEMS, strict=True)),
    LOINC_PHQ9_TOTAL: "phq9_total",
    **dict(zip(LOINC_CSSRS_IDEATION, _CSSRS_Q, strict=True)),
    LOINC_CSSRS_BEHAVIOR: "cssrs_behavior",
}
#: Codes recognised but not imported (said so in a warning).
NOT_IMPORTED_CODES: dict[str, str] = {
    LOINC_PHQ2_PANEL: "PHQ-2 is not part of the data contract",
    LOINC_PHQ2_TOTAL: "PHQ-2 is not part of the data contract",
    LOINC_PHQ9_DIFFICULTY: "the PHQ-9 difficulty question is not scored",
    LOINC_CSSRS_RISK: "the C-SSRS risk level is recomputed from the answers",
}

#: Answer texts of the PHQ-9 items (LOINC displays, SDC CSPHQ9 codes) -> score.
PHQ9_ANSWER_TEXT: dict[str, int] = {
    "not at all": 0,
    "several days": 1,
    "more than half the days": 2,
    "nearly every day": 3,
}
YES_CODES: frozenset[str] = frozenset({"la33-6", "y", "yes", "true", "1"})
NO_CODES: frozenset[str] = frozenset({"la32-8", "n", "no", "false", "0"})

#: Statuses whose resources are imported. ``preliminary`` Observations are
#: imported too: a questionnaire score is complete when the patient submits
#: it, and EHRs often leave it preliminary until a clinician signs it off.
QR_STATUSES: frozenset[str] = frozenset({"completed", "amended"})
OBSERVATION_STATUSES: frozenset[str] = frozenset({"final", "amended", "corrected", "preliminary"})
PROCEDURE_STATUSES: frozenset[str] = frozenset({"completed"})

# Required bindings of the elements read here. fhir.resources checks the
# structure but not these value sets, so a code outside them ("F", "done")
# would otherwise pass silently; it is an error that names the element.
#: Patient.gender (AdministrativeGender).
PATIENT_GENDER_CODES: frozenset[str] = frozenset({"male", "female", "other", "unknown"})
#: Observation.status (ObservationStatus).
OBSERVATION_STATUS_CODES: frozenset[str] = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
#: QuestionnaireResponse.status (QuestionnaireResponseStatus).
QR_STATUS_CODES: frozenset[str] = frozenset(
    {"in-progress", "completed", "amended", "entered-in-error", "stopped"}
)
#: Procedure.status (EventStatus).
PROCEDURE_STATUS_CODES: frozenset[str] = frozenset(
    {
        "preparation",
        "in-progress",
        "not-done",
        "on-hold",
        "stopped",
        "completed",
        "entered-in-error",
        "unknown",
    }
)
BUNDLE_TYPES: frozenset[str] = frozenset({"transaction", "batch", "collection"})

_ROUTE_WORDS: tuple[tuple[str, str], ...] = (
    (r"\bintranasal|\bnasal\b|\besketamine\b|\bspravato\b", "intranasal"),
    (r"\bintramuscular\b|\bi\.?m\.?\s+(?:injection|ketamine)", "im"),
    (r"\bsublingual\b|\btroche\b|\blozenge\b|\bbuccal\b", "sublingual"),
    (r"\bintravenous\b|\binfusion\b|\bi\.?v\.?\s+(?:infusion|ketamine)", "iv"),
    (r"\boral\b", "oral"),
)


# --- Issues -------------------------------------------------------------------
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


# --- Result of a mapping ----------------------------------------------------------------
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
    #: Per entry index: (resourceType, id) of what it became, for response bundles.
    entries: list[tuple[str, str | None]] = field(default_factory=list)

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
            from forecast.contract import TABLES

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


# --- Helpers on parsed resources ------------------------------------------------------------
def _codings(concept: Any) -> list[Any]:
    return list(getattr(concept, "coding", None) or []) if concept is not None else []


def _codes(concept: Any) -> set[tuple[str | None, str]]:
    return {(c.system, c.code) for c in _codings(concept) if c.code}


def _concept_text(concept: Any) -> str:
    if concept is None:
        return ""
    parts = [concept.text or ""] + [c.display or "" for c in _codings(concept)]
    return " ".join(p for p in parts if p)


def _reference_id(ref: str | None, resource_type: str, full_urls: Mapping[str, str]) -> str | None:
    """The logical id of a ``resource_type`` reference (relative, absolute or urn:uuid)."""
    if not ref:
        return None
    if ref in full_urls:
        return full_urls[ref]
    m = re.search(rf"(?:^|/){resource_type}/([A-Za-z0-9\-.]{{1,64}})(?:/_history/.*)?$", ref)
    return m.group(1) if m else None


def _restful_id(full_url: str | None, resource_type: str) -> str | None:
    """The logical id in a RESTful fullUrl ``[base]/<type>/<id>`` (None for urn:uuid etc.)."""
    if not full_url or full_url.startswith("urn:"):
        return None
    return _reference_id(full_url, resource_type, {})


def _as_date(value: Any) -> dt.date | None:
    """The calendar date as written (local time of the source, not converted to UTC)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})", str(value))
    return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    s = str(value).strip()
    return float(s) if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", s) else None


def _ordinal(coding: Any) -> float | None:
    for ext in getattr(coding, "extension", None) or []:
        if ext.url in ORDINAL_EXTENSIONS:
            return _number(ext.valueDecimal if ext.valueDecimal is not None else ext.valueInteger)
    return None


_VALUE_ELEMENTS = (
    "valueInteger",
    "valueDecimal",
    "valueQuantity",
    "valueString",
    "valueCodeableConcept",
    "valueCoding",
    "valueBoolean",
)


def _value_element(holder: Any) -> str:
    """Name of the value[x] element that is set (for messages)."""
    return next((n for n in _VALUE_ELEMENTS if getattr(holder, n, None) is not None), "value[x]")


class _Bad(ValueError):
    """An answer that cannot be read (message says what is allowed)."""

    def __init__(self, message: str, element: str):
        super().__init__(message)
        self.element = element


def _item_score(holder: Any, prefix: str, *, codeable: str) -> float | None:
    """A PHQ-9 item score (0-3) from a QR answer or an Observation value."""
    coding_list = (
        [holder.valueCoding]
        if codeable == "valueCoding" and holder.valueCoding is not None
        else _codings(getattr(holder, codeable, None))
    )
    for c in coding_list:
        if c.code and c.code.upper() in LOINC_PHQ9_ANSWERS:
            return float(LOINC_PHQ9_ANSWERS[c.code.upper()])
        weight = _ordinal(c)
        if weight is not None and 0 <= weight <= 3:
            return weight
        for text in (c.code, c.display):
            key = (text or "").lower().replace("-", " ").strip()
            if key in PHQ9_ANSWER_TEXT:
                return float(PHQ9_ANSWER_TEXT[key])
    if coding_list:
        got = coding_list[0].code or coding_list[0].display
        raise _Bad(
            f"answer code {got!r} is not a PHQ-9 answer; allowed: LOINC LA6568-5, LA6569-3, "
            "LA6570-1, LA6571-9 (0-3), the answer texts, or an ordinalValue extension",
            f"{prefix}.{codeable}",
        )
    for name in ("valueInteger", "valueDecimal", "valueString"):
        v = getattr(holder, name, None)
        if v is not None:
            text = str(v).lower().replace("-", " ").strip()
            if name == "valueString" and text in PHQ9_ANSWER_TEXT:
                return float(PHQ9_ANSWER_TEXT[text])
            x = _number(v)
            if x is None or not float(x).is_integer() or not 0 <= x <= 3:
                raise _Bad(f"got {v!r}; allowed: a whole number from 0 to 3", f"{prefix}.{name}")
            return x
    q = getattr(holder, "valueQuantity", None)
    if q is not None and q.value is not None:
        _exact(q, prefix)
        x = float(q.value)
        if not x.is_integer() or not 0 <= x <= 3:
            raise _Bad(f"got {x:g}; allowed: a whole number from 0 to 3", f"{prefix}.valueQuantity")
        return x
    return None


def _exact(quantity: Any, prefix: str) -> None:
    """Refuse a score given with a comparator ("< 10" is not a score)."""
    if quantity.comparator is not None:
        raise _Bad(
            f"got comparator {quantity.comparator!r}; a questionnaire score is an exact "
            "number, send it without a comparator",
            f"{prefix}.valueQuantity.comparator",
        )


def _total_score(holder: Any, prefix: str) -> float | None:
    """A PHQ-9 total (0-27) from valueInteger, valueDecimal, valueQuantity or valueString."""
    for name in ("valueInteger", "valueDecimal", "valueString"):
        v = getattr(holder, name, None)
        if v is not None:
            x = _number(v)
            if x is None or not float(x).is_integer() or not 0 <= x <= 27:
                raise _Bad(f"got {v!r}; allowed: a whole number from 0 to 27", f"{prefix}.{name}")
            return x
    q = getattr(holder, "valueQuantity", None)
    if q is not None and q.value is not None:
        _exact(q, prefix)
        x = float(q.value)
        if not x.is_integer() or not 0 <= x <= 27:
            raise _Bad(
                f"got {x:g}; allowed: a whole number from 0 to 27", f"{prefix}.valueQuantity"
            )
        return x
    return None


def _yes_no(holder: Any, prefix: str, *, codeable: str) -> float | None:
    """A C-SSRS yes/no answer as 1.0 / 0.0."""
    v = getattr(holder, "valueBoolean", None)
    if v is not None:
        return 1.0 if v else 0.0
    coding_list = (
        [holder.valueCoding]
        if codeable == "valueCoding" and holder.valueCoding is not None
        else _codings(getattr(holder, codeable, None))
    )
    candidates = [(c.code or "", c.display or "") for c in coding_list]
    s = getattr(holder, "valueString", None)
    if s is not None:
        candidates.append((s, ""))
    i = getattr(holder, "valueInteger", None)
    if i is not None:
        candidates.append((str(i), ""))
    for code, display in candidates:
        for t in (code.lower().strip(), display.lower().strip()):
            if t in YES_CODES:
                return 1.0
            if t in NO_CODES:
                return 0.0
    if candidates:
        raise _Bad(
            f"got {candidates[0][0]!r}; allowed: yes/no as valueBoolean, LOINC LA33-6 / LA32-8, "
            "or 1/0",
            f"{prefix}.{codeable if coding_list else 'value'}",
        )
    return None


def _label(column: str) -> str:
    """A readable name of a mapped column (internal C-SSRS question columns included)."""
    if column.startswith("_cssrs_q"):
        return f"C-SSRS screener question {column[-1]} (1 = yes)"
    return column


# --- The mapper ---------------------------------------------------------------------------
@dataclass
class QuestionnaireMap:
    """How a Questionnaire's own linkIds map to contract columns, read from its items.

    An item coded with a LOINC PHQ-9 or C-SSRS question (``item.code``) maps
    its linkId, whatever the linkId is; an ``answerOption.valueCoding`` with an
    ``ordinalValue`` / ``itemWeight`` extension gives that answer's score, so a
    response that answers with the form's own codes can be scored.
    """

    columns: dict[str, str] = field(default_factory=dict)  # linkId -> column
    weights: dict[tuple[str, str | None, str], float] = field(default_factory=dict)

    @classmethod
    def of(cls, res: Any) -> QuestionnaireMap:
        out = cls()

        def walk(items: Sequence[Any]) -> None:
            for it in items or []:
                link = it.linkId or ""
                for c in it.code or []:
                    if c.system in (LOINC_SYSTEM, None) and c.code:
                        column = LINKID_COLUMNS.get(c.code.lower())
                        if column is not None:
                            out.columns.setdefault(link, column)
                            break
                for opt in it.answerOption or []:
                    coding = opt.valueCoding
                    if coding is None or not coding.code:
                        continue
                    w = _ordinal(coding)
                    if w is None:
                        w = _ordinal(opt)
                    if w is not None:
                        out.weights[(link, coding.system, coding.code)] = w
                walk(it.item or [])

        walk(res.item or [])
        return out

    def weight(self, link_id: str, answer: Any) -> float | None:
        """The score the form gives to an answer's coding (None when it gives none)."""
        coding = getattr(answer, "valueCoding", None)
        if coding is None or not coding.code:
            return None
        w = self.weights.get((link_id, coding.system, coding.code))
        if w is None and coding.system is None:  # a response may leave the system out
            w = next((v for (lk, _, code), v in self.weights.items()
                      if lk == link_id and code == coding.code), None)
        return w


def _contained_form(res: Any) -> QuestionnaireMap | None:
    """The Questionnaire a response carries itself (``questionnaire = "#<id>"``), if any."""
    ref = str(res.questionnaire or "")
    if not ref.startswith("#"):
        return None
    for inner in res.contained or []:
        if inner.get_resource_type() == "Questionnaire" and inner.id == ref[1:]:
            return QuestionnaireMap.of(inner)
    return None


def questionnaire_keys(res: Any, full_url: str | None = None) -> list[str]:
    """The references by which a QuestionnaireResponse may name this Questionnaire."""
    keys = []
    if res.url:
        keys.append(str(res.url))
        if res.version:
            keys.append(f"{res.url}|{res.version}")
    if res.id:
        keys.append(f"Questionnaire/{res.id}")
    if full_url:
        keys.append(full_url)
    return keys


@dataclass
class _Row:
    """One assessment row being assembled from one or more resources."""

    patient_id: str
    date: dt.date
    client_id: str
    values: dict[str, float] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # column -> expression
    exprs: list[str] = field(default_factory=list)
    priority: int = 9
    ids: list[str] = field(default_factory=list)  # client ids of the resources merged


class _Mapper:
    def __init__(
        self,
        known_first_session: Mapping[str, Any] | None,
        known_patients: Collection[str] | None = None,
    ):
        self.out = MappedRecords()
        #: Questionnaires known by url, url|version, Questionnaire/<id> or fullUrl.
        self.forms: dict[str, QuestionnaireMap] = {}
        # None: no store to ask (the command line), every referenced patient is new.
        self.known_patients = None if known_patients is None else frozenset(known_patients)
        self.bundle_patients: set[str] = set()
        self.errors: list[FhirIssue] = []
        self.rows: dict[tuple[str, dt.date], _Row] = {}
        self.by_resource: dict[str, tuple[str, dt.date]] = {}  # "QuestionnaireResponse/x" -> key
        self.full_urls: dict[str, str] = {}
        self.patient_full_urls: dict[str, str] = {}
        self.pending_sessions: list[tuple[dict[str, Any], bool, str]] = []
        self.birth_dates: dict[str, tuple[dt.date, str]] = {}
        self.known_first = {
            str(k): _as_date(pd.Timestamp(v).date()) for k, v in (known_first_session or {}).items()
        }

    # -- generic ------------------------------------------------------------------
    def error(self, code: str, message: str, expr: str) -> None:
        self.errors.append(FhirIssue("error", code, message, expr))

    def warn(self, code: str, message: str, expr: str) -> None:
        self.out.issues.append(FhirIssue("warning", code, message, expr))

    def bound(self, value: str | None, allowed: frozenset[str], expr: str) -> bool:
        """Whether a code of a required binding is allowed (an error names it if not)."""
        if value is None or value in allowed:
            return True
        self.error(
            "code-invalid",
            f"got {value!r}; allowed (required value set): " + ", ".join(sorted(allowed)),
            expr,
        )
        return False

    def skip(self, rtype: str, status: str | None, expr: str, why: str) -> None:
        """Say that a valid resource is not imported because of its status (never silently)."""
        self.warn("business-rule", f"not imported: {rtype} with status {status!r}; {why}", expr)

    def questionnaire_of(self, canonical: Any) -> QuestionnaireMap | None:
        """The known Questionnaire a response names (``url``, ``url|version``, id)."""
        if not canonical:
            return None
        ref = str(canonical)
        return self.forms.get(ref) or self.forms.get(ref.split("|", 1)[0])

    def register_form(self, res: Any, full_url: str | None = None) -> QuestionnaireMap | None:
        """Know a Questionnaire by each reference to it (None: it has none)."""
        keys = questionnaire_keys(res, full_url)
        if not keys:
            return None
        form = QuestionnaireMap.of(res)
        for k in keys:
            self.forms[k] = form
        return form

    def add_questionnaire(self, res: Any, expr: str, full_url: str | None) -> None:
        form = self.register_form(res, full_url)
        if form is None:
            self.warn("required", "a Questionnaire without url or id cannot be referenced; "
                      "ignored", expr)
            return
        self.out.issues.append(FhirIssue(
            "information", "informational",
            f"Questionnaire maps {len(form.columns)} linkId(s) to PHQ-9 / C-SSRS questions"
            + (f" and scores {len(form.weights)} answer option(s)" if form.weights else "")
            + " (by its items' LOINC codes); responses naming it are read through it",
            expr,
        ))

    def withdraw(
        self, rtype: str, table: str, cid: str | None, res: Any, expr: str
    ) -> tuple[str, str | None]:
        """An ``entered-in-error`` resource: a retraction of its stored row, if it can have one.

        No date or content is needed (the resource is wrong, whatever it says);
        the subject names the patient. A subject that is no Patient of the
        Bundle and not stored (when the caller knows the stored patients)
        cannot have a stored row: the resource is then only listed.
        """
        reference = getattr(getattr(res, "subject", None), "reference", None)
        pid = _reference_id(reference, "Patient", self.patient_full_urls)
        unknown = pid is None or (
            self.known_patients is not None
            and pid not in self.bundle_patients
            and pid not in self.known_patients
        )
        if cid is None or unknown:
            self.skip(rtype, "entered-in-error", f"{expr}.status",
                      "its subject is no stored patient, so there is no row to withdraw")
            return rtype, None
        assert pid is not None
        self.out.retractions.append({"patient_id": pid, "table": table, "id": cid, "expr": expr})
        if pid not in self.out.patients:
            self.out.patients[pid] = {"patient_id": pid}
            self.out.patient_sources.setdefault(pid, f"{expr}.subject")
        return rtype, cid

    def client_id(self, rtype: str, res: Any, full_url: str | None, expr: str) -> str | None:
        if res.id:
            return f"{rtype}/{res.id}"
        if full_url:
            return f"{rtype}/{full_url.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}"
        self.error(
            "required",
            f"{rtype} needs an id (or the entry a fullUrl) so that a retried import is "
            "recognised and not stored twice",
            f"{expr}.id",
        )
        return None

    def patient_of(self, res: Any, expr: str, element: str = "subject") -> str | None:
        ref = getattr(res, element, None)
        reference = getattr(ref, "reference", None)
        pid = _reference_id(reference, "Patient", self.patient_full_urls)
        if pid is None:
            shown = f"got {reference!r}" if reference else "missing"
            self.error(
                "required",
                f"{element} must reference the patient (Patient/<id> or the fullUrl of a Patient "
                f"entry); {shown}",
                f"{expr}.{element}",
            )
            return None
        if (
            self.known_patients is not None
            and pid not in self.bundle_patients
            and pid not in self.known_patients
        ):
            self.error(
                "not-found",
                f"{element} {reference!r}: no Patient {pid!r} is in this Bundle or already "
                "stored; send the Patient resource in the same Bundle (or import it first)",
                f"{expr}.{element}",
            )
            return None
        if pid not in self.out.patients:
            self.out.patients[pid] = {"patient_id": pid}
            self.out.patient_sources.setdefault(pid, f"{expr}.{element}")
        return pid

    def date_of(self, value: Any, expr: str, element: str) -> dt.date | None:
        d = _as_date(value)
        if d is None:
            self.error(
                "required",
                f"a full date is needed (YYYY-MM-DD or a dateTime); got {value!r}"
                if value is not None
                else "the date is missing",
                f"{expr}.{element}",
            )
        return d

    def put(
        self,
        key: tuple[str, dt.date],
        client_id: str,
        column: str,
        value: float,
        expr: str,
        priority: int,
    ) -> None:
        row = self.rows.get(key)
        if row is None:
            row = _Row(key[0], key[1], client_id, priority=priority)
            self.rows[key] = row
        elif priority < row.priority:
            row.client_id, row.priority = client_id, priority
        base = expr.split(".resource", 1)[0] + ".resource"
        if base not in row.exprs:
            row.exprs.append(base)
        if client_id not in row.ids:
            row.ids.append(client_id)
        old = row.values.get(column)
        if old is not None and old != value:
            self.error(
                "conflict",
                f"{_label(column)} is {value:g} here but {old:g} in {row.origin[column]} "
                f"(same patient and date {key[1].isoformat()}): the two resources disagree",
                expr,
            )
            return
        row.values[column] = value
        row.origin.setdefault(column, expr)

    # -- resources ----------------------------------------------------------------
    def patient(self, res: Any, expr: str, full_url: str | None) -> tuple[str, str | None]:
        # The id becomes patient_id, the key of the patient's whole history, so
        # it must be stable: an id, or a RESTful fullUrl ".../Patient/<id>". A
        # urn:uuid fullUrl is a placeholder that changes with every transaction:
        # a retried import would create a second patient.
        pid = res.id or _restful_id(full_url, "Patient")
        if pid is None:
            self.error(
                "required",
                "Patient needs an id (it becomes patient_id); a urn:uuid fullUrl is only a "
                "placeholder and cannot identify the patient across imports"
                if full_url
                else "Patient needs an id (it becomes patient_id)",
                f"{expr}.id",
            )
            return "Patient", None
        if not self.bound(res.gender, PATIENT_GENDER_CODES, f"{expr}.gender"):
            return "Patient", None
        self.bundle_patients.add(pid)
        rec = self.out.patients.setdefault(pid, {"patient_id": pid})
        self.out.patient_sources[pid] = expr
        if res.gender:
            rec["sex"] = {"female": "female", "male": "male", "other": "other"}.get(
                res.gender, "unknown"
            )
        if res.birthDate is not None:
            bd = _as_date(res.birthDate)
            if bd is not None:
                self.birth_dates[pid] = (bd, f"{expr}.birthDate")
        return "Patient", pid

    def questionnaire_response(
        self, res: Any, expr: str, full_url: str | None
    ) -> tuple[str, str | None]:
        cid = self.client_id("QuestionnaireResponse", res, full_url, expr)
        if not self.bound(res.status, QR_STATUS_CODES, f"{expr}.status"):
            return "QuestionnaireResponse", None
        if res.status == "entered-in-error":
            return self.withdraw("QuestionnaireResponse", "assessments", cid, res, expr)
        if res.status not in QR_STATUSES:
            self.skip(
                "QuestionnaireResponse",
                res.status,
                f"{expr}.status",
                "only completed or amended responses are imported",
            )
            return "QuestionnaireResponse", None
        pid = self.patient_of(res, expr)
        d = self.date_of(res.authored, expr, "authored")
        if cid is None or pid is None or d is None:
            return "QuestionnaireResponse", None
        about = str(res.questionnaire or "").lower()
        cssrs = "ssrs" in about or LOINC_CSSRS_PANEL in about
        form = self.questionnaire_of(res.questionnaire) or _contained_form(res)
        key = (pid, d)
        mapped = 0
        unknown: list[str] = []

        def walk(items: Sequence[Any], path: str) -> None:
            nonlocal mapped
            for j, it in enumerate(items or []):
                ipath = f"{path}.item[{j}]"
                link = (it.linkId or "").rsplit("/", 1)[-1].strip().lower()
                column = (
                    (form.columns.get(it.linkId or "") if form is not None else None)
                    or (CSSRS_SHORT_LINKIDS.get(link) if cssrs else None)
                    or LINKID_COLUMNS.get(link)
                )
                answers = list(it.answer or [])
                if column is None:
                    if answers:
                        unknown.append(it.linkId)
                elif column in (_DIFFICULTY, _IGNORED_GROUP) or not answers:
                    pass
                else:
                    if len(answers) > 1:
                        self.error(
                            "invalid",
                            f"linkId {it.linkId!r} has {len(answers)} answers; one is allowed",
                            f"{ipath}.answer",
                        )
                        continue
                    apath = f"{ipath}.answer[0]"
                    weight = (
                        form.weight(it.linkId or "", answers[0])
                        if form is not None and column in PHQ9_ITEMS
                        else None
                    )
                    try:
                        if weight is not None:  # scored by the form's own answerOption
                            if not float(weight).is_integer() or not 0 <= weight <= 3:
                                raise _Bad(
                                    f"the Questionnaire scores this answer {weight:g}; a PHQ-9 "
                                    "item is scored 0 to 3",
                                    f"{apath}.valueCoding",
                                )
                            v = float(weight)
                        elif column.startswith("_cssrs") or column == "cssrs_behavior":
                            v = _yes_no(answers[0], apath, codeable="valueCoding")
                        elif column == "phq9_total":
                            v = _total_score(answers[0], apath)
                        else:
                            v = _item_score(answers[0], apath, codeable="valueCoding")
                    except _Bad as bad:
                        self.error("value", f"linkId {it.linkId!r}: {bad}", bad.element)
                        continue
                    if v is None:
                        self.error(
                            "value",
                            f"linkId {it.linkId!r}: no readable answer value",
                            apath,
                        )
                        continue
                    mapped += 1
                    self.put(key, cid, column, v, apath, 0)
                # Nested items: groups, and items nested under answers.
                walk(it.item or [], ipath)
                for k, a in enumerate(answers):
                    if a.item:
                        walk(a.item, f"{ipath}.answer[{k}]")

        walk(res.item or [], expr)
        if unknown:
            self.warn(
                "not-supported",
                "answers to linkIds not mapped to any PHQ-9 or C-SSRS question were ignored: "
                + ", ".join(repr(u) for u in unknown[:10])
                + ("" if len(unknown) <= 10 else f" and {len(unknown) - 10} more"),
                f"{expr}.item",
            )
        if mapped == 0:
            self.warn(
                "not-supported",
                "no PHQ-9 or C-SSRS answer found in this QuestionnaireResponse; nothing imported "
                "from it (see the linkId table in the README)",
                expr,
            )
            return "QuestionnaireResponse", None
        self.by_resource[cid] = key
        return "QuestionnaireResponse", cid

    def observation(
        self, res: Any, expr: str, full_url: str | None, derived: Mapping[str, tuple[str, dt.date]]
    ) -> tuple[str, str | None]:
        cid = self.client_id("Observation", res, full_url, expr)
        if not self.bound(res.status, OBSERVATION_STATUS_CODES, f"{expr}.status"):
            return "Observation", None
        if res.status == "entered-in-error":
            return self.withdraw("Observation", "assessments", cid, res, expr)
        if res.status not in OBSERVATION_STATUSES:
            self.skip(
                "Observation",
                res.status,
                f"{expr}.status",
                "imported statuses: " + ", ".join(sorted(OBSERVATION_STATUSES)),
            )
            return "Observation", None
        codes = _codes(res.code)
        loinc = {c for s, c in codes if s in (LOINC_SYSTEM, None)}
        snomed = {c for s, c in codes if s == SNOMED_SYSTEM}
        if SNOMED_PHQ9_SCORE in snomed:
            loinc.add(LOINC_PHQ9_TOTAL)
        column = next((OBSERVATION_CODES[c] for c in sorted(loinc) if c in OBSERVATION_CODES), None)
        is_panel = bool(loinc & {LOINC_PHQ9_PANEL, LOINC_CSSRS_PANEL})
        if column is None and not is_panel:
            known = next((NOT_IMPORTED_CODES[c] for c in loinc if c in NOT_IMPORTED_CODES), None)
            shown = ", ".join(f"{s or '?'}|{c}" for s, c in sorted(codes, key=str)) or "no coding"
            self.warn(
                "not-supported",
                f"Observation ignored: {known}"
                if known
                else f"Observation code ({shown}) is not a PHQ-9 or C-SSRS code; ignored",
                f"{expr}.code",
            )
            return "Observation", None
        pid = self.patient_of(res, expr)
        when = (
            res.effectiveDateTime
            or res.effectiveInstant
            or (res.effectivePeriod.start if res.effectivePeriod is not None else None)
        )
        d = self.date_of(when, expr, "effectiveDateTime")
        if cid is None or pid is None or d is None:
            return "Observation", None
        key = (pid, d)
        for ref in res.derivedFrom or []:
            target = derived.get(ref.reference or "")
            if target is not None:
                if target[0] != pid:
                    self.error(
                        "conflict",
                        f"derivedFrom {ref.reference} belongs to another patient",
                        f"{expr}.derivedFrom",
                    )
                    return "Observation", None
                key = target  # the response's date wins: they are one questionnaire
        before = len(self.errors)
        mapped = 0
        if column is not None:
            mapped += self._obs_value(res, column, key, cid, expr)
        for k, comp in enumerate(res.component or []):
            ccodes = {c for s, c in _codes(comp.code) if s in (LOINC_SYSTEM, None)}
            ccol = next(
                (OBSERVATION_CODES[c] for c in sorted(ccodes) if c in OBSERVATION_CODES), None
            )
            if ccol is not None:
                mapped += self._obs_value(comp, ccol, key, cid, f"{expr}.component[{k}]")
        if len(self.errors) > before:
            return "Observation", None
        if mapped == 0 and not (is_panel and res.hasMember):
            self.warn(
                "not-supported",
                "Observation has no value that could be imported",
                f"{expr}.value[x]",
            )
            return "Observation", None
        if mapped:
            self.by_resource[cid] = key
        return "Observation", cid

    def _obs_value(
        self,
        holder: Any,
        column: str,
        key: tuple[str, dt.date],
        cid: str,
        expr: str,
    ) -> int:
        try:
            if column.startswith("_cssrs") or column == "cssrs_behavior":
                v = _yes_no(holder, expr, codeable="valueCodeableConcept")
            elif column == "phq9_total":
                v = _total_score(holder, expr)
            else:
                v = _item_score(holder, expr, codeable="valueCodeableConcept")
        except _Bad as bad:
            self.error("value", str(bad), bad.element)
            return 0
        if v is None:
            absent = getattr(holder, "dataAbsentReason", None)
            if absent is None:
                self.error("required", f"no value for {column}", f"{expr}.value[x]")
            return 0
        self.put(key, cid, column, v, f"{expr}.{_value_element(holder)}", 1)
        return 1

    def procedure(self, res: Any, expr: str, full_url: str | None) -> tuple[str, str | None]:
        cid = self.client_id("Procedure", res, full_url, expr)
        if not self.bound(res.status, PROCEDURE_STATUS_CODES, f"{expr}.status"):
            return "Procedure", None
        if not is_ketamine_procedure(res):
            self.warn(
                "not-supported",
                "Procedure is not recognised as a ketamine session (see the README for the "
                "accepted codes and texts); ignored",
                f"{expr}.code",
            )
            return "Procedure", None
        if res.status == "entered-in-error":
            return self.withdraw("Procedure", "sessions", cid, res, expr)
        if res.status not in PROCEDURE_STATUSES:
            self.skip("Procedure", res.status, f"{expr}.status", "only completed sessions count")
            return "Procedure", None
        pid = self.patient_of(res, expr)
        when = res.performedDateTime or (
            res.performedPeriod.start if res.performedPeriod is not None else None
        )
        d = self.date_of(when, expr, "performedDateTime")
        if cid is None or pid is None or d is None:
            return "Procedure", None
        rec: dict[str, Any] = {"patient_id": pid, "id": cid, "date": d.isoformat()}
        exts = {e.url: e for e in res.extension or []}
        kind = _session_kind(res, exts)
        route = _route(res, exts)
        if route is not None:
            rec["route"] = route
        for url, col in (
            (EXT_DOSE, "dose_mg_per_kg"),
            (EXT_DISSOCIATION, "dissociation"),
            (EXT_SYSTOLIC, "systolic_bp_max"),
        ):
            if url in exts:
                e = exts[url]
                val = e.valueDecimal if e.valueDecimal is not None else e.valueInteger
                rec[col] = float(val) if val is not None else None
        if EXT_PSYCHOTHERAPY in exts:
            rec["psychotherapy"] = exts[EXT_PSYCHOTHERAPY].valueBoolean
        if kind is not None:
            rec["kind"] = kind
        self.pending_sessions.append((rec, kind is None, expr))
        self.out.sources[("sessions", cid)] = [expr]
        return "Procedure", cid

    # -- finish ------------------------------------------------------------------
    def finish(self) -> MappedRecords:
        # Session kind default: the patient's first session ever is the induction,
        # every other session with no kind stated is a maintenance session.
        first: dict[str, dt.date] = {}
        for rec, _, _ in self.pending_sessions:
            d = dt.date.fromisoformat(rec["date"])
            pid = rec["patient_id"]
            first[pid] = min(first.get(pid, d), d)
        for pid, d in list(first.items()):
            known = self.known_first.get(pid)
            if known is not None and known < d:
                first[pid] = known
        for rec, default, expr in self.pending_sessions:
            if default:
                is_first = dt.date.fromisoformat(rec["date"]) == first[rec["patient_id"]]
                rec["kind"] = "induction" if is_first else "maintenance"
                self.out.issues.append(
                    FhirIssue(
                        "information",
                        "informational",
                        f"session kind not stated; recorded as {rec['kind']} "
                        + ("(the patient's first session)" if is_first else "(default)"),
                        f"{expr}.extension",
                    )
                )
            self.out.sessions.append(rec)
        # Age at the first session in this import.
        for pid, (bd, expr) in self.birth_dates.items():
            f = first.get(pid) or self.known_first.get(pid)
            if f is not None:
                age = f.year - bd.year - ((f.month, f.day) < (bd.month, bd.day))
                self.out.patients[pid]["age"] = float(age)
            else:
                self.out.issues.append(
                    FhirIssue(
                        "information",
                        "informational",
                        "age not set: it is the age at the first session and no session of "
                        "the patient is known yet",
                        expr,
                    )
                )
        for row in self.rows.values():
            self._check_total(row)
            # C-SSRS screener: the highest question answered "yes" (Q1-Q5) is the
            # ideation level; 0 when the questions asked were all answered "no".
            asked = [q for q in _CSSRS_Q if q in row.values]
            if asked:
                yes = [i for i, q in enumerate(_CSSRS_Q, start=1) if row.values.get(q) == 1.0]
                row.values["cssrs_ideation"] = float(max(yes) if yes else 0)
                for q in asked:
                    del row.values[q]
            answered = [c for c in PHQ9_ITEMS if c in row.values]
            if (
                answered
                and len(answered) < 9 - MAX_MISSING_ITEMS
                and "phq9_total" not in row.values
                and set(answered) <= _SCREEN_ITEMS
            ):
                kept = " (item 9 is read by the safety rules)" if "phq9_9" in answered else ""
                self.warn(
                    "informational",
                    f"PHQ-9 item(s) {', '.join(_label(c) for c in answered)} without a total do "
                    f"not make a PHQ-9: recorded as a screen without a PHQ-9 score{kept}; the "
                    "models ignore it",
                    row.origin[answered[0]],
                )
            rec: dict[str, Any] = {
                "patient_id": row.patient_id,
                "id": row.client_id,
                "date": row.date.isoformat(),
            }
            rec.update({k: (int(v) if float(v).is_integer() else v) for k, v in row.values.items()})
            self.out.assessments.append(rec)
            self.out.sources[("assessments", row.client_id)] = row.exprs
            others = [i for i in row.ids if i != row.client_id]
            if others:
                self.out.merged[("assessments", row.client_id)] = others
        self.out.assessments.sort(key=lambda r: (r["patient_id"], r["date"]))
        self.out.sessions.sort(key=lambda r: (r["patient_id"], r["date"]))
        return self.out

    def _check_total(self, row: _Row) -> None:
        """Items and a given total must agree (compared after prorating)."""
        if "phq9_total" not in row.values:
            return
        items = np.array([[row.values.get(c, np.nan) for c in PHQ9_ITEMS]], dtype=float)
        total, answered = phq9_from_items(items)
        if answered[0] == 0 or np.isnan(total[0]):
            return
        if total[0] != row.values["phq9_total"]:
            self.error(
                "conflict",
                f"PHQ-9 total {row.values['phq9_total']:g} (from {row.origin['phq9_total']}) does "
                f"not agree with the items, which give {total[0]:g}"
                + (" after prorating" if answered[0] < 9 else ""),
                row.origin["phq9_total"],
            )


def _session_kind(res: Any, exts: Mapping[str, Any]) -> str | None:
    ext = exts.get(EXT_SESSION_KIND)
    if ext is not None and ext.valueCode in ("induction", "maintenance"):
        return ext.valueCode
    texts = " ".join(_concept_text(c) for c in (res.category, res.code)).lower()
    codes = {c.code.lower() for c in (*_codings(res.category), *_codings(res.code)) if c.code}
    for kind in ("induction", "maintenance"):
        if kind in codes or re.search(rf"\b{kind}\b", texts):
            return kind
    if re.search(r"\bbooster\b", texts):
        return "maintenance"
    return None


def _route(res: Any, exts: Mapping[str, Any]) -> str | None:
    if EXT_ROUTE in exts and exts[EXT_ROUTE].valueCode in (
        "iv",
        "im",
        "intranasal",
        "sublingual",
        "oral",
    ):
        return exts[EXT_ROUTE].valueCode
    if {c.code for c in _codings(res.code) if c.code} & HCPCS_ESKETAMINE:
        return "intranasal"
    text = _concept_text(res.code).lower()
    for pattern, route in _ROUTE_WORDS:
        if re.search(pattern, text):
            return route
    return None


def is_ketamine_procedure(res: Any) -> bool:
    """Whether a Procedure is a ketamine session.

    Recognised: our code ``urn:kap-forecast:fhir:procedure|ketamine-session``;
    HCPCS G2082 / G2083 (esketamine nasal spray with observation); any code
    whose text or display contains "ketamine" (so also esketamine and
    arketamine), in ``Procedure.code`` or ``Procedure.usedCode``.
    """
    for c in _codings(res.code):
        if (c.system == KAP_CODE_SYSTEM and c.code == KAP_SESSION_CODE) or (
            c.code in HCPCS_ESKETAMINE
        ):
            return True
    texts = [_concept_text(res.code), *(_concept_text(u) for u in res.usedCode or [])]
    return any("ketamine" in t.lower() for t in texts)


def _lenient(raw: Mapping[str, Any], expr: str, m: _Mapper) -> dict[str, Any]:
    """Accept ``Observation.valueDecimal`` (seen in the wild, not an R4 element).

    R4 Observations have no ``valueDecimal``; some senders use it for scores.
    It is read as ``valueQuantity`` (same number, no unit) with a warning, on
    the Observation and on its components.
    """
    out = dict(raw)
    if out.get("resourceType") != "Observation":
        return out
    holders = [("", out)]
    if isinstance(out.get("component"), list):
        out["component"] = [dict(c) if isinstance(c, Mapping) else c for c in out["component"]]
        holders += [
            (f".component[{k}]", c) for k, c in enumerate(out["component"]) if isinstance(c, dict)
        ]
    for sub, h in holders:
        if "valueDecimal" in h and not any(
            k.startswith("value") and k != "valueDecimal" for k in h
        ):
            h["valueQuantity"] = {"value": h.pop("valueDecimal")}
            m.warn(
                "invalid",
                "valueDecimal is not an element of an R4 Observation; read as valueQuantity",
                f"{expr}{sub}.valueDecimal",
            )
    return out


_HANDLED = ("Patient", "QuestionnaireResponse", "Observation", "Procedure", "Questionnaire")


def map_resources(
    resources: Sequence[Mapping[str, Any]],
    *,
    expressions: Sequence[str] | None = None,
    full_urls: Sequence[str | None] | None = None,
    known_first_session: Mapping[str, Any] | None = None,
    known_patients: Collection[str] | None = None,
    questionnaires: Sequence[Any] = (),
) -> MappedRecords:
    """Validate FHIR resources with fhir.resources and map them to contract records.

    Parameters
    ----------
    resources : sequence of dict
        Resources as JSON objects (Patient, QuestionnaireResponse,
        Observation, Procedure; other types are ignored with a warning).
    expressions : sequence of str, optional
        FHIRPath of each resource for messages; default ``Bundle.entry[i].resource``.
    full_urls : sequence of str or None, optional
        The entries' ``fullUrl`` (resolves ``urn:uuid:`` references).
    known_first_session : mapping, optional
        ``patient_id`` -> date of the first session already on record, so a
        session of unstated kind is an induction only if it is the first ever.
    known_patients : collection of str, optional
        Patients already on record. When given, a resource whose subject is
        neither a Patient of ``resources`` nor one of these is an error naming
        its ``subject``; when None (no store to ask) such a patient is new.
    questionnaires : sequence
        Questionnaires known to the caller (parsed resources or JSON
        objects, e.g. :func:`load_questionnaires`), besides those among
        ``resources``: a QuestionnaireResponse naming one is read through
        its items' codes (:class:`QuestionnaireMap`).

    Returns
    -------
    MappedRecords

    Raises
    ------
    FhirError
        With every error found (structure, codes of required bindings, values,
        unknown patients, disagreements).
    """
    from fhir.resources.R4B import get_fhir_model_class

    n = len(resources)
    exprs = list(expressions or [f"Bundle.entry[{i}].resource" for i in range(n)])
    urls = list(full_urls or [None] * n)
    m = _Mapper(known_first_session, known_patients)
    parsed: list[Any] = [None] * n
    for i, raw in enumerate(resources):
        rtype = raw.get("resourceType") if isinstance(raw, Mapping) else None
        if not isinstance(raw, Mapping) or not rtype:
            m.error("required", "resource has no resourceType", exprs[i])
            continue
        if rtype not in _HANDLED:
            try:
                get_fhir_model_class(rtype)
            except (ValueError, KeyError):
                m.error("not-supported", f"{rtype!r} is not a FHIR R4 resource type", exprs[i])
                continue
            m.warn("not-supported", f"{rtype} resources are not imported; ignored", exprs[i])
            continue
        raw = _lenient(raw, exprs[i], m)
        try:
            parsed[i] = get_fhir_model_class(rtype).model_validate(raw)
        except ValidationError as err:
            m.errors.extend(_validation_issues(err, exprs[i]))
            continue
        if urls[i]:
            m.full_urls[urls[i]] = f"{rtype}/{parsed[i].id or urls[i]}"
            if rtype == "Patient":
                pid = parsed[i].id or _restful_id(urls[i], "Patient")
                if pid is not None:
                    m.patient_full_urls[urls[i]] = pid
    # Questionnaires first (the caller's, then the Bundle's own), so responses can use them.
    for res in questionnaires:
        m.register_form(res if not isinstance(res, Mapping) else get_fhir_model_class(
            "Questionnaire").model_validate(res))
    results: list[tuple[str, str | None]] = [("", None)] * n
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "Questionnaire":
            m.add_questionnaire(res, exprs[i], urls[i])
            results[i] = ("Questionnaire", None)
    # Patients next, so references through fullUrl resolve and covariates attach.
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "Patient":
            results[i] = m.patient(res, exprs[i], urls[i])
    # Responses next, so Observations derivedFrom them can join their row.
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "QuestionnaireResponse":
            results[i] = m.questionnaire_response(res, exprs[i], urls[i])
    derived: dict[str, tuple[str, dt.date]] = {}
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "QuestionnaireResponse":
            cid = results[i][1]
            if cid is not None and cid in m.by_resource:
                derived[cid] = m.by_resource[cid]
                if urls[i]:
                    derived[urls[i]] = m.by_resource[cid]
    for i, res in enumerate(parsed):
        if res is None:
            continue
        rtype = res.get_resource_type()
        if rtype == "Observation":
            results[i] = m.observation(res, exprs[i], urls[i], derived)
        elif rtype == "Procedure":
            results[i] = m.procedure(res, exprs[i], urls[i])
    # hasMember references that are not in the input cannot be followed.
    present = {cid for _, cid in results if cid} | set(m.full_urls)
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "Observation":
            for k, ref in enumerate(res.hasMember or []):
                r = ref.reference or ""
                if (
                    r not in present
                    and r not in m.by_resource
                    and not any(r.endswith("/" + p) for p in present)
                ):
                    m.warn(
                        "not-found",
                        f"hasMember {r!r} is not in this Bundle; send the member Observations "
                        "in the same Bundle",
                        f"{exprs[i]}.hasMember[{k}]",
                    )
    out = m.finish()
    if m.errors:
        raise FhirError(m.errors + out.issues)
    out.entries = [(t or "", cid) for t, cid in results]
    return out


def map_bundle(
    bundle: Any,
    *,
    known_first_session: Mapping[str, Any] | None = None,
    known_patients: Collection[str] | None = None,
    types: Iterable[str] = BUNDLE_TYPES,
    questionnaires: Sequence[Any] = (),
) -> MappedRecords:
    """Validate a Bundle (transaction, batch or collection) and map its entries.

    ``known_first_session``, ``known_patients`` and ``questionnaires`` are
    passed to :func:`map_resources`.

    Raises
    ------
    FhirError
        When the Bundle or any entry is invalid; nothing is returned then.
    """
    from fhir.resources.R4B.bundle import Bundle

    types = tuple(types)
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        got = bundle.get("resourceType") if isinstance(bundle, Mapping) else type(bundle).__name__
        raise FhirError(
            [FhirIssue("error", "structure", f"expected a Bundle resource; got {got!r}", "Bundle")]
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(
            [FhirIssue("error", "structure", "Bundle.entry must be a list", "Bundle.entry")]
        )
    # Validate the Bundle's own structure without the resources, which are
    # validated one by one below so that each error names its entry.
    shell = dict(bundle)
    shell["entry"] = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, Mapping) else e
        for e in entries
    ]
    try:
        Bundle.model_validate(shell)
    except ValidationError as err:
        raise FhirError(_validation_issues(err, "Bundle")) from None
    if bundle.get("type") not in types:
        raise FhirError(
            [
                FhirIssue(
                    "error",
                    "not-supported",
                    f"Bundle.type {bundle.get('type')!r} is not accepted here; allowed: "
                    + ", ".join(sorted(types)),
                    "Bundle.type",
                )
            ]
        )
    resources = []
    for i, e in enumerate(entries):
        res = e.get("resource")
        if res is None:
            raise FhirError(
                [FhirIssue("error", "required", "entry has no resource", f"Bundle.entry[{i}]")]
            )
        req = e.get("request") or {}
        if req.get("method") not in (None, "POST", "PUT"):
            raise FhirError(
                [
                    FhirIssue(
                        "error",
                        "not-supported",
                        f"request.method {req.get('method')!r} is not supported; use POST or PUT",
                        f"Bundle.entry[{i}].request.method",
                    )
                ]
            )
        resources.append(res)
    return map_resources(
        resources,
        full_urls=[e.get("fullUrl") for e in entries],
        known_first_session=known_first_session,
        known_patients=known_patients,
        questionnaires=questionnaires,
    )


def load_questionnaires(folder: str | Any) -> list[Any]:
    """Questionnaire resources from the ``*.json`` files of ``folder`` (validated).

    Raises ``ValueError`` naming the file when one is not a valid R4
    Questionnaire, or has neither ``url`` nor ``id`` to be referenced by.
    """
    import json
    from pathlib import Path

    from fhir.resources.R4B.questionnaire import Questionnaire

    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, Mapping) or doc.get("resourceType") != "Questionnaire":
                raise ValueError("not a Questionnaire resource")
            q = Questionnaire.model_validate(doc)
        except (ValueError, ValidationError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: {str(err).splitlines()[0]}") from None
        if not questionnaire_keys(q):
            raise ValueError(f"{path}: a Questionnaire needs a url or an id to be referenced")
        out.append(q)
    return out


# --- Output: RiskAssessment --------------------------------------------------------------------
DECISION_SUPPORT_NOTE = (
    "Decision support for timing maintenance sessions, not a suicide-risk assessment and not "
    "a clearance; clinical judgement decides."
)
#: Label of a risk that describes the model's training episodes, not this patient.
POPULATION_NOTE = "population estimate, not personalised"


def is_population(answer: Mapping[str, Any]) -> bool:
    """Whether the answer's risks are the population estimate (``risk.kind == "population"``).

    The policy gives such risks when a personalised forecast does not apply
    (status insufficient_data): they describe the model's training episodes,
    so every output must say so and none may present them as the patient's own.
    """
    return str((answer.get("risk") or {}).get("kind")) == "population"


def risk_assessment(
    answer: Mapping[str, Any],
    *,
    basis: Sequence[str] = (),
    resource_id: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment (JSON) for one forecast answer of forecast.policy.

    Parameters
    ----------
    answer : mapping
        The forecast answer (patient_id, as_of, model_version, status, safety,
        risk.horizons, suggestion, caveats, ...).
    basis : sequence of str
        References (``Observation/<id>``, ``QuestionnaireResponse/<id>``) to
        the resources the forecast used.
    resource_id : str, optional
        The RiskAssessment id (e.g. the audit record id).

    Returns
    -------
    dict
        The resource; each risk horizon is one ``prediction`` with
        ``probabilityDecimal`` (risk that the benefit has waned by then) and
        ``whenRange`` from 0 to the horizon in days after ``occurrenceDateTime``.
        A population estimate (``risk.kind == "population"``) gives no
        ``prediction``: a RiskAssessment's predictions are read as the
        subject's own, and these numbers are not. A note says why and shows
        them labelled "population estimate, not personalised"; ``method``
        says so too.
    """
    as_of = str(answer["as_of"])[:10]
    risk = answer.get("risk") or {}
    population = is_population(answer)
    predictions = []
    for h in [] if population else risk.get("horizons") or []:
        if h.get("risk") is None:
            continue
        pred: dict[str, Any] = {
            "outcome": {
                "text": "Benefit of ketamine treatment waned (PHQ-9 no longer in response "
                "and >= 10, or suicidal ideation re-emerged)"
            },
            "probabilityDecimal": round(float(h["risk"]), 4),
            "whenRange": {
                "low": {"value": 0, "unit": "d", "system": UCUM_SYSTEM, "code": "d"},
                "high": {"value": int(h["days"]), "unit": "d", "system": UCUM_SYSTEM, "code": "d"},
            },
        }
        if h.get("lower") is not None and h.get("upper") is not None:
            pred["rationale"] = (
                f"within {int(h['days'])} days: {float(h['risk']):.0%} "
                f"(uncertainty band {float(h['lower']):.0%}-{float(h['upper']):.0%})"
            )
        predictions.append(pred)
    notes = [{"text": DECISION_SUPPORT_NOTE}]
    safety = answer.get("safety") or {}
    if safety.get("level"):
        reasons = "; ".join(safety.get("reasons") or [])
        notes.insert(
            0,
            {
                "text": f"SAFETY ({safety['level']}): "
                + (safety.get("statement") or "suicidal-ideation answers need clinical review")
                + (f" Reasons: {reasons}." if reasons else "")
            },
        )
    if population:
        shown = horizons_text(answer)
        notes.append(
            {
                "text": "No personalised prediction for this patient (status "
                f"{answer.get('status')}), so this RiskAssessment has no prediction. "
                f"Risk that the benefit has waned, {POPULATION_NOTE} (the model's training "
                "episodes still without waning this long after their session)"
                + (f": {shown}." if shown else ".")
            }
        )
    sug = answer.get("suggestion") or {}
    if sug.get("session_by"):
        notes.append(
            {
                "text": f"Suggested next maintenance session by {sug['session_by']}"
                + (f" ({POPULATION_NOTE})" if sug.get("basis") == "population" else "")
                + (
                    f" (window {sug.get('window_start')} to {sug.get('window_end')})"
                    if sug.get("window_start")
                    else ""
                )
                + (
                    f"; threshold {sug['threshold']:.0%}"
                    if sug.get("threshold") is not None
                    else ""
                )
                + (f". {sug['rationale']}" if sug.get("rationale") else "")
            }
        )
    elif sug.get("rationale"):
        notes.append({"text": str(sug["rationale"])})
    status = f"Status: {answer.get('status')}. {answer.get('status_reason') or ''}".strip()
    notes.append({"text": status})
    notes.extend({"text": str(c)} for c in answer.get("caveats") or [])
    out: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": f"Patient/{answer['patient_id']}"},
        "occurrenceDateTime": as_of,
        "method": {
            "text": (
                f"kap-forecast survival model, version {answer.get('model_version')}"
                + (f"; {POPULATION_NOTE}: no prediction for this patient" if population else "")
            ),
        },
        "code": {"text": "Forecast of when the benefit of ketamine treatment wanes"},
        "note": notes,
    }
    if resource_id:
        out["id"] = resource_id
    if basis:
        out["basis"] = [{"reference": b} for b in basis]
    if predictions:
        out["prediction"] = predictions
    med = answer.get("median_remaining_days")
    if med is not None:
        out["note"].append({"text": f"Median remaining benefit: {med:g} days after {as_of}."})
    return out


def searchset(resources: Sequence[Mapping[str, Any]], self_url: str) -> dict[str, Any]:
    """A searchset Bundle holding ``resources`` (search mode "match")."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [{"resource": dict(r), "search": {"mode": "match"}} for r in resources],
    }


def horizons_text(answer: Mapping[str, Any], days: Sequence[int] = HORIZONS) -> str:
    """``"7 d 5%, 14 d 11%, ..."`` for the horizons present in the answer."""
    risk = answer.get("risk") or {}
    parts = [
        f"{int(h['days'])} d {float(h['risk']):.0%}"
        for h in risk.get("horizons") or []
        if h.get("risk") is not None and int(h["days"]) in days
    ]
    return ", ".join(parts)
