"""The live model: loaded once, reloaded atomically, damaged versions refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.service import AppFactory, Client, Database, assert_problem, client_for


def _new_version(models: Path) -> str:
    """Save a new version (same fitted bundle) into ``models``; cheap, no training."""
    from forecast import registry

    loaded = registry.load("latest", models)
    return registry.save_version(loaded.bundle, models_dir=models, definition=loaded.definition)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def models(tmp_path: Path, service_models: Path) -> Path:
    """A private copy of the trained registry (tests add and damage versions)."""
    dest = tmp_path / "models"
    shutil.copytree(service_models, dest)
    return dest


def test_model_is_loaded_once_per_app(make_app: AppFactory, models: Path, monkeypatch) -> None:
    from forecast import registry

    c = client_for(make_app(models=models))
    calls = []
    real = registry.load
    monkeypatch.setattr(registry, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        assert c.get("/api/v1/model").status_code == 200
    assert calls == []


def test_reload_switches_atomically_and_in_flight_requests_keep_their_model(
    make_app: AppFactory, models: Path
) -> None:
    from forecast import registry

    first = registry.list_versions(models)[-1]
    c = client_for(make_app(models=models))
    state = c.app.extensions["kap_model"]
    in_flight = state.get()  # what a request that started now holds
    second = _new_version(models)
    assert c.get("/api/v1/model").json["version"] == first  # not picked up by itself
    resp = c.post("/api/v1/model/reload", role="admin")
    assert resp.status_code == 200
    assert resp.json == {"version": second, "previous": first}
    assert c.get("/api/v1/model").json["version"] == second
    assert in_flight.version == first  # the old object is untouched
    assert in_flight.bundle is not state.get().bundle


def test_damaged_latest_version_is_refused_and_the_previous_keeps_serving(
    make_app: AppFactory, models: Path
) -> None:
    from forecast import registry

    first = registry.list_versions(models)[-1]
    c = client_for(make_app(models=models))
    second = _new_version(models)
    _flip_byte(models / second / "bundle.npz")
    problem = assert_problem(c.post("/api/v1/model/reload", role="admin"), 409)
    assert first in problem["detail"]
    assert c.get("/api/v1/model").json["version"] == first
    # A worker starting now skips the damaged latest version too.
    fresh = make_app(models=models)
    assert fresh.extensions["kap_model"].version == first


def test_reload_needs_a_model_in_the_registry(client) -> None:
    problem = assert_problem(client.post("/api/v1/model/reload", role="admin"), 409)
    assert "no model is live" in problem["detail"]


def test_other_workers_follow_a_reload_through_the_store(
    make_app: AppFactory, models: Path, database: Database
) -> None:
    from forecast import registry

    first = registry.list_versions(models)[-1]
    worker_a = client_for(make_app(models=models, database=database, KAP_MODEL_SYNC_SECONDS=0))
    worker_b = worker_a.app.extensions["kap_store"]  # same database
    app_b = make_app(models=models, database=database, KAP_MODEL_SYNC_SECONDS=0)
    assert worker_b is not app_b.extensions["kap_store"]
    http_b = app_b.test_client()
    headers = worker_a.headers("researcher")  # tokens live in the shared store
    assert http_b.get("/api/v1/model", headers=headers).json["version"] == first
    second = _new_version(models)
    assert worker_a.post("/api/v1/model/reload", role="admin").json["version"] == second
    assert http_b.get("/api/v1/model", headers=headers).json["version"] == second
    # A worker started after the reload starts on the recorded version, even when a
    # newer version has been trained meanwhile (versions change only on reload).
    _new_version(models)
    late = make_app(models=models, database=database)
    assert late.extensions["kap_model"].version == second


def test_model_with_declared_covariates_is_refused_unless_the_service_declares_them(
    make_app: AppFactory, models: Path, tmp_path: Path
) -> None:
    # A model that reads a declared covariate cannot forecast anybody in a store that
    # does not keep it: it must not go live there. Declared (FORECAST_COVARIATES), the
    # covariate is stored with the patients and the model serves as offline.
    import numpy as np
    import pandas as pd
    from click.testing import CliRunner

    from forecast import registry
    from forecast.cli import main

    first = registry.list_versions(models)[-1]
    c = client_for(make_app(models=models))
    folder = tmp_path / "clinic"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "demo", folder)
    patients = pd.read_csv(folder / "patients.csv")
    patients["bmi"] = 20.0 + (patients.index % 15)
    patients.to_csv(folder / "patients.csv", index=False)
    trained = CliRunner().invoke(
        main, ["train", str(folder), "--models", str(models), "--covariate", "bmi"])
    assert trained.exit_code == 0, trained.output
    second = trained.stdout.strip().splitlines()[-1]
    assert "FORECAST_COVARIATES=bmi" in trained.stderr
    assert registry.load(second, models).covariates == ("bmi",)  # offline use is unaffected

    problem = assert_problem(c.post("/api/v1/model/reload", role="admin"), 409)
    assert "bmi" in problem["detail"]
    assert f"version {first} stays live" in problem["detail"]
    assert c.get("/api/v1/model").json["version"] == first
    # A worker starting now serves the newest version it can feed.
    assert make_app(models=models).extensions["kap_model"].version == first

    app = make_app(models=models, KAP_COVARIATES=("bmi",))  # same store: c's tokens
    declared = Client(app, app.test_client(), c.tokens)
    assert declared.get("/api/v1/model").json["version"] == second
    from forecast.data import load_cohort
    from forecast.policy import forecast_rows
    from service.histories import frame_json as _records_json
    from service.histories import records_json

    as_of = "2026-05-15"
    cohort = load_cohort(folder, covariates=("bmi",))
    ids = cohort.patients["patient_id"].tolist()[:30]
    served = []
    for pid in ids:
        rec = _records_json(cohort.patients[cohort.patients["patient_id"] == pid],
                            ["age", "sex", "diagnosis", "prior_treatments", "bmi"])[0]
        assert declared.put(f"/api/v1/patients/{pid}", rec).status_code == 201
        for table in ("sessions", "assessments"):
            frame = getattr(cohort, table)
            items = records_json(frame[frame["patient_id"] == pid], table)
            r = declared.post(f"/api/v1/patients/{pid}/{table}", {table: items})
            assert r.status_code in (200, 201), r.json
        served.append(declared.get(f"/api/v1/patients/{pid}/forecast?as_of={as_of}").json)
    assert declared.get(f"/api/v1/patients/{ids[0]}").json["patient"]["bmi"] == float(
        cohort.patients.loc[cohort.patients["patient_id"] == ids[0], "bmi"].iloc[0])
    preds = tmp_path / "preds.csv"
    predicted = CliRunner().invoke(main, ["predict", str(folder), "--model", second,
                                          "--models", str(models), "--as-of", as_of,
                                          "--out", str(preds)])
    assert predicted.exit_code == 0, predicted.output
    offline = pd.read_csv(preds, dtype={"patient_id": str}).set_index("patient_id").loc[ids]
    rows = forecast_rows(served).set_index("patient_id")
    assert rows["risk_28d"].notna().sum() >= 5
    np.testing.assert_allclose(pd.to_numeric(rows["risk_28d"]).to_numpy(float),
                               offline["risk_28d"].to_numpy(float), atol=1e-9, equal_nan=True)
    # The same history sent statelessly, bmi in the patient object, gives the same risk.
    pid = rows["risk_28d"].dropna().index[0]
    history = {
        "patient": {"patient_id": pid, **declared.get(f"/api/v1/patients/{pid}").json["patient"]},
        "sessions": records_json(cohort.sessions[cohort.sessions["patient_id"] == pid],
                                 "sessions"),
        "assessments": records_json(
            cohort.assessments[cohort.assessments["patient_id"] == pid], "assessments"),
        "as_of": as_of,
    }
    alone = declared.post("/api/v1/forecast", history)
    assert alone.status_code == 200, alone.json
    batch = declared.post("/api/v1/forecast/batch", {
        "as_of": as_of, "histories": [{k: v for k, v in history.items() if k != "as_of"}]})
    assert batch.status_code == 200, batch.json
    risk = {h["days"]: h["risk"] for h in alone.json["risk"]["horizons"]}[28]
    assert risk == pytest.approx(float(rows.loc[pid, "risk_28d"]), abs=1e-9)
    # The stored value is what the model reads: another bmi, another risk.
    patient = dict(history["patient"])
    patient.pop("patient_id")
    assert declared.put(f"/api/v1/patients/{pid}", {**patient, "bmi": 60.0}).status_code == 200
    moved = declared.get(f"/api/v1/patients/{pid}/forecast?as_of={as_of}").json
    assert {h["days"]: h["risk"] for h in moved["risk"]["horizons"]}[28] != risk
    # The OpenAPI document lists the declared covariate where the API accepts it.
    schemas_ = declared.get("/openapi.json").json["components"]["schemas"]
    for model in ("PatientCovariates", "StatelessPatient"):
        assert "bmi" in schemas_[model]["properties"], model
    # A bmi that is not a number is refused, naming the field.
    bad = declared.put(f"/api/v1/patients/{pid}", {"bmi": "high"})
    assert bad.status_code == 422
    assert any(e["field"].endswith("bmi") for e in bad.json["errors"])
