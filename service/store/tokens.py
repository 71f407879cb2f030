"""Credentials in the store: bearer tokens (hashed) and the CDS Hooks JWT ids seen."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from service import db
from service.store.base import StoreBase, StoreError
from service.store.values import utc_times, utcnow

ROLES: tuple[str, ...] = ("clinician", "researcher", "admin")


def hash_token(token: str) -> str:
    """sha256 hex digest of a bearer token (the only form ever stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Credentials(StoreBase):
    """Bearer tokens and CDS Hooks JWT ids."""

    def create_token(self, name: str, role: str) -> str:
        """Create a bearer token and return it (only its sha256 is stored).

        Raises
        ------
        StoreError
            If ``role`` is unknown or ``name`` is already used (revoked names
            stay taken so audit rows keep naming one token).
        """
        if role not in ROLES:
            raise StoreError(f"role {role!r}: allowed: {', '.join(ROLES)}")
        name = name.strip()
        if not name or len(name) > db.ID_LENGTH:
            raise StoreError(f"token name: allowed: 1 to {db.ID_LENGTH} characters")
        token = secrets.token_urlsafe(32)
        try:
            with self.write() as conn:
                conn.execute(
                    sa.insert(db.tokens).values(
                        name=name, role=role, token_hash=hash_token(token), created_at=utcnow()
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise StoreError(f"a token named {name!r} already exists") from exc
        return token

    def list_tokens(self) -> list[dict[str, Any]]:
        """All tokens without secrets: name, role, created_at, revoked_at."""
        t = db.tokens
        with self.read() as conn:
            rows = conn.execute(
                sa.select(t.c.name, t.c.role, t.c.created_at, t.c.revoked_at).order_by(t.c.name)
            ).all()
        return [utc_times(dict(r._mapping)) for r in rows]

    def revoke_token(self, name: str) -> bool:
        """Revoke the token called ``name``; False if there is none (or already revoked)."""
        t = db.tokens
        with self.write() as conn:
            result = conn.execute(
                sa.update(t)
                .where(t.c.name == name, t.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return result.rowcount == 1

    def token_principal(self, token: str) -> tuple[str, str] | None:
        """``(name, role)`` of a live token, or None (unknown or revoked)."""
        digest = hash_token(token)
        t = db.tokens
        with self.read() as conn:
            row = conn.execute(
                sa.select(t.c.name, t.c.role, t.c.token_hash).where(
                    t.c.token_hash == digest, t.c.revoked_at.is_(None)
                )
            ).first()
        # The lookup is by hash (no timing signal about the token itself); compare
        # again in constant time so a collation quirk can never match a near miss.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return row.name, row.role

    def claim_jti(self, issuer: str, jti: str, keep_until: float) -> bool:
        """Record a CDS Hooks JWT id; True the first time, False on a replay.

        Shared by every worker and process on the store, so a token replayed to
        another gunicorn worker is refused too. ``keep_until`` (epoch seconds)
        is when the token can no longer pass the expiry check; the record is
        deleted after it. One statement decides, ``INSERT ... ON CONFLICT DO
        NOTHING``, so two workers racing on the same jti accept it once.
        """
        t = db.cds_jti
        key = hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()
        until = dt.datetime.fromtimestamp(keep_until, dt.UTC)
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

        def work(conn: Connection) -> bool:
            conn.execute(sa.delete(t).where(t.c.expires_at < utcnow()))
            added = conn.execute(
                insert(t)
                .values(jti_hash=key, expires_at=until)
                .on_conflict_do_nothing(index_elements=["jti_hash"])
                .returning(t.c.jti_hash)  # no row on a conflict (rowcount is -1 on psycopg)
            ).first()
            return added is not None

        return self.run_write(work)
