"""Initial store: patients, sessions, assessments, tokens, audit, service state.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _history(name: str, *columns: sa.Column) -> None:
    op.create_table(
        name,
        sa.Column("row_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=True),
        *columns,
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.patient_id"],
            name=f"fk_{name}_patient_id_patients",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("row_id", name=f"pk_{name}"),
        sa.UniqueConstraint("patient_id", "client_id", name=f"uq_{name}_patient_id_client_id"),
        sa.UniqueConstraint("patient_id", "date", name=f"uq_{name}_patient_id_date"),
    )


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("age", sa.Float(), nullable=True),
        sa.Column("sex", sa.String(32), nullable=True),
        sa.Column("diagnosis", sa.String(32), nullable=True),
        sa.Column("prior_treatments", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name="pk_patients"),
    )
    _history(
        "sessions",
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("dose_mg_per_kg", sa.Float(), nullable=True),
        sa.Column("route", sa.String(32), nullable=True),
        sa.Column("psychotherapy", sa.Boolean(create_constraint=False), nullable=True),
        sa.Column("dissociation", sa.Float(), nullable=True),
        sa.Column("systolic_bp_max", sa.Float(), nullable=True),
    )
    _history(
        "assessments",
        sa.Column("date", sa.Date(), nullable=False),
        *(sa.Column(f"phq9_{i}", sa.Integer(), nullable=True) for i in range(1, 10)),
        sa.Column("phq9_total", sa.Integer(), nullable=True),
        sa.Column("cssrs_ideation", sa.Integer(), nullable=True),
        sa.Column("cssrs_behavior", sa.Integer(), nullable=True),
    )
    op.create_table(
        "tokens",
        sa.Column("token_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name="pk_tokens"),
        sa.UniqueConstraint("name", name="uq_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
    )
    op.create_table(
        "audit",
        sa.Column("audit_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_name", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("inputs_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("suggested_date", sa.Date(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("audit_id", name="pk_audit"),
    )
    op.create_index("ix_audit_patient_id", "audit", ["patient_id"])
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_table(
        "service_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_service_state"),
    )


def downgrade() -> None:
    op.drop_table("service_state")
    op.drop_index("ix_audit_time", table_name="audit")
    op.drop_index("ix_audit_patient_id", table_name="audit")
    op.drop_table("audit")
    op.drop_table("tokens")
    op.drop_table("assessments")
    op.drop_table("sessions")
    op.drop_table("patients")
