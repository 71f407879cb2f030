"""The cards of a CDS Hooks patient-view answer (they carry the JSON forecast's date and risks).

- a *critical* card when a suicidal-ideation flag is raised (any safety level;
  status ``urgent_review`` or ``safety_review``): review before any
  maintenance planning;
- otherwise, when prefetched data that could hold a suicidal-ideation answer
  could not be read, a *warning* "Suicidal-ideation data in the EHR could not
  be read: review it" naming them (``extension["org.kap-forecast.forecast"].si_data_unread``);
- otherwise "Next maintenance session by <date>" (indicator ``info``, or
  ``warning`` when the session is due now or the patient is not in response),
  with the risks at the horizons and a link to the clinician page. When the
  risks are the population estimate (``risk.kind == "population"``, status
  insufficient_data), the summary and the risk line say "population
  estimate, not personalised" and the extension's ``risk_kind`` is
  ``population``: the numbers describe the model's training episodes, not the
  patient.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from forecast.fhir import POPULATION_NOTE, horizons_text, is_population
from forecast.fhir.export import KAP_FHIR_CODES
from forecast.policy.texts import human_date
from forecast.safety import SAFETY_STATUSES, rule_safety

#: The cards' ``extension`` key (reverse-domain, as CDS Hooks 2.0 asks of extensions).
EXTENSION_KEY = "org.kap-forecast.forecast"
#: ``source.topic``: a Coding with a system.
TOPIC = {
    "system": KAP_FHIR_CODES,
    "code": "kap-maintenance",
    "display": "Ketamine maintenance timing",
}

#: Summary of the card when prefetched data that could hold a suicidal-ideation answer
#: could not be used (and no safety flag makes the card critical anyway).
UNREAD_SI_SUMMARY = "Suicidal-ideation data in the EHR could not be read: review it"
#: First paragraph of a card whose prefetch held unreadable suicidal-ideation data.
UNREAD_SI_LEAD = (
    "**Prefetched EHR data that can hold a suicidal-ideation answer (PHQ-9 item 9, C-SSRS) "
    "could not be read, so the safety rules could not check them.** Review them in the EHR "
    "before maintenance planning; they are listed next. The rest of this card leaves them out."
)


def cards_for(
    answer: Mapping[str, Any], link: str, notes: list[str], *, si_unread: bool = False
) -> list[dict[str, Any]]:
    """The CDS Hooks cards of one forecast answer.

    Critical for any safety level or a safety status (``urgent_review``,
    ``safety_review``). Otherwise, with ``si_unread`` (prefetched data that could
    hold a suicidal-ideation answer were left out unread), at least a warning
    whose summary asks for a review (:data:`UNREAD_SI_SUMMARY`), never an info
    card with a routine date.
    """
    version = answer.get("model_version")
    source = {
        "label": f"kap-forecast (model {version})",
        "topic": dict(TOPIC),
    }
    links = [{"label": "Open the kap-forecast page", "url": link, "type": "absolute"}]
    safety = answer.get("safety") or {}
    sug = answer.get("suggestion") or {}
    status = answer.get("status")
    data = _card_data(answer, si_unread)
    tail = (
        "\n\n*Decision support for the clinician; not a suicide-risk assessment and not a "
        "clearance.*"
    )
    extra = ("\n\n" + "\n\n".join(notes)) if notes else ""
    if safety.get("level") or status in SAFETY_STATUSES:
        reasons = "\n".join(f"- {r}" for r in safety.get("reasons") or [])
        statement = safety.get("statement") or (
            "A suicidal-ideation flag is in force: clinical review is needed before any "
            "maintenance planning."
        )
        return [
            {
                "uuid": str(uuid.uuid4()),
                "summary": "Suicidal-ideation answer on record: clinical review needed before "
                "maintenance planning",
                "indicator": "critical",
                "detail": f"**{statement}**\n\n{reasons}\n\n"
                f"{sug.get('rationale') or ''}{extra}{tail}",
                "source": source,
                "links": links,
                "extension": {EXTENSION_KEY: data},
            }
        ]
    summary, detail, indicator = _timing_text(answer)
    if si_unread:
        summary, indicator = UNREAD_SI_SUMMARY, "warning"
        # What could not be read comes first, then the suggestion that leaves it out.
        detail, extra = f"{UNREAD_SI_LEAD}{extra}\n\n{detail}", ""
    return [
        {
            "uuid": str(uuid.uuid4()),
            "summary": summary[:140],
            "indicator": indicator,
            "detail": detail + extra + tail,
            "source": source,
            "links": links,
            "extension": {EXTENSION_KEY: data},
        }
    ]


def _card_data(answer: Mapping[str, Any], si_unread: bool) -> dict[str, Any]:
    """The card's ``extension.kap-forecast``: the forecast's date, risks and safety level."""
    sug = answer.get("suggestion") or {}
    safety = answer.get("safety") or {}
    data = {
        "patient_id": answer["patient_id"],
        "as_of": answer["as_of"],
        "model_version": answer.get("model_version"),
        "status": answer.get("status"),
        "session_by": sug.get("session_by"),
        "window_start": sug.get("window_start"),
        "threshold": sug.get("threshold"),
        "risks": {
            str(h["days"]): h["risk"] for h in (answer.get("risk") or {}).get("horizons") or []
        },
        "risk_kind": (answer.get("risk") or {}).get("kind"),
        "safety_level": safety.get("level"),
    }
    if si_unread:
        data["si_data_unread"] = True
    return data


def _timing_text(answer: Mapping[str, Any]) -> tuple[str, str, str]:
    """Summary, detail and indicator of the card of an answer without a safety flag."""
    sug = answer.get("suggestion") or {}
    status = answer.get("status")
    population = is_population(answer)
    risks = horizons_text(answer)
    if sug.get("session_by"):
        due = status == "session_due"
        summary = (
            f"Maintenance session due now (by {human_date(sug['session_by'])})"
            if due
            else f"Next maintenance session by {human_date(sug['session_by'])}"
        ) + (f" ({POPULATION_NOTE})" if population else "")
        label = (
            f", {POPULATION_NOTE} (the model's training episodes, not this patient)"
            if population
            else ""
        )
        detail = (
            f"{sug.get('rationale') or ''}\n\n"
            f"Risk that the benefit has waned (after {answer['as_of']}){label}: {risks}."
            + (
                f" Suggested window {sug['window_start']} to {sug['window_end']};"
                f" threshold {float(sug['threshold']):.0%}."
                if sug.get("window_start")
                else ""
            )
            + f"\n\n{answer.get('status_reason') or ''}"
        )
        indicator = "warning" if due else "info"
    else:
        summary = {
            "not_in_response": "Response not reached or benefit waned since the last session: "
            "review the treatment plan",
            "no_treatment": "No ketamine session on record: no maintenance forecast",
            "insufficient_data": "Not enough PHQ-9 data for a maintenance forecast",
        }.get(str(status), "No maintenance date suggested")
        detail = f"{answer.get('status_reason') or ''}\n\n{sug.get('rationale') or ''}"
        indicator = "warning" if status == "not_in_response" else "info"
    return summary, detail, indicator


def no_history_card(pid: str, notes: list[str], si_unread: bool) -> dict[str, Any]:
    """The card for a patient with no stored history and nothing usable prefetched."""
    extra = ("\n\n" + "\n\n".join(notes)) if notes else ""
    advice = (
        "Import the patient's PHQ-9 answers and ketamine sessions "
        "(FHIR or the JSON API) to get maintenance timing suggestions."
    )
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": "kap-forecast has no ketamine-treatment history for this patient",
        "indicator": "info",
        "detail": advice + extra,
        "source": {"label": "kap-forecast", "topic": dict(TOPIC)},
    }
    if si_unread:
        card.update(
            summary=UNREAD_SI_SUMMARY,
            indicator="warning",
            detail=f"{UNREAD_SI_LEAD}{extra}\n\n{advice}",
            extension={EXTENSION_KEY: {"patient_id": pid, "si_data_unread": True}},
        )
    return card


def cards_without_model(
    pid: str,
    cohort: Any,
    why: str,
    link: str,
    notes: list[str] | None = None,
    si_unread: bool = False,
) -> list[dict[str, Any]]:
    """The cards when no model is loaded: the safety rules need none, so a flag gets its card."""
    safety = rule_safety(cohort)
    links = [{"label": "Open the kap-forecast page", "url": link, "type": "absolute"}]
    extra = ("\n\n" + "\n\n".join(notes)) if notes else ""
    data: dict[str, Any] = {"patient_id": pid, "safety_level": safety["level"]}
    if si_unread:
        data["si_data_unread"] = True
    if safety["level"]:
        reasons = "\n".join(f"- {r}" for r in safety["reasons"])
        return [
            {
                "uuid": str(uuid.uuid4()),
                "summary": "Suicidal-ideation answer on record: clinical review needed before "
                "maintenance planning",
                "indicator": "critical",
                "detail": f"**{safety['statement']}**\n\n{reasons}\n\nNo maintenance forecast "
                f"is available right now.{extra}",
                "source": {"label": "kap-forecast (safety rules)", "topic": dict(TOPIC)},
                "links": links,
                "extension": {EXTENSION_KEY: data},
            }
        ]
    if si_unread:
        return [
            {
                "uuid": str(uuid.uuid4()),
                "summary": UNREAD_SI_SUMMARY,
                "indicator": "warning",
                "detail": f"{UNREAD_SI_LEAD}{extra}\n\n{why}\n\n{safety['statement']}",
                "source": {"label": "kap-forecast (safety rules)", "topic": dict(TOPIC)},
                "links": links,
                "extension": {EXTENSION_KEY: data},
            }
        ]
    return [
        {
            "uuid": str(uuid.uuid4()),
            "summary": "Maintenance forecast not available right now",
            "indicator": "info",
            "detail": f"{why}\n\n{safety['statement']}{extra}",
            "source": {"label": "kap-forecast", "topic": dict(TOPIC)},
            "links": links,
        }
    ]
