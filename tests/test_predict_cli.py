"""``forecast predict``: one contract row per patient, consistent with the JSON answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecast.cli import main
from forecast.contract import HORIZONS, PREDICT_COLUMNS, STATUSES
from forecast.policy import PolicySettings, forecast_cohort

AS_OF = "2026-06-01"
RISK_COLS = [f"risk_{h}d" for h in HORIZONS]


@pytest.fixture(scope="module")
def predicted(
    tmp_path_factory: pytest.TempPathFactory, sim_small_folder: Path, policy_models_dir: Path
) -> tuple[pd.DataFrame, object]:
    out = tmp_path_factory.mktemp("predict") / "preds.csv"
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(sim_small_folder),
            "--model",
            "latest",
            "--models",
            str(policy_models_dir),
            "--as-of",
            AS_OF,
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype={"patient_id": str}), result


def test_predict_writes_the_contract_columns_for_every_patient(predicted, sim_small):
    table, result = predicted
    assert tuple(table.columns) == PREDICT_COLUMNS
    assert sorted(table["patient_id"]) == sorted(sim_small.cohort.patients["patient_id"])
    assert set(table["status"]) <= set(STATUSES)
    assert (table["as_of"] == AS_OF).all()
    assert set(table["safety"].dropna()) <= {"urgent", "review"}
    # Progress and the summary go to stderr, nothing to stdout.
    assert "forecasting" in result.stderr
    assert "decision support" in result.stderr
    assert result.stdout == ""


def test_predict_blanks_risks_where_no_forecast_applies(predicted):
    table, _ = predicted
    risks = table[RISK_COLS]
    none_apply = table["status"].isin(["no_treatment", "not_in_response", "insufficient_data"])
    assert risks[none_apply].isna().all().all()
    assert table.loc[none_apply, "suggested_date"].isna().all()
    forecast = table["status"].isin(["routine", "session_due"])
    assert forecast.any()
    assert risks[forecast].notna().all().all()
    # A safety flag overrides the status; the status names the flag's level.
    flagged = table["safety"].notna()
    assert (table.loc[table["status"] == "urgent_review", "safety"] == "urgent").all()
    assert (table.loc[table["status"] == "safety_review", "safety"] == "review").all()
    assert table.loc[flagged, "status"].isin(["urgent_review", "safety_review"]).all()


def test_predict_risks_monotone_and_dates_in_bounds(predicted, sim_small):
    table, _ = predicted
    r = table[RISK_COLS].to_numpy(dtype=float)
    ok = ~np.isnan(r).any(axis=1)
    assert (np.diff(r[ok], axis=1) >= 0).all()
    assert ((r[ok] >= 0) & (r[ok] <= 1)).all()
    s = PolicySettings()
    dated = table[table["suggested_date"].notna()]
    by = pd.to_datetime(dated["suggested_date"])
    as_of = pd.Timestamp(AS_OF)
    last = as_of - pd.to_timedelta(dated["days_since_session"], unit="D")
    lo = (last + pd.Timedelta(days=s.min_interval_days)).clip(lower=as_of)
    hi = (last + pd.Timedelta(days=s.max_interval_days)).clip(lower=as_of)
    assert ((by >= lo) & (by <= hi)).all()
    due = dated["status"] == "session_due"
    assert (by[due] >= as_of).all()


def test_predict_matches_the_python_api(predicted, sim_small, policy_model):
    table, _ = predicted
    answers = forecast_cohort(sim_small.cohort, policy_model, AS_OF)
    by_id = {a["patient_id"]: a for a in answers}
    for row in table.itertuples(index=False):
        a = by_id[row.patient_id]
        assert a["status"] == row.status
        if a["risk"] and a["risk"]["kind"] == "personalised":
            assert a["risk"]["horizons"][0]["risk"] == pytest.approx(row.risk_7d, abs=1e-9)
            assert a["suggestion"]["session_by"] == row.suggested_date


def test_predict_threshold_moves_dates_earlier(
    tmp_path: Path, sim_small_folder: Path, policy_models_dir: Path, predicted
):
    table, _ = predicted
    out = tmp_path / "low.csv"
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(sim_small_folder),
            "--models",
            str(policy_models_dir),
            "--as-of",
            AS_OF,
            "--out",
            str(out),
            "--threshold",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    low = pd.read_csv(out, dtype={"patient_id": str})
    both = table.merge(low, on="patient_id", suffixes=("", "_low"))
    both = both[both["suggested_date"].notna() & both["suggested_date_low"].notna()]
    assert len(both)
    assert (
        pd.to_datetime(both["suggested_date_low"]) <= pd.to_datetime(both["suggested_date"])
    ).all()


def test_predict_errors_are_clear(tmp_path: Path, sim_small_folder: Path):
    runner = CliRunner()
    empty = tmp_path / "models"
    empty.mkdir()
    r = runner.invoke(
        main,
        [
            "predict",
            str(sim_small_folder),
            "--models",
            str(empty),
            "--as-of",
            AS_OF,
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert r.exit_code != 0
    assert "no trained model" in r.output
    r = runner.invoke(
        main,
        [
            "predict",
            str(sim_small_folder),
            "--models",
            str(empty),
            "--as-of",
            "June 1",
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert r.exit_code == 2
    assert "--as-of" in r.output
    r = runner.invoke(
        main,
        [
            "predict",
            str(sim_small_folder),
            "--models",
            str(empty),
            "--as-of",
            AS_OF,
            "--out",
            str(tmp_path / "p.csv"),
            "--threshold",
            "1.5",
        ],
    )
    assert r.exit_code == 2
    assert "--threshold" in r.output


def test_predict_reports_contract_problems(
    tmp_path: Path, sim_small_folder: Path, policy_models_dir: Path
):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("patients.csv", "sessions.csv", "assessments.csv"):
        (bad / name).write_text((sim_small_folder / name).read_text())
    text = (bad / "assessments.csv").read_text().splitlines()
    header = text[0].split(",")
    cells = text[1].split(",")
    cells[header.index("phq9_1")] = "7"
    text[1] = ",".join(cells)
    (bad / "assessments.csv").write_text("\n".join(text) + "\n")
    r = CliRunner().invoke(
        main,
        [
            "predict",
            str(bad),
            "--models",
            str(policy_models_dir),
            "--as-of",
            AS_OF,
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert r.exit_code == 1
    assert "phq9_1" in r.output
    assert "row 2" in r.output
    assert not (tmp_path / "p.csv").exists()
