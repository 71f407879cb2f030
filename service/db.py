"""Tables of the store (SQLAlchemy Core), derived from :mod:`forecast.contract`.

The Alembic migrations in ``service/migrations/versions`` create exactly these
tables; ``tests/test_service_store.py`` compares the migrated database with
this metadata so the two cannot drift apart.

Every ingested row keeps the client's ``client_id`` (unique per patient and
table, NULL allowed) and a ``content_hash`` of its canonical values, which is
what makes a retried POST idempotent and a changed retry a 409.
"""

from __future__ import annotations

import sqlalchemy as sa

from forecast.contract import TABLES, Column

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Longest accepted identifiers (patient ids, client ids, token names).
ID_LENGTH = 128
#: Longest client row id (forecast.data.MAX_CLIENT_ID_LENGTH).
CLIENT_ID_LENGTH = 200
#: Longest clinic name.
CLINIC_LENGTH = 64
#: The clinic of a single-clinic deployment (and of every row stored before clinics).
DEFAULT_CLINIC = "default"


def _clinic_column() -> sa.Column:
    """The clinic a row belongs to (tenancy: every query of the service filters by it)."""
    return sa.Column(
        "clinic",
        sa.String(CLINIC_LENGTH),
        nullable=False,
        server_default=sa.text(f"'{DEFAULT_CLINIC}'"),
    )


def _sql_type(column: Column) -> sa.types.TypeEngine:
    if column.kind == "date":
        return sa.Date()
    if column.kind == "int":
        return sa.Integer()
    if column.kind == "float":
        return sa.Float()
    if column.kind == "bool":
        return sa.Boolean(create_constraint=False)
    if column.kind == "category":
        return sa.String(32)
    return sa.String(ID_LENGTH)


def _contract_columns(table: str) -> list[sa.Column]:
    return [
        sa.Column(c.name, _sql_type(c), nullable=c.nullable)
        for c in TABLES[table]
        if c.name != "patient_id"
    ]


