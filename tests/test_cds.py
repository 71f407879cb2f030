"""CDS Hooks: discovery, EHR JWT authentication, cards that match the JSON forecast."""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from forecast.instruments import LOINC_PHQ9_TOTAL
from service.cds_auth import CdsConfigError, load_clients
from service.cds_cards import cards_for
from tests.fixtures.clinic import (
    CDS_AUDIENCE,
    CDS_ISS,
    CDS_SECRET,
    ROUTINE,
    URGENT,
    bundle,
    ketamine_procedure,
    observation,
    phq9_qr,
)
from tests.fixtures.service import assert_problem, client_for

URL = "/cds-services/kap-forecast-maintenance"


def token(
    *,
    key=CDS_SECRET,
    alg="HS256",
    iss=CDS_ISS,
    aud=CDS_AUDIENCE,
    exp_in=120,
    jti=None,
    kid=None,
    drop=(),
):
    now = int(time.time())
    claims = {
        "iss": iss,
        "sub": "ehr-client",
        "aud": aud,
        "exp": now + exp_in,
        "iat": now,
        "jti": jti or uuid.uuid4().hex,
    }
    for k in drop:
        claims.pop(k)
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def hook(pid, prefetch=None):
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": pid},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def call(c, body, tok):
    return c.http.post(URL, json=body, headers={"Authorization": f"Bearer {tok}"})


def test_discovery_is_open_and_lists_patient_view(client):
    r = client.http.get("/cds-services")
    assert r.status_code == 200
    (svc,) = r.get_json()["services"]
    assert svc["hook"] == "patient-view"
    assert svc["id"] == "kap-forecast-maintenance"
    assert "{{context.patientId}}" in svc["prefetch"]["observations"]
    assert "http://loinc.org|44249-1" in svc["prefetch"]["observations"]


@pytest.mark.slow
def test_card_matches_json_forecast_and_is_audited(clinic_client):
    c = clinic_client
    r = call(c, hook(ROUTINE), token())
    assert r.status_code == 200, r.get_data(as_text=True)
    (card,) = r.get_json()["cards"]
    forecast = c.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    data = card["extension"]["org.kap-forecast.forecast"]
    assert data["as_of"] == forecast["as_of"]
    assert data["status"] == forecast["status"]
    assert data["session_by"] == forecast["suggestion"]["session_by"]
    assert data["risks"] == {str(h["days"]): h["risk"] for h in forecast["risk"]["horizons"]}
    by = forecast["suggestion"]["session_by"]
    assert by is not None
    assert card["indicator"] in ("info", "warning")
    assert "by " in card["summary"]
    assert len(card["summary"]) <= 140
    # The date and the 28-day risk as the JSON forecast gives them.
    from forecast.policy.texts import human_date as _human

    assert _human(by) in card["summary"]
    risk28 = next(h["risk"] for h in forecast["risk"]["horizons"] if h["days"] == 28)
    assert f"28 d {risk28:.0%}" in card["detail"]
    assert "not a suicide-risk assessment" in card["detail"]
    assert card["links"][0]["url"].endswith(f"/patients/{ROUTINE}")
    url = f"/api/v1/audit?patient_id={ROUTINE}&action=forecast"
    audit = c.get(url, role="admin").get_json()["audit"]
    assert [a["endpoint"] for a in audit] == ["cds_patient_view", "patient_forecast"]
    assert audit[0]["token_name"] == "cds:test-ehr"


@pytest.mark.slow
def test_patient_with_si_gets_the_critical_card(clinic_client):
    r = call(clinic_client, hook(URGENT), token())
    assert r.status_code == 200
    (card,) = r.get_json()["cards"]
    assert card["indicator"] == "critical"
    assert "review" in card["summary"].lower()
    assert "C-SSRS screener ideation level 4" in card["detail"]
    assert card["extension"]["org.kap-forecast.forecast"]["safety_level"] == "urgent"


