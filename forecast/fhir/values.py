"""Reading values out of parsed FHIR resources: codes, references, dates, scores.

Scores of PHQ-9 items, totals and yes/no C-SSRS answers are read from answers,
Observation values and components; a value that is present but cannot be read
raises :class:`_Bad` naming the element.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from forecast.fhir.codes import (
    _ROUTE_WORDS,
    EXT_ROUTE,
    EXT_SESSION_KIND,
    HCPCS_ESKETAMINE,
    KAP_CODE_SYSTEM,
    KAP_SESSION_CODE,
    NO_CODES,
    ORDINAL_EXTENSIONS,
    PHQ9_ANSWER_TEXT,
    YES_CODES,
)
from forecast.instruments import (
    LOINC_PHQ9_ANSWERS,
)


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
