"""A corpus of malformed inputs: each gets a clear error and changes nothing.

Three doors lead data into kap-forecast: a CSV/Parquet folder (``forecast validate``),
the JSON API and the FHIR endpoint. For each door this module starts from one small
valid input (checked to be accepted, so every mutation test below measures the
mutation and nothing else) and applies one small mutation per case:

- CSV: ``forecast validate`` exits 1 and names the file, the CSV line (``row N``)
  and the column; the folder's files are left byte for byte as they were; ``forecast
  load`` refuses the same folders with the same message and stores no row;
- JSON: a 4xx ``application/problem+json`` whose ``errors[].field`` (or ``detail``)
  names the offending field; the store's row counts are unchanged;
- FHIR: a 4xx ``OperationOutcome`` whose issues name the resource or element; the
  store's row counts are unchanged; ``forecast import-fhir`` refuses the same Bundles
  (exit 1, element named) and leaves the target folder as it was.

Every table of the store is counted (patients, sessions, assessments, tokens, audit):
a refused request must not leave an audit row either.

A few hand-made files live under ``tests/corpus/`` (exports as spreadsheets and EHRs
really produce them); the rest are generated here as parametrised cases.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from forecast.cli import main as cli

CORPUS = Path(__file__).parent / "corpus"

# --------------------------------------------------------------------------- CSV door

#: A valid folder: two patients, an induction each, item-level and total-only rows.
BASE_CSV: dict[str, str] = {
    "patients.csv": (
        "patient_id,age,sex,diagnosis,prior_treatments\np1,45,female,trd,3\np2,38,male,mdd,2\n"
    ),
    "sessions.csv": (
        "patient_id,date,kind,dose_mg_per_kg,route,psychotherapy,dissociation,systolic_bp_max\n"
        "p1,2025-01-06,induction,0.5,iv,true,20,140\n"
        "p1,2025-01-08,induction,0.5,iv,true,25,138\n"
        "p2,2025-02-03,induction,0.5,im,false,,\n"
    ),
    "assessments.csv": (
        "patient_id,date,phq9_1,phq9_2,phq9_3,phq9_4,phq9_5,phq9_6,phq9_7,phq9_8,phq9_9,"
        "phq9_total,cssrs_ideation,cssrs_behavior\n"
        "p1,2025-01-05,2,3,2,2,2,2,2,2,1,18,1,0\n"
        "p1,2025-01-15,1,1,1,1,0,1,0,1,0,6,0,0\n"
        "p2,2025-02-01,,,,,,,,,,20,0,0\n"
        "p2,2025-02-10,,,,,,,,,,8,0,0\n"
    ),
}

Tables = dict[str, list[list[str]]]


def _parse(files: dict[str, str]) -> Tables:
    return {name: list(csv.reader(io.StringIO(text))) for name, text in files.items()}


def _render(tables: Tables) -> dict[str, str]:
    out = {}
    for name, rows in tables.items():
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        out[name] = buf.getvalue()
    return out


def set_cell(file: str, line: int, column: str, value: str) -> Callable[[Tables], None]:
    """A mutation that writes ``value`` into CSV line ``line`` (header = 1), ``column``."""

    def mutate(t: Tables) -> None:
        rows = t[file]
        rows[line - 1][rows[0].index(column)] = value

    return mutate


def add_column(file: str, column: str, value: str) -> Callable[[Tables], None]:
    """A mutation that appends an undeclared column to every row."""

    def mutate(t: Tables) -> None:
        t[file][0].append(column)
        for row in t[file][1:]:
            row.append(value)

    return mutate


def drop_column(file: str, column: str) -> Callable[[Tables], None]:
    """A mutation that removes a (required) column from the file."""

    def mutate(t: Tables) -> None:
        i = t[file][0].index(column)
        for row in t[file]:
            del row[i]

    return mutate


def duplicate_line(file: str, line: int) -> Callable[[Tables], None]:
    """A mutation that repeats CSV line ``line`` at the end of the file."""

    def mutate(t: Tables) -> None:
        t[file].append(list(t[file][line - 1]))

    return mutate


@dataclass(frozen=True)
class CsvCase:
    """One malformed folder and what its error must name."""

    id: str
    mutate: Callable[[Tables], None]
    file: str
    row: int | None
    column: str | None
    remove: tuple[str, ...] = ()


A, S, P = "assessments.csv", "sessions.csv", "patients.csv"

CSV_CASES: list[CsvCase] = [
    # patients.csv
    CsvCase("sex-not-allowed", set_cell(P, 2, "sex", "F"), P, 2, "sex"),
    CsvCase("diagnosis-free-text", set_cell(P, 3, "diagnosis", "depression"), P, 3, "diagnosis"),
    CsvCase("age-negative", set_cell(P, 2, "age", "-3"), P, 2, "age"),
    CsvCase("age-not-a-number", set_cell(P, 3, "age", "forty"), P, 3, "age"),
    CsvCase("age-too-high", set_cell(P, 2, "age", "131"), P, 2, "age"),
    CsvCase(
        "prior-treatments-fraction",
        set_cell(P, 2, "prior_treatments", "2.5"),
        P,
        2,
        "prior_treatments",
    ),
    CsvCase("patient-id-blank", set_cell(P, 3, "patient_id", ""), P, 3, "patient_id"),
    CsvCase("undeclared-covariate", add_column(P, "bmi", "27"), P, None, "bmi"),
    CsvCase("patients-missing-id-column", drop_column(P, "patient_id"), P, None, "patient_id"),
    # sessions.csv
    CsvCase("session-date-month-13", set_cell(S, 2, "date", "2025-13-01"), S, 2, "date"),
    CsvCase("session-date-us-format", set_cell(S, 3, "date", "01/08/2025"), S, 3, "date"),
    CsvCase("session-date-future", set_cell(S, 4, "date", "2099-02-03"), S, 4, "date"),
    CsvCase("session-date-blank", set_cell(S, 2, "date", ""), S, 2, "date"),
    CsvCase("session-kind-booster", set_cell(S, 3, "kind", "booster"), S, 3, "kind"),
    CsvCase("session-route-unknown", set_cell(S, 2, "route", "nasal_spray"), S, 2, "route"),
    CsvCase(
        "session-psychotherapy-yes", set_cell(S, 2, "psychotherapy", "yes"), S, 2, "psychotherapy"
    ),
    CsvCase(
        "session-dissociation-150", set_cell(S, 3, "dissociation", "150"), S, 3, "dissociation"
    ),
    CsvCase(
        "session-dose-negative", set_cell(S, 4, "dose_mg_per_kg", "-0.5"), S, 4, "dose_mg_per_kg"
    ),
    CsvCase(
        "session-bp-implausible", set_cell(S, 2, "systolic_bp_max", "20"), S, 2, "systolic_bp_max"
    ),
    CsvCase("session-unknown-patient", set_cell(S, 4, "patient_id", "p9"), S, 4, "patient_id"),
    CsvCase("sessions-missing-kind-column", drop_column(S, "kind"), S, None, "kind"),
    # assessments.csv
    CsvCase("item-above-3", set_cell(A, 2, "phq9_3", "4"), A, 2, "phq9_3"),
    CsvCase("item-negative", set_cell(A, 3, "phq9_1", "-1"), A, 3, "phq9_1"),
    CsvCase("item-word", set_cell(A, 2, "phq9_2", "two"), A, 2, "phq9_2"),
    CsvCase("item-fraction", set_cell(A, 3, "phq9_5", "1.5"), A, 3, "phq9_5"),
    CsvCase("total-above-27", set_cell(A, 4, "phq9_total", "28"), A, 4, "phq9_total"),
    CsvCase("total-contradicts-items", set_cell(A, 2, "phq9_total", "12"), A, 2, "phq9_total"),
    CsvCase("cssrs-ideation-6", set_cell(A, 5, "cssrs_ideation", "6"), A, 5, "cssrs_ideation"),
    CsvCase("cssrs-behavior-2", set_cell(A, 4, "cssrs_behavior", "2"), A, 4, "cssrs_behavior"),
    CsvCase("assessment-date-invalid-day", set_cell(A, 3, "date", "2025-02-30"), A, 3, "date"),
    CsvCase("assessment-date-future", set_cell(A, 5, "date", "2099-01-01"), A, 5, "date"),
    CsvCase("assessment-unknown-patient", set_cell(A, 3, "patient_id", "p3"), A, 3, "patient_id"),
    CsvCase("assessment-duplicate-row", duplicate_line(A, 3), A, None, None),
    CsvCase("assessments-file-missing", lambda t: None, A, None, None, remove=(A,)),
]


def write_folder(path: Path, files: dict[str, str]) -> Path:
    """Write ``files`` into ``path`` (created) and return it."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def folder_digest(path: Path) -> dict[str, str]:
    """sha256 of every file in ``path``: validation must not touch the user's data."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def run_validate(path: Path) -> tuple[int, str]:
    """Run ``forecast validate PATH`` in-process and return (exit code, all output)."""
    result = CliRunner().invoke(cli, ["validate", str(path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def assert_names_location(output: str, file: str, row: int | None, column: str | None) -> None:
    """The error names the file and, where the case has them, the row and the column."""
    assert file in output, f"error does not name the file {file!r}:\n{output}"
    if row is not None:
        assert f"row {row}" in output, f"error does not name row {row}:\n{output}"
    if column is not None:
        assert column in output, f"error does not name column {column!r}:\n{output}"
    assert "Traceback" not in output, output


def test_base_csv_folder_is_valid(tmp_path: Path) -> None:
    """The unmutated folder passes, so each case below fails because of its mutation."""
    code, output = run_validate(write_folder(tmp_path / "base", BASE_CSV))
    assert code == 0, output


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.id for c in CSV_CASES])
def test_malformed_csv_is_refused_clearly(tmp_path: Path, case: CsvCase) -> None:
    """``forecast validate`` exits 1, names file/row/column and leaves the files alone."""
    tables = _parse(BASE_CSV)
    case.mutate(tables)
    files = {k: v for k, v in _render(tables).items() if k not in case.remove}
    folder = write_folder(tmp_path / case.id, files)
    before = folder_digest(folder)
    code, output = run_validate(folder)
    assert code == 1, f"exit {code}, expected 1:\n{output}"
    assert_names_location(output, case.file, case.row, case.column)
    assert folder_digest(folder) == before


def _parquet_folder(path: Path, files: dict[str, str]) -> Path:
    """Write a valid CSV folder as typed Parquet files (the loader's own writer)."""
    from forecast.data import load_cohort, write_cohort

    csv_dir = write_folder(path.with_name(path.name + "-csv"), files)
    write_cohort(load_cohort(csv_dir, today="2026-01-01"), path, "parquet")
    return path


def _set_parquet(file: str, row: int, column: str, value: Any) -> Callable[[Path], None]:
    """A mutation writing ``value`` into 0-based ``row`` of a Parquet file's ``column``."""

    def mutate(folder: Path) -> None:
        import pandas as pd

        frame = pd.read_parquet(folder / file)
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        frame.to_parquet(folder / file, index=False)

    return mutate


@pytest.mark.parametrize(
    ("mutation", "file", "column"),
    [
        (_set_parquet("assessments.parquet", 1, "phq9_4", 5.0), "assessments.parquet", "phq9_4"),
        (_set_parquet("sessions.parquet", 0, "kind", "top-up"), "sessions.parquet", "kind"),
    ],
    ids=["parquet-item-5", "parquet-kind-unknown"],
)
def test_malformed_parquet_is_refused_clearly(
    tmp_path: Path, mutation: Callable[[Path], None], file: str, column: str
) -> None:
    """The same rules hold for Parquet folders: exit 1 naming file and column."""
    folder = _parquet_folder(tmp_path / "parquet", BASE_CSV)
    code, output = run_validate(folder)
    assert code == 0, output
    mutation(folder)
    before = folder_digest(folder)
    code, output = run_validate(folder)
    assert code == 1, output
    assert_names_location(output, file, None, column)
    assert folder_digest(folder) == before


def _corpus_csv_folders() -> list[Path]:
    return sorted(p for p in (CORPUS / "csv").iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", _corpus_csv_folders(), ids=lambda p: p.name)
def test_corpus_csv_folder_is_refused_clearly(tmp_path: Path, folder: Path) -> None:
    """Hand-made folders under tests/corpus/csv; ``expect.json`` says what must be named."""
    expect = json.loads((folder / "expect.json").read_text())
    work = tmp_path / folder.name
    work.mkdir()
    for p in folder.iterdir():
        if p.name != "expect.json":
            (work / p.name).write_bytes(p.read_bytes())
    before = folder_digest(work)
    code, output = run_validate(work)
    assert code == 1, output
    assert_names_location(output, expect["file"], expect.get("row"), expect.get("column"))
    assert folder_digest(work) == before


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def model_registry(trained_registry: Any) -> Path:
    """The session's trained registry (read-only here: the app only loads from it)."""
    return trained_registry.models_dir


def make_app(tmp: Path, models: Path) -> Any:
    """A fresh app with its own SQLite store in ``tmp`` serving the registry ``models``."""
    from service.app import create_app

    return create_app(
        {
            "TESTING": True,
            "KAP_DATABASE_URL": f"sqlite:///{tmp / 'store.sqlite'}",
            "KAP_MODELS_DIR": str(models),
            "INSTANCE_PATH": str(tmp / "instance"),
            "SECRET_KEY": "reliability-tests",
            # Small, so that a case can exceed it cheaply (the default is 10 MiB).
            "MAX_CONTENT_LENGTH": 256 * 1024,
        }
    )


@dataclass
class Api:
    """A test client with a clinician token and the store's row counts."""

    app: Any
    token: str
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.app.test_client()

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        """Send one request with the clinician token; ``raw`` bytes go as a JSON body."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if raw is not None:
            return self.client.open(
                path, method=method, data=raw, headers=headers, content_type="application/json"
            )
        return self.client.open(path, method=method, json=body, headers=headers)

    def counts(self) -> dict[str, int]:
        """Rows in every table of the store (tokens and audit included).

        Audit rows are counted without those recording a refusal: since issue 21
        a refused request is audited too (outcome ``refused``/``not_found``), and
        must leave no other row (no data, no forecast or write recorded as done).
        """
        from service import db

        store = self.app.extensions["kap_store"]
        out = {name: store.count(name) for name in sorted(db.metadata.tables)}
        out["audit"] = len(
            [r for r in store.audit_rows(action=None, outcome=None) if r["outcome"] == "ok"]
        )
        return out


def make_api(tmp: Path, models: Path) -> Api:
    """An :class:`Api` on a fresh app whose store holds patient ``j1`` with a session."""
    app = make_app(tmp, models)
    token = app.extensions["kap_store"].create_token("reliability-corpus", "clinician")
    api = Api(app, token)
    r = api.call("PUT", "/api/v1/patients/j1", {"age": 50, "sex": "male", "diagnosis": "mdd"})
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    r = api.call(
        "POST",
        "/api/v1/patients/j1/sessions",
        {"sessions": [{"id": "s0", "date": "2024-11-04", "kind": "induction"}]},
    )
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    return api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, model_registry: Path) -> Api:
    """One app for all malformed-input cases (none of them may change its store)."""
    return make_api(tmp_path_factory.mktemp("corpus-api"), model_registry)


# --------------------------------------------------------------------------- JSON door

ITEMS_18 = {f"phq9_{i}": v for i, v in enumerate((2, 3, 2, 2, 2, 2, 2, 2, 1), start=1)}

BASE_JSON: dict[str, tuple[str, str, dict[str, Any]]] = {
    "patient": (
        "PUT",
        "/api/v1/patients/j2",
        {"age": 45, "sex": "female", "diagnosis": "trd", "prior_treatments": 3},
    ),
    "assessments": (
        "POST",
        "/api/v1/patients/j1/assessments",
        {
            "assessments": [
                {
                    "id": "a1",
                    "date": "2024-11-03",
                    **ITEMS_18,
                    "phq9_total": 18,
                    "cssrs_ideation": 1,
                    "cssrs_behavior": 0,
                },
                {"id": "a2", "date": "2024-11-12", "phq9_total": 6},
            ]
        },
    ),
    "sessions": (
        "POST",
        "/api/v1/patients/j1/sessions",
        {
            "sessions": [
                {
                    "id": "s1",
                    "date": "2024-11-06",
                    "kind": "induction",
                    "dose_mg_per_kg": 0.5,
                    "route": "iv",
                    "psychotherapy": True,
                    "dissociation": 20,
                    "systolic_bp_max": 140,
                },
            ]
        },
    ),
    "forecast": (
        "POST",
        "/api/v1/forecast",
        {
            "patient": {"patient_id": "x1", "age": 45, "sex": "female", "diagnosis": "trd"},
            "sessions": [{"date": "2025-01-06", "kind": "induction", "route": "iv"}],
            "assessments": [
                {"date": "2025-01-05", **ITEMS_18, "phq9_total": 18},
                {"date": "2025-01-15", "phq9_total": 6},
            ],
            "as_of": "2025-01-20",
            "threshold": 0.2,
        },
    ),
    "batch": (
        "POST",
        "/api/v1/forecast/batch",
        {
            "as_of": "2025-01-20",
            "histories": [
                {
                    "patient": {"patient_id": "x1", "sex": "female"},
                    "sessions": [{"date": "2025-01-06", "kind": "induction"}],
                    "assessments": [
                        {"date": "2025-01-05", "phq9_total": 18},
                        {"date": "2025-01-15", "phq9_total": 6},
                    ],
                }
            ],
        },
    ),
}


def put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the JSON pointer ``path`` (``/a/0/b``) to ``value``."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def delete(path: str) -> Callable[[dict[str, Any]], None]:
    """A mutation removing the key at the JSON pointer ``path``."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return mutate


def replace_body(new: Any) -> Callable[[dict[str, Any]], Any]:
    """A mutation replacing the whole body."""
    return lambda body: new


@dataclass(frozen=True)
class JsonCase:
    """One malformed API request and the field its problem must name."""

    id: str
    base: str
    mutate: Callable[[dict[str, Any]], Any]
    field: str | None
    raw: bytes | None = None
    path: str | None = None
    statuses: tuple[int, ...] = (400, 409, 413, 415, 422)


JSON_CASES: list[JsonCase] = [
    # PUT /api/v1/patients/{id}
    JsonCase("patient-age-200", "patient", put("/age", 200), "/age"),
    JsonCase("patient-age-text", "patient", put("/age", "forty"), "/age"),
    JsonCase("patient-sex-F", "patient", put("/sex", "F"), "/sex"),
    JsonCase("patient-diagnosis-number", "patient", put("/diagnosis", 5), "/diagnosis"),
    JsonCase(
        "patient-prior-negative", "patient", put("/prior_treatments", -1), "/prior_treatments"
    ),
    JsonCase(
        "patient-prior-fraction", "patient", put("/prior_treatments", 2.5), "/prior_treatments"
    ),
    JsonCase("patient-unknown-field", "patient", put("/ssn", "123-45-6789"), "/ssn"),
    JsonCase("patient-body-list", "patient", replace_body([{"age": 40}]), None),
    JsonCase("patient-body-not-json", "patient", replace_body(None), None, raw=b"age=45&sex=f"),
    JsonCase("patient-json-nan", "patient", replace_body(None), None, raw=b'{"age": NaN}'),
    JsonCase(
        "patient-id-too-long",
        "patient",
        replace_body(None),
        "patient_id",
        path="/api/v1/patients/" + "x" * 300,
    ),
    JsonCase(
        "patient-body-too-large",
        "patient",
        replace_body(None),
        None,
        raw=b'{"age": 45, "pad": "' + b"x" * (256 * 1024 + 10) + b'"}',
        statuses=(413,),
    ),
    # POST /api/v1/patients/{id}/assessments
    JsonCase(
        "assessment-item-4", "assessments", put("/assessments/0/phq9_3", 4), "/assessments/0/phq9_3"
    ),
    JsonCase(
        "assessment-item-negative",
        "assessments",
        put("/assessments/0/phq9_1", -1),
        "/assessments/0/phq9_1",
    ),
    JsonCase(
        "assessment-item-string",
        "assessments",
        put("/assessments/0/phq9_2", "2"),
        "/assessments/0/phq9_2",
    ),
    JsonCase(
        "assessment-item-bool",
        "assessments",
        put("/assessments/0/phq9_4", True),
        "/assessments/0/phq9_4",
    ),
    JsonCase(
        "assessment-total-28",
        "assessments",
        put("/assessments/1/phq9_total", 28),
        "/assessments/1/phq9_total",
    ),
    JsonCase(
        "assessment-total-contradicts",
        "assessments",
        put("/assessments/0/phq9_total", 12),
        "/assessments/0/phq9_total",
    ),
    JsonCase(
        "assessment-date-feb-30",
        "assessments",
        put("/assessments/1/date", "2024-02-30"),
        "/assessments/1/date",
    ),
    JsonCase(
        "assessment-date-future",
        "assessments",
        put("/assessments/1/date", "2099-01-01"),
        "/assessments/1/date",
    ),
    JsonCase(
        "assessment-date-missing",
        "assessments",
        delete("/assessments/0/date"),
        "/assessments/0/date",
    ),
    JsonCase(
        "assessment-cssrs-6",
        "assessments",
        put("/assessments/0/cssrs_ideation", 6),
        "/assessments/0/cssrs_ideation",
    ),
    JsonCase(
        "assessment-behavior-2",
        "assessments",
        put("/assessments/0/cssrs_behavior", 2),
        "/assessments/0/cssrs_behavior",
    ),
    JsonCase(
        "assessment-unknown-key",
        "assessments",
        put("/assessments/0/phq10", 1),
        "/assessments/0/phq10",
    ),
    JsonCase(
        "assessment-list-is-object",
        "assessments",
        put("/assessments", {"date": "x"}),
        "/assessments",
    ),
    JsonCase("assessment-key-missing", "assessments", replace_body({"items": []}), "assessments"),
    JsonCase(
        "assessment-date-with-time",
        "assessments",
        put("/assessments/1/date", "2024-11-12T10:00:00"),
        "/assessments/1/date",
    ),
    JsonCase(
        "assessment-list-too-long",
        "assessments",
        put("/assessments", [{}] * 10_001),
        "/assessments",
    ),
    JsonCase(
        "assessment-item-not-object", "assessments", put("/assessments/1", "6"), "/assessments/1"
    ),
    JsonCase(
        "assessment-same-id-twice", "assessments", put("/assessments/1/id", "a1"), "/assessments/1"
    ),
    JsonCase(
        "assessment-unknown-patient",
        "assessments",
        replace_body(None),
        None,
        path="/api/v1/patients/nobody/assessments",
        statuses=(404,),
    ),
    # POST /api/v1/patients/{id}/sessions
    JsonCase(
        "session-kind-booster", "sessions", put("/sessions/0/kind", "booster"), "/sessions/0/kind"
    ),
    JsonCase(
        "session-route-nasal", "sessions", put("/sessions/0/route", "nasal"), "/sessions/0/route"
    ),
    JsonCase(
        "session-psychotherapy-text",
        "sessions",
        put("/sessions/0/psychotherapy", "yes"),
        "/sessions/0/psychotherapy",
    ),
    JsonCase(
        "session-dose-50",
        "sessions",
        put("/sessions/0/dose_mg_per_kg", 50),
        "/sessions/0/dose_mg_per_kg",
    ),
    JsonCase(
        "session-dissociation-101",
        "sessions",
        put("/sessions/0/dissociation", 101),
        "/sessions/0/dissociation",
    ),
    JsonCase(
        "session-date-us", "sessions", put("/sessions/0/date", "11/06/2024"), "/sessions/0/date"
    ),
    JsonCase("session-kind-missing", "sessions", delete("/sessions/0/kind"), "/sessions/0/kind"),
    # POST /api/v1/forecast (stateless: nothing may be stored, no audit row for a refusal)
    JsonCase("forecast-as-of-word", "forecast", put("/as_of", "yesterday"), "/as_of"),
    JsonCase("forecast-threshold-1.5", "forecast", put("/threshold", 1.5), "/threshold"),
    JsonCase("forecast-threshold-text", "forecast", put("/threshold", "high"), "/threshold"),
    JsonCase("forecast-patient-missing", "forecast", delete("/patient"), "/patient"),
    JsonCase("forecast-patient-sex", "forecast", put("/patient/sex", "F"), "/patient/sex"),
    JsonCase(
        "forecast-session-kind", "forecast", put("/sessions/0/kind", "booster"), "/sessions/0/kind"
    ),
    JsonCase(
        "forecast-item-4", "forecast", put("/assessments/0/phq9_3", 4), "/assessments/0/phq9_3"
    ),
    JsonCase(
        "forecast-assessment-date",
        "forecast",
        put("/assessments/1/date", "2025-13-15"),
        "/assessments/1/date",
    ),
    # POST /api/v1/forecast/batch
    JsonCase("batch-both-forms", "batch", put("/patients", [{"patient_id": "j1"}]), None),
    JsonCase("batch-neither-form", "batch", delete("/histories"), None),
    JsonCase(
        "batch-history-sex",
        "batch",
        put("/histories/0/patient/sex", "F"),
        "/histories/0/patient/sex",
    ),
    JsonCase(
        "batch-history-total",
        "batch",
        put("/histories/0/assessments/0/phq9_total", 40),
        "/histories/0/assessments/0/phq9_total",
    ),
    JsonCase("batch-as-of", "batch", put("/as_of", "2025-02-31"), "/as_of"),
    JsonCase(
        "batch-unknown-stored-patient",
        "batch",
        lambda b: (
            b.pop("histories"),
            b.update(patients=[{"patient_id": "j1"}, {"patient_id": "nobody"}]),
        ),
        "/patients/1/patient_id",
    ),
]


def assert_problem(resp: Any, statuses: tuple[int, ...], field_: str | None) -> dict[str, Any]:
    """A 4xx problem+json whose ``errors[].field`` (or ``detail``) names ``field_``."""
    text = resp.get_data(as_text=True)
    assert resp.status_code in statuses, f"{resp.status_code}: {text[:800]}"
    assert resp.mimetype == "application/problem+json", resp.mimetype
    problem = resp.get_json()
    assert problem["status"] == resp.status_code
    assert problem.get("title")
    if field_ is not None:
        fields = [e.get("field", "") for e in problem.get("errors", [])]
        named = any(field_ in f for f in fields) or field_ in (problem.get("detail") or "")
        assert named, f"problem does not name {field_!r}: {json.dumps(problem)[:800]}"
    return problem


@pytest.mark.parametrize("base", sorted(BASE_JSON))
def test_base_json_bodies_are_accepted(tmp_path: Path, model_registry: Path, base: str) -> None:
    """Each unmutated body is accepted (on its own fresh app), so the cases test mutations."""
    api = make_api(tmp_path, model_registry)
    method, path, body = BASE_JSON[base]
    resp = api.call(method, path, body)
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)[:800]


@pytest.mark.parametrize("case", JSON_CASES, ids=[c.id for c in JSON_CASES])
def test_malformed_json_is_refused_clearly(api: Api, case: JsonCase) -> None:
    """A 4xx problem naming the field; no table of the store gains or loses a row."""
    method, path, body = BASE_JSON[case.base]
    body = copy.deepcopy(body)
    mutated = case.mutate(body)
    if isinstance(mutated, dict | list):  # replace_body; other mutations work in place
        body = mutated
    before = api.counts()
    resp = api.call(method, case.path or path, body, raw=case.raw)
    assert_problem(resp, case.statuses, case.field)
    assert api.counts() == before


# --------------------------------------------------------------------------- FHIR door

LOINC = "http://loinc.org"
#: LOINC answer codes of PHQ-9 items, score 0..3.
LA = ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")
PHQ9_LOINC_ITEMS = (
    "44250-9",
    "44255-8",
    "44259-0",
    "44254-1",
    "44251-7",
    "44258-2",
    "44252-5",
    "44253-3",
    "44260-8",
)


def _qr_items(scores: tuple[int, ...]) -> list[dict[str, Any]]:
    return [
        {"linkId": code, "answer": [{"valueCoding": {"system": LOINC, "code": LA[s]}}]}
        for code, s in zip(PHQ9_LOINC_ITEMS, scores, strict=True)
    ]


def base_bundle() -> dict[str, Any]:
    """A valid transaction Bundle: a patient, a ketamine session, a total and a response."""
    survey = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "survey",
            }
        ]
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5b0c7a52-0d6e-4d1b-9a57-f1000000000a",
                "resource": {
                    "resourceType": "Patient",
                    "id": "f1",
                    "gender": "female",
                    "birthDate": "1980-04-02",
                },
                "request": {"method": "PUT", "url": "Patient/f1"},
            },
            {
                "resource": {
                    "resourceType": "Procedure",
                    "id": "f1-session-1",
                    "status": "completed",
                    "code": {
                        "coding": [
                            {
                                "system": "urn:kap-forecast:fhir:procedure",
                                "code": "ketamine-session",
                            }
                        ],
                        "text": "IV ketamine infusion",
                    },
                    "subject": {"reference": "Patient/f1"},
                    "performedDateTime": "2025-01-06",
                    "extension": [
                        {"url": "urn:kap-forecast:fhir:session-kind", "valueCode": "induction"},
                        {"url": "urn:kap-forecast:fhir:route", "valueCode": "iv"},
                        {"url": "urn:kap-forecast:fhir:dose-mg-per-kg", "valueDecimal": 0.5},
                    ],
                },
                "request": {"method": "POST", "url": "Procedure"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "f1-phq9-total-1",
                    "status": "final",
                    "category": [survey],
                    "code": {"coding": [{"system": LOINC, "code": "44261-6"}]},
                    "subject": {"reference": "Patient/f1"},
                    "effectiveDateTime": "2025-01-05",
                    "valueInteger": 18,
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {
                    "resourceType": "QuestionnaireResponse",
                    "id": "f1-phq9-response-2",
                    "status": "completed",
                    "subject": {"reference": "Patient/f1"},
                    "authored": "2025-01-15",
                    "item": _qr_items((1, 1, 1, 1, 0, 1, 0, 1, 0)),
                },
                "request": {"method": "POST", "url": "QuestionnaireResponse"},
            },
        ],
    }


