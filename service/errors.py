"""One error shape for the whole service: RFC 9457 ``application/problem+json``.

Every 4xx and 5xx answer (ours, werkzeug's 404/405/413, malformed JSON, and
unexpected exceptions) goes through :class:`ApiProblem` and the handlers that
:func:`init_app` registers, so clients parse one shape::

    {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
     "detail": "2 problems in the request", "instance": "<request id>",
     "errors": [{"field": "/assessments/3/phq9_3", "message": "..."}]}

``errors`` is present only when there are field-level problems; ``field`` is a
JSON pointer into the request body (or ``query/<name>`` / ``path/<name>``).
At most :data:`MAX_ERRORS` entries are listed; ``errors_omitted`` then counts
the rest, so a request with a million bad items gets a small answer.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

import sqlalchemy.exc as sa_exc
from flask import Flask, Response, g, has_app_context, json
from werkzeug.exceptions import HTTPException

PROBLEM_MIMETYPE = "application/problem+json"
#: At most this many field-level problems are listed in one answer.
MAX_ERRORS = 100

log = logging.getLogger("service.errors")


class ApiProblem(Exception):
    """The one exception the service turns into a problem+json response.

    Parameters
    ----------
    status : int
        HTTP status code (4xx or 5xx).
    title : str, optional
        Short, stable summary; defaults to the status phrase.
    detail : str, optional
        Human-readable explanation of this occurrence (never patient data
        beyond what the client itself sent).
    errors : iterable of dict, optional
        Field-level problems, each ``{"field": "/json/pointer", "message": str}``;
        the first :data:`MAX_ERRORS` are kept, ``errors_omitted`` counts the rest.
    headers : mapping, optional
        Extra response headers (e.g. ``WWW-Authenticate``, ``Retry-After``).
    problem_type : str, optional
        A URI naming the problem type (the ``type`` member); ``about:blank``.
    """

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        errors: Iterable[Mapping[str, Any]] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        problem_type: str = "about:blank",
    ) -> None:
        self.status = int(status)
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        self.title = title or phrase
        self.detail = detail
        listed: list[dict[str, Any]] = []
        self.errors_omitted = 0
        for entry in errors or ():
            if len(listed) < MAX_ERRORS:
                listed.append(dict(entry))
            else:
                self.errors_omitted += 1
        self.errors = listed
        self.headers = dict(headers or {})
        self.type = problem_type
        super().__init__(f"{self.status} {self.title}: {detail or ''}".strip())

    def to_dict(self) -> dict[str, Any]:
        """The problem document (JSON-able)."""
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        request_id = g.get("request_id") if has_app_context() else None
        if request_id:
            body["instance"] = f"urn:request:{request_id}"
        if self.errors:
            body["errors"] = self.errors
        if self.errors_omitted:
            body["errors_omitted"] = self.errors_omitted
        return body

    def response(self) -> Response:
        """Render as a Flask response with the problem media type."""
        resp = Response(json.dumps(self.to_dict()), status=self.status, mimetype=PROBLEM_MIMETYPE)
        for key, value in self.headers.items():
            resp.headers[key] = value
        return resp


def field_errors(problems: Iterable[Any], prefix: str = "") -> list[dict[str, str]]:
    """Turn ``forecast.data.Problem`` objects into ``errors`` entries.

    Parameters
    ----------
    problems : iterable of forecast.data.Problem
        Problems with ``row`` (0-based item index for JSON lists, or None)
        and ``column`` (or None) and ``message``.
    prefix : str
        JSON pointer of the list the rows came from, e.g. ``/assessments``.

    Returns
    -------
    list of dict
        ``{"field": pointer, "message": text}`` entries.
    """
    out: list[dict[str, str]] = []
    for p in problems:
        parts = [prefix] if prefix else []
        row = getattr(p, "row", None)
        column = getattr(p, "column", None)
        if row is not None:
            parts.append(str(row))
        if column:
            parts.append(_escape_pointer(str(column)))
        field = "/".join(parts) if parts else ""
        if field and not field.startswith("/"):
            field = "/" + field
        out.append({"field": field or "/", "message": str(getattr(p, "message", p))})
    return out


def _escape_pointer(token: str) -> str:
    # RFC 6901: "~" and "/" must be escaped inside a pointer token.
    return token.replace("~", "~0").replace("/", "~1")


def pointer(*parts: object) -> str:
    """Build a JSON pointer from path parts (``pointer("assessments", 3, "date")``)."""
    return "/" + "/".join(_escape_pointer(str(p)) for p in parts)


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    detail = exc.description
    headers: dict[str, str] = {}
    if status == 405:
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    if status == 413:
        detail = "The request body is larger than the service accepts (FORECAST_MAX_BODY_BYTES)."
    return ApiProblem(status, detail=detail, headers=headers).response()


def _database_unavailable(exc: Exception) -> Response:
    # Connection refused, server gone, file unreadable, pool exhausted: the request
    # may succeed later, so say so (503) instead of reporting a server bug (500).
    log.error(
        "database unavailable",
        extra={"event": "database_unavailable", "exception_type": type(exc).__name__},
    )
    return ApiProblem(
        503,
        "Database unavailable",
        "The service cannot reach its database; nothing was changed. Retry later.",
        headers={"Retry-After": "10"},
    ).response()


def _write_conflict(exc: Exception) -> Response:
    # Only reached when concurrent writers kept colliding after the store's retries;
    # the transaction was rolled back, so a retry by the client is safe.
    log.warning("write conflict", extra={"event": "write_conflict"})
    return ApiProblem(
        409,
        "Concurrent write conflict",
        "Another request changed the same rows at the same time; nothing was stored. "
        "Retry the request.",
    ).response()


def _unexpected(exc: Exception) -> Response:
    # Never echo the exception text: it may contain request values (patient data).
    # The traceback frames are logged without the exception message for the same reason.
    log.error(
        "unhandled exception",
        extra={
            "event": "error",
            "exception_type": type(exc).__name__,
            "traceback": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )
    return ApiProblem(
        500, detail="The service failed to answer; the request id identifies the log entry."
    ).response()


def init_app(app: Flask) -> None:
    """Register the problem+json handlers on ``app``."""
    app.register_error_handler(ApiProblem, lambda exc: exc.response())
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(sa_exc.IntegrityError, _write_conflict)
    app.register_error_handler(sa_exc.OperationalError, _database_unavailable)
    app.register_error_handler(sa_exc.TimeoutError, _database_unavailable)
    app.register_error_handler(sa_exc.InterfaceError, _database_unavailable)
    app.register_error_handler(Exception, _unexpected)
