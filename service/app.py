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

Production: ``gunicorn -w 2 -k gthread --threads 4 --timeout 30 'service:create_app()'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from service import api, cds, errors, fhir_api, modelstate, openapi, pages, reports, serving
from service import logging as service_logging
from service.config import load_config
from service.store import Store


def open_store(
    config: Mapping[str, Any] | None = None, covariates: tuple[str, ...] = ()
) -> Store:
    """The migrated store the service would use, without building the whole app.

    Used by ``forecast tokens`` (no model needed) and ``forecast load``, whose
    declared ``covariates`` are kept besides the configured ones.
    """
    instance = _instance_path(config)
    cfg = load_config(instance, config)
    store = Store(
        cfg["KAP_DATABASE_URL"],
        covariates=tuple(dict.fromkeys((*cfg["KAP_COVARIATES"], *covariates))),
        **cfg.get("KAP_ENGINE_OPTIONS", {}),
    )
    if cfg.get("KAP_MIGRATE", True):
        store.migrate()
    return store


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
    # Our errors carry their own shape; never let Flask render HTML error pages.
    app.config["TRAP_BAD_REQUEST_ERRORS"] = False
    app.json.sort_keys = False  # keep the answer's documented key order

    errors.init_app(app)
    service_logging.init_app(app)
    openapi.init_app(app)
    serving.init_app(app)
    modelstate.init_app(app)

    app.register_blueprint(api.bp, url_prefix="/api/v1")
    for module in (fhir_api, cds, pages, reports):
        app.register_blueprint(module.bp)
    return app
