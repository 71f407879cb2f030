"""Researcher reports (blueprint ``reports``).

- ``GET /api/v1/reports/outcomes`` [researcher]: the clinic outcome report of
  :mod:`forecast.report` computed from every patient in the store, as JSON,
  or with ``?format=html`` as one self-contained HTML page. Aggregates only:
  no patient identifiers.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request

from forecast.outcomes import OutcomeDefinition
from forecast.report import outcome_report, render_html
from service import db
from service.auth import require_role
from service.clinic_openapi import operation, problem, query
from service.errors import ApiProblem
from service.serving import model_state, store

bp = Blueprint("reports", __name__)


@bp.get("/api/v1/reports/outcomes")
@require_role("researcher")
@operation(
    "Clinic outcome report (JSON, or HTML with format=html)",
    {
        "200": {
            "description": "The report",
            "content": {"application/json": {}, "text/html": {}},
        },
        "404": problem("The store holds no patients"),
        "422": problem("format is not json or html"),
    },
    parameters=[query("format", "json (default) or html")],
)
def outcomes() -> Response:
    """The clinic outcome report (JSON, or HTML with ``?format=html``)."""
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "html"):
        raise ApiProblem(
            422,
            "Invalid format",
            errors=[{"field": "query/format", "message": f"got {fmt!r}; allowed: json, html"}],
        )
    st = store()
    with st.read() as conn:
        ids = list(conn.execute(sa.select(db.patients.c.patient_id)).scalars())
        cohort = st.cohort(ids, conn)
    if not len(cohort.patients):
        raise ApiProblem(404, "No data", "The store holds no patients yet; nothing to report.")
    live = model_state().current
    definition = getattr(live, "definition", None) or OutcomeDefinition()
    report = outcome_report(cohort, definition)
    if fmt == "html":
        return Response(render_html(report), mimetype="text/html")
    return jsonify(report)
