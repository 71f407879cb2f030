"""Which resources of a Bundle are read at all, decided from their JSON before validation.

A resource the service does not import (a blood-pressure Observation, an
appendectomy Procedure, a QuestionnaireResponse of another form) is checked
only for what deciding that needs: its type and the element that decides
(``Observation.code``, ``Procedure.code`` / ``usedCode``, the response's
linkIds and ``questionnaire``). Its other content is never validated, so an
invalid element in it cannot fail the Bundle. :func:`ignore_reason` says why
such a resource is ignored, or None when the resource is read (and validated
in full). When the deciding element itself cannot be read, the resource is
read in full too: validation then names what is wrong, and nothing that could
hold a PHQ-9 or C-SSRS answer is ignored on a guess.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from forecast.fhir.codes import (
    HCPCS_ESKETAMINE,
    KAP_CODE_SYSTEM,
    KAP_SESSION_CODE,
    LINKID_COLUMNS,
    NOT_IMPORTED_CODES,
    OBSERVATION_CODES,
)
from forecast.instruments import (
    LOINC_CSSRS_PANEL,
    LOINC_PHQ9_PANEL,
    LOINC_SYSTEM,
    SNOMED_PHQ9_SCORE,
    SNOMED_SYSTEM,
)

_READ_CODES = frozenset(OBSERVATION_CODES) | {LOINC_PHQ9_PANEL, LOINC_CSSRS_PANEL}


class _Unreadable(Exception):
    """The deciding element has an unexpected shape: read the resource in full."""


def _codings(concept: Any) -> list[tuple[str | None, str | None, str]]:
    """(system, code, display) of a CodeableConcept's codings, and its text as a display."""
    if concept is None:
        return []
    if not isinstance(concept, Mapping):
        raise _Unreadable
    out: list[tuple[str | None, str | None, str]] = []
    text = concept.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise _Unreadable
        out.append((None, None, text))
    codings = concept.get("coding")
    if codings is None:
        return out
    if not isinstance(codings, list):
        raise _Unreadable
    for c in codings:
        if not isinstance(c, Mapping):
            raise _Unreadable
        system, code, display = c.get("system"), c.get("code"), c.get("display")
        if any(v is not None and not isinstance(v, str) for v in (system, code, display)):
            raise _Unreadable
        out.append((system, code, display or ""))
    return out


def _observation(raw: Mapping[str, Any]) -> str | None:
    codings = _codings(raw.get("code"))
    codes = {(s, c) for s, c, _ in codings if c}
    loinc = {c for s, c in codes if s in (LOINC_SYSTEM, None)}
    if loinc & _READ_CODES or (SNOMED_SYSTEM, SNOMED_PHQ9_SCORE) in codes:
        return None
    known = next((NOT_IMPORTED_CODES[c] for c in sorted(loinc) if c in NOT_IMPORTED_CODES), None)
    if known:
        return known if known.startswith("ignored") else f"Observation ignored: {known}"
    shown = ", ".join(f"{s or '?'}|{c}" for s, c in sorted(codes, key=str)) or "no coding"
    return f"Observation code ({shown}) is not a PHQ-9 or C-SSRS code; ignored"


def _procedure(raw: Mapping[str, Any]) -> str | None:
    used = raw.get("usedCode")
    if used is not None and not isinstance(used, list):
        raise _Unreadable
    codings = _codings(raw.get("code"))
    for s, c, _ in codings:
        if (s == KAP_CODE_SYSTEM and c == KAP_SESSION_CODE) or c in HCPCS_ESKETAMINE:
            return None
    for u in used or []:
        codings += _codings(u)
    if any("ketamine" in (d or "").lower() for _, _, d in codings):
        return None
    return (
        "Procedure is not recognised as a ketamine session (see docs/fhir-cds.md for the "
        "accepted codes and texts); ignored"
    )


def link_ids(items: Any) -> tuple[list[str], bool]:
    """Every linkId of a response's items, nested ones too, and whether all could be walked.

    Items and answers that are not JSON objects, item lists that are not
    lists and linkIds that are not strings make the response unreadable
    (``False``); the linkIds found up to there are still returned.
    """
    found: list[str] = []
    readable = True
    stack = [items]
    while stack:
        cur = stack.pop()
        if cur is None:
            continue
        if not isinstance(cur, list):
            readable = False
            continue
        for it in cur:
            if not isinstance(it, Mapping) or not isinstance(it.get("linkId", ""), str):
                readable = False
                continue
            found.append(it.get("linkId", ""))
            stack.append(it.get("item"))
            answers = it.get("answer")
            if answers is not None and not isinstance(answers, list):
                readable = False
                continue
            for ans in answers or []:
                if isinstance(ans, Mapping):
                    stack.append(ans.get("item"))
                else:
                    readable = False
    return found, readable


def _response(raw: Mapping[str, Any], forms: Collection[str]) -> str | None:
    canonical = raw.get("questionnaire")
    if canonical is not None and not isinstance(canonical, str):
        raise _Unreadable
    about = (canonical or "").lower()
    if "ssrs" in about or LOINC_CSSRS_PANEL in about or raw.get("contained"):
        return None
    if canonical and (canonical in forms or canonical.split("|", 1)[0] in forms):
        return None
    links, readable = link_ids(raw.get("item"))
    if not readable:
        raise _Unreadable
    if any(link.rsplit("/", 1)[-1].strip().lower() in LINKID_COLUMNS for link in links):
        return None
    shown = ", ".join(repr(x) for x in links[:10]) + (
        f" and {len(links) - 10} more" if len(links) > 10 else ""
    )
    return (
        "no PHQ-9 or C-SSRS linkId in this QuestionnaireResponse"
        + (f" (linkIds {shown})" if links else "")
        + " and it names no Questionnaire that maps its linkIds; ignored (see the linkId "
        "tables in docs/fhir-cds.md)"
    )


def ignore_reason(raw: Mapping[str, Any], forms: Collection[str] = ()) -> str | None:
    """Why a Patient/QuestionnaireResponse/Observation/Procedure/Questionnaire is not read.

    Parameters
    ----------
    raw : mapping
        The resource as JSON.
    forms : collection of str
        References of the Questionnaires known (``url``, ``url|version``,
        ``Questionnaire/<id>``, fullUrls): a response naming one is read.

    Returns
    -------
    str or None
        The reason (for the entry's warning), or None when the resource is
        read and validated in full.
    """
    rtype = raw.get("resourceType")
    try:
        if rtype == "Observation":
            return _observation(raw)
        if rtype == "Procedure":
            return _procedure(raw)
        if rtype == "QuestionnaireResponse":
            return _response(raw, forms)
    except _Unreadable:
        return None
    return None


def raw_form_keys(raw: Mapping[str, Any], full_url: str | None = None) -> list[str]:
    """The references a Questionnaire (JSON) may be named by (as ``questionnaire_keys``)."""
    keys = []
    url, version, rid = raw.get("url"), raw.get("version"), raw.get("id")
    if isinstance(url, str) and url:
        keys.append(url)
        if isinstance(version, str) and version:
            keys.append(f"{url}|{version}")
    if isinstance(rid, str) and rid:
        keys.append(f"Questionnaire/{rid}")
    if full_url:
        keys.append(full_url)
    return keys
