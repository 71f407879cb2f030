"""Structured JSON logs with request ids, and no patient data.

Each request gets an id (the client's ``X-Request-ID`` if it is a short token
of safe characters, else a fresh one), echoed in the response header, in
problem documents (``instance``) and in the audit table. The access log line
names the URL *rule* (``/api/v1/patients/<patient_id>``), never the path, so
patient ids, dates and scores never reach a log file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

access_log = logging.getLogger("service.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102 - logging API
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Type only: exception messages can carry request values.
            entry["exception_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the service's loggers to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("service")
    if any(getattr(h, "_kap_json", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._kap_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def request_id() -> str:
    """The current request's id."""
    return g.get("request_id") or "-"


def _begin() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = request_id()
    rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    principal = g.get("principal")
    access_log.info(
        "request",
        extra={
            "event": "request",
            "request_id": request_id(),
            "method": request.method,
            "rule": rule,
            "status": response.status_code,
            "duration_ms": round(
                (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2
            ),
            "token_name": principal.name if principal is not None else None,
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Install request-id and access-log hooks on ``app``."""
    if not app.testing:
        configure_logging()
    app.before_request(_begin)
    app.after_request(_finish)
