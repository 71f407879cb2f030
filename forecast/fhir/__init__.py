"""FHIR R4 in and out: map Bundles to contract records, forecasts to RiskAssessments.

Pure functions, no Flask. The service (``service.fhir_api``, ``service.cds``)
and the command line (``forecast import-fhir``) call them; validation of the
mapped records is done by :mod:`forecast.data`, exactly as for CSV files and
the JSON API.

Resources are parsed and validated with ``fhir.resources`` (its ``R4B``
package: R4B is R4 plus a few additions, and every element used here is the
same in R4). What is accepted (the full table is in the docs' FHIR page, docs/fhir-cds.md):

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

Ignored, with a warning, never failing the Bundle: resources the service does
not import (other types, other codes, other procedures, responses to other
forms), checked only for their type and the element that decides
(:mod:`~forecast.fhir.triage`). Refused as a whole: STU3 and DSTU2 shapes
(:mod:`~forecast.fhir.versions`).

The package: :mod:`~forecast.fhir.codes` (code tables),
:mod:`~forecast.fhir.values` (reading values out of resources),
:mod:`~forecast.fhir.questionnaires`, :mod:`~forecast.fhir.triage` (what is
read at all), :mod:`~forecast.fhir.versions` (R4 only),
:mod:`~forecast.fhir.mapper` (resources to rows), :mod:`~forecast.fhir.results`
(issues and mapped records), :mod:`~forecast.fhir.imports`
(:func:`map_resources`, :func:`map_bundle`), :mod:`~forecast.fhir.resend`
(stored content re-sent in another shape), :mod:`~forecast.fhir.answers` (the
response Bundle of an import), :mod:`~forecast.fhir.export` (RiskAssessment and
searchset output) and :mod:`~forecast.fhir.capability` (the CapabilityStatement).
"""

from __future__ import annotations

from forecast.fhir.codes import (
    BUNDLE_TYPES,
    CSSRS_SHORT_LINKIDS,
    EXT_DISSOCIATION,
    EXT_DOSE,
    EXT_PSYCHOTHERAPY,
    EXT_ROUTE,
    EXT_SESSION_KIND,
    EXT_SYSTOLIC,
    HCPCS_ESKETAMINE,
    HCPCS_SYSTEM,
    KAP_CODE_SYSTEM,
    KAP_SESSION_CODE,
    LINKID_COLUMNS,
    NO_CODES,
    NOT_IMPORTED_CODES,
    OBSERVATION_CODES,
    OBSERVATION_STATUS_CODES,
    OBSERVATION_STATUSES,
    ORDINAL_EXTENSIONS,
    PATIENT_GENDER_CODES,
    PHQ9_ANSWER_TEXT,
    PROCEDURE_STATUS_CODES,
    PROCEDURE_STATUSES,
    QR_STATUS_CODES,
    QR_STATUSES,
    SDC_PHQ9_SYSTEM,
    UCUM_SYSTEM,
    YES_CODES,
)
from forecast.fhir.export import (
    DECISION_SUPPORT_NOTE,
    KAP_FHIR_CODES,
    POPULATION_NOTE,
    horizons_text,
    is_population,
    model_device,
    risk_assessment,
    searchset,
)
from forecast.fhir.imports import map_bundle, map_resources
from forecast.fhir.questionnaires import QuestionnaireMap, load_questionnaires, questionnaire_keys
from forecast.fhir.results import FhirError, FhirIssue, MappedRecords, operation_outcome
from forecast.fhir.values import is_ketamine_procedure
from forecast.fhir.versions import FHIR_VERSION, media_type_issue, version_issues

__all__ = [
    "BUNDLE_TYPES",
    "CSSRS_SHORT_LINKIDS",
    "DECISION_SUPPORT_NOTE",
    "EXT_DISSOCIATION",
    "EXT_DOSE",
    "EXT_PSYCHOTHERAPY",
    "EXT_ROUTE",
    "EXT_SESSION_KIND",
    "EXT_SYSTOLIC",
    "FHIR_VERSION",
    "FhirError",
    "FhirIssue",
    "HCPCS_ESKETAMINE",
    "HCPCS_SYSTEM",
    "KAP_FHIR_CODES",
    "KAP_CODE_SYSTEM",
    "KAP_SESSION_CODE",
    "LINKID_COLUMNS",
    "MappedRecords",
    "NOT_IMPORTED_CODES",
    "NO_CODES",
    "OBSERVATION_CODES",
    "OBSERVATION_STATUSES",
    "OBSERVATION_STATUS_CODES",
    "ORDINAL_EXTENSIONS",
    "PATIENT_GENDER_CODES",
    "PHQ9_ANSWER_TEXT",
    "POPULATION_NOTE",
    "PROCEDURE_STATUSES",
    "PROCEDURE_STATUS_CODES",
    "QR_STATUSES",
    "QR_STATUS_CODES",
    "QuestionnaireMap",
    "SDC_PHQ9_SYSTEM",
    "UCUM_SYSTEM",
    "YES_CODES",
    "horizons_text",
    "is_ketamine_procedure",
    "is_population",
    "load_questionnaires",
    "map_bundle",
    "map_resources",
    "media_type_issue",
    "model_device",
    "operation_outcome",
    "questionnaire_keys",
    "risk_assessment",
    "searchset",
    "version_issues",
]
