"""Which FHIR version a Bundle was written in: the service reads R4 (4.0.1) only.

An STU3 (3.0) or DSTU2 (1.0) resource often parses as R4 up to one element,
so without a check it is either refused with a confusing message about that
element or, worse, partly read. :func:`version_issues` looks for shapes that
exist only in the older versions and answers one error per finding, each
naming the version seen, the element and the R4 replacement;
:func:`media_type_version` reads the ``fhirVersion`` parameter of a media type
(``application/fhir+json; fhirVersion=3.0``).

What counts as evidence (each is an element or resource type that R4 does not
have, or a value R4 does not allow):

- a resource type that R4 removed (``ProcedureRequest``, ``ReferralRequest``,
  ``MedicationOrder``, ``DiagnosticOrder``, ``Conformance``, ...);
- ``QuestionnaireResponse.questionnaire`` as a Reference object (a canonical
  string in R4), ``QuestionnaireResponse.group`` (DSTU2),
  ``QuestionnaireResponse.context`` / ``parent`` (STU3);
- ``Observation.context`` and ``Observation.comment`` (``encounter`` and
  ``note`` in R4); ``Procedure.context``, ``Procedure.notDone``,
  ``Procedure.notPerformed``, ``Procedure.definition``;
- ``Patient.animal`` and ``Patient.careProvider``;
- ``Condition.clinicalStatus`` / ``verificationStatus`` and
  ``AllergyIntolerance.clinicalStatus`` as plain codes (CodeableConcepts in
  R4), ``Condition.context``, ``Condition.assertedDate``;
- ``Encounter.class`` as a list or a string, ``Immunization.notGiven`` /
  ``Immunization.date``, ``MedicationRequest.context``,
  ``MedicationStatement.taken``, ``DiagnosticReport.context``;
- a ``meta.profile`` under ``hl7.org/fhir/STU3/`` or ``/DSTU2/``.

Only the shape is looked at, so a resource that is the same in every version
(a Patient with id, gender and birth date) cannot tell and is read as R4: a
sender that knows it writes another version says so with the ``fhirVersion``
media-type parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from forecast.fhir.results import FhirIssue

#: The one version read (``CapabilityStatement.fhirVersion``).
FHIR_VERSION = "4.0.1"

#: ``fhirVersion`` media-type parameter values (FHIR's version parameter) and their names.
VERSION_NAMES: dict[str, str] = {
    "0.0": "DSTU1",
    "0.5": "DSTU1",
    "1.0": "DSTU2",
    "1.4": "DSTU2 (May 2016)",
    "1.6": "STU3 ballot",
    "1.8": "STU3 ballot",
    "3.0": "STU3",
    "3.3": "R4 ballot",
    "3.5": "R4 ballot",
    "4.0": "R4",
    "4.1": "R4B ballot",
    "4.3": "R4B",
    "4.2": "R5 preview",
    "4.4": "R5 preview",
    "4.5": "R5 preview",
    "4.6": "R5 preview",
    "5.0": "R5",
    "6.0": "R6",
}

_OLD_TYPES: dict[str, str] = {
    # Removed in R4 (STU3 names).
    "BodySite": "STU3",
    "DataElement": "STU3",
    "DeviceComponent": "STU3",
    "EligibilityRequest": "STU3",
    "EligibilityResponse": "STU3",
    "ExpansionProfile": "STU3",
    "ImagingManifest": "STU3",
    "ProcedureRequest": "STU3",
    "ProcessRequest": "STU3",
    "ProcessResponse": "STU3",
    "ReferralRequest": "STU3",
    "Sequence": "STU3",
    "ServiceDefinition": "STU3",
    # Removed in STU3 (DSTU2 names).
    "Conformance": "DSTU2",
    "DeviceUseRequest": "DSTU2",
    "DiagnosticOrder": "DSTU2",
    "MedicationOrder": "DSTU2",
    "Order": "DSTU2",
    "OrderResponse": "DSTU2",
}

#: (resource type, element) present only in older versions: (version, R4 replacement).
_OLD_ELEMENTS: dict[tuple[str, str], tuple[str, str]] = {
    ("QuestionnaireResponse", "group"): ("DSTU2", "item"),
    ("QuestionnaireResponse", "context"): ("STU3", "encounter"),
    ("QuestionnaireResponse", "parent"): ("STU3", "partOf"),
    ("Observation", "context"): ("STU3", "encounter"),
    ("Observation", "comment"): ("STU3 or DSTU2", "note"),
    ("Procedure", "context"): ("STU3", "encounter"),
    ("Procedure", "notDone"): ("STU3", "status not-done"),
    ("Procedure", "notDoneReason"): ("STU3", "statusReason"),
    ("Procedure", "notPerformed"): ("DSTU2", "status not-done"),
    ("Procedure", "definition"): ("STU3", "instantiatesCanonical"),
    ("Patient", "animal"): ("STU3 or DSTU2", "no element (removed)"),
    ("Patient", "careProvider"): ("DSTU2", "generalPractitioner"),
    ("Condition", "context"): ("STU3", "encounter"),
    ("Condition", "assertedDate"): ("STU3", "recordedDate"),
    ("Immunization", "notGiven"): ("STU3", "status not-done"),
    ("Immunization", "date"): ("STU3", "occurrenceDateTime"),
    ("MedicationRequest", "context"): ("STU3", "encounter"),
    ("MedicationStatement", "taken"): ("STU3", "no element (removed)"),
    ("DiagnosticReport", "context"): ("STU3", "encounter"),
    ("CarePlan", "context"): ("STU3", "encounter"),
}

#: Elements that R4 made CodeableConcepts and older versions sent as a plain code.
_CODE_TO_CONCEPT: frozenset[tuple[str, str]] = frozenset(
    {
        ("Condition", "clinicalStatus"),
        ("Condition", "verificationStatus"),
        ("AllergyIntolerance", "clinicalStatus"),
        ("AllergyIntolerance", "verificationStatus"),
    }
)

_OLD_PROFILE = re.compile(r"hl7\.org/fhir/(STU3|DSTU2)/", re.IGNORECASE)
_PARAM = re.compile(r"fhirversion\s*=\s*\"?([0-9][0-9.]*)\"?", re.IGNORECASE)


def version_name(version: str) -> str:
    """The release a ``fhirVersion`` value names (``"3.0.2"`` -> ``"STU3"``)."""
    parts = version.split(".")
    key = ".".join(parts[:2]) if len(parts) >= 2 else version
    return VERSION_NAMES.get(key, f"FHIR {version}")


def media_type_version(content_type: str | None) -> str | None:
    """The ``fhirVersion`` parameter of a media type (None when absent)."""
    if not content_type:
        return None
    m = _PARAM.search(content_type)
    return m.group(1) if m else None


def is_r4(version: str) -> bool:
    """Whether a ``fhirVersion`` value is R4 (4.0, 4.0.0, 4.0.1)."""
    return version == "4" or version == "4.0" or version.startswith("4.0.")


def media_type_issue(content_type: str | None, where: str = "Bundle") -> FhirIssue | None:
    """An error when the media type names a version other than R4 (None when it is R4 or none)."""
    version = media_type_version(content_type)
    if version is None or is_r4(version):
        return None
    return FhirIssue(
        "error",
        "not-supported",
        f"the media type says fhirVersion={version} ({version_name(version)}); this service "
        f"reads FHIR R4 ({FHIR_VERSION}) only: convert the resources to R4 and send them as "
        f"application/fhir+json; fhirVersion=4.0",
        where,
    )


def _resources(bundle: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The Bundle itself and each entry's resource, with its FHIRPath."""
    yield bundle, "Bundle"
    entries = bundle.get("entry")
    if isinstance(entries, list):
        for i, e in enumerate(entries):
            res = e.get("resource") if isinstance(e, Mapping) else None
            if isinstance(res, Mapping):
                yield res, f"Bundle.entry[{i}].resource"


