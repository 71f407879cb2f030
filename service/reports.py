"""Researcher reports (blueprint ``reports``).

- ``GET /api/v1/reports/outcomes`` [researcher]: the clinic outcome report of
  :mod:`forecast.report` computed from every patient of the caller's clinic, as JSON,
  or with ``?format=html`` as one self-contained HTML page. Aggregates only:
  no patient identifiers; researcher-facing, so counts under 11 are suppressed
  and dates coarsened to months (``forecast.report.suppress_small_cells``).
"""

from __future__ import annotations

import base64
import hashlib
import re

from flask import Blueprint, Response, jsonify, request

from forecast.outcomes import OutcomeDefinition
from forecast.report import outcome_report, render_html, suppress_small_cells
from service.auth import require_role
from service.clinic_openapi import operation, problem, query
from service.errors import ApiProblem
from service.serving import audited, model_state, store

bp = Blueprint("reports", __name__)
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


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
@audited("report.view")
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
        ids = st.patient_ids(conn)  # the caller's clinic only
        cohort = st.cohort(ids, conn)
    if not len(cohort.patients):
        raise ApiProblem(404, "No data", "The store holds no patients yet; nothing to report.")
    live = model_state().current
    definition = getattr(live, "definition", None) or OutcomeDefinition()
    # Researcher-facing: small cells suppressed, dates as months.
    report = suppress_small_cells(outcome_report(cohort, definition))
    if fmt == "html":
        page = render_html(report)
        resp = Response(page, mimetype="text/html")
        # The page is self-contained (one <style> element, images as data: URLs):
        # the policy admits exactly that style by its hash, still no script.
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
            for m in _STYLE.findall(page)
        )
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src {hashes}; img-src data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
        return resp
    return jsonify(report)
