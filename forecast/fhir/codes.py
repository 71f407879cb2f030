"""Codes, URLs and linkId tables the FHIR mapping recognises.

LOINC and SNOMED codes of the instruments come from :mod:`forecast.instruments`;
the extensions and code system of our own, the linkId-to-column table, the
status value sets and the yes/no answer codes are here.
"""

from __future__ import annotations

from forecast.contract import PHQ9_ITEMS
from forecast.instruments import (
    LOINC_CSSRS_BEHAVIOR,
    LOINC_CSSRS_IDEATION,
    LOINC_CSSRS_PANEL,
    LOINC_CSSRS_RISK,
    LOINC_PHQ2_PANEL,
    LOINC_PHQ2_TOTAL,
    LOINC_PHQ9_DIFFICULTY,
    LOINC_PHQ9_ITEMS,
    LOINC_PHQ9_PANEL,
    LOINC_PHQ9_TOTAL,
)

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
    LOINC_PHQ2_PANEL: (
        "ignored as PHQ-9: a PHQ-2 panel (LOINC 55757-9) is not a PHQ-9 and nothing of it is "
        "stored (PHQ-2 items sent as their own Observations are kept as a screen row, which "
        "the models ignore too)"
    ),
    LOINC_PHQ2_TOTAL: (
        "ignored as PHQ-9: a PHQ-2 total (LOINC 55758-7) is not a PHQ-9 score and nothing of it "
        "is stored (PHQ-2 items sent as their own Observations are kept as a screen row, which "
        "the models ignore too)"
    ),
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


def _label(column: str) -> str:
    """A readable name of a mapped column (internal C-SSRS question columns included)."""
    if column.startswith("_cssrs_q"):
        return f"C-SSRS screener question {column[-1]} (1 = yes)"
    return column
