"""Blueprint `fhir_api` of the service (registered by service.app.create_app)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("fhir_api", __name__)
