"""CDS Hooks 2.0 service (blueprint ``cds``): maintenance timing in the EHR.

- ``GET /cds-services`` (open): discovery of one ``patient-view`` service.
- ``POST /cds-services/kap-forecast-maintenance``: answers cards. The EHR
  authenticates with a JWT bearer token (:mod:`service.cds_auth`); the
  prefetched data are combined with the stored history for that one request
  and never stored (:mod:`service.cds_prefetch`); the cards carry the same
  date and risks as the JSON forecast (:mod:`service.cds_cards`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, g, jsonify, request

from service.auth import public
from service.cds_auth import authenticate_ehr, client_settings
from service.cds_cards import cards_for, cards_without_model, no_history_card
from service.cds_prefetch import PREFETCH, combined_cohort, link_patient, patient_links
from service.clinic_openapi import operation, problem
from service.errors import ApiProblem
from service.jsonbody import json_body
from service.serving import audit_patient, audited, forecast_for

bp = Blueprint("cds", __name__)

SERVICE_ID = "kap-forecast-maintenance"


@bp.record_once
def _load_at_start(setup: Any) -> None:
    # Read the clients file when the app is built, so a broken file stops the
    # service at start with a clear message instead of failing EHR calls later.
    client_settings(setup.app)
    patient_links(setup.app)


# --- discovery ------------------------------------------------------------------------------
@bp.get("/cds-services")
@public
@operation(
    "CDS Hooks discovery",
    {"200": {"description": "services", "content": {"application/json": {}}}},
    public=True,
)
def discovery() -> Response:
    """CDS Hooks discovery: one patient-view service with its prefetch templates."""
    return jsonify(
        {
            "services": [
                {
                    "hook": "patient-view",
                    "id": SERVICE_ID,
                    "title": "KAP maintenance timing (kap-forecast)",
                    "description": (
                        "Suggests when the next ketamine maintenance session is due from the "
                        "patient's PHQ-9 history; raises a critical card when a suicidal-ideation "
                        "answer needs review. Decision support, not a suicide-risk assessment."
                    ),
                    "prefetch": PREFETCH,
                    "usageRequirements": (
                        "Sign requests with a JWT (keys configured in FORECAST_CDS_CLIENTS). "
                        "The EHR's patient is the kap-forecast patient of the same id, or the "
                        "one its prefetched Patient's identifiers map to "
                        "(FORECAST_CDS_PATIENT_IDS)."
                    ),
                }
            ]
        }
    )


# --- the service ------------------------------------------------------------------------------
def _page_url(pid: str) -> str:
    """The patient's clinician page (absolute; ``FORECAST_PUBLIC_URL`` when set)."""
    base = (
        current_app.config.get("KAP_PUBLIC_URL")
        or os.environ.get("FORECAST_PUBLIC_URL")
        or request.host_url
    )
    return base.rstrip("/") + "/patients/" + quote(pid, safe="")


@bp.post(f"/cds-services/{SERVICE_ID}")
@public  # authenticated by the EHR's JWT below, not by a service token
@operation(
    "CDS Hooks patient-view: maintenance timing cards",
    {
        "200": {"description": "cards", "content": {"application/json": {}}},
        "400": problem(
            "Not strict JSON (e.g. a repeated key), not a patient-view request or no "
            "context.patientId"
        ),
        "401": problem("Missing or invalid EHR JWT (signature, iss, aud, exp, jti)"),
        "503": problem("No model loaded"),
    },
    public=True,
    request_body={"required": True, "content": {"application/json": {}}},
)
@audited("cds.call")
def patient_view() -> Response:
    """Answer a patient-view hook with cards (the EHR sees its clinic's patients only)."""
    g.principal = authenticate_ehr()
    body = json_body()
    if not isinstance(body, Mapping) or body.get("hook") != "patient-view":
        raise ApiProblem(
            400,
            "Unsupported hook",
            errors=[{"field": "/hook", "message": "allowed: patient-view"}],
        )
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not 0 < len(instance.strip()) <= 128:
        raise ApiProblem(
            400,
            "Missing hookInstance",
            errors=[{"field": "/hookInstance",
                     "message": "required: the hook call's UUID (1 to 128 characters)"}],
        )
    context = body.get("context") if isinstance(body.get("context"), Mapping) else {}
    pid = context.get("patientId")
    if not isinstance(pid, str) or not pid.strip():
        raise ApiProblem(
            400,
            "Missing patient",
            errors=[{"field": "/context/patientId", "message": "required: the patient's id"}],
        )
    prefetch = body.get("prefetch") if isinstance(body.get("prefetch"), Mapping) else {}
    # The EHR's patient id may differ from kap-forecast's: the prefetched Patient's
    # identifiers name the stored patient (FORECAST_CDS_PATIENT_IDS).
    linked = link_patient(pid, prefetch, patient_links())
    pid = linked.patient_id or linked.context_id
    audit_patient(pid)
    combined = combined_cohort(
        pid, prefetch, aliases=linked.aliases, use_stored=linked.patient_id is not None
    )
    cohort, notes, si_unread = combined.cohort, combined.notes, combined.si_unread
    if linked.note:
        notes = [linked.note, *notes]
    if cohort is None:
        return jsonify({"cards": [no_history_card(pid, notes, si_unread)]})
    try:
        answer, _ = forecast_for(pid, "cds_patient_view", cohort)
    except ApiProblem as exc:
        if exc.status != 503:
            raise
        # No model: the safety rules do not need one, so a flag still gets its card.
        cards = cards_without_model(pid, cohort, exc.detail or "", _page_url(pid), notes, si_unread)
        return jsonify({"cards": cards})
    return jsonify({"cards": cards_for(answer, _page_url(pid), notes, si_unread=si_unread)})
