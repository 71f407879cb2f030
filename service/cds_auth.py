"""Who may call the CDS Hooks service: the EHR clients' allow-list and their JWTs.

An EHR authenticates with a JWT bearer token as the CDS Hooks 2.0
specification describes ("Trusting CDS Clients"): signed by the EHR; ``iss``
in the allow-list, ``aud`` = the URL of the service endpoint, ``exp`` at most
5 minutes ahead, ``jti`` never seen before by any worker
(:meth:`service.store.Store.claim_jti`). Keys come from a configuration file
(never fetched from the token's ``jku``): see :func:`load_clients`.

The audience is configuration, never the request: when clients are
configured, ``FORECAST_CDS_AUDIENCE`` (or the file's ``audience``) must name
the endpoint's public URL, else the app refuses to start (a URL built from the
``Host`` header would let a token minted for another deployment pass with a
forged ``Host``). HS256 shared secrets are refused unless
``FORECAST_CDS_ALLOW_HS256=1`` (tests only): the CDS Hooks specification says
symmetric algorithms SHALL NOT be used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from flask import current_app, request

from service.auth import Principal
from service.errors import ApiProblem
from service.serving import store
from service.store import StoreError, check_clinic

#: Longest token lifetime accepted (the specification recommends 5 minutes).
MAX_LIFETIME_SECONDS = 300
#: Clock skew tolerated on exp / iat.
LEEWAY_SECONDS = 30
ALLOWED_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384", "HS256")
#: Symmetric algorithms: only with the explicit test setting (KAP_CDS_ALLOW_HS256).
SYMMETRIC_ALGORITHMS = ("HS256",)


@dataclass
class CdsClient:
    """One EHR allowed to call the service.

    Attributes
    ----------
    iss : str
        The issuer the EHR puts in its tokens.
    keys : list
        Verification keys (PEM public keys, JWK dicts or an HS256 secret).
    algorithms : tuple of str
        Algorithms accepted from this client.
    name : str
        Recorded in the audit table as ``cds:<name>``.
    clinic : str
        The clinic whose patients this EHR sees (``default`` when the file names none).
    """

    iss: str
    keys: list[Any]
    algorithms: tuple[str, ...]
    name: str
    kids: list[str | None] = field(default_factory=list)
    clinic: str = "default"


class CdsConfigError(ValueError):
    """The CDS clients file cannot be used."""


def _client_algorithms(c: Mapping[str, Any], where: str, allow_hs256: bool) -> tuple[Any, ...]:
    """The client's signing algorithms, checked against the allowed ones."""
    algs = tuple(c.get("algorithms") or ())
    bad = [a for a in algs if a not in ALLOWED_ALGORITHMS]
    if not algs or bad:
        raise CdsConfigError(
            f"{where}.algorithms: allowed: {', '.join(ALLOWED_ALGORITHMS)}; got {list(algs)}"
        )
    if not allow_hs256 and set(algs) & set(SYMMETRIC_ALGORITHMS):
        raise CdsConfigError(
            f"{where}.algorithms: HS256 (a shared secret) is for tests only "
            "(FORECAST_CDS_ALLOW_HS256=1); the CDS Hooks specification says symmetric "
            "algorithms SHALL NOT be used: give the EHR's public keys (RS/ES)"
        )
    return algs


def _client_keys(
    c: Mapping[str, Any], where: str, algs: tuple[Any, ...], base: Path
) -> tuple[list[Any], list[str | None]]:
    """The client's verification keys and their key ids (JWKS, PEM or test secret)."""
    keys: list[Any] = []
    kids: list[str | None] = []
    jwks = c.get("jwks")
    if c.get("jwks_file"):
        jwks = json.loads((base / c["jwks_file"]).read_text(encoding="utf-8"))
    if jwks:
        for jwk in jwks.get("keys", []):
            keys.append(jwt.PyJWK(jwk).key)
            kids.append(jwk.get("kid"))
    if c.get("public_key_file"):
        keys.append((base / c["public_key_file"]).read_text(encoding="utf-8"))
        kids.append(c.get("kid"))
    if c.get("public_key"):
        keys.append(c["public_key"])
        kids.append(c.get("kid"))
    if c.get("secret"):
        if algs != ("HS256",):
            raise CdsConfigError(f"{where}: a shared secret needs algorithms ['HS256'] only")
        if len(str(c["secret"]).encode()) < 32:
            raise CdsConfigError(f"{where}.secret: use at least 32 bytes (RFC 7518 3.2)")
        keys.append(c["secret"])
        kids.append(c.get("kid"))
    if not keys:
        raise CdsConfigError(
            f"{where}: give jwks, jwks_file, public_key, public_key_file or (tests) secret"
        )
    return keys, kids


