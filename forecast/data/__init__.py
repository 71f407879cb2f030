"""Validation of the data contract: one implementation for files and the JSON API.

A clinic's data arrives as a folder of three files (``patients``, ``sessions``,
``assessments``; CSV or Parquet), as JSON lists posted to the service, or from
the FHIR importer. Every path goes through the same small ``check_*`` rule
functions below, which read their rules (kinds, bounds, allowed values,
required/nullable) from :mod:`forecast.contract`, so the files, the JSON API and
the OpenAPI document agree.

Nothing is silently dropped or coerced: CSV cells are read as text and parsed
here, column by column and vectorised; every violation becomes a
:class:`Problem` naming the file (or table), the row, the column and what is
allowed, and all problems of a run are reported together.

Row numbers: for CSV files the physical line number of the record (the header
is line 1, so the first data row is normally 2); for Parquet files the same
convention (first data row = 2); for JSON lists the 0-based index of the item.

The package: :mod:`~forecast.data.problems` (Problem, ContractError),
:mod:`~forecast.data.cells` (parsing cells), :mod:`~forecast.data.checks` (the
rules), :mod:`~forecast.data.tables` (the three tables together),
:mod:`~forecast.data.files` (folders of CSV/Parquet files) and
:mod:`~forecast.data.records` (JSON records).
"""

from __future__ import annotations

from forecast.data.checks import (
    check_any_instrument,
    check_cells,
    check_covariates,
    check_header,
    check_known_patients,
    check_phq9_agrees,
    check_phq9_scorable,
    check_unique,
    screen_only,
)
from forecast.data.files import check_folder, load_cohort, read_folder, write_cohort
from forecast.data.problems import ContractError, Problem
from forecast.data.records import (
    MAX_CLIENT_ID_LENGTH,
    RecordsOf,
    check_client_ids,
    check_record_keys,
    check_stored_duplicates,
    validate_patient,
    validate_records,
    validate_records_many,
)
from forecast.data.tables import FORMATS, TABLE_NAMES, validate_tables

__all__ = [
    "FORMATS",
    "MAX_CLIENT_ID_LENGTH",
    "TABLE_NAMES",
    "ContractError",
    "Problem",
    "RecordsOf",
    "check_any_instrument",
    "check_cells",
    "check_client_ids",
    "check_covariates",
    "check_folder",
    "check_header",
    "check_known_patients",
    "check_phq9_agrees",
    "check_phq9_scorable",
    "check_record_keys",
    "check_stored_duplicates",
    "check_unique",
    "load_cohort",
    "screen_only",
    "read_folder",
    "validate_patient",
    "validate_records",
    "validate_records_many",
    "validate_tables",
    "write_cohort",
]
