"""FHIR output: forecasts as RiskAssessment resources, searchset Bundles and horizon texts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from forecast.contract import HORIZONS

#: Our code system of the RiskAssessment's ``code`` and ``method`` (and the CDS card topic).
KAP_FHIR_CODES = "urn:kap-forecast:fhir:codes"

#: The id of the contained Device (the model) that ``performer`` references.
MODEL_DEVICE_ID = "kap-forecast-model"

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


def model_device(version: Any) -> dict[str, Any]:
    """The Device (software) that made a forecast: kap-forecast with its model version."""
    return {
        "resourceType": "Device",
        "id": MODEL_DEVICE_ID,
        "status": "active",
        "deviceName": [
            {"name": "kap-forecast maintenance-timing model", "type": "model-name"},
        ],
        "type": {"text": "Clinical decision support software (survival model)"},
        "version": [{"value": str(version)}],
    }


def _method_concept(version: Any, population: bool) -> dict[str, Any]:
    """The RiskAssessment ``method``: survival model or population estimate, with the version."""
    return {
        "coding": [
            {
                "system": KAP_FHIR_CODES,
                "code": "population-estimate" if population else "survival-model",
                "display": POPULATION_NOTE if population else "personalised survival model",
            }
        ],
        "text": (
            f"kap-forecast survival model, version {version}"
            + (f"; {POPULATION_NOTE}: no prediction for this patient" if population else "")
        ),
    }


def _forecast_code() -> dict[str, Any]:
    """The RiskAssessment ``code``: ketamine maintenance timing."""
    return {
        "coding": [
            {
                "system": KAP_FHIR_CODES,
                "code": "kap-maintenance",
                "display": "Ketamine maintenance timing",
            }
        ],
        "text": "Forecast of when the benefit of ketamine treatment wanes",
    }


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
        References (``Observation/<id>``, ``QuestionnaireResponse/<id>``,
        ``Procedure/<id>``) to every resource the forecast used.
    resource_id : str, optional
        The RiskAssessment id (e.g. the audit record id).

    Returns
    -------
    dict
        The resource; each risk horizon is one ``prediction`` with
        ``probabilityDecimal`` (risk that the benefit has waned by then) and
        ``whenPeriod`` from the as-of date to the as-of date plus the horizon
        (absolute dates, so no receiver reads the horizon as an age).
        ``performer`` references a contained Device naming the model version;
        ``method`` and ``code`` carry codes of :data:`KAP_FHIR_CODES`.
        A population estimate (``risk.kind == "population"``) gives no
        ``prediction``: a RiskAssessment's predictions are read as the
        subject's own, and these numbers are not. A note says why and shows
        them labelled "population estimate, not personalised"; ``method``
        says so too.
    """
    as_of = str(answer["as_of"])[:10]
    population = is_population(answer)
    predictions = [] if population else _predictions(answer, as_of)
    notes = _notes(answer, population)
    version = answer.get("model_version")
    out: dict[str, Any] = {"resourceType": "RiskAssessment"}
    if resource_id:
        out["id"] = resource_id
    out.update(
        {
            "contained": [model_device(version)],
            "status": "final",
            "method": _method_concept(version, population),
            "code": _forecast_code(),
            "subject": {"reference": f"Patient/{answer['patient_id']}"},
            "occurrenceDateTime": as_of,
            "performer": {
                "reference": f"#{MODEL_DEVICE_ID}",
                "display": f"kap-forecast model {version}",
            },
            "note": notes,
        }
    )
    if basis:
        out["basis"] = [{"reference": b} for b in basis]
    if predictions:
        out["prediction"] = predictions
    med = answer.get("median_remaining_days")
    if med is not None:
        out["note"].append({"text": f"Median remaining benefit: {med:g} days after {as_of}."})
    return out


def _predictions(answer: Mapping[str, Any], as_of: str) -> list[dict[str, Any]]:
    """One RiskAssessment ``prediction`` per horizon with a risk."""
    risk = answer.get("risk") or {}
    predictions = []
    for h in risk.get("horizons") or []:
        if h.get("risk") is None:
            continue
        pred: dict[str, Any] = {
            "outcome": {
                "text": "Benefit of ketamine treatment waned (PHQ-9 no longer in response "
                "and >= 10, or suicidal ideation re-emerged)"
            },
            "probabilityDecimal": round(float(h["risk"]), 4),
            "whenPeriod": _period(as_of, int(h["days"])),
        }
        if h.get("lower") is not None and h.get("upper") is not None:
            pred["rationale"] = (
                f"within {int(h['days'])} days: {float(h['risk']):.0%} "
                f"(uncertainty band {float(h['lower']):.0%}-{float(h['upper']):.0%})"
            )
        predictions.append(pred)
    return predictions


def _period(as_of: str, days: int) -> dict[str, str]:
    """``whenPeriod``: from the as-of date to as-of plus ``days`` (calendar dates)."""
    start = dt.date.fromisoformat(as_of)
    return {"start": start.isoformat(), "end": (start + dt.timedelta(days=days)).isoformat()}


def _notes(answer: Mapping[str, Any], population: bool) -> list[dict[str, str]]:
    """The RiskAssessment notes: safety first, decision support, population, suggestion, status."""
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
    return notes


def searchset(
    resources: Sequence[Mapping[str, Any]],
    self_url: str,
    *,
    base: str | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """A searchset Bundle holding ``resources`` (search mode "match").

    Parameters
    ----------
    resources : sequence of mapping
        The matches shown (at most ``_count`` of them).
    self_url : str
        The search's own URL (``link`` relation "self").
    base : str, optional
        The server's base URL (``.../fhir/r4``): each entry's ``fullUrl`` is
        ``<base>/<type>/<id>``.
    total : int, optional
        The number of matches (default: ``len(resources)``).
    """
    entries = []
    for r in resources:
        e: dict[str, Any] = {}
        if base and r.get("id"):
            e["fullUrl"] = f"{base.rstrip('/')}/{r['resourceType']}/{r['id']}"
        e.update({"resource": dict(r), "search": {"mode": "match"}})
        entries.append(e)
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources) if total is None else total,
        "link": [{"relation": "self", "url": self_url}],
    }
    if entries:
        out["entry"] = entries
    return out


def horizons_text(answer: Mapping[str, Any], days: Sequence[int] = HORIZONS) -> str:
    """``"7 d 5%, 14 d 11%, ..."`` for the horizons present in the answer."""
    risk = answer.get("risk") or {}
    parts = [
        f"{int(h['days'])} d {float(h['risk']):.0%}"
        for h in risk.get("horizons") or []
        if h.get("risk") is not None and int(h["days"]) in days
    ]
    return ", ".join(parts)