@pytest.mark.slow
def test_prefetch_is_used_for_the_request_and_never_stored(clinic_client):
    import datetime as dt

    c = clinic_client
    today = dt.datetime.now(dt.UTC).date()

    def day(n):
        return (today - dt.timedelta(days=n)).isoformat()

    pid = "ehr-only"
    # A score the EHR marked entered-in-error is not used, and the card says so.
    wrong = observation("o3", pid, day(10), LOINC_PHQ9_TOTAL, {"valueInteger": 27})
    wrong["status"] = "entered-in-error"
    obs = bundle(
        [
            observation("o1", pid, day(40), LOINC_PHQ9_TOTAL, {"valueInteger": 19}),
            observation("o2", pid, day(20), LOINC_PHQ9_TOTAL, {"valueString": "6"}),
            wrong,
        ],
        "searchset",
    )
    qrs = bundle([phq9_qr("q1", pid, day(5), (1, 0, 1, 0, 1, 0, 0, 0, 0))], "searchset")
    procs = bundle([ketamine_procedure(f"p{n}", pid, day(n)) for n in (38, 35, 32)], "searchset")
    body = hook(pid, {"observations": obs, "responses": qrs, "procedures": procs})
    r = call(c, body, token())
    assert r.status_code == 200, r.get_data(as_text=True)
    (card,) = r.get_json()["cards"]
    assert card["extension"]["org.kap-forecast.forecast"]["patient_id"] == pid
    assert "used and not stored" in card["detail"]
    assert "1 prefetched resource(s) are marked entered-in-error; no stored row" in card["detail"]
    assert c.get(f"/api/v1/patients/{pid}").status_code == 404


def test_unknown_patient_without_prefetch_gets_an_info_card(make_app, clinic_models):
    app = make_app(
        models=clinic_models,
        KAP_CDS_CLIENTS={
            "clients": [{"iss": CDS_ISS, "secret": CDS_SECRET, "algorithms": ["HS256"]}]
        },
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    c = client_for(app)
    r = call(c, hook("nobody"), token())
    assert r.status_code == 200
    (card,) = r.get_json()["cards"]
    assert card["indicator"] == "info"
    assert "no ketamine-treatment history" in card["summary"]


# --- authentication -----------------------------------------------------------------------------
@pytest.fixture
def cds_client(make_app):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    jwk["kid"] = "rsa-1"
    ec_pem = (
        ec_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    app = make_app(
        KAP_CDS_CLIENTS={
            "clients": [
                {"iss": CDS_ISS, "secret": CDS_SECRET, "algorithms": ["HS256"]},
                {"iss": "https://rsa-ehr", "jwks": {"keys": [jwk]}, "algorithms": ["RS256"]},
                {"iss": "https://ec-ehr", "public_key": ec_pem, "algorithms": ["ES384"]},
            ]
        },
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    c = client_for(app)
    c.rsa_key, c.ec_key = rsa_key, ec_key
    return c


def test_signed_tokens_from_configured_keys_are_accepted(cds_client):
    c = cds_client
    for tok in (
        token(),
        token(key=c.rsa_key, alg="RS256", iss="https://rsa-ehr", kid="rsa-1"),
        token(key=c.ec_key, alg="ES384", iss="https://ec-ehr"),
    ):
        r = call(c, hook("nobody"), tok)
        # Authenticated: no model is loaded in this app, so the forecast itself is 503
        # only when a history exists; an unknown patient gets the info card.
        assert r.status_code == 200, r.get_data(as_text=True)


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"iss": "https://evil"}, "issuer"),
        ({"aud": "https://other/cds-services/x"}, "audience"),
        ({"exp_in": -120}, "expired"),
        ({"exp_in": 3600}, "5 minutes"),
        ({"key": "wrong-secret-wrong-secret-wrong-secret"}, "signature"),
        ({"drop": ("jti",)}, "jti"),
        ({"alg": "HS512"}, "algorithm"),
    ],
)
def test_bad_tokens_are_rejected(cds_client, kwargs, detail):
    r = call(cds_client, hook("nobody"), token(**kwargs))
    body = assert_problem(r, 401)
    assert detail in body["detail"].lower()


