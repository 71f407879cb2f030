"""Credentials in the store: bearer tokens (hashed) and the CDS Hooks JWT ids seen."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from service import db
from service.store.base import StoreBase, StoreError
from service.store.values import utc_times, utcnow

ROLES: tuple[str, ...] = ("clinician", "researcher", "admin")
#: A token's last use is written at most this often.
LAST_USED_EVERY = dt.timedelta(minutes=5)
#: A clinic name: letters, digits, ``.``, ``_`` and ``-`` (it names a tenant in
#: the audit and on the command line).
_CLINIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_clinic(clinic: str) -> str:
    """``clinic`` if it is a valid clinic name, else raise :class:`StoreError`."""
    if (
        not isinstance(clinic, str)
        or len(clinic) > db.CLINIC_LENGTH
        or not _CLINIC.fullmatch(clinic)
    ):
        raise StoreError(
            f"clinic {clinic!r}: allowed: 1 to {db.CLINIC_LENGTH} letters, digits, '.', '_', '-'"
        )
    return clinic


def hash_token(token: str) -> str:
    """sha256 hex digest of a bearer token (the only form ever stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Credentials(StoreBase):
    """Bearer tokens and CDS Hooks JWT ids."""

    def create_token(
        self,
        name: str,
        role: str,
        clinic: str | None = None,
        *,
        expires_at: dt.datetime | None = None,
    ) -> str:
        """Create a bearer token of ``clinic`` (default: this store's) and return it.

        Only its sha256 is stored. The token sees the patients of its clinic only;
        names are unique across clinics (an audit row names one token).

        Raises
        ------
        StoreError
            If ``role`` is unknown or ``name`` is already used (revoked names
            stay taken so audit rows keep naming one token).
        """
        if role not in ROLES:
            raise StoreError(f"role {role!r}: allowed: {', '.join(ROLES)}")
        name = name.strip()
        if not name or len(name) > db.ID_LENGTH or not name.isprintable():
            raise StoreError(
                f"token name: allowed: 1 to {db.ID_LENGTH} printable characters (no control "
                "character)"
            )
        clinic = check_clinic(self.clinic_id() if clinic is None else clinic)
        token = secrets.token_urlsafe(32)
        try:
            with self.write() as conn:
                conn.execute(
                    sa.insert(db.tokens).values(
                        name=name,
                        role=role,
                        clinic=clinic,
                        token_hash=hash_token(token),
                        created_at=utcnow(),
                        expires_at=expires_at,
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise StoreError(f"a token named {name!r} already exists") from exc
        return token

    def list_tokens(self, *, all_clinics: bool = False) -> list[dict[str, Any]]:
        """The clinic's tokens (every clinic's with ``all_clinics``) without secrets.

        Each: name, role, clinic, created_at, revoked_at, expires_at, last_used_at.
        """
        t = db.tokens
        query = sa.select(
            t.c.name, t.c.role, t.c.clinic, t.c.created_at, t.c.revoked_at, t.c.expires_at,
            t.c.last_used_at,
        )
        if not all_clinics:
            query = query.where(t.c.clinic == self.clinic_id())
        with self.read() as conn:
            rows = conn.execute(query.order_by(t.c.name)).all()
        return [utc_times(dict(r._mapping)) for r in rows]

    def revoke_token(self, name: str, *, all_clinics: bool = False) -> bool:
        """Revoke the clinic's token called ``name`` (any clinic's with ``all_clinics``).

        False if there is none (or already revoked): a token of another clinic is
        unknown here.
        """
        t = db.tokens
        where = [t.c.name == name, t.c.revoked_at.is_(None)]
        if not all_clinics:
            where.append(t.c.clinic == self.clinic_id())
        with self.write() as conn:
            result = conn.execute(sa.update(t).where(*where).values(revoked_at=utcnow()))
        return result.rowcount == 1

    def token_principal(self, token: str) -> tuple[str, str] | None:
        """``(name, role)`` of a live token, or None (unknown or revoked)."""
        found = self.token_identity(hash_token(token))
        return None if found is None else (found[0], found[1])

    def token_identity(self, digest: str) -> tuple[str, str, str] | None:
        """``(name, role, clinic)`` of the live token whose sha256 is ``digest``, or None.

        Expired tokens are not live. A use is recorded in ``last_used_at`` at
        most every :data:`LAST_USED_EVERY` (no write per request).
        """
        t = db.tokens
        now = utcnow()
        with self.read() as conn:
            row = conn.execute(
                sa.select(
                    t.c.name, t.c.role, t.c.clinic, t.c.token_hash, t.c.expires_at,
                    t.c.last_used_at,
                ).where(t.c.token_hash == digest, t.c.revoked_at.is_(None))
            ).first()
        # The lookup is by hash (no timing signal about the token itself); compare
        # again in constant time so a collation quirk can never match a near miss.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        times = utc_times({"e": row.expires_at, "u": row.last_used_at})
        if times["e"] is not None and times["e"] <= now:
            return None
        if times["u"] is None or now - times["u"] >= LAST_USED_EVERY:
            with self.write() as conn:
                conn.execute(
                    sa.update(t).where(t.c.token_hash == digest).values(last_used_at=now)
                )
        return row.name, row.role, row.clinic

    def end_session(self, session_id: str, keep_until: float) -> None:
        """Record a page session as ended (logout) until it would have expired anyway."""
        self.claim_jti("kap-page-session", session_id, keep_until)

    def session_ended(self, session_id: str) -> bool:
        """Whether the page session ``session_id`` was ended by a logout."""
        t = db.cds_jti
        key = hashlib.sha256(f"kap-page-session\x00{session_id}".encode()).hexdigest()
        with self.read() as conn:
            found = conn.execute(sa.select(t.c.jti_hash).where(t.c.jti_hash == key)).first()
        return found is not None

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
