"""Train/serve parity over HTTP, done as a new user would.

A folder with a model trained on it (the models area's fixture), a clinician
token from ``forecast tokens create``, each patient's history posted through
the JSON API with it, and the forecast asked for: risks, status, safety,
median and suggested date equal those of ``forecast predict`` on the same
folder and date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecast.cli import main
from forecast.contract import HORIZONS
from service.histories import frame_json as _records_json
from service.histories import records_json

AS_OF = "2026-05-15"
#: Patients posted through the API (predict runs on the whole folder).
N_PATIENTS = 80


@pytest.mark.slow
def test_api_forecasts_equal_forecast_predict(
    tmp_path: Path, monkeypatch, trained_registry: Any
) -> None:
    from forecast.data import load_cohort
    from forecast.policy import forecast_rows
    from service.app import create_app

    # The models area's session model: `forecast train` on this folder (read-only here).
    folder = Path(trained_registry.data_dir)
    models = Path(trained_registry.models_dir)
    runner = CliRunner()

    db_url = f"sqlite:///{tmp_path / 'service.sqlite'}"
    monkeypatch.setenv("FORECAST_DATABASE_URL", db_url)
    monkeypatch.setenv("FORECAST_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("FORECAST_MODELS", str(models))
    created = runner.invoke(main, ["tokens", "create", "--role", "clinician", "--name", "dr-a"])
    assert created.exit_code == 0, created.output
    auth = {"Authorization": f"Bearer {created.stdout.strip()}"}

    preds_csv = tmp_path / "preds.csv"
    predicted = runner.invoke(
        main,
        [
            "predict",
            str(folder),
            "--as-of",
            AS_OF,
            "--out",
            str(preds_csv),
            "--models",
            str(models),
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    offline = pd.read_csv(preds_csv, dtype={"patient_id": str}).set_index("patient_id")

    app = create_app({"TESTING": True})
    http = app.test_client()
    cohort = load_cohort(folder)
    ids = cohort.patients["patient_id"].tolist()[:N_PATIENTS]
    answers = []
    for pid in ids:
        patient = _records_json(
            cohort.patients[cohort.patients["patient_id"] == pid],
            ["age", "sex", "diagnosis", "prior_treatments"],
        )[0]
        assert http.put(f"/api/v1/patients/{pid}", json=patient, headers=auth).status_code == 201
        for table in ("sessions", "assessments"):
            frame = getattr(cohort, table)
            items = records_json(frame[frame["patient_id"] == pid], table)
            resp = http.post(f"/api/v1/patients/{pid}/{table}", json={table: items}, headers=auth)
            assert resp.status_code in (200, 201), resp.json
        resp = http.get(f"/api/v1/patients/{pid}/forecast?as_of={AS_OF}", headers=auth)
        assert resp.status_code == 200, resp.json
        answers.append(resp.json)
    app.extensions["kap_store"].dispose()

    served = forecast_rows(answers).set_index("patient_id")
    offline = offline.loc[served.index]
    assert len(served) == len(ids)
    for col in ("status", "safety", "suggested_date"):
        left = served[col].fillna("").astype(str).to_numpy()
        right = offline[col].fillna("").astype(str).to_numpy()
        assert (left == right).all(), col
    for col in ("days_since_session", "median_days", *(f"risk_{h}d" for h in HORIZONS)):
        np.testing.assert_allclose(
            pd.to_numeric(served[col]).to_numpy(dtype=float),
            offline[col].to_numpy(dtype=float),
            rtol=0,
            atol=1e-9,
            equal_nan=True,
            err_msg=col,
        )
    personalised = served["risk_28d"].notna().sum()
    assert personalised >= 5, "the comparison must cover personalised forecasts"
