"""Clinician pages: token login, the patient page, its charts and its safety banner."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.fixtures.clinic import ROUTINE, URGENT


def login(c, token, next_url=None):
    page = c.http.get("/login")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    form = {"csrf": csrf, "token": token}
    if next_url:
        form["next"] = next_url
    return c.http.post("/login", data=form)


def svgs(html):
    found = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    for s in found:
        ET.fromstring(s)  # well-formed XML, or the browser draws nothing
    return found


def test_page_without_session_answers_401_with_the_login_form(client):
    r = client.http.get("/patients/x")
    assert r.status_code == 401
    html = r.get_data(as_text=True)
    assert 'name="token"' in html
    assert 'name="next" value="/patients/x"' in html


def test_login_rejects_bad_tokens_and_foreign_redirects(client):
    assert login(client, "not-a-token").status_code == 401
    assert login(client, client.tokens["researcher"]).status_code == 401
    r = login(client, client.tokens["clinician"], next_url="//evil.example/x")
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/patients")


def test_login_without_csrf_is_refused(client):
    r = client.http.post("/login", data={"token": client.tokens["clinician"]})
    assert r.status_code == 400


@pytest.mark.slow
def test_patient_page_after_login_shows_chart_date_and_neutral_note(clinic_client):
    c = clinic_client
    r = login(c, c.tokens["clinician"], next_url=f"/patients/{ROUTINE}")
    assert r.status_code == 302
    assert r.headers["Location"].endswith(f"/patients/{ROUTINE}")
    page = c.http.get(f"/patients/{ROUTINE}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    forecast = c.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    from forecast.policy.texts import human_date as _human

    by = forecast["suggestion"]["session_by"]
    assert by is not None
    assert _human(by) in html
    charts = svgs(html)
    assert len(charts) == 2
    phq9, risk = charts
    # Severity bands, PHQ-9 points (4 questionnaires), sessions (5), suggested date.
    assert phq9.count("<title>PHQ-9 ") == 4
    assert phq9.count('class="induction"') >= 4
    assert 'class="suggest"' in phq9
    assert 'class="threshold"' in risk
    assert f"by {_human(by).split()[0].zfill(2)}" in risk
    assert "No suicidal-ideation rule was triggered" in html
    assert "not a suicide-risk assessment" in html
    assert 'class="banner neutral"' in html
    for forbidden in ("no risk", "low risk", "safe"):
        assert forbidden not in html.lower().replace("safety", "")
    # The page view is a forecast served: audited.
    url = f"/api/v1/audit?patient_id={ROUTINE}&action=forecast"
    audit = c.get(url, role="admin").get_json()["audit"]
    assert "page" in [a["endpoint"] for a in audit]


@pytest.mark.slow
def test_si_patient_page_has_the_urgent_banner(clinic_client):
    c = clinic_client
    html = c.get(f"/patients/{URGENT}").get_data(as_text=True)  # bearer token works too
    assert 'class="banner urgent"' in html
    assert "C-SSRS screener ideation level 4" in html
    assert 'class="point flag"><title>PHQ-9 ' in html  # the flagged answer is marked
    assert html.index("banner urgent") < html.index("<svg")


@pytest.mark.slow
def test_logout_ends_the_session(clinic_client):
    c = clinic_client
    login(c, c.tokens["clinician"])
    page = c.http.get("/patients")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    assert c.http.post("/logout", data={"csrf": csrf}).status_code == 302
    assert c.http.get(f"/patients/{ROUTINE}").status_code == 401


def test_unknown_patient_is_an_html_404(client):
    r = client.get("/patients/nobody")
    assert r.status_code == 404
    assert r.mimetype == "text/html"
    assert "Unknown patient" in r.get_data(as_text=True)


def test_page_without_a_model_still_shows_the_history(client):
    from tests.fixtures.clinic import clinic_history

    r = client.http.post(
        "/fhir/r4",
        json=clinic_history("pt-nomodel", si=False),
        headers={**client.headers(), "Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 200
    page = client.get("/patients/pt-nomodel")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "No forecast" in html
    assert "forecast train" in html  # says how to get a model
    (chart,) = svgs(html)
    assert chart.count("<title>PHQ-9 ") == 4
    assert "banner neutral" in html


def test_safety_banner_does_not_need_a_model(client):
    from tests.fixtures.clinic import clinic_history

    r = client.http.post(
        "/fhir/r4",
        json=clinic_history("pt-si-nomodel", si=True),
        headers={**client.headers(), "Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 200
    html = client.get("/patients/pt-si-nomodel").get_data(as_text=True)
    assert 'class="banner urgent"' in html
    assert "C-SSRS screener ideation level 4" in html
    assert "banner neutral" not in html
