"""The CapabilityStatement of the FHIR facade (``GET /fhir/r4/metadata``).

It lists exactly what the service answers, nothing more: the ``transaction``
and ``batch`` interactions at ``POST [base]`` (a ``collection`` Bundle is
accepted there too, as a transaction), ``read`` and ``search-type`` of
RiskAssessment with the search parameters ``patient``, ``subject`` and
``_count``, ``read`` of Patient, the types a Bundle may carry, and the one
format (JSON). :data:`SEARCH_PARAMETERS` is the list the service itself checks
requests against, so the statement and the behaviour cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from forecast.fhir.versions import FHIR_VERSION

#: RiskAssessment search parameters: name -> (type, definition, documentation).
SEARCH_PARAMETERS: dict[str, tuple[str, str | None, str]] = {
    "patient": (
        "reference",
        "http://hl7.org/fhir/SearchParameter/clinical-patient",
        "Patient/<id> or <id>: the patient's forecast as of today (one RiskAssessment)",
    ),
    "subject": (
        "reference",
        "http://hl7.org/fhir/SearchParameter/RiskAssessment-subject",
        "Patient/<id> or <id>: the same as patient",
    ),
    "_count": (
        "number",
        None,
        "Entries shown, 0 or more (0 gives the total only); a search matches one "
        "RiskAssessment at most",
    ),
}

#: The media types read and written (``format``); XML is not supported.
FORMATS = ("json", "application/fhir+json")

#: Resource types a Bundle posted to ``[base]`` may carry, and what becomes of them.
IMPORTED_TYPES: dict[str, str] = {
    "Patient": "Imported from a Bundle (transaction, batch, collection): id, gender, birthDate.",
    "QuestionnaireResponse": (
        "Imported from a Bundle: PHQ-9 and C-SSRS screener responses (docs/fhir-cds.md lists "
        "the linkIds and answer codes)."
    ),
    "Observation": (
        "Imported from a Bundle: PHQ-9 totals, items and panels, C-SSRS screener items; other "
        "codes are ignored with a warning."
    ),
    "Procedure": (
        "Imported from a Bundle: ketamine sessions; other procedures are ignored with a warning."
    ),
    "Questionnaire": "Read from a Bundle to map its responses' linkIds; not stored.",
}


def _rest_resources() -> list[dict[str, Any]]:
    """The ``rest.resource`` entries: RiskAssessment, Patient and the imported types."""
    resources: list[dict[str, Any]] = [
        {
            "type": "RiskAssessment",
            "documentation": (
                "The patient's maintenance-timing forecast as of today (decision support, not a "
                "suicide-risk assessment). The id names one forecast; a read answers 410 once "
                "the history up to its date, the threshold or the model changed."
            ),
            "interaction": [
                {"code": "read"},
                {"code": "search-type", "documentation": "patient or subject is required"},
            ],
            "versioning": "no-version",
            "readHistory": False,
            "updateCreate": False,
            "conditionalCreate": False,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": name, "type": kind, "documentation": text}
                | ({"definition": definition} if definition else {})
                for name, (kind, definition, text) in SEARCH_PARAMETERS.items()
            ],
        },
        {
            "type": "Patient",
            "documentation": IMPORTED_TYPES["Patient"]
            + " Read answers a stored patient (id and gender; kap-forecast keeps no birth date).",
            "interaction": [{"code": "read"}],
            "versioning": "no-version",
            "readHistory": False,
            "updateCreate": False,
            "conditionalRead": "not-supported",
        },
    ]
    resources += [
        {"type": t, "documentation": text + " No REST interaction of its own."}
        for t, text in IMPORTED_TYPES.items()
        if t != "Patient"
    ]
    return resources


def capability_statement(base: str, software_version: str, date: str) -> dict[str, Any]:
    """The CapabilityStatement (JSON) of the service at ``base`` (``.../fhir/r4``).

    Parameters
    ----------
    base : str
        The facade's base URL (``implementation.url``).
    software_version : str
        The kap-forecast version.
    date : str
        When the statement was made (``YYYY-MM-DD``).
    """
    resources = _rest_resources()
    return {
        "resourceType": "CapabilityStatement",
        "id": "kap-forecast",
        "status": "active",
        "date": date,
        "publisher": "kap-forecast",
        "kind": "instance",
        "software": {"name": "kap-forecast", "version": software_version},
        "implementation": {
            "description": "kap-forecast FHIR R4 facade: import, RiskAssessment, Patient read",
            "url": base,
        },
        "fhirVersion": FHIR_VERSION,
        "format": list(FORMATS),
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "POST [base] takes a Bundle of type transaction or batch (and collection, "
                    "read as a transaction); every Bundle is all-or-nothing for what it imports. "
                    "Errors are OperationOutcomes. Resources not imported are answered "
                    "'204 No Content' with a warning."
                ),
                "security": {
                    "cors": False,
                    "description": (
                        "Authorization: Bearer <token> (a kap-forecast token of role clinician, "
                        "made with 'forecast tokens create'); metadata is open."
                    ),
                },
                "resource": resources,
                "interaction": [
                    {"code": "transaction", "documentation": "all-or-nothing"},
                    {
                        "code": "batch",
                        "documentation": "all-or-nothing too (stricter than FHIR asks)",
                    },
                ],
            }
        ],
    }
