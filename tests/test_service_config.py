"""Configuration from the environment, the instance secret, the app factory."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from service.config import ConfigError, instance_secret, load_config


def test_defaults_put_the_database_in_the_instance_folder(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg["KAP_DATABASE_URL"] == f"sqlite:///{tmp_path.as_posix()}/forecast.sqlite"
    assert cfg["KAP_THRESHOLD"] == pytest.approx(0.20)
    assert cfg["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024
    assert cfg["KAP_MIN_INTERVAL_DAYS"] is None
    assert cfg["SECRET_KEY"] == (tmp_path / "secret_key").read_text().strip()


def test_environment_is_read(tmp_path: Path) -> None:
    env = {
        "FORECAST_DATABASE_URL": "sqlite:////x/y.sqlite",
        "FORECAST_MODELS": "/models",
        "FORECAST_THRESHOLD": "0.1",
        "FORECAST_MIN_INTERVAL_DAYS": "10",
        "FORECAST_MAX_INTERVAL_DAYS": "60",
        "FORECAST_MAX_BODY_BYTES": "4096",
        "FORECAST_SECRET_KEY": "s3cret",
    }
    cfg = load_config(tmp_path, environ=env)
    assert cfg["KAP_DATABASE_URL"] == "sqlite:////x/y.sqlite"
    assert cfg["KAP_MODELS_DIR"] == "/models"
    assert (cfg["KAP_THRESHOLD"], cfg["KAP_MIN_INTERVAL_DAYS"], cfg["KAP_MAX_INTERVAL_DAYS"]) == (
        0.1,
        10,
        60,
    )
    assert cfg["MAX_CONTENT_LENGTH"] == 4096
    assert cfg["SECRET_KEY"] == "s3cret"
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FORECAST_THRESHOLD": "1.5"}, "FORECAST_THRESHOLD"),
        ({"FORECAST_THRESHOLD": "abc"}, "FORECAST_THRESHOLD"),
        ({"FORECAST_MAX_BODY_BYTES": "10"}, "FORECAST_MAX_BODY_BYTES"),
        ({"FORECAST_MIN_INTERVAL_DAYS": "0"}, "FORECAST_MIN_INTERVAL_DAYS"),
        ({"FORECAST_MIN_INTERVAL_DAYS": "30", "FORECAST_MAX_INTERVAL_DAYS": "20"}, "MIN"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(tmp_path, environ={"FORECAST_SECRET_KEY": "k", **env})


def test_instance_secret_is_created_once_private_and_shared(tmp_path: Path) -> None:
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(instance_secret(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert len(keys[0]) >= 43
    mode = stat.S_IMODE((tmp_path / "secret_key").stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temp files left


def test_create_app_reads_the_environment(tmp_path: Path, monkeypatch) -> None:
    from service.app import create_app

    monkeypatch.setenv("FORECAST_INSTANCE_PATH", str(tmp_path / "inst"))
    monkeypatch.setenv("FORECAST_THRESHOLD", "0.3")
    monkeypatch.setenv("FORECAST_MAX_INTERVAL_DAYS", "42")
    monkeypatch.setenv("FORECAST_MODELS", str(tmp_path / "none"))
    app = create_app({"TESTING": True})
    try:
        assert app.instance_path == str(tmp_path / "inst")
        assert (tmp_path / "inst" / "forecast.sqlite").exists()
        settings = app.extensions["kap_settings"]
        assert (settings.threshold, settings.max_interval_days) == (0.3, 42)
        assert app.extensions["kap_model"].current is None
        assert set(app.blueprints) >= {"api", "fhir_api", "cds", "pages", "reports"}
        other = create_app({"TESTING": True})
        assert other.extensions["kap_store"] is not app.extensions["kap_store"]
        other.extensions["kap_store"].dispose()
    finally:
        app.extensions["kap_store"].dispose()