def _issue(version: str, text: str, expr: str) -> FhirIssue:
    return FhirIssue(
        "error",
        "not-supported",
        f"this looks like FHIR {version}: {text}; this service reads FHIR R4 "
        f"({FHIR_VERSION}) only, so nothing was imported: convert the Bundle to R4",
        expr,
    )


def resource_version_issues(res: Mapping[str, Any], expr: str) -> list[FhirIssue]:
    """Evidence that one resource (JSON) is not R4."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        return []
    out = []
    if rtype in _OLD_TYPES:
        out.append(_issue(_OLD_TYPES[rtype], f"{rtype} is not an R4 resource type", expr))
        return out
    for (t, element), (version, instead) in _OLD_ELEMENTS.items():
        if t == rtype and element in res:
            out.append(
                _issue(version, f"{rtype}.{element} is not an R4 element (R4: {instead})",
                       f"{expr}.{element}")
            )
    for t, element in _CODE_TO_CONCEPT:
        if t == rtype and isinstance(res.get(element), str):
            out.append(
                _issue("STU3", f"{rtype}.{element} is a plain code; R4 makes it a "
                       "CodeableConcept", f"{expr}.{element}")
            )
    if rtype == "QuestionnaireResponse" and isinstance(res.get("questionnaire"), Mapping):
        out.append(
            _issue("STU3 or DSTU2", "QuestionnaireResponse.questionnaire is a Reference; R4 "
                   "makes it a canonical URL string", f"{expr}.questionnaire")
        )
    if rtype == "Encounter" and isinstance(res.get("class"), list | str):
        out.append(_issue("STU3 or DSTU2", "Encounter.class is not a Coding", f"{expr}.class"))
    meta = res.get("meta")
    profiles = meta.get("profile") if isinstance(meta, Mapping) else None
    for k, p in enumerate(profiles if isinstance(profiles, list) else []):
        m = _OLD_PROFILE.search(p) if isinstance(p, str) else None
        if m:
            where = f"{expr}.meta.profile[{k}]"
            out.append(_issue(m.group(1).upper(), f"meta.profile {p!r}", where))
    return out


def version_issues(bundle: Mapping[str, Any], limit: int = 10) -> list[FhirIssue]:
    """Evidence that a Bundle (or its resources) is STU3 or DSTU2, at most ``limit`` issues."""
    out: list[FhirIssue] = []
    for res, expr in _resources(bundle):
        out += resource_version_issues(res, expr)
        if len(out) >= limit:
            break
    return out[:limit]
