"""One consistent story per answer: labels, plurals, uncertainty, the page's as-of."""

from __future__ import annotations

import re

import pandas as pd

from forecast.features import FEATURES
from forecast.policy import forecast_queries
from forecast.policy.drivers import FEATURE_LABELS, describe_value
from tests.fixtures.policy import AS_OF, build_history, responder


def _patient(pid: str) -> dict:
    return {"pid": pid}


def test_every_model_feature_has_a_clinical_label() -> None:
    shown = [f for f in FEATURES.names if not f.endswith("_missing")]
    assert sorted(set(shown) - set(FEATURE_LABELS)) == []


def test_driver_values_are_said_with_units_and_never_blank() -> None:
    assert describe_value("phq9_slope_28d", -1.5) == (
        "PHQ-9 change over the last 4 weeks",
        "-6.0 points",
    )
    assert describe_value("dose_mg_per_kg", None) == (
        "Ketamine dose at the last session",
        "not recorded",
    )
    assert describe_value("psychotherapy", 1.0)[1] == "yes"
    assert describe_value("prev_waned_share", 0.25)[1] == "25 %"
    assert describe_value("route", "intranasal")[1] == "intranasal"
    assert describe_value("elapsed_days", 12.0)[1] == "12 days"


def test_answers_name_drivers_in_clinical_terms(policy_model) -> None:
    sessions, assessments = responder("D1", after=((-7, 6), (0, 6)))
    cohort = build_history([_patient("D1")], sessions, assessments)
    q = pd.DataFrame({"patient_id": ["D1"], "as_of": AS_OF})
    (a,) = forecast_queries(cohort, policy_model, q)
    assert a["drivers"]
    for d in a["drivers"]:
        assert d["label"] == FEATURE_LABELS[d["feature"]][0]
        assert d["shown"]  # never blank, never null
        assert "_" not in d["label"]


def test_page_honours_as_of_and_shows_the_api_answer(model_client) -> None:
    c = model_client
    sessions, assessments = responder("PG", after=((-7, 6), (0, 6)))
    cohort = build_history([_patient("PG")], sessions, assessments)
    c.http.put("/api/v1/patients/PG", json={}, headers=c.headers())
    rows = {
        "sessions": [
            {"id": f"s{i}", "date": f"{d:%Y-%m-%d}", "kind": k}
            for i, (d, k) in enumerate(zip(cohort.sessions["date"], cohort.sessions["kind"],
                                           strict=True))
        ],
        "assessments": [
            {"id": f"a{i}", "date": f"{d:%Y-%m-%d}", "phq9_total": int(t)}
            for i, (d, t) in enumerate(zip(cohort.assessments["date"],
                                           cohort.assessments["phq9_total"].fillna(
                                               cohort.assessments[[f"phq9_{k}" for k in
                                                                   range(1, 10)]].sum(axis=1)),
                                           strict=True))
        ],
    }
    for table in ("sessions", "assessments"):
        r = c.http.post(f"/api/v1/patients/PG/{table}", json={table: rows[table]},
                        headers=c.headers())
        assert r.status_code == 201, r.get_json()
    as_of = f"{AS_OF - pd.Timedelta(days=3):%Y-%m-%d}"
    answer = c.http.get(f"/api/v1/patients/PG/forecast?as_of={as_of}", headers=c.headers())
    answer = answer.get_json()
    page = c.http.get(f"/patients/PG?as_of={as_of}", headers=c.headers())
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    human = f"{pd.Timestamp(as_of).day} {pd.Timestamp(as_of):%b %Y}"
    assert f"Forecast as of <strong>{human}</strong>" in html
    assert answer["status_reason"].replace("'", "&#39;") in html
    bad = c.http.get("/patients/PG?as_of=2026-13-01", headers=c.headers())
    assert bad.status_code == 422


def test_plurals_on_the_page_and_in_reasons() -> None:
    from pathlib import Path

    template = Path("service/templates/patient.html").read_text(encoding="utf-8")
    assert "(s)" not in template
    texts = Path("forecast/policy/texts.py").read_text(encoding="utf-8")
    assert not re.search(r"score\(s\)", texts)
