"""CDS Hooks trust (issue 21, item 5), each finding as a regression test.

- the audience is configuration: with CDS clients and no audience the app does
  not start; a token minted for another deployment is refused even with a forged
  ``Host`` (the audience used to default to a URL built from the Host header);
- HS256 (a shared secret) only behind the explicit test setting: the CDS Hooks
  specification says symmetric algorithms SHALL NOT be used;
- ``hookInstance`` is required.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from service.cds_auth import CdsConfigError, load_clients
from tests.fixtures.clinic import CDS_AUDIENCE, CDS_ISS, CDS_SECRET
from tests.fixtures.service import assert_problem, client_for
from tests.test_cds import URL, call, hook, token

RSA_ISS = "https://rsa-ehr.example"


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rsa_clients(key: Any) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"clients": [{"iss": RSA_ISS, "jwks": {"keys": [jwk]}, "algorithms": ["RS256"]}]}


@pytest.fixture
def production_cds(make_app: Any, rsa_key: Any, monkeypatch: Any) -> Any:
    """An app configured as in production: RS256 client, audience set, no HS256."""
    monkeypatch.delenv("FORECAST_CDS_AUDIENCE", raising=False)
    app = make_app(
        KAP_CDS_CLIENTS=_rsa_clients(rsa_key),
        KAP_CDS_AUDIENCE=CDS_AUDIENCE,
        KAP_CDS_ALLOW_HS256=False,
    )
    return client_for(app)


def test_clients_without_an_audience_stop_the_app(make_app: Any, rsa_key: Any,
                                                   monkeypatch: Any) -> None:
    monkeypatch.delenv("FORECAST_CDS_AUDIENCE", raising=False)
    with pytest.raises(CdsConfigError, match="FORECAST_CDS_AUDIENCE"):
        make_app(KAP_CDS_CLIENTS=_rsa_clients(rsa_key), KAP_CDS_ALLOW_HS256=False)
    # Without clients there is nothing to protect: no audience needed.
    make_app(KAP_CDS_ALLOW_HS256=False)


def test_a_token_for_another_deployment_fails_even_with_a_forged_host(
    production_cds: Any, rsa_key: Any
) -> None:
    c = production_cds
    good = token(key=rsa_key, alg="RS256", iss=RSA_ISS)
    assert call(c, hook("nobody"), good).status_code == 200
    other = "https://other.example/cds-services/kap-forecast-maintenance"
    forged = token(key=rsa_key, alg="RS256", iss=RSA_ISS, aud=other)
    resp = c.http.post(
        URL,
        json=hook("nobody"),
        headers={"Authorization": f"Bearer {forged}", "Host": "other.example"},
        base_url="https://other.example",
    )
    assert_problem(resp, 401, detail="audience")


def test_hs256_needs_the_explicit_test_setting(make_app: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("FORECAST_CDS_ALLOW_HS256", raising=False)
    hs = {"clients": [{"iss": CDS_ISS, "secret": CDS_SECRET, "algorithms": ["HS256"]}]}
    with pytest.raises(CdsConfigError, match="SHALL NOT"):
        make_app(KAP_CDS_CLIENTS=hs, KAP_CDS_AUDIENCE=CDS_AUDIENCE, KAP_CDS_ALLOW_HS256=False)
    with pytest.raises(CdsConfigError, match="HS256"):
        load_clients(hs)  # the library refuses it by default too
    assert list(load_clients(hs, allow_hs256=True)) == [CDS_ISS]
    # The environment variable is the explicit setting.
    from service.config import load_config

    cfg = load_config(make_app().instance_path, environ={"FORECAST_CDS_ALLOW_HS256": "1"})
    assert cfg["KAP_CDS_ALLOW_HS256"] is True
    assert load_config(make_app().instance_path, environ={})["KAP_CDS_ALLOW_HS256"] is False


def test_an_hs256_token_is_refused_by_an_rs256_deployment(production_cds: Any) -> None:
    # alg confusion: an HS256 token "signed" with the public key text must not pass.
    resp = call(production_cds, hook("nobody"), token(iss=RSA_ISS))
    assert_problem(resp, 401, detail="algorithm")


def test_hook_instance_is_required(production_cds: Any, rsa_key: Any) -> None:
    c = production_cds
    for bad in (None, "", 5, "x" * 200):
        body = hook("nobody")
        if bad is None:
            body.pop("hookInstance")
        else:
            body["hookInstance"] = bad
        resp = call(c, body, token(key=rsa_key, alg="RS256", iss=RSA_ISS))
        assert_problem(resp, 400, field="/hookInstance")
