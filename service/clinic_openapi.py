"""OpenAPI descriptions of the clinic routes (FHIR, CDS Hooks, pages, reports).

The JSON API documents itself in :mod:`service.openapi`; these helpers build
the ``describe(...)`` specs for the views of the clinic blueprints so that
``/openapi.json`` lists their bodies, parameters and every status they answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from service.openapi import PROBLEM, describe

F = TypeVar("F", bound=Callable[..., Any])

FHIR_JSON = "application/fhir+json"
_OUTCOME = {"$ref": "https://hl7.org/fhir/R4/operationoutcome.html"}


def problem(text: str) -> dict[str, Any]:
    """A problem+json response object."""
    return {"description": text, "content": {"application/problem+json": {"schema": PROBLEM}}}


def outcome(text: str) -> dict[str, Any]:
    """A FHIR OperationOutcome response object."""
    return {"description": text, "content": {FHIR_JSON: {"schema": {"type": "object"}}}}


def html(text: str) -> dict[str, Any]:
    """An HTML response object."""
    return {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}


def operation(
    summary: str,
    responses: Mapping[str, Any],
    *,
    public: bool = False,
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
    html_errors: bool = False,
) -> Callable[[F], F]:
    """``describe(...)`` with the statuses every protected or public route may answer."""
    base: dict[str, Any] = dict(responses)
    if not public:
        base.setdefault(
            "401",
            html("Not signed in: the sign-in form")
            if html_errors
            else problem("Missing, unknown or revoked token"),
        )
        base.setdefault(
            "403",
            html("Token without the needed role")
            if html_errors
            else problem("The token's role may not use this route"),
        )
    base.setdefault(
        "429",
        html("Too many failed sign-ins or tokens from this address")
        if html_errors
        else problem("Too many failed authentications from this address; retry after "
                     "Retry-After seconds"),
    )
    base.setdefault("500", problem("The service failed; the request id names the log entry"))
    spec: dict[str, Any] = {"summary": summary, "responses": base}
    if parameters:
        spec["parameters"] = parameters
    if request_body:
        spec["request_body"] = request_body
    return describe(**spec)


def query(name: str, text: str, required: bool = False) -> dict[str, Any]:
    """A string query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": {"type": "string"},
        "description": text,
    }
