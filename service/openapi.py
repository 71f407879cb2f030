"""The OpenAPI 3.1 document served at ``/openapi.json``.

Built from the app itself: every rule of ``app.url_map`` becomes an
operation (so a route cannot be missing from the document), its security
comes from the view's :func:`service.auth.require_role` / :func:`service.auth.public`
marks, and request bodies reference the pydantic models of
:mod:`service.schemas` that validate those bodies (``model_json_schema``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, jsonify, request

from service import schemas
from service.auth import current_principal, public
from service.errors import ApiProblem

F = TypeVar("F", bound=Callable[..., Any])

PROBLEM = {"$ref": "#/components/schemas/Problem"}
_PARAM = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")

#: The forecast routes' ``detail`` query parameter (service.serving.DETAILS).
DETAIL_PARAMETER = (
    "detail",
    {"type": "string", "enum": ["horizons", "daily"]},
    "horizons (default): risks and bands at the horizons; daily: also the daily risk curve "
    "and band (risk.daily) for a chart",
)

#: Request body schema and summary of the API's operations, keyed by endpoint.
OPERATIONS: dict[str, dict[str, Any]] = {
    "api.health": {"summary": "Service health (no patient data)", "unavailable": True},
    "api.model_card": {"summary": "The live model card and version"},
    "api.model_reload": {"summary": "Switch to the registry's latest model version"},
    "api.put_patient": {
        "summary": "Create or update a patient's covariates",
        "body": "PatientCovariates",
        "created": True,
    },
    "api.post_assessments": {
        "summary": "Add assessments (idempotent by client id, all or nothing)",
        "body": "AssessmentsBody",
        "created": True,
        "conflict": True,
    },
    "api.post_sessions": {
        "summary": "Add sessions (idempotent by client id, all or nothing)",
        "body": "SessionsBody",
        "created": True,
        "conflict": True,
    },
    "api.withdraw_assessment": {
        "summary": "Withdraw an assessment entered in error (idempotent; the id is refused later)",
        "conflict": True,
    },
    "api.withdraw_session": {
        "summary": "Withdraw a session entered in error (idempotent; the id is refused later)",
        "conflict": True,
    },
    "api.get_patient": {"summary": "History and measured outcomes of a stored patient"},
    "api.patient_forecast": {
        "summary": "Forecast for a stored patient",
        "query": [
            ("as_of", {"type": "string", "format": "date"}, "Date of the forecast (today)"),
            (
                "threshold",
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "Risk accepted at the session-by date",
            ),
            DETAIL_PARAMETER,
        ],
        "forecast": True,
    },
    "api.stateless_forecast": {
        "summary": "Forecast from a history in the body (nothing stored)",
        "body": "ForecastBody",
        "query": [DETAIL_PARAMETER],
        "forecast": True,
    },
    "api.batch_forecast": {
        "summary": "Forecasts for many patients in one call",
        "body": "BatchBody",
        "query": [DETAIL_PARAMETER],
        "forecast": True,
    },
    "api.list_tokens": {"summary": "List tokens (no secrets)"},
    "api.create_token": {
        "summary": "Create a token",
        "body": "TokenBody",
        "created": True,
        "conflict": True,
    },
    "api.revoke_token": {"summary": "Revoke a token"},
    "api.audit_trail": {
        "summary": "The clinic's audit trail, oldest first, one page at a time",
        "query": [
            ("patient_id", {"type": "string"}, "Only this patient's rows"),
            ("action", {"type": "string"}, "Only this action (forecast, patient.read, ...)"),
            ("actor", {"type": "string"}, "Only this token or CDS client (cds:<name>)"),
            ("outcome", {"type": "string"}, "Only this outcome (ok, not_found, refused, error)"),
            ("since", {"type": "string"}, "From this date or time (inclusive, UTC)"),
            ("until", {"type": "string"}, "Before this date or time (exclusive, UTC)"),
            ("after", {"type": "integer", "minimum": 0}, "Rows after this audit_id (next page)"),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Rows per page (100)"),
        ],
    },
    "openapi": {"summary": "This document"},
}

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details (media type application/problem+json).",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "description": "JSON pointer of the failing field"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM}},
    }


def describe(**spec: Any) -> Callable[[F], F]:
    """Attach OpenAPI details to a view of another blueprint.

    Keys: ``summary``, ``parameters`` (list of OpenAPI parameter objects),
    ``request_body`` (an OpenAPI requestBody object) and ``responses``
    (``{"200": {...}, "400": {...}}``, OpenAPI response objects). What is not
    given is filled generically (bearer security unless public, problem+json
    errors).
    """

    def decorate(view: F) -> F:
        view.kap_openapi = spec  # type: ignore[attr-defined]
        return view

    return decorate


def _generic_operation(view: Any, endpoint: str, op: dict[str, Any]) -> dict[str, Any]:
    """Operation of a view outside the JSON API (FHIR, CDS Hooks, pages, reports)."""
    spec: dict[str, Any] = dict(getattr(view, "kap_openapi", {}) or {})
    if spec.get("summary"):
        op["summary"] = spec["summary"]
    if spec.get("parameters"):
        op["parameters"] = [*op.get("parameters", []), *spec["parameters"]]
    if spec.get("request_body"):
        op["requestBody"] = spec["request_body"]
    responses = spec.get("responses") or {
        "200": {"description": "Success", "content": {"*/*": {}}},
    }
    op["responses"] = {
        **responses,
        # Statuses a module does not list: problem+json (HTML pages may answer HTML).
        "default": {
            "description": "Other outcomes; errors are problem+json",
            "content": {
                "application/problem+json": {"schema": PROBLEM},
                "application/fhir+json": {},
                "text/html": {},
            },
        },
    }
    return op


def _operation(app: Flask, endpoint: str, method: str, params: list[str]) -> dict[str, Any]:
    view = app.view_functions[endpoint]
    spec = OPERATIONS.get(endpoint, {})
    doc = (view.__doc__ or "").strip().splitlines()
    op: dict[str, Any] = {
        "operationId": f"{endpoint}.{method.lower()}",
        "summary": spec.get("summary") or (doc[0] if doc else endpoint),
        "tags": [endpoint.split(".")[0] if "." in endpoint else "api"],
    }
    is_public = getattr(view, "kap_public", False)
    roles = getattr(view, "kap_roles", None)
    op["security"] = [] if is_public else [{"bearer": []}]
    if roles is not None:
        op["x-roles"] = sorted({*roles, "admin"})
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
    ]
    for name, schema, text in spec.get("query", []):
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
        )
    if parameters:
        op["parameters"] = parameters
    if endpoint not in OPERATIONS:
        return _generic_operation(view, endpoint, op)
    responses: dict[str, Any] = {
        "200": {"description": "Success", "content": {"application/json": {"schema": {}}}},
    }
    if spec.get("created"):
        responses["201"] = {"description": "Created", "content": {"application/json": {}}}
    if spec.get("body"):
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{spec['body']}"}}
            },
        }
        responses["400"] = _problem("Malformed JSON or empty body")
        responses["413"] = _problem("Body larger than FORECAST_MAX_BODY_BYTES")
        responses["415"] = _problem("Content-Type is not application/json")
    if spec.get("body") or spec.get("query") or params:
        responses["422"] = _problem("Invalid input; errors name each failing field")
    if not is_public:
        responses["401"] = _problem("Missing, unknown or revoked token")
        responses["403"] = _problem("The token's role may not use this route")
    responses["429"] = _problem("Too many failed authentications from this address; retry "
                                "after Retry-After seconds")
    if params:
        responses["404"] = _problem("Unknown resource")
    if spec.get("conflict") or endpoint == "api.model_reload":
        responses["409"] = _problem("Conflict; nothing was changed")
    if spec.get("forecast") or endpoint == "api.model_card":
        responses["503"] = _problem("No model loaded: train a model")
    if spec.get("unavailable"):
        responses["503"] = {
            "description": "The database is unreachable",
            "content": {"application/json": {"schema": {}}},
        }
    responses["500"] = _problem("Unexpected failure (identified by the request id)")
    op["responses"] = responses
    return op


def allowed_query(view: Any, endpoint: str) -> set[str] | None:
    """Query parameters documented for ``endpoint`` (None: not declared, not checked)."""
    if endpoint in OPERATIONS:
        return {name for name, *_ in OPERATIONS[endpoint].get("query", [])}
    spec = getattr(view, "kap_openapi", None) or {}
    if "parameters" not in spec:
        return None
    return {p["name"] for p in spec["parameters"] if p.get("in") == "query"}


def _reject_unknown_query_parameters() -> None:
    """Unknown query parameters are a 422 naming them, as unknown body fields are.

    Applies to the JSON API and to every view that declares its parameters with
    :func:`describe`. A caller without a valid token still gets the view's 401
    first (the check waits for authentication on protected views).
    """
    if not request.args or request.endpoint is None:
        return
    view = current_app.view_functions.get(request.endpoint)
    allowed = allowed_query(view, request.endpoint)
    if allowed is None:
        return
    if getattr(view, "kap_roles", None) is not None and current_principal() is None:
        return
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        listing = ", ".join(sorted(allowed)) or "none"
        raise ApiProblem(
            422,
            "Unknown query parameter",
            errors=[
                {"field": f"query/{name}", "message": f"unknown parameter; allowed: {listing}"}
                for name in unknown
            ],
        )


def init_app(app: Flask) -> None:
    """Serve the document at ``/openapi.json``; reject undocumented query parameters."""
    app.add_url_rule("/openapi.json", "openapi", openapi_document)
    app.before_request(_reject_unknown_query_parameters)


@public
def openapi_document() -> Response:
    """The OpenAPI 3 document of this app (open; built once, on the first request)."""
    doc = current_app.extensions.get("kap_openapi")
    if doc is None:
        doc = current_app.extensions["kap_openapi"] = build_document(current_app)
    return jsonify(doc)


def build_document(app: Flask) -> dict[str, Any]:
    """Build the OpenAPI document of ``app`` (every rule, with security and responses)."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        params = _PARAM.findall(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                app, rule.endpoint, method, params
            )
    components = schemas.schema_components()
    components["Problem"] = _PROBLEM_SCHEMA
    # Declared covariates (FORECAST_COVARIATES) are accepted beside the contract's fields.
    declared = getattr(app.extensions.get("kap_store"), "covariates", ())
    for model in ("PatientCovariates", "StatelessPatient"):
        props = components.get(model, {}).get("properties")
        if props is not None:
            for name in declared:
                props[name] = {
                    "anyOf": [{"type": "number"}, {"type": "null"}],
                    "description": f"Declared covariate {name} (FORECAST_COVARIATES)",
                }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kap-forecast",
            "version": "1",
            "description": (
                "Outcome measurement and maintenance-timing forecasts for ketamine-assisted "
                "depression treatment. Decision support for clinicians; no answer is a "
                "suicide-risk assessment."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Token from `forecast tokens create`",
                }
            },
        },
    }
