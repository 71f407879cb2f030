"""Clinics (tenancy) and the append-only audit trail of every access.

- ``clinic`` on patients, their rows (sessions, assessments, retractions,
  row_sources), tokens and audit rows; every existing row is backfilled with
  ``'default'`` (a single-clinic deployment needs no setting).
- Patients are keyed by ``(clinic, patient_id)``: patient ids are unique per
  clinic, the same id in two clinics is two patients. The rows' foreign keys
  and unique keys include the clinic.
- Audit rows gain ``action``, ``outcome`` and ``detail`` (existing rows are
  forecasts: ``action = 'forecast'``, ``outcome = 'ok'``); the forecast
  columns become optional for other actions.
- Triggers refuse UPDATE and DELETE of audit rows (and TRUNCATE on PostgreSQL):
  the database itself keeps the trail append-only.

On SQLite a table's primary key cannot be altered, and dropping the patients
table would cascade into its rows, so the patient tables are rebuilt: new
tables referencing the new ``patients`` are filled, the old children dropped
first, then the old parent (nothing references it any more), then renamed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT = "'default'"
CHILDREN = {
    # table: (primary key column, unique keys without the clinic)
    "sessions": ("row_id", [("patient_id", "client_id"), ("patient_id", "date")]),
    "assessments": ("row_id", [("patient_id", "client_id"), ("patient_id", "date")]),
    "retractions": ("retraction_id", [("patient_id", "table_name", "client_id")]),
    "row_sources": ("source_pk", [("patient_id", "table_name", "source_id")]),
}
APPEND_ONLY_MESSAGE = "audit rows are append-only"


def _clinic_column(primary_key: bool = False) -> sa.Column:
    return sa.Column(
        "clinic",
        sa.String(64),
        nullable=False,
        primary_key=primary_key,
        server_default=sa.text(DEFAULT),
    )


def _uq_name(table: str, columns: tuple[str, ...]) -> str:
    return f"uq_{table}_" + "_".join(columns)


def _postgresql_patients() -> None:
    for table in CHILDREN:
        op.drop_constraint(f"fk_{table}_patient_id_patients", table, type_="foreignkey")
    op.add_column("patients", _clinic_column())
    op.drop_constraint("pk_patients", "patients", type_="primary")
    op.create_primary_key("pk_patients", "patients", ["clinic", "patient_id"])
    for table, (_pk, uniques) in CHILDREN.items():
        op.add_column(table, _clinic_column())
        for cols in uniques:
            op.drop_constraint(_uq_name(table, cols), table, type_="unique")
            name = _uq_name(table, ("clinic", *cols))
            op.create_unique_constraint(name, table, ["clinic", *cols])
        op.create_foreign_key(
            f"fk_{table}_clinic_patients",
            table,
            "patients",
            ["clinic", "patient_id"],
            ["clinic", "patient_id"],
            ondelete="CASCADE",
        )


def _sqlite_copy(bind: sa.Connection, name: str, target: str, columns: list[str]) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    bind.exec_driver_sql(
        f'INSERT INTO "{target}" (clinic, {names}) SELECT {DEFAULT}, {names} FROM "{name}"'
    )


def _sqlite_columns(bind: sa.Connection, name: str, primary_key: str | None) -> list[sa.Column]:
    out = []
    for c in sa.inspect(bind).get_columns(name):
        out.append(
            sa.Column(
                c["name"],
                c["type"],
                nullable=c["nullable"],
                primary_key=c["name"] == primary_key,
                autoincrement=c["name"] == primary_key,
            )
        )
    return out


def _sqlite_patients(bind: sa.Connection) -> None:
    md = sa.MetaData()
    old_patients = [c["name"] for c in sa.inspect(bind).get_columns("patients")]
    cols = _sqlite_columns(bind, "patients", None)
    for c in cols:
        if c.name == "patient_id":
            c.primary_key = True
    sa.Table(
        "patients_new",
        md,
        _clinic_column(primary_key=True),
        *cols,
        sa.PrimaryKeyConstraint("clinic", "patient_id", name="pk_patients"),
    )
    children: dict[str, list[str]] = {}
    for table, (pk, uniques) in CHILDREN.items():
        children[table] = [c["name"] for c in sa.inspect(bind).get_columns(table)]
        sa.Table(
            f"{table}_new",
            md,
            _clinic_column(),
            *_sqlite_columns(bind, table, pk),
            sa.PrimaryKeyConstraint(pk, name=f"pk_{table}"),
            sa.ForeignKeyConstraint(
                ["clinic", "patient_id"],
                ["patients_new.clinic", "patients_new.patient_id"],
                name=f"fk_{table}_clinic_patients",
                ondelete="CASCADE",
            ),
            *(
                sa.UniqueConstraint("clinic", *cols, name=_uq_name(table, ("clinic", *cols)))
                for cols in uniques
            ),
        )
    md.create_all(bind)
    _sqlite_copy(bind, "patients", "patients_new", old_patients)
    for table, columns in children.items():
        _sqlite_copy(bind, table, f"{table}_new", columns)
    # Children first: dropping the old patients while a table still references it
    # would delete (cascade) that table's rows.
    for table in CHILDREN:
        op.drop_table(table)
    op.drop_table("patients")
    # SQLite (3.26+) rewrites the children's REFERENCES clauses with the rename.
    op.rename_table("patients_new", "patients")
    for table in CHILDREN:
        op.rename_table(f"{table}_new", table)


def _audit(dialect: str) -> None:
    new_columns = [
        _clinic_column(),
        sa.Column("action", sa.String(32), nullable=False, server_default=sa.text("'forecast'")),
        sa.Column("outcome", sa.String(32), nullable=False, server_default=sa.text("'ok'")),
        sa.Column("detail", sa.String(256), nullable=True),
    ]
    with op.batch_alter_table("audit") as batch:
        for column in new_columns:
            batch.add_column(column)
        for name, kind in (
            ("patient_id", sa.String(128)),
            ("as_of", sa.Date()),
            ("inputs_hash", sa.String(64)),
            ("status", sa.String(32)),
        ):
            batch.alter_column(name, existing_type=kind, nullable=True)
    op.create_index("ix_audit_clinic_audit_id", "audit", ["clinic", "audit_id"])
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION kap_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}' "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION kap_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION kap_audit_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_no_{event.lower()} BEFORE {event} ON audit "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        _postgresql_patients()
    else:
        _sqlite_patients(bind)
    op.add_column("tokens", _clinic_column())
    _audit(dialect)


def downgrade() -> None:
    raise NotImplementedError(
        "0005 cannot be undone: patients of several clinics may share an id; restore a backup"
    )
