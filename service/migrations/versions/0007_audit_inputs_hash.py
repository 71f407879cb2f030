"""Index the audit's inputs hash: a FHIR RiskAssessment is read by it.

``GET /fhir/r4/RiskAssessment/{id}`` finds the audited forecast whose inputs
hash is the id (``Store.forecast_audited``: clinic and hash). Without an
index that lookup scans the whole audit trail, which grows by one row per
forecast served (millions in a busy clinic). Creating the index reads the
table once; no row changes (the audit stays append-only).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_clinic_inputs_hash", "audit", ["clinic", "inputs_hash"])


def downgrade() -> None:
    op.drop_index("ix_audit_clinic_inputs_hash", table_name="audit")
