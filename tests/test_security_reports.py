"""Researcher-facing reports and files at rest (issue 21, item 7) as regression tests.

- the researcher outcome report showed exact first/last record dates and small
  counts (``cssrs_behavior: 1``): counts 1-10 are now ``"<11"``, rates, medians
  and curves of fewer than 11 are withheld, dates are months;
- the SQLite store file (created 0644 before) and the secret key are 0600; the
  Makefile writes its token file under ``umask 077``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from forecast.report import MIN_CELL, SUPPRESSED, outcome_report, suppress_small_cells

ROOT = Path(__file__).resolve().parents[1]


def _numbers(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _numbers(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _numbers(v, f"{path}/{i}")
    else:
        out.append((path, node))
    return out


def _no_small_count(report: dict[str, Any]) -> None:
    for section in ("cohort", "response", "durability", "sessions", "suicidal_ideation"):
        for path, v in _numbers(report.get(section), section):
            if "/curve/" in path or path.endswith("median_days"):
                continue
            if isinstance(v, int) and not isinstance(v, bool):
                assert v == 0 or v >= MIN_CELL, (path, v)


def test_small_cells_are_suppressed_and_dates_are_months() -> None:
    from forecast.simulation import simulate

    cohort = simulate(8, seed=3).cohort
    exact = outcome_report(cohort)
    shown = suppress_small_cells(exact)
    _no_small_count(shown)
    assert re.fullmatch(r"\d{4}-\d{2}", shown["cohort"]["first_date"])
    assert re.fullmatch(r"\d{4}-\d{2}", shown["cohort"]["last_date"])
    assert shown["cohort"]["first_date"] == exact["cohort"]["first_date"][:7]
    assert shown["cohort"]["patients"] == SUPPRESSED == "<11"
    # A rate of fewer than 11 patients loses its rate and interval.
    assert shown["response"]["response"]["rate"] is None
    assert shown["response"]["response"]["ci95"] is None
    assert shown["response"]["baseline_phq9_median"] is None
    assert "disclosure_control" in shown
    assert exact["cohort"]["patients"] == 8  # the exact report is untouched


def test_large_cells_stay_exact() -> None:
    from forecast.simulation import simulate

    cohort = simulate(40, seed=4).cohort
    exact = outcome_report(cohort)
    shown = suppress_small_cells(exact)
    assert shown["cohort"]["patients"] == 40
    assert shown["sessions"]["patient_years"] == exact["sessions"]["patient_years"]
    _no_small_count(shown)


def test_the_researcher_report_over_http_is_suppressed(clinic_client: Any) -> None:
    c = clinic_client
    resp = c.get("/api/v1/reports/outcomes", role="researcher")
    assert resp.status_code == 200
    report = resp.get_json()
    _no_small_count(report)
    assert report["cohort"]["patients"] == "<11"
    assert report["suicidal_ideation"]["cssrs_behavior"] in (0, "<11")
    assert re.fullmatch(r"\d{4}-\d{2}", report["cohort"]["first_date"])
    assert resp.headers["Cache-Control"] == "no-store"
    html = c.get("/api/v1/reports/outcomes?format=html", role="researcher")
    assert html.status_code == 200
    text = html.get_data(as_text=True)
    assert "&lt;11" in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}\.</p>", text.split("Records from")[1][:60])
    # The self-contained page's one <style> is admitted by its hash; no script at all.
    csp = html.headers["Content-Security-Policy"]
    assert "'sha256-" in csp
    assert "unsafe-inline" not in csp
    assert "script" not in csp
    assert "frame-ancestors 'none'" in csp


def test_store_and_secret_files_are_private(make_app: Any, tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "store.sqlite"
    from tests.fixtures.service import Database

    app = make_app(database=Database("sqlite", f"sqlite:///{db}", {}))
    assert db.stat().st_mode & 0o777 == 0o600
    secret = Path(app.instance_path) / "secret_key"
    assert secret.stat().st_mode & 0o777 == 0o600
    # An existing store file readable by others is made private on start.
    db.chmod(0o644)
    make_app(database=Database("sqlite", f"sqlite:///{db}", {}))
    assert db.stat().st_mode & 0o777 == 0o600


def test_the_makefile_writes_tokens_under_a_private_umask() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    writes = [line for line in makefile.splitlines() if "> instance/" in line]
    assert writes
    block = makefile[makefile.index("demo-store:"):makefile.index("serve:")]
    assert "umask 077" in block


def test_reports_hold_no_patient_identifier(clinic_client: Any) -> None:
    from tests.fixtures.clinic import ROUTINE, URGENT

    text = json.dumps(clinic_client.get("/api/v1/reports/outcomes", role="researcher").get_json())
    assert ROUTINE not in text
    assert URGENT not in text
