"""Bearer-token authentication and role checks.

Roles: ``clinician`` (patient data, forecasts), ``researcher`` (model card,
outcome reports), ``admin`` (tokens, audit, model reload; may do everything).

Every token belongs to a clinic (:attr:`Principal.clinic`; ``default`` on a
single-clinic deployment): the request's store (:func:`service.serving.store`)
sees only that clinic's patients, tokens and audit rows, so a patient of another
clinic is unknown (404), never forbidden (403). An admin manages the tokens
and reads the audit of their own clinic; a researcher's reports cover their
clinic. The live model is shared by the deployment, so only an admin of the
``default`` clinic may reload it.
Tokens are ``secrets.token_urlsafe(32)`` strings; the store keeps only their
sha256 (see :meth:`service.store.Store.create_token`).

Every view either carries :func:`require_role` or is explicitly marked
:func:`public` (health, ``/openapi.json``, CDS Hooks discovery, a login
page); ``tests/test_service_auth.py`` walks ``app.url_map`` and proves that
every other rule answers 401 without a token.

Pages may log a clinician in with a token and a session cookie:
:func:`login_session` checks the token and keeps its hash in the signed
session; views decorated with ``require_role(..., allow_session=True)`` then
accept it. The JSON API accepts only the ``Authorization`` header, so a
browser's cookie can never be replayed against it (no CSRF surface).
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, g, request, session

from service.errors import ApiProblem
from service.store import DEFAULT_CLINIC, ROLES, Store, hash_token

F = TypeVar("F", bound=Callable[..., Any])

REALM = "kap-forecast"
_SESSION_KEY = "kap_token_sha256"
_SESSION_ID = "kap_sid"
_SESSION_START = "kap_login"
#: A page session ends at the latest this long after login (sign in again).
SESSION_MAX_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's (or CDS client's) name, role and clinic.

    Attributes
    ----------
    name : str
        The token's name (recorded in the audit table).
    role : str
        One of ``clinician``, ``researcher``, ``admin``.
    clinic : str
        The clinic whose patients the caller sees (``default``: single clinic).
    """

    name: str
    role: str
    clinic: str = DEFAULT_CLINIC

    def allowed(self, roles: tuple[str, ...]) -> bool:
        """Whether this principal may use a view open to ``roles`` (admin may do all)."""
        return self.role == "admin" or self.role in roles


def _store() -> Store:
    return current_app.extensions["kap_store"]


def principal_from_token(token: str | None) -> Principal | None:
    """The principal of a live bearer token, or None (missing, unknown, revoked).

    Parameters
    ----------
    token : str or None
        The bearer token as the client sent it.
    """
    if not token or len(token) > 512:
        return None
    return _principal_from_hash(hash_token(token))


def _principal_from_hash(digest: str) -> Principal | None:
    found = _store().token_identity(digest)
    return Principal(*found) if found else None


def login_session(token: str) -> Principal | None:
    """Log the browser in: check ``token`` and keep its hash in the session cookie.

    Returns the principal, or None (and clears the session) if the token is
    not valid. A revoked token ends every session made with it.
    """
    principal = principal_from_token(token)
    for key in (_SESSION_KEY, _SESSION_ID, _SESSION_START):
        session.pop(key, None)
    if principal is not None:
        session[_SESSION_KEY] = hash_token(token)
        # A fresh id per login: logout records it as ended in the store, so a copy of
        # the cookie stops working on every worker (server-side invalidation).
        session[_SESSION_ID] = secrets.token_urlsafe(24)
        session[_SESSION_START] = int(time.time())
        g.principal = principal
    return principal


def logout_session() -> None:
    """End the session server-side (its id is recorded as ended) and forget it."""
    sid, start = session.get(_SESSION_ID), session.get(_SESSION_START)
    if isinstance(sid, str) and isinstance(start, int):
        _store().end_session(sid, start + SESSION_MAX_SECONDS + 60)
    for key in (_SESSION_KEY, _SESSION_ID, _SESSION_START):
        session.pop(key, None)
    g.pop("principal", None)


def _live_session() -> bool:
    """The session has an id, is younger than SESSION_MAX_SECONDS and was not logged out."""
    sid, start = session.get(_SESSION_ID), session.get(_SESSION_START)
    if not isinstance(sid, str) or not isinstance(start, int):
        return False
    if not 0 <= time.time() - start < SESSION_MAX_SECONDS:
        return False
    return not _store().session_ended(sid)


def bearer_token() -> str | None:
    """The token of the ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def current_principal(*, allow_session: bool = False) -> Principal | None:
    """Authenticate the request (header first, then the session if allowed)."""
    if "principal" in g and g.principal is not None:
        return g.principal
    principal = principal_from_token(bearer_token())
    if principal is None and allow_session:
        digest = session.get(_SESSION_KEY)
        if isinstance(digest, str) and len(digest) == 64:
            principal = _principal_from_hash(digest) if _live_session() else None
            if principal is None:
                session.pop(_SESSION_KEY, None)
    g.principal = principal
    return principal


def unauthorized(detail: str = "Send 'Authorization: Bearer <token>'.") -> ApiProblem:
    """The 401 problem with the ``WWW-Authenticate`` challenge."""
    return ApiProblem(
        401,
        detail=detail,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
    )


def require_role(*roles: str, allow_session: bool = False) -> Callable[[F], F]:
    """Decorate a view so that only tokens with one of ``roles`` (or admin) may call it.

    Parameters
    ----------
    *roles : str
        Roles allowed besides admin.
    allow_session : bool
        Also accept a browser session made by :func:`login_session` (pages only).

    Raises
    ------
    ApiProblem
        401 (with ``WWW-Authenticate``) without a valid token, 403 with the
        wrong role. Sets ``g.principal`` for the view.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; allowed: {', '.join(ROLES)}")
    allowed = tuple(roles)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal(allow_session=allow_session)
            if principal is None:
                if request.headers.get("Authorization"):
                    raise unauthorized("The token is unknown or revoked.")
                raise unauthorized()
            if not principal.allowed(allowed):
                needed = ", ".join((*allowed, "admin"))
                raise ApiProblem(403, detail=f"This needs a token with role: {needed}.")
            return view(*args, **kwargs)

        wrapped.kap_roles = allowed  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorate


def public(view: F) -> F:
    """Mark a view as deliberately open (no token); the auth test checks the marks."""
    view.kap_public = True  # type: ignore[attr-defined]
    return view
