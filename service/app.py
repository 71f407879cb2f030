"""Application factory of the kap-forecast service.

``create_app(config=None)`` builds a fresh app: configuration from the
environment (see :mod:`service.config`), then the init hooks that attach
resources to ``app.extensions`` (nothing is opened at import time):

- ``kap_store``: :class:`service.store.Store` (migrated on start);
- ``kap_model``: :class:`service.modelstate.ModelState` (the live model);
- ``kap_settings``: the default ``forecast.policy.PolicySettings`` knobs.

Blueprints: ``api`` (``/api/v1``), then ``fhir_api``, ``cds``, ``pages`` and
``reports`` (owned by the FHIR/clinic part).

Production: ``gunicorn -w 2 -k gthread --threads 4 --timeout 30 'service.app:create_app()'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from service import errors, modelstate, openapi
from service import logging as service_logging
from service.config import load_config
from service.store import Store


def init_store(app: Flask) -> Store:
    """Open the store named by the config, migrate it, keep it in ``app.extensions``."""
    store = Store(
        app.config["KAP_DATABASE_URL"],
        covariates=app.config.get("KAP_COVARIATES", ()),
        **app.config.get("KAP_ENGINE_OPTIONS", {}),
    )
    if app.config.get("KAP_MIGRATE", True):
        store.migrate()
    app.extensions["kap_store"] = store
    return store


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
    import os

    given = (config or {}).get("INSTANCE_PATH") or os.environ.get("FORECAST_INSTANCE_PATH")
    if given:
        return str(Path(given).resolve())
    # Flask's default instance folder for the "service" package.
    return Flask("service").instance_path


def _init_settings(app: Flask) -> None:
    from forecast.policy import PolicySettings

    knobs: dict[str, Any] = {"threshold": float(app.config["KAP_THRESHOLD"])}
    if app.config.get("KAP_MIN_INTERVAL_DAYS") is not None:
        knobs["min_interval_days"] = int(app.config["KAP_MIN_INTERVAL_DAYS"])
    if app.config.get("KAP_MAX_INTERVAL_DAYS") is not None:
        knobs["max_interval_days"] = int(app.config["KAP_MAX_INTERVAL_DAYS"])
    # Validates the combination once at start (e.g. min > the policy's max).
    app.extensions["kap_settings"] = PolicySettings(**knobs)


def _init_questionnaires(app: Flask) -> None:
    """The clinic's Questionnaires (``FORECAST_QUESTIONNAIRES``), read once at start."""
    from forecast.fhir import load_questionnaires
    from service.config import ConfigError

    folder = app.config.get("KAP_QUESTIONNAIRES_DIR")
    forms: list[Any] = []
    if folder:
        if not Path(folder).is_dir():
            raise ConfigError(f"FORECAST_QUESTIONNAIRES={folder}: not a folder")
        try:
            forms = load_questionnaires(folder)
        except ValueError as exc:
            raise ConfigError(f"FORECAST_QUESTIONNAIRES: {exc}") from None
    app.extensions["kap_questionnaires"] = forms


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
    init_store(app)
    _init_settings(app)
    _init_questionnaires(app)
    modelstate.init_app(app)

    from service import api, cds, fhir_api, pages, reports

    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.add_url_rule("/openapi.json", "openapi", api.openapi_document)
    for module in (fhir_api, cds, pages, reports):
        app.register_blueprint(module.bp)
    return app