def test_missing_token_and_replayed_jti_are_rejected(cds_client):
    r = cds_client.http.post(URL, json=hook("nobody"))
    assert_problem(r, 401)
    tok = token(jti="same-jti")
    assert call(cds_client, hook("nobody"), tok).status_code == 200
    body = assert_problem(call(cds_client, hook("nobody"), tok), 401)
    assert "replay" in body["detail"]


def test_a_jti_replayed_to_another_worker_is_rejected(make_app, database):
    # Two apps on one database stand for two gunicorn workers (or two hosts):
    # the replay record is in the store, not in one process's memory.
    config = {
        "KAP_CDS_CLIENTS": {"clients": [{"iss": CDS_ISS, "secret": CDS_SECRET,
                                         "algorithms": ["HS256"]}]},
        "KAP_CDS_AUDIENCE": CDS_AUDIENCE,
    }
    worker_a = SimpleNamespace(http=make_app(database=database, **config).test_client())
    worker_b = SimpleNamespace(http=make_app(database=database, **config).test_client())
    tok = token()
    assert call(worker_a, hook("nobody"), tok).status_code == 200
    body = assert_problem(call(worker_b, hook("nobody"), tok), 401)
    assert "replay" in body["detail"]
    assert call(worker_b, hook("nobody"), token()).status_code == 200  # a new jti passes


def test_rsa_token_signed_by_another_key_is_rejected(cds_client):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tok = token(key=other, alg="RS256", iss="https://rsa-ehr", kid="rsa-1")
    assert_problem(call(cds_client, hook("nobody"), tok), 401)


def test_client_file_errors_are_clear(tmp_path):
    with pytest.raises(CdsConfigError, match="algorithms"):
        load_clients({"clients": [{"iss": "x", "secret": CDS_SECRET, "algorithms": ["none"]}]})
    with pytest.raises(CdsConfigError, match="HS256"):
        load_clients({"clients": [{"iss": "x", "secret": CDS_SECRET, "algorithms": ["RS256"]}]})
    with pytest.raises(CdsConfigError, match="32 bytes"):
        load_clients({"clients": [{"iss": "x", "secret": "short", "algorithms": ["HS256"]}]},
                     allow_hs256=True)
    with pytest.raises(CdsConfigError, match="cannot read"):
        load_clients(tmp_path / "missing.json")
    f = tmp_path / "clients.json"
    doc = {"clients": [{"iss": "x", "secret": CDS_SECRET, "algorithms": ["HS256"]}]}
    f.write_text(json.dumps(doc))
    assert list(load_clients(f, allow_hs256=True)) == ["x"]


def test_broken_clients_file_stops_the_app_at_start(make_app, tmp_path):
    bad = tmp_path / "clients.json"
    bad.write_text('{"clients": [{"iss": "x", "algorithms": ["RS256"]}]}')
    with pytest.raises(CdsConfigError, match=r"clients\[0\]: give jwks"):
        make_app(KAP_CDS_CLIENTS=str(bad))