@dataclass(frozen=True)
class FhirCase:
    """One malformed Bundle and the FHIRPath its OperationOutcome must name."""

    id: str
    mutate: Callable[[dict[str, Any]], Any]
    expression: str
    raw: bytes | None = None


def _add_entry(resource: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["entry"].append({"resource": resource})


FHIR_CASES: list[FhirCase] = [
    FhirCase("not-json", replace_body(None), "", raw=b"<Bundle xmlns='http://hl7.org/fhir'/>"),
    FhirCase("not-a-bundle", put("/resourceType", "Patient"), "Bundle"),
    FhirCase("bundle-type-searchset", put("/type", "searchset"), "Bundle.type"),
    FhirCase("bundle-entry-object", put("/entry", {"resource": {}}), "Bundle.entry"),
    FhirCase("entry-without-resource", delete("/entry/1/resource"), "Bundle.entry[1]"),
    FhirCase(
        "entry-method-delete",
        put("/entry/1/request/method", "DELETE"),
        "Bundle.entry[1].request.method",
    ),
    FhirCase(
        "patient-gender-F", put("/entry/0/resource/gender", "F"), "Bundle.entry[0].resource.gender"
    ),
    FhirCase(
        "patient-birthdate-month-13",
        put("/entry/0/resource/birthDate", "1980-13-02"),
        "Bundle.entry[0].resource.birthDate",
    ),
    FhirCase("patient-without-id", delete("/entry/0/resource/id"), "Bundle.entry[0]"),
    FhirCase(
        "procedure-date-future",
        put("/entry/1/resource/performedDateTime", "2099-01-06"),
        "Bundle.entry[1]",
    ),
    FhirCase(
        "procedure-unknown-patient",
        put("/entry/1/resource/subject/reference", "Patient/nobody"),
        "Bundle.entry[1]",
    ),
    FhirCase("observation-total-30", put("/entry/2/resource/valueInteger", 30), "Bundle.entry[2]"),
    FhirCase(
        "observation-total-word",
        lambda b: (
            b["entry"][2]["resource"].pop("valueInteger"),
            b["entry"][2]["resource"].update(valueString="severe"),
        ),
        "Bundle.entry[2]",
    ),
    FhirCase("observation-without-subject", delete("/entry/2/resource/subject"), "Bundle.entry[2]"),
    FhirCase(
        "observation-date-feb-30",
        put("/entry/2/resource/effectiveDateTime", "2025-02-30"),
        "Bundle.entry[2]",
    ),
    FhirCase(
        "observation-status-bogus",
        put("/entry/2/resource/status", "done"),
        "Bundle.entry[2].resource.status",
    ),
    FhirCase(
        "response-answer-code-unknown",
        put("/entry/3/resource/item/2/answer/0/valueCoding/code", "LA9999-9"),
        "Bundle.entry[3]",
    ),
    FhirCase(
        "response-item-integer-4",
        put("/entry/3/resource/item/2/answer/0", {"valueInteger": 4}),
        "Bundle.entry[3]",
    ),
    FhirCase(
        "response-total-disagrees",
        _add_entry(
            {
                "resourceType": "Observation",
                "id": "f1-phq9-total-2",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "44261-6"}]},
                "subject": {"reference": "Patient/f1"},
                "effectiveDateTime": "2025-01-15",
                "valueInteger": 14,
            }
        ),
        "Bundle.entry[",
    ),
    FhirCase(
        "unknown-resource-type",
        _add_entry({"resourceType": "Fish", "id": "nemo"}),
        "Bundle.entry[4]",
    ),
]


