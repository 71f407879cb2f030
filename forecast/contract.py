"""The data contract: one place that names every column, its type and its allowed values.

The CSV/Parquet loader, the JSON API's request schemas, the OpenAPI document and
the simulator all read these specifications, so the rules exist once.
The contract is described for users on the docs' data contract page,
docs/data-contract.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SEXES: tuple[str, ...] = ("female", "male", "other", "unknown")
DIAGNOSES: tuple[str, ...] = (
    "trd",
    "mdd",
    "bipolar",
    "ptsd",
    "ocd",
    "social_anxiety",
    "sud",
    "other",
)
SESSION_KINDS: tuple[str, ...] = ("induction", "maintenance")
ROUTES: tuple[str, ...] = ("iv", "im", "intranasal", "sublingual", "oral")
PHQ9_ITEMS: tuple[str, ...] = tuple(f"phq9_{i}" for i in range(1, 10))

#: Horizons (days after as-of) at which every forecast reports the risk.
HORIZONS: tuple[int, ...] = (7, 14, 28, 56, 84)

#: Values accepted for a boolean cell (case-sensitive, as written by common tools).
TRUE_STRINGS: frozenset[str] = frozenset({"true", "True", "TRUE", "1"})
FALSE_STRINGS: frozenset[str] = frozenset({"false", "False", "FALSE", "0"})

Kind = Literal["string", "date", "int", "float", "bool", "category"]


@dataclass(frozen=True)
class Column:
    """One column of a contract table.

    Parameters
    ----------
    name : str
        Column name, identical in CSV, Parquet, JSON and Python.
    kind : {"string", "date", "int", "float", "bool", "category"}
        Logical type. Dates are ``YYYY-MM-DD``; ints accept ``3`` and ``3.0``.
    required : bool
        The column must be present in the file (or the key in a JSON item).
    nullable : bool
        A blank cell (or JSON null / missing key) is allowed.
    minimum, maximum : float or None
        Inclusive numeric bounds.
    allowed : tuple of str or None
        Allowed values of a category column.
    description : str
        One line for documentation and the OpenAPI schema.
    """

    name: str
    kind: Kind
    required: bool
    nullable: bool
    description: str
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None

    def allowed_text(self) -> str:
        """Say in words what a cell of this column may hold (used in error messages)."""
        if self.allowed is not None:
            text = "one of " + ", ".join(self.allowed)
        elif self.kind == "date":
            text = "a date written YYYY-MM-DD, not in the future"
        elif self.kind == "bool":
            text = "true/false (also True/False/1/0)"
        elif self.kind in ("int", "float"):
            word = "a whole number" if self.kind == "int" else "a number"
            text = f"{word} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        else:
            text = "non-empty text"
        return text + (" or blank" if self.nullable else "")


def _fmt(x: float | None) -> str:
    if x is None:
        return "any"
    return str(int(x)) if float(x).is_integer() else str(x)


PATIENT_COLUMNS: tuple[Column, ...] = (
    Column("patient_id", "string", True, False, "Clinic's pseudonymous patient identifier"),
    Column("age", "float", False, True, "Age in years at the first session", 0, 120),
    Column("sex", "category", False, True, "Sex", allowed=SEXES),
    Column("diagnosis", "category", False, True, "Primary indication", allowed=DIAGNOSES),
    Column(
        "prior_treatments",
        "int",
        False,
        True,
        "Number of failed antidepressant trials before ketamine",
        0,
        50,
    ),
)

SESSION_COLUMNS: tuple[Column, ...] = (
    Column("patient_id", "string", True, False, "Patient identifier (must be in patients)"),
    Column("date", "date", True, False, "Session date"),
    Column("kind", "category", True, False, "Session kind", allowed=SESSION_KINDS),
    Column("dose_mg_per_kg", "float", False, True, "Ketamine dose in mg per kg", 0, 20),
    Column("route", "category", False, True, "Route of administration", allowed=ROUTES),
    Column(
        "psychotherapy",
        "bool",
        False,
        True,
        "Preparation/integration psychotherapy attached to the session",
    ),
    Column("dissociation", "float", False, True, "Dissociation severity 0-100", 0, 100),
    Column("systolic_bp_max", "float", False, True, "Highest systolic BP (mmHg)", 50, 300),
)

ASSESSMENT_COLUMNS: tuple[Column, ...] = (
    Column("patient_id", "string", True, False, "Patient identifier (must be in patients)"),
    Column("date", "date", True, False, "Date the questionnaire was completed"),
    *(
        Column(item, "int", False, True, f"PHQ-9 item {i} (0-3)", 0, 3)
        for i, item in enumerate(PHQ9_ITEMS, start=1)
    ),
    Column("phq9_total", "int", False, True, "PHQ-9 total (0-27)", 0, 27),
    Column(
        "cssrs_ideation",
        "int",
        False,
        True,
        "C-SSRS screener: highest 'yes' of Q1-Q5 (0 = none)",
        0,
        5,
    ),
    Column("cssrs_behavior", "int", False, True, "C-SSRS screener Q6: suicidal behaviour", 0, 1),
)

TABLES: dict[str, tuple[Column, ...]] = {
    "patients": PATIENT_COLUMNS,
    "sessions": SESSION_COLUMNS,
    "assessments": ASSESSMENT_COLUMNS,
}

#: Columns of ``forecast predict`` output, in order.
PREDICT_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "as_of",
    "status",
    "safety",
    "days_since_session",
    *(f"risk_{h}d" for h in HORIZONS),
    "median_days",
    "suggested_date",
)

STATUSES: tuple[str, ...] = (
    "routine",
    "session_due",
    "urgent_review",
    "safety_review",
    "not_in_response",
    "no_treatment",
    "insufficient_data",
)


def columns(table: str) -> dict[str, Column]:
    """Return the columns of ``table`` keyed by name."""
    return {c.name: c for c in TABLES[table]}
