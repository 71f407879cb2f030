"""Withdrawal of rows entered in error: tombstones and the resources merged into a row.

``service.db.retractions`` and ``service.db.row_sources``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: service_state key: when merged resources began to be recorded (ISO time, UTC;
#: ``service.store.LEGACY_SOURCES_KEY``).
LEGACY_KEY = "row_sources_since"


def upgrade() -> None:
    op.create_table(
        "retractions",
        sa.Column("retraction_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("table_name", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("row_date", sa.Date(), nullable=True),
        sa.Column("row_hash", sa.String(64), nullable=True),
        sa.Column("retracted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retracted_by", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.patient_id"],
            name="fk_retractions_patient_id_patients",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("retraction_id", name="pk_retractions"),
        sa.UniqueConstraint(
            "patient_id",
            "table_name",
            "client_id",
            name="uq_retractions_patient_id_table_name_client_id",
        ),
    )


    op.create_table(
        "row_sources",
        sa.Column("source_pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("table_name", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("source_id", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.patient_id"],
            name="fk_row_sources_patient_id_patients",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("source_pk", name="pk_row_sources"),
        sa.UniqueConstraint(
            "patient_id",
            "table_name",
            "source_id",
            name="uq_row_sources_patient_id_table_name_source_id",
        ),
    )


    # Rows imported before this revision may merge several FHIR resources without a
    # record of which (row_sources starts now): the store treats those rows with care
    # (service.store.Store.locate). The mark is this moment: rows created before it.
    # (Not a row id: SQLite may give a deleted highest row id to the next row.)
    now = dt.datetime.now(dt.UTC)
    state = sa.table(
        "service_state",
        sa.column("key", sa.String),
        sa.column("value", sa.String),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        state,
        [{"key": LEGACY_KEY, "value": now.isoformat(), "updated_at": now}],
    )


def downgrade() -> None:
    op.execute(sa.text(f"DELETE FROM service_state WHERE key = '{LEGACY_KEY}'"))
    op.drop_table("row_sources")
    op.drop_table("retractions")