def assert_operation_outcome(resp: Any, expression: str) -> dict[str, Any]:
    """A 4xx OperationOutcome with an error issue whose expression names ``expression``."""
    text = resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {text[:800]}"
    assert "json" in (resp.mimetype or ""), resp.mimetype
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome", text[:800]
    errors = [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]
    assert errors, text[:800]
    where = [e for i in errors for e in i.get("expression", [])]
    where += [i.get("diagnostics", "") for i in errors]
    assert any(expression in w for w in where), f"no issue names {expression!r}: {text[:800]}"
    return outcome


def test_base_bundle_is_accepted(tmp_path: Path, model_registry: Path) -> None:
    """The unmutated Bundle is imported (on a fresh app): the cases test their mutation."""
    api = make_api(tmp_path, model_registry)
    before = api.counts()
    resp = api.call("POST", "/fhir/r4", base_bundle())
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)[:800]
    after = api.counts()
    assert after["patients"] == before["patients"] + 1
    assert after["sessions"] == before["sessions"] + 1
    assert after["assessments"] == before["assessments"] + 2


@pytest.mark.parametrize("case", FHIR_CASES, ids=[c.id for c in FHIR_CASES])
def test_malformed_fhir_is_refused_clearly(api: Api, case: FhirCase) -> None:
    """A 4xx OperationOutcome naming the resource/element; the store is left as it was.

    Every case keeps the Bundle's other, valid entries: a refused Bundle must not be
    half imported.
    """
    bundle = base_bundle()
    mutated = case.mutate(bundle)
    if isinstance(mutated, dict):
        bundle = mutated
    before = api.counts()
    resp = api.call("POST", "/fhir/r4", bundle, raw=case.raw)
    assert_operation_outcome(resp, case.expression)
    assert api.counts() == before


