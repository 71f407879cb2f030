"""Request schemas, generated from :mod:`forecast.contract` with pydantic.

These models check the *shape* of a JSON body (JSON types, required keys,
unknown keys) and report every failure with a JSON-pointer field path; the
*row rules* (ranges, allowed values, dates, duplicates, totals that disagree
with items) are then checked by :func:`forecast.data.validate_records`, the one
implementation shared with the CSV loader and the FHIR importer. Their JSON
schemas (with the contract's bounds and allowed values as documentation) feed
the OpenAPI document, so the document and the validation cannot drift apart.

JSON types: ``int`` and ``float`` columns accept JSON numbers (``3`` or
``3.0``; a fraction in an ``int`` column is then a row-rule error); ``bool``
columns accept ``true``/``false``; dates and categories are strings; every
optional column may be ``null`` or absent. Strings are never coerced to
numbers.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, create_model
from pydantic import ValidationError as PydanticValidationError
from pydantic.json_schema import models_json_schema

from forecast.contract import TABLES, Column
from service.errors import ApiProblem, pointer

#: Longest patient id accepted (service.db.ID_LENGTH).
ID_MAX = 128
#: Longest client row ``id`` accepted (forecast.data.MAX_CLIENT_ID_LENGTH).
CLIENT_ID_MAX = 200
#: Largest number of rows in one posted list.
MAX_ITEMS = 10_000

_STRICT = ConfigDict(extra="forbid", strict=True)


def _column_type(column: Column) -> Any:
    extra: dict[str, Any] = {"description": column.description}
    if column.kind in ("int", "float"):
        base: Any = StrictFloat  # strict float accepts JSON integers too
        extra["type"] = "integer" if column.kind == "int" else "number"
        if column.minimum is not None:
            extra["minimum"] = column.minimum
        if column.maximum is not None:
            extra["maximum"] = column.maximum
    elif column.kind == "bool":
        base = StrictBool
    elif column.kind == "date":
        base = StrictStr
        extra["format"] = "date"
    elif column.kind == "category":
        base = StrictStr
        extra["enum"] = list(column.allowed or ())
    else:
        base = StrictStr
    return Annotated[base, Field(json_schema_extra=extra)]


def _fields(table: str, *, with_id: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for column in TABLES[table]:
        if column.name == "patient_id":
            continue
        typ = _column_type(column)
        if column.nullable or not column.required:
            fields[column.name] = (typ | None, None)
        else:
            fields[column.name] = (typ, ...)
    if with_id:
        fields["id"] = (
            Annotated[
                StrictStr,
                Field(
                    min_length=1,
                    max_length=CLIENT_ID_MAX,
                    description=(
                        "Client's id of the row: a retry with the same id and content is "
                        "reported unchanged; the same id with other content is a conflict"
                    ),
                ),
            ]
            | None,
            None,
        )
    return fields


def _model(name: str, table: str, *, with_id: bool, doc: str) -> type[BaseModel]:
    model = create_model(name, __config__=_STRICT, __doc__=doc, **_fields(table, with_id=with_id))
    return model


AssessmentItem = _model(
    "AssessmentItem", "assessments", with_id=True, doc="One PHQ-9 / C-SSRS questionnaire."
)
SessionItem = _model("SessionItem", "sessions", with_id=True, doc="One treatment session.")
PatientCovariates = create_model(
    "PatientCovariates",
    __config__=_STRICT,
    __doc__="Body of PUT /api/v1/patients/{id}: covariates (all optional); a patient_id, "
    "if given, must equal the one of the URL.",
    patient_id=(Annotated[StrictStr, Field(min_length=1, max_length=ID_MAX)] | None, None),
    **_fields("patients", with_id=False),
)

_PatientId = Annotated[StrictStr, Field(min_length=1, max_length=ID_MAX)]
_Date = Annotated[StrictStr, Field(json_schema_extra={"format": "date"})]
_Threshold = Annotated[
    StrictFloat,
    Field(
        gt=0,
        lt=1,
        description="Risk accepted at the suggested session-by date (default: the service's)",
    ),
]


class AssessmentsBody(BaseModel):
    """Body of ``POST /api/v1/patients/{id}/assessments``."""

    model_config = _STRICT
    assessments: Annotated[list[AssessmentItem], Field(max_length=MAX_ITEMS)]  # type: ignore[valid-type]


class SessionsBody(BaseModel):
    """Body of ``POST /api/v1/patients/{id}/sessions``."""

    model_config = _STRICT
    sessions: Annotated[list[SessionItem], Field(max_length=MAX_ITEMS)]  # type: ignore[valid-type]


StatelessPatient = create_model(
    "StatelessPatient",
    __config__=_STRICT,
    __doc__="The patient of a stateless forecast: id and covariates.",
    patient_id=(_PatientId, ...),
    **_fields("patients", with_id=False),
)


class ForecastBody(BaseModel):
    """Body of ``POST /api/v1/forecast``: a whole history, nothing stored."""

    model_config = _STRICT
    patient: StatelessPatient  # type: ignore[valid-type]
    sessions: Annotated[list[SessionItem], Field(max_length=MAX_ITEMS)] = []  # type: ignore[valid-type]
    assessments: Annotated[list[AssessmentItem], Field(max_length=MAX_ITEMS)] = []  # type: ignore[valid-type]
    as_of: _Date | None = Field(None, description="Date of the forecast (default: today, UTC)")
    threshold: _Threshold | None = None


class BatchQuery(BaseModel):
    """One stored patient of a batch (optionally with its own date and threshold)."""

    model_config = _STRICT
    patient_id: _PatientId
    as_of: _Date | None = None
    threshold: _Threshold | None = None


class BatchBody(BaseModel):
    """Body of ``POST /api/v1/forecast/batch``: exactly one of ``patients`` or ``histories``.

    ``patients`` names stored patients (history from the store); ``histories``
    carries whole stateless histories as in ``POST /api/v1/forecast``.
    Entry-level ``as_of``/``threshold`` win over the batch-level ones.
    """

    model_config = _STRICT
    as_of: _Date | None = Field(None, description="Default date of every forecast (today, UTC)")
    threshold: _Threshold | None = None
    patients: list[BatchQuery] | None = None
    histories: list[ForecastBody] | None = None


class TokenBody(BaseModel):
    """Body of ``POST /api/v1/tokens``."""

    model_config = _STRICT
    name: Annotated[StrictStr, Field(min_length=1, max_length=ID_MAX)]
    role: Literal["clinician", "researcher", "admin"]


def parse(model: type[BaseModel], payload: Any, prefix: str = "") -> BaseModel:
    """Validate ``payload`` against ``model`` or raise a 422 :class:`ApiProblem`.

    Every pydantic error becomes ``{"field": "/json/pointer", "message": ...}``.
    """
    try:
        return model.model_validate(payload)
    except PydanticValidationError as exc:
        entries = []
        for err in exc.errors(include_url=False, include_input=True):
            loc = [p for p in err["loc"] if not _is_union_tag(p)]
            field = (prefix or "") + (pointer(*loc) if loc else "")
            entries.append({"field": field or "/", "message": _message(err, loc)})
        raise ApiProblem(
            422,
            "Invalid request body",
            f"{len(entries)} problem(s) in the request body",
            entries,
        ) from None


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member type name of a union to the location ("float", "str", ...).
    return isinstance(part, str) and part in {"float", "str", "bool", "int", "none", "list"}


_COLUMNS: dict[str, Column] = {
    c.name: c for table in TABLES.values() for c in table if c.name != "patient_id"
}
_JSON_KIND = {
    "int": "a JSON number",
    "float": "a JSON number",
    "bool": "true or false",
    "date": "a string",
    "category": "a string",
    "string": "a string",
}


def _message(err: dict[str, Any], loc: list[Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field; allowed: the contract's columns (see /openapi.json)"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind == "list_type":
        return "must be a JSON list"
    name = loc[-1] if loc else None
    column = _COLUMNS.get(name) if isinstance(name, str) else None
    if kind == "missing":
        if column is not None:
            return f"required field is missing; allowed: {column.allowed_text()}"
        return "required field is missing"
    if column is not None and "input" in err:
        # The client's own value is echoed to the client only; it is never logged.
        got = json.dumps(err["input"], default=str)[:80]
        return (
            f"got {got}; allowed: {column.allowed_text()} "
            f"({_JSON_KIND[column.kind]}{' or null' if column.nullable else ''})"
        )
    return str(err.get("msg", "invalid value"))


def schema_components() -> dict[str, Any]:
    """JSON schemas of every request model for ``components/schemas`` of OpenAPI."""
    models = [
        AssessmentsBody,
        SessionsBody,
        PatientCovariates,
        ForecastBody,
        BatchBody,
        TokenBody,
    ]
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    return top.get("$defs", {})