def load_clients(
    source: Any, base: Path | None = None, *, allow_hs256: bool = False
) -> dict[str, CdsClient]:
    """Read the allow-list of EHR clients.

    Parameters
    ----------
    source : str, Path or mapping
        A JSON file path or the parsed document::

            {"audience": "https://forecast.example.org/cds-services/kap-forecast-maintenance",
             "clients": [
               {"iss": "https://ehr.example.org", "name": "ehr",
                "jwks": {"keys": [...]} | "jwks_file": "ehr-jwks.json"
                | "public_key_file": "ehr.pem" | "public_key": "-----BEGIN ...",
                "algorithms": ["RS256", "ES384"]},
               {"iss": "test-ehr", "secret": "...", "algorithms": ["HS256"]}]}

        Each client may name its ``"clinic"`` (default ``"default"``): the
        EHR sees only that clinic's patients.

    base : Path, optional
        Folder that relative file names are read from (the file's folder).
    allow_hs256 : bool
        Accept HS256 clients (shared secrets): tests only. The service passes
        ``KAP_CDS_ALLOW_HS256`` (``FORECAST_CDS_ALLOW_HS256=1``).

    Returns
    -------
    dict
        ``iss`` -> :class:`CdsClient`.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CdsConfigError(f"FORECAST_CDS_CLIENTS={path}: cannot read ({exc})") from None
        base = path.parent
    else:
        doc = dict(source)
    base = base or Path.cwd()
    clients: dict[str, CdsClient] = {}
    for k, c in enumerate(doc.get("clients") or []):
        where = f"clients[{k}]"
        iss = c.get("iss")
        if not isinstance(iss, str) or not iss:
            raise CdsConfigError(f"{where}.iss: a non-empty issuer is required")
        algs = _client_algorithms(c, where, allow_hs256)
        keys, kids = _client_keys(c, where, algs, base)
        clinic = c.get("clinic", "default")
        try:
            check_clinic(clinic)
        except StoreError:
            raise CdsConfigError(
                f"{where}.clinic: allowed: letters, digits, '.', '_', '-' (1 to 64)"
            ) from None
        clients[iss] = CdsClient(iss, keys, algs, str(c.get("name") or iss), kids, clinic)
    return clients


def client_settings(app: Any = None) -> dict[str, Any]:
    """Clients and audience of this app (loaded once)."""
    app = app or current_app
    state = app.extensions.get("kap_cds")
    if state is None:
        source = app.config.get("KAP_CDS_CLIENTS") or os.environ.get("FORECAST_CDS_CLIENTS")
        doc: Mapping[str, Any] = {}
        base = None
        if isinstance(source, Mapping):
            doc = source
        elif source:
            path = Path(source)
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CdsConfigError(f"FORECAST_CDS_CLIENTS={path}: cannot read ({exc})") from None
            base = path.parent
        allow_hs256 = bool(app.config.get("KAP_CDS_ALLOW_HS256"))
        clients = load_clients(doc, base, allow_hs256=allow_hs256) if doc else {}
        doc_audience = doc.get("audience")
        audience = (
            app.config.get("KAP_CDS_AUDIENCE")
            or os.environ.get("FORECAST_CDS_AUDIENCE")
            or doc_audience
        )
        if clients and not (isinstance(audience, str) and audience.startswith(("https://",
                                                                               "http://"))):
            raise CdsConfigError(
                "FORECAST_CDS_AUDIENCE (or the clients file's 'audience') must be the public "
                "URL of the CDS service endpoint when CDS clients are configured, e.g. "
                "https://forecast.example.org/cds-services/kap-forecast-maintenance"
            )
        state = {"clients": clients, "audience": audience}
        app.extensions["kap_cds"] = state
    return state


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, detail=detail, headers={"WWW-Authenticate": 'Bearer realm="cds-hooks"'})


def authenticate_ehr() -> Principal:
    """Verify the EHR's JWT (CDS Hooks 2.0 "Trusting CDS Clients").

    Raises
    ------
    ApiProblem
        401 with a reason that names the failed check (never the token).
    """
    state = client_settings()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Send the EHR's JWT as 'Authorization: Bearer <jwt>'.")
    token = token.strip()
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        head = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _unauthorized("The bearer token is not a JWT.") from None
    iss = unverified.get("iss")
    client = state["clients"].get(iss) if isinstance(iss, str) else None
    if client is None:
        raise _unauthorized("The token's issuer (iss) is not an allowed CDS client.")
    alg = head.get("alg")
    if alg not in client.algorithms:
        raise _unauthorized(f"Algorithm {alg!r} is not allowed for this client.")
    audience = state["audience"]  # configured (checked at start), never from the request
    kid = head.get("kid")
    candidates = [k for k, kk in zip(client.keys, client.kids, strict=True) if kk in (kid, None)]
    claims = None
    last_error = "no key of this client matches the token's kid"
    for key in candidates or client.keys:
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=client.iss,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
            break
        except jwt.InvalidSignatureError:
            last_error = "the signature does not verify with the client's keys"
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired (exp).") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("The token's audience (aud) is not this service's URL.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"The token lacks the required claim {exc.claim!r}.") from None
        except jwt.PyJWTError as exc:
            last_error = type(exc).__name__
    if claims is None:
        raise _unauthorized(f"The token was rejected: {last_error}.")
    now = time.time()
    if float(claims["exp"]) > now + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
        raise _unauthorized("The token's exp is more than 5 minutes ahead; send a short-lived JWT.")
    # Recorded in the store, so a replay to another worker or process is refused too.
    if not store().claim_jti(client.iss, str(claims["jti"]), float(claims["exp"]) + LEEWAY_SECONDS):
        raise _unauthorized("The token's jti was already used (replay).")
    return Principal(f"cds:{client.name}"[:128], "clinician", client.clinic)
