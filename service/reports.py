"""Blueprint `reports` of the service (registered by service.app.create_app)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("reports", __name__)
