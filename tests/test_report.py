"""Clinic outcome report: numbers on a hand-built cohort, files, CLI and endpoint."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecast.cli import main
from forecast.cohort import Cohort, canonicalize
from forecast.report import outcome_report, render_html, turnbull_curve, wilson, write_report


def hand_cohort() -> Cohort:
    """Four patients with outcomes worked out by hand (see the test below)."""
    patients = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C", "D"],
            "diagnosis": ["trd", "mdd", "trd", None],
        }
    )
    sessions = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C"],
            "date": ["2025-01-02"] * 3,
            "kind": ["induction"] * 3,
            "route": ["iv", "im", "iv"],
        }
    )
    assessments = pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B", "B", "C", "D"],
            "date": [
                "2025-01-01",
                "2025-01-09",
                "2025-01-20",
                "2025-01-01",
                "2025-01-09",
                "2025-01-01",
                "2025-01-05",
            ],
            "phq9_total": [20, 8, 4, 16, 12, 18, 9],
            "phq9_9": [np.nan, 0, 0, np.nan, 1, np.nan, np.nan],
        }
    )
    return Cohort(
        canonicalize("patients", patients),
        canonicalize("sessions", sessions),
        canonicalize("assessments", assessments),
    )


def test_hand_built_cohort_numbers():
    import datetime as dt

    rep = outcome_report(hand_cohort(), today=dt.date(2025, 2, 1))
    c = rep["cohort"]
    assert c["patients"] == 4
    assert c["evaluable_patients"] == 2  # A and B; C has no score after induction
    assert c["not_evaluable"] == {
        "no_session": 1,
        "no_baseline": 0,
        "no_phq9_after_first_induction": 1,
    }
    assert rep["response"]["response"]["count"] == 1  # A: 8 <= 10; B: 12 > 8
    assert rep["response"]["response"]["rate"] == 0.5
    assert rep["response"]["remission"]["count"] == 1  # A reached 4
    lo, hi = rep["response"]["response"]["ci95"]
    assert lo < 0.5 < hi
    # Follow-up: A 19 days, B 8 days, C 1 day (session day only) = 28 days.
    assert rep["sessions"]["per_patient_year"] == round(3 / (28 / 365.25), 2)
    assert rep["sessions"]["by_kind"]["maintenance"]["sessions"] == 0
    si = rep["suicidal_ideation"]
    assert si["item9_above_0"] == 1
    assert si["flags_review"] == 1
    assert si["flags_urgent"] == 0
    assert si["patients_with_any_flag"] == 1
    assert "not a suicide-risk assessment" in si["statement"]
    # One episode (A), too few for any curve: counts only.
    dur = rep["durability"]
    assert dur["overall"]["episodes"] == 1
    assert dur["overall"]["curve"] is None
    json.dumps(rep)  # JSON-able throughout
    assert "A" not in json.dumps(rep["cohort"])


def test_wilson_interval_known_value():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) == (None, None)


def test_turnbull_curve_matches_kaplan_meier_on_exact_times():
    # With exact event times (lower = t - tiny) the NPMLE is the Kaplan-Meier estimate.
    t = np.array([5, 10, 10, 20, 30], dtype=float)
    lower = np.concatenate([t[:4] - 1e-6, [30.0]])
    upper = np.concatenate([t[:4], [np.inf]])
    curve = turnbull_curve(lower, upper)
    s = dict(zip(curve["days"], curve["survival"], strict=True))
    assert s[4] == 1.0
    assert s[5] == pytest.approx(0.8, abs=1e-3)
    assert s[10] == pytest.approx(0.4, abs=1e-3)
    assert s[20] == pytest.approx(0.2, abs=1e-3)
    assert curve["median_days"] == 10
    assert np.all(np.diff(curve["survival"]) <= 0)


@pytest.fixture(scope="module")
def sim_report():
    import datetime as dt

    from forecast.simulation import simulate

    sim = simulate(200, 11)
    return sim.cohort, outcome_report(sim.cohort, today=dt.date(2026, 11, 1))


def test_simulated_cohort_report_has_curves_by_group(sim_report):
    _, rep = sim_report
    dur = rep["durability"]
    overall = dur["overall"]
    assert overall["episodes"] > 50
    curve = overall["curve"]
    assert curve["survival"][0] == 1.0
    assert np.all(np.diff(curve["survival"]) <= 0)
    groups = {g["group"] for g in dur["by_route"]}
    assert groups <= {"iv", "im", "intranasal", "sublingual", "oral", "not recorded"}
    assert sum(g["episodes"] for g in dur["by_route"]) == overall["episodes"]
    assert {g["group"] for g in dur["by_psychotherapy"]} <= {
        "with psychotherapy",
        "without",
        "not recorded",
    }
    assert 0 < rep["response"]["response"]["rate"] < 1


def test_html_is_self_contained(sim_report, tmp_path):
    _, rep = sim_report
    out = write_report(rep, tmp_path / "r")
    html = (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["cohort"] == rep["cohort"]
    assert html.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "not a suicide-risk assessment" in html
    assert render_html(rep) == html


def test_report_cli(tmp_path):
    from forecast.data import write_cohort

    write_cohort(hand_cohort(), tmp_path / "data")
    r = CliRunner().invoke(
        main,
        ["report", str(tmp_path / "data"), "--out", str(tmp_path / "rep"), "--today", "2025-03-01"],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.json").exists()
    assert (tmp_path / "rep" / "report.html").exists()
    # The hand cohort is small: its counts are suppressed unless --exact.
    shared = (tmp_path / "rep" / "report.json").read_text()
    assert "<11" in shared
    r = CliRunner().invoke(
        main,
        ["report", str(tmp_path / "data"), "--out", str(tmp_path / "ex"), "--today", "2025-03-01",
         "--exact"],
    )
    assert r.exit_code == 0, r.output
    exact = json.loads((tmp_path / "ex" / "report.json").read_text())
    assert "<11" not in json.dumps(exact)
    expected = outcome_report(hand_cohort(), today=dt.date(2025, 3, 1))
    assert exact["cohort"] == json.loads(json.dumps(expected["cohort"]))
    (tmp_path / "data" / "sessions.csv").write_text("patient_id,date,kind\nA,2025-01-02,booster\n")
    r = CliRunner().invoke(main, ["report", str(tmp_path / "data"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1
    assert "sessions.csv, row 2, column kind" in r.output


def json_records(table, frame, keep_id=False):
    """Canonical rows as JSON-typed records of the API (blanks left out)."""
    from forecast.contract import TABLES

    out = []
    for row in frame.to_dict("records"):
        rec = {}
        for col in TABLES[table]:
            v = row.get(col.name)
            if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
                continue
            if col.name == "patient_id" and not keep_id:
                continue
            if col.kind == "date":
                v = pd.Timestamp(v).strftime("%Y-%m-%d")
            elif col.kind == "int":
                v = int(v)
            elif col.kind == "bool":
                v = bool(v)
            elif col.kind == "float":
                v = float(v)
            rec[col.name] = v
        out.append(rec)
    return out


def test_report_endpoint(client, sim_report):
    from service.ingest import ingest_many

    assert client.get("/api/v1/reports/outcomes", role="researcher").status_code == 404
    cohort, _ = sim_report
    small = cohort.subset(cohort.patients["patient_id"].iloc[:40])
    items = []
    for table in ("sessions", "assessments"):
        frame = getattr(small, table)
        for pid, rows in frame.groupby("patient_id"):
            items.append((pid, table, json_records(table, rows)))
    ingest_many(
        client.app.extensions["kap_store"],
        items,
        patients=json_records("patients", small.patients, keep_id=True),
    )
    assert client.get("/api/v1/reports/outcomes").status_code == 403  # clinician
    r = client.get("/api/v1/reports/outcomes", role="researcher")
    assert r.status_code == 200
    rep = r.get_json()
    assert rep["cohort"]["patients"] == 40
    assert rep["cohort"]["sessions"] == len(small.sessions)
    html = client.get("/api/v1/reports/outcomes?format=html", role="researcher")
    assert html.mimetype == "text/html"
    assert "Clinic outcome report" in html.get_data(as_text=True)
    assert client.get("/api/v1/reports/outcomes?format=pdf", role="researcher").status_code == 422