def _corpus_json_files(kind: str) -> list[Path]:
    return sorted((CORPUS / kind).glob("*.json"))


@pytest.mark.parametrize("path", _corpus_json_files("fhir"), ids=lambda p: p.stem)
def test_corpus_fhir_file_is_refused_clearly(api: Api, path: Path) -> None:
    """Hand-made Bundles under tests/corpus/fhir (``_expect`` says what must be named)."""
    doc = json.loads(path.read_text())
    expect = doc.pop("_expect")
    before = api.counts()
    resp = api.call("POST", "/fhir/r4", doc)
    assert_operation_outcome(resp, expect["expression"])
    assert api.counts() == before


@pytest.mark.parametrize("path", _corpus_json_files("json"), ids=lambda p: p.stem)
def test_corpus_json_body_is_refused_clearly(api: Api, path: Path) -> None:
    """Hand-made API bodies under tests/corpus/json (``_expect``: method, path, field)."""
    doc = json.loads(path.read_text())
    expect = doc.pop("_expect")
    before = api.counts()
    resp = api.call(expect["method"], expect["path"], doc)
    assert_problem(resp, tuple(expect.get("statuses", (400, 409, 422))), expect.get("field"))
    assert api.counts() == before


def _import_fhir(bundle_file: Path, folder: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["import-fhir", str(bundle_file), "--out", str(folder), "--today", "2026-01-01"]
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_base_bundle_imports_into_a_folder(tmp_path: Path) -> None:
    """``forecast import-fhir`` takes the unmutated Bundle and writes its rows."""
    folder = write_folder(tmp_path / "clinic", BASE_CSV)
    before = folder_digest(folder)
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(json.dumps(base_bundle()))
    code, output = _import_fhir(bundle_file, folder)
    assert code == 0, output
    assert folder_digest(folder) != before
    assert run_validate(folder)[0] == 0


@pytest.mark.parametrize("case", FHIR_CASES, ids=[c.id for c in FHIR_CASES])
def test_malformed_fhir_file_is_refused_by_the_cli(tmp_path: Path, case: FhirCase) -> None:
    """The same Bundles through ``forecast import-fhir``: exit 1, named, folder untouched."""
    folder = write_folder(tmp_path / "clinic", BASE_CSV)
    bundle = base_bundle()
    mutated = case.mutate(bundle)
    if isinstance(mutated, dict):
        bundle = mutated
    bundle_file = tmp_path / "bundle.json"
    if case.raw is not None:
        bundle_file.write_bytes(case.raw)
    else:
        bundle_file.write_text(json.dumps(bundle))
    before = folder_digest(folder)
    code, output = _import_fhir(bundle_file, folder)
    assert code == 1, f"exit {code}:\n{output}"
    assert case.expression in output, f"output does not name {case.expression!r}:\n{output}"
    assert "Traceback" not in output, output
    assert folder_digest(folder) == before


def _load_into_store(folder: Path, api: Api) -> tuple[int, str]:
    """``forecast load FOLDER`` into the store of ``api``'s app."""
    env = {
        "FORECAST_DATABASE_URL": api.app.config["KAP_DATABASE_URL"],
        "FORECAST_INSTANCE_PATH": api.app.instance_path,
    }
    result = CliRunner(env=env).invoke(cli, ["load", str(folder)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_base_csv_folder_loads_into_the_store_once(tmp_path: Path, model_registry: Path) -> None:
    """``forecast load`` stores the valid folder, and a second load stores nothing new."""
    api = make_api(tmp_path / "app", model_registry)
    folder = write_folder(tmp_path / "base", BASE_CSV)
    before = api.counts()
    code, output = _load_into_store(folder, api)
    assert code == 0, output
    after = api.counts()
    assert after["patients"] == before["patients"] + 2
    assert after["sessions"] == before["sessions"] + 3
    assert after["assessments"] == before["assessments"] + 4
    code, output = _load_into_store(folder, api)
    assert code == 0, output
    # Nothing new is stored; the second load is audited (issue 21), as unchanged rows.
    again = api.counts()
    assert {k: v for k, v in again.items() if k != "audit"} == {
        k: v for k, v in after.items() if k != "audit"}
    loads = api.app.extensions["kap_store"].audit_rows(action="patient.write")[-2:]
    assert again["audit"] == after["audit"] + 2
    assert all("created" not in (r["detail"] or "") for r in loads), loads


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.id for c in CSV_CASES])
def test_malformed_csv_is_not_loaded_into_the_store(
    tmp_path: Path, api: Api, case: CsvCase
) -> None:
    """``forecast load`` refuses the folder with the same named error; no row is stored."""
    tables = _parse(BASE_CSV)
    case.mutate(tables)
    files = {k: v for k, v in _render(tables).items() if k not in case.remove}
    folder = write_folder(tmp_path / case.id, files)
    before = api.counts()
    code, output = _load_into_store(folder, api)
    assert code == 1, f"exit {code}, expected 1:\n{output}"
    assert_names_location(output, case.file, case.row, case.column)
    assert api.counts() == before