def test_without_model_the_safety_card_still_comes(cds_client):
    from tests.fixtures.clinic import clinic_history

    c = cds_client  # this app has no model loaded
    for pid, si in (("si-nomodel", True), ("plain-nomodel", False)):
        r = c.http.post(
            "/fhir/r4",
            json=clinic_history(pid, si=si),
            headers={**c.headers(), "Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 200
    (card,) = call(c, hook("si-nomodel"), token()).get_json()["cards"]
    assert card["indicator"] == "critical"
    assert "C-SSRS screener ideation level 4" in card["detail"]
    (card,) = call(c, hook("plain-nomodel"), token()).get_json()["cards"]
    assert card["indicator"] == "info"
    assert "not available" in card["summary"]
    assert "not a suicide-risk assessment" in card["detail"]


def _answer(kind: str) -> dict:
    return {
        "patient_id": "p1",
        "as_of": "2026-11-27",
        "model_version": "v1",
        "status": "insufficient_data" if kind == "population" else "routine",
        "status_reason": "Why.",
        "safety": {"level": None, "reasons": []},
        "risk": {
            "kind": kind,
            "horizons": [{"days": 7, "risk": 0.1}, {"days": 28, "risk": 0.3}],
        },
        "suggestion": {
            "session_by": "2026-12-10",
            "window_start": "2026-12-03",
            "window_end": "2026-12-10",
            "threshold": 0.2,
            "rationale": "Book the next session by 10 Dec 2026.",
            "basis": kind,
        },
    }


def test_population_numbers_are_labelled_in_the_card():
    (card,) = cards_for(_answer("population"), "http://x/patients/p1", [])
    assert card["summary"].endswith("(population estimate, not personalised)")
    assert len(card["summary"]) <= 140
    assert (
        "Risk that the benefit has waned (after 2026-11-27), population estimate, not "
        "personalised (the model's training episodes, not this patient): 7 d 10%, 28 d 30%."
    ) in card["detail"]
    assert card["extension"]["org.kap-forecast.forecast"]["risk_kind"] == "population"
    (mine,) = cards_for(_answer("personalised"), "http://x/patients/p1", [])
    assert "population" not in mine["summary"] + mine["detail"]
    assert mine["extension"]["org.kap-forecast.forecast"]["risk_kind"] == "personalised"


def test_prefetched_entered_in_error_leaves_its_row_out_but_never_a_safety_answer(clinic_client):
    import datetime as dt

    c = clinic_client
    day2 = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)).isoformat()

    def wrong(pid, items):
        return {**phq9_qr(f"{pid}-q3", pid, day2, items), "status": "entered-in-error"}

    # ROUTINE's latest questionnaire alone made its row: the card leaves it out, as the
    # store does once the EHR posts the same resource (the CDS call itself writes nothing).
    routine = wrong(ROUTINE, (1, 1, 1, 0, 1, 1, 0, 0, 0))
    (plain,) = call(c, hook(ROUTINE), token()).get_json()["cards"]
    r = call(c, hook(ROUTINE, {"responses": bundle([routine], "searchset")}), token())
    (card,) = r.get_json()["cards"]
    assert "1 stored row(s) made from them were left out of this forecast" in card["detail"]
    assert len(c.get(f"/api/v1/patients/{ROUTINE}").get_json()["assessments"]) == 4
    post = c.http.post("/fhir/r4", json=bundle([routine]),
                       headers={**c.headers("clinician"), "Content-Type": "application/fhir+json"})
    assert post.status_code == 200
    assert len(c.get(f"/api/v1/patients/{ROUTINE}").get_json()["assessments"]) == 3
    forecast = c.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    data = card["extension"]["org.kap-forecast.forecast"]
    # the row mattered
    assert data["risks"] != plain["extension"]["org.kap-forecast.forecast"]["risks"]
    assert data["risks"] == {str(h["days"]): h["risk"] for h in forecast["risk"]["horizons"]}
    assert data["session_by"] == forecast["suggestion"]["session_by"]

    # URGENT's row of that day also holds the C-SSRS screen (ideation with intent):
    # it stays, and so does the critical card.
    urgent = wrong(URGENT, (1, 1, 1, 0, 1, 1, 0, 0, 2))
    r = call(c, hook(URGENT, {"responses": bundle([urgent], "searchset")}), token())
    (card,) = r.get_json()["cards"]
    assert card["indicator"] == "critical"
    assert "C-SSRS screener ideation level 4" in card["detail"]
    assert "1 stored row(s) also holding other resources' values were kept" in card["detail"]
