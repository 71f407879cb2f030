"""`forecast load`: a contract folder into the service store, idempotently."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from forecast.cli import main
from forecast.data import load_cohort
from forecast.simulation import simulate, write_simulation
from service.store import Store


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "cohort"
    write_simulation(simulate(25, seed=8), out)
    return out


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    monkeypatch.setenv("FORECAST_DATABASE_URL", url)
    return url


def _counts(url: str) -> dict[str, int]:
    store = Store(url)
    try:
        store.migrate()  # the refused load may never have opened the store
        return {t: store.count(t) for t in ("patients", "sessions", "assessments")}
    finally:
        store.dispose()


def test_load_stores_every_row_once_and_a_rerun_changes_nothing(folder: Path, db_url: str):
    cohort = load_cohort(folder)
    expected = {
        "patients": len(cohort.patients),
        "sessions": len(cohort.sessions),
        "assessments": len(cohort.assessments),
    }
    runner = CliRunner()
    first = runner.invoke(main, ["load", str(folder)])
    assert first.exit_code == 0, first.output
    assert _counts(db_url) == expected
    second = runner.invoke(main, ["load", str(folder)])
    assert second.exit_code == 0, second.output
    assert _counts(db_url) == expected
    store = Store(db_url)
    try:
        stored = store.cohort(list(cohort.patients["patient_id"]))
    finally:
        store.dispose()
    cols = ["patient_id", "date", "phq9_total", "phq9_9", "cssrs_ideation"]
    pd.testing.assert_frame_equal(
        stored.assessments[cols].reset_index(drop=True),
        cohort.assessments[cols].reset_index(drop=True),
    )


def test_a_changed_row_is_refused_and_nothing_is_written(folder: Path, db_url: str, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["load", str(folder)]).exit_code == 0
    before = _counts(db_url)
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    raw = pd.read_csv(changed / "assessments.csv", dtype=str, keep_default_na=False)
    # A new assessment for a new date plus a changed score on a stored date:
    # the batch is all or nothing, so the new row must not be stored either.
    row = raw.iloc[0].copy()
    raw.loc[0, "phq9_total"] = str((int(float(raw.loc[0, "phq9_total"] or 0)) + 1) % 28)
    for item in [f"phq9_{i}" for i in range(1, 10)]:
        raw.loc[0, item] = ""
    row["date"] = "2026-10-30"
    raw = pd.concat([raw, row.to_frame().T], ignore_index=True)
    raw.to_csv(changed / "assessments.csv", index=False)
    result = runner.invoke(main, ["load", str(changed)])
    assert result.exit_code != 0
    assert "nothing loaded" in result.output
    assert _counts(db_url) == before


def test_an_invalid_folder_names_the_problem_and_loads_nothing(folder: Path, db_url: str):
    raw = pd.read_csv(folder / "assessments.csv", dtype=str, keep_default_na=False)
    raw.loc[2, "phq9_3"] = "4"
    raw.to_csv(folder / "assessments.csv", index=False)
    result = CliRunner().invoke(main, ["load", str(folder)])
    assert result.exit_code != 0
    assert "assessments.csv, row 4, column phq9_3" in result.output
    assert _counts(db_url) == {"patients": 0, "sessions": 0, "assessments": 0}


def test_load_keeps_declared_covariates(folder: Path, db_url: str):
    patients = pd.read_csv(folder / "patients.csv", dtype={"patient_id": str})
    patients["bmi"] = [21.5 + k for k in range(len(patients))]
    patients.loc[1, "bmi"] = None
    patients.to_csv(folder / "patients.csv", index=False)
    r = CliRunner().invoke(main, ["load", str(folder), "--covariate", "bmi"])
    assert r.exit_code == 0, r.output
    store = Store(db_url, covariates=("bmi",))
    try:
        stored = store.cohort(list(patients["patient_id"]))
    finally:
        store.dispose()
    assert stored.covariates == ("bmi",)
    got = stored.patients.set_index("patient_id")["bmi"]
    want = patients.set_index("patient_id")["bmi"]
    pd.testing.assert_series_equal(got.loc[want.index], want, check_names=False)
