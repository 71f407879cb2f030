"""Token expiry and last use; ended page sessions are kept in ``cds_jti``.

- ``tokens.expires_at``: when the token stops working (``forecast tokens
  create --expires``); null = until revoked.
- ``tokens.last_used_at``: the last successful authentication (updated at
  most every few minutes, so a busy token does not write on every request).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tokens", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
