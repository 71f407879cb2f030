"""Bearer-token authentication and role checks.

Roles: ``clinician`` (patient data, forecasts), ``researcher`` (model card,
outcome reports), ``admin`` (tokens, model reload; may do everything).
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
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import current_app, g, request, session

from service import db
from service.errors import ApiProblem
from service.store import ROLES, Store, hash_token

F = TypeVar("F", bound=Callable[..., Any])

REALM = "kap-forecast"
_SESSION_KEY = "kap_token_sha256"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role.

    Attributes
    ----------
    name : str
        The token's name (recorded in the audit table).
    role : str
        One of ``clinician``, ``researcher``, ``admin``.
    """

    name: str
    role: str

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
    found = _store().token_principal(token)
    return Principal(*found) if found else None


def _principal_from_hash(digest: str) -> Principal | None:
    t = db.tokens
    with _store().read() as conn:
        row = conn.execute(
            sa.select(t.c.name, t.c.role, t.c.token_hash).where(
                t.c.token_hash == digest, t.c.revoked_at.is_(None)
            )
        ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Principal(row.name, row.role)


def login_session(token: str) -> Principal | None:
    """Log the browser in: check ``token`` and keep its hash in the session cookie.

    Returns the principal, or None (and clears the session) if the token is
    not valid. A revoked token ends every session made with it.
    """
    principal = principal_from_token(token)
    session.pop(_SESSION_KEY, None)
    if principal is not None:
        session[_SESSION_KEY] = hash_token(token)
        g.principal = principal
    return principal


def logout_session() -> None:
    """Forget the session's token."""
    session.pop(_SESSION_KEY, None)
    g.pop("principal", None)


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
            principal = _principal_from_hash(digest)
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