#: Patients are keyed by (clinic, patient_id): patient ids are unique per clinic, so
#: the same id sent by two clinics is two patients (each clinic's EHR numbers its own).
patients = sa.Table(
    "patients",
    metadata,
    sa.Column("clinic", sa.String(CLINIC_LENGTH), primary_key=True,
              server_default=sa.text(f"'{DEFAULT_CLINIC}'")),
    sa.Column("patient_id", sa.String(ID_LENGTH), primary_key=True),
    *_contract_columns("patients"),
    # Declared covariates (FORECAST_COVARIATES) as a JSON object {name: number}.
    sa.Column("covariates", sa.Text, nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _patient_columns() -> list[sa.SchemaItem]:
    """The owning patient of a row (clinic and id); deleting the patient deletes the row."""
    return [
        _clinic_column(),
        sa.Column("patient_id", sa.String(ID_LENGTH), nullable=False),
        sa.ForeignKeyConstraint(
            ["clinic", "patient_id"],
            ["patients.clinic", "patients.patient_id"],
            ondelete="CASCADE",
        ),
    ]


def _history_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("row_id", sa.Integer, primary_key=True, autoincrement=True),
        *_patient_columns(),
        sa.Column("client_id", sa.String(CLIENT_ID_LENGTH), nullable=True),
        *list(_contract_columns(name)),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("clinic", "patient_id", "client_id"),
        sa.UniqueConstraint("clinic", "patient_id", "date"),
    )


sessions = _history_table("sessions")
assessments = _history_table("assessments")

#: The history tables by contract table name.
HISTORY = {"sessions": sessions, "assessments": assessments}

#: Rows withdrawn as entered in error (FHIR ``status = entered-in-error``): the row
#: itself is deleted from its history table, and this tombstone stays, so a retried
#: import of the erroneous resource cannot bring it back. Only inserted, never
#: updated; ``row_date`` and ``row_hash`` describe the deleted row (NULL when no
#: stored row carried the id: the tombstone then only blocks a later import), and
#: ``retracted_by`` names the token that asked (NULL from the Python API).
retractions = sa.Table(
    "retractions",
    metadata,
    sa.Column("retraction_id", sa.Integer, primary_key=True, autoincrement=True),
    *_patient_columns(),
    sa.Column("table_name", sa.String(16), nullable=False),
    sa.Column("client_id", sa.String(CLIENT_ID_LENGTH), nullable=False),
    sa.Column("row_date", sa.Date, nullable=True),
    sa.Column("row_hash", sa.String(64), nullable=True),
    sa.Column("retracted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retracted_by", sa.String(ID_LENGTH), nullable=True),
    sa.UniqueConstraint("clinic", "patient_id", "table_name", "client_id"),
)

#: The other resources merged into one history row (the FHIR importer makes one
#: assessment row of a patient's questionnaires and observations of one day; the
#: row keeps the id of one of them). A withdrawal of any of them finds the row
#: here, and knows which values besides its own the row holds.
row_sources = sa.Table(
    "row_sources",
    metadata,
    sa.Column("source_pk", sa.Integer, primary_key=True, autoincrement=True),
    *_patient_columns(),
    sa.Column("table_name", sa.String(16), nullable=False),
    sa.Column("client_id", sa.String(CLIENT_ID_LENGTH), nullable=False),
    sa.Column("source_id", sa.String(CLIENT_ID_LENGTH), nullable=False),
    sa.UniqueConstraint("clinic", "patient_id", "table_name", "source_id"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_id", sa.Integer, primary_key=True, autoincrement=True),
    # Names are unique across the deployment, so an audit row names one token.
    sa.Column("name", sa.String(ID_LENGTH), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    # The clinic whose patients the token sees (an admin manages that clinic's tokens).
    _clinic_column(),
    # sha256 hex of the token; the token itself is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    # When the token stops working (null: until revoked); its last successful use.
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
)

#: The audit trail: one row per access to patient data (read, write, withdrawal,
#: forecast, FHIR import, CDS call, page view) and per token or model change.
#: Append-only: no route updates or deletes a row, and migration 0005 adds
#: triggers that make the database refuse UPDATE and DELETE of it. ``token_name``
#: is the actor (a token name, or ``cds:<client>``); rows name the patient id but
#: never clinical values. The forecast columns (``as_of`` ... ``suggested_date``)
#: are filled for ``action = 'forecast'`` only.
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("audit_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    _clinic_column(),
    sa.Column("token_name", sa.String(ID_LENGTH), nullable=False),
    sa.Column("action", sa.String(32), nullable=False, server_default=sa.text("'forecast'")),
    sa.Column("patient_id", sa.String(ID_LENGTH), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False, server_default=sa.text("'ok'")),
    # A short description without clinical values (a token's name and role, a model version).
    sa.Column("detail", sa.String(256), nullable=True),
    sa.Column("as_of", sa.Date, nullable=True),
    sa.Column("model_version", sa.String(ID_LENGTH), nullable=True),
    # sha256 of the canonical inputs (history up to as_of, threshold, model version).
    sa.Column("inputs_hash", sa.String(64), nullable=True),
    sa.Column("status", sa.String(32), nullable=True),
    sa.Column("suggested_date", sa.Date, nullable=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Index(None, "patient_id"),
    sa.Index(None, "time"),
    sa.Index(None, "clinic", "audit_id"),
    # A FHIR RiskAssessment is read by its id, the audited inputs hash (migration 0007).
    sa.Index(None, "clinic", "inputs_hash"),
)

#: CDS Hooks JWT ids already accepted, until their token expires: the replay check
#: shared by every worker (``Store.claim_jti``). The key is a SHA-256 of the issuer
#: and the jti, so no length limit of either reaches the database.
cds_jti = sa.Table(
    "cds_jti",
    metadata,
    sa.Column("jti_hash", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(None, "expires_at"),
)

#: Small shared settings of the running service (one row per key), e.g. the
#: live model version that every worker follows after a reload.
service_state = sa.Table(
    "service_state",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
