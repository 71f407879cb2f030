"""Application factory of the kap-forecast service.

``create_app(config=None)`` builds a fresh app: configuration from the
environment (see :mod:`service.config`), then the init hooks that attach
resources to ``app.extensions`` (nothing is opened at import time):

- ``kap_store``: :class:`service.store.Store` (migrated on start), with
  ``kap_settings`` (the default ``forecast.policy.PolicySettings`` knobs) and
  ``kap_questionnaires``: :func:`service.serving.init_app`;
- ``kap_model``: :class:`service.modelstate.ModelState` (the live model).

Blueprints: ``api`` (``/api/v1``), ``fhir_api``, ``cds``, ``pages`` and
``reports``; they share :mod:`service.serving` and never import each other.

Hardening shared by every route (:func:`_harden`): a chunked body is read up
to the size limit and refused with 413 beyond it (werkzeug would truncate it
silently); a control character in the path or a query value is a 422; every
answer carries a Content-Security-Policy without inline script or style,
``X-Content-Type-Options: nosniff``, ``frame-ancestors 'none'``, a
Referrer-Policy and, except static files, ``Cache-Control: no-store``.

Production: ``gunicorn -w 2 -k gthread --threads 4 --timeout 30 'service:create_app()'``
behind a TLS proxy (docs/security.md).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.engine import make_url
from werkzeug.middleware.proxy_fix import ProxyFix

from service import (
    api,
    cds,
    errors,
    fhir_api,
    jsonprovider,
    modelstate,
    openapi,
    pages,
    ratelimit,
    reports,
    serving,
)
from service import logging as service_logging
from service.config import load_config, private_file
from service.errors import ApiProblem
from service.store import Store

#: The policy of every answer: nothing inline, nothing from elsewhere, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# C0 controls and DEL: never part of an id, a name or a query value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def open_store(
    config: Mapping[str, Any] | None = None, covariates: tuple[str, ...] = ()
) -> Store:
    """The migrated store the service would use, without building the whole app.

    Used by ``forecast tokens`` (no model needed) and ``forecast load``, whose
    declared ``covariates`` are kept besides the configured ones.
    """
    instance = _instance_path(config)
    cfg = load_config(instance, config)
    _private_sqlite(cfg["KAP_DATABASE_URL"])
    store = Store(
        cfg["KAP_DATABASE_URL"],
        covariates=tuple(dict.fromkeys((*cfg["KAP_COVARIATES"], *covariates))),
        **cfg.get("KAP_ENGINE_OPTIONS", {}),
    )
    if cfg.get("KAP_MIGRATE", True):
        store.migrate()
    return store


def _private_sqlite(url: str) -> None:
    """Create the SQLite store file 0600 before SQLite does (it would use the umask)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        private_file(parsed.database)


def _bounded_body() -> None:
    """Read a body without Content-Length (chunked) up to the limit: 413 beyond it.

    Werkzeug stops reading such a stream at ``MAX_CONTENT_LENGTH`` and returns
    what it read, so an oversized chunked JSON body would be cut and a shorter
    document parsed. The body is read here instead (never more than the limit
    plus one byte) and handed on as a sized body.
    """
    env = request.environ
    if request.method not in _BODY_METHODS or env.get("CONTENT_LENGTH"):
        return
    if "wsgi.input_terminated" not in env and "chunked" not in env.get(
        "HTTP_TRANSFER_ENCODING", ""
    ).lower():
        return
    limit = int(request.max_content_length or 0)
    stream = env["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ApiProblem(
            413,
            detail="The request body is larger than the service accepts "
            "(FORECAST_MAX_BODY_BYTES); nothing was stored.",
        )
    data = b"".join(chunks)
    env["wsgi.input"] = io.BytesIO(data)
    env["CONTENT_LENGTH"] = str(len(data))
    env.pop("wsgi.input_terminated", None)
    env.pop("HTTP_TRANSFER_ENCODING", None)


def _no_control_characters() -> None:
    """A control character (NUL, tab, newline ...) in the path or a query value: 422."""
    where = None
    if _CONTROL.search(request.path):
        where = "path"
    else:
        for name, value in request.args.items(multi=True):
            if _CONTROL.search(name) or _CONTROL.search(value):
                where = f"query/{name}" if not _CONTROL.search(name) else "query"
                break
    if where is not None:
        raise ApiProblem(
            422,
            "Control character",
            errors=[{"field": where, "message": "control characters are not allowed"}],
        )


def _security_headers(resp: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    if request.endpoint != "static":
        # Patient data (pages, API answers, FHIR, CDS cards) is never kept by a cache.
        resp.headers["Cache-Control"] = "no-store"
        resp.headers.setdefault("Pragma", "no-cache")
    return resp


def _harden(app: Flask) -> None:
    app.before_request(_bounded_body)
    app.before_request(_no_control_characters)
    app.after_request(_security_headers)
    ratelimit.init_app(app)
    proxies = int(app.config.get("KAP_PROXY_FIX") or 0)
    if proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_port=proxies
        )


def _instance_path(config: Mapping[str, Any] | None) -> str | None:
    given = (config or {}).get("INSTANCE_PATH") or os.environ.get("FORECAST_INSTANCE_PATH")
    if given:
        return str(Path(given).resolve())
    # Flask's default instance folder for the "service" package.
    return Flask("service").instance_path


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask application.

    Parameters
    ----------
    config : mapping, optional
        Values overriding the environment, e.g. ``{"KAP_DATABASE_URL": ...,
        "KAP_MODELS_DIR": ..., "TESTING": True}``; ``INSTANCE_PATH`` moves the
        instance folder.

    Returns
    -------
    Flask
        A new application with its own store connection pool and model state.
    """
    instance = _instance_path(config)
    app = Flask("service", instance_path=instance, instance_relative_config=False)
    app.config.update(load_config(instance, config))
    _private_sqlite(app.config["KAP_DATABASE_URL"])
    # Our errors carry their own shape; never let Flask render HTML error pages.
    app.config["TRAP_BAD_REQUEST_ERRORS"] = False
    app.json.sort_keys = False  # keep the answer's documented key order
    jsonprovider.init_app(app)

    errors.init_app(app)
    service_logging.init_app(app)
    _harden(app)
    openapi.init_app(app)
    serving.init_app(app)
    modelstate.init_app(app)

    app.register_blueprint(api.bp, url_prefix="/api/v1")
    for module in (fhir_api, cds, pages, reports):
        app.register_blueprint(module.bp)
    return app
