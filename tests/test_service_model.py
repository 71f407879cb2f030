"""The live model: loaded once, reloaded atomically, damaged versions refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.service import AppFactory, Database, assert_problem, client_for


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


def test_model_with_declared_covariates_is_refused_with_their_names(
    make_app: AppFactory, models: Path, tmp_path: Path
) -> None:
    # The store keeps the contract's patient columns only, so a model that reads a
    # declared covariate could not forecast anybody there: it must not go live.
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
    assert "service refuses it" in trained.stderr
    assert registry.load(second, models).covariates == ("bmi",)  # offline use is unaffected

    problem = assert_problem(c.post("/api/v1/model/reload", role="admin"), 409)
    assert "bmi" in problem["detail"]
    assert f"version {first} stays live" in problem["detail"]
    assert c.get("/api/v1/model").json["version"] == first
    # A worker starting now serves the newest version it can feed.
    assert make_app(models=models).extensions["kap_model"].version == first
