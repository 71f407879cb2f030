"""Blueprint `cds` of the service (registered by service.app.create_app)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("cds", __name__)
