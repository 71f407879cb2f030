"""``forecast models``: the lifecycle from a trained version to a served one and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from forecast import lifecycle, registry
from forecast.cli import main


def _metrics(version: str, citl: float = 0.01, ici: float = 0.02) -> dict:
    """The shape of ``forecast evaluate``'s metrics.json at the first forecast point."""
    by_h = {str(h): {"auc": 0.7, "brier": 0.2, "ici": ici, "citl": citl, "slope": 1.0}
            for h in (7, 14, 28, 56, 84)}
    block = {"forecast_point": {"n_patients": 50, "n_episodes": 60,
                                "models": {"model": {"overall": {"by_horizon": by_h}}}}}
    return {"model_version": version, "cv": block, "holdout": block, "data_fingerprint": "x"}


@pytest.fixture
def models(tmp_path: Path, trained_registry) -> Path:
    """A private registry with two versions (the second one saved from the first bundle)."""
    dest = tmp_path / "models"
    shutil.copytree(trained_registry.models_dir, dest)
    loaded = registry.load("latest", dest)
    registry.save_version(loaded.bundle, models_dir=dest, definition=loaded.definition)
    return dest


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env or {"FORECAST_ACTOR": "dr-a"})


def test_lifecycle_approve_promote_rollback_retire(models: Path) -> None:
    first, second = registry.list_versions(models)
    listed = run("models", "list", "--models", models, "--json")
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.output)
    assert [v["status"] for v in doc["versions"]] == ["candidate", "candidate"]
    assert doc["live"] is None
    assert doc["versions"][0]["patients"] == 240
    assert doc["versions"][0]["signed"] is True

    # No recorded evaluation: refused, one line, exit 1.
    refused = run("models", "approve", first, "--models", models)
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: ")
    assert "no recorded evaluation" in refused.output
    assert "forecast evaluate" in refused.output
    assert "Traceback" not in refused.output

    # An evaluation that misses the |CITL| gate: refused, naming the figure.
    lifecycle.record_evaluation(models, first, _metrics(first, citl=-0.09), None, "dr-a")
    missed = run("models", "approve", first, "--models", models)
    assert missed.exit_code == 1
    assert "|CITL| at 28 days is 0.090 > 0.05" in missed.output
    # ... and passes a looser gate the researcher states.
    assert run("models", "approve", first, "--models", models, "--max-citl", "0.1").exit_code == 0

    lifecycle.record_evaluation(models, second, _metrics(second), None, "dr-b")
    assert run("models", "approve", second, "--models", models).exit_code == 0
    # Promote needs approval: the first version is approved, promote it, then the second.
    assert run("models", "promote", first, "--models", models).exit_code == 0
    assert lifecycle.live_version(models) == first
    out = run("models", "promote", second, "--models", models)
    assert out.exit_code == 0
    assert f"forecast models promote {first}" in out.output
    st = lifecycle.statuses(models)
    assert st == {first: "approved", second: "live"}
    # Back to the previous one.
    assert run("models", "promote", first, "--models", models).exit_code == 0
    assert lifecycle.live_version(models) == first
    # A live version cannot be retired; the other can, and cannot then be promoted.
    assert "promote another version first" in run("models", "retire", first, "--models",
                                                  models).output
    assert run("models", "retire", second, "--models", models, "--reason", "drift").exit_code == 0
    again = run("models", "promote", second, "--models", models)
    assert again.exit_code == 1
    assert "retired, not approved" in again.output
    # Every change has actor and time in the registry's log.
    changes = [e for e in lifecycle.events(models) if e["action"] != "evaluated"]
    assert [e["action"] for e in changes] == ["approved", "approved", "promoted", "promoted",
                                              "promoted", "retired"]
    assert all(e["actor"] == "dr-a" and e["time"].endswith("Z") for e in changes)
    approved = [e for e in changes if e["action"] == "approved"]
    assert approved[0]["gates"]["max_abs_citl"] == 0.1  # what the approval rested on
    table = run("models", "list", "--models", models)
    assert f"live (served after the next reload): {first}" in table.output
    shown = run("models", "show", first, "--models", models)
    assert shown.exit_code == 0
    assert "- status: live" in shown.output
    assert "promoted by dr-a" in shown.output


def test_status_changes_reach_the_audit_trail_when_a_store_is_configured(
    models: Path, tmp_path: Path
) -> None:
    first = registry.list_versions(models)[0]
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    env = {"FORECAST_ACTOR": "dr-a", "FORECAST_DATABASE_URL": url,
           "FORECAST_INSTANCE_PATH": str(tmp_path / "instance")}
    lifecycle.record_evaluation(models, first, _metrics(first), None, "dr-a")
    assert run("models", "approve", first, "--models", models, env=env).exit_code == 0
    promoted = run("models", "promote", first, "--models", models, env=env)
    assert promoted.exit_code == 0, promoted.output
    from service.store import Store

    store = Store(url)
    try:
        rows = [r for r in store.audit_rows() if r["endpoint"] == "forecast models"]
    finally:
        store.dispose()
    assert [(r["status"], r["token_name"], r["model_version"]) for r in rows] == [
        ("model_approved", "dr-a", first), ("model_promoted", "dr-a", first)]


def test_unknown_version_lists_the_available_ones(models: Path) -> None:
    versions = registry.list_versions(models)
    out = run("models", "show", "20200101T000000000Z-deadbeef", "--models", models)
    assert out.exit_code == 1
    assert out.output.count("\n") == 1
    assert out.output.startswith("Error: unknown model version")
    assert all(v in out.output for v in versions)
    predicted = run("predict", "--help")
    assert predicted.exit_code == 0


def test_compare_reports_paired_differences_and_moved_dates(models: Path, trained_registry
                                                            ) -> None:
    first, second = registry.list_versions(models)
    out = run("models", "compare", first, second, "--on", trained_registry.data_dir,
              "--models", models, "--reps", "20", "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    # The same bundle twice: every difference that can be computed on this small holdout
    # is exactly 0 with a zero interval (a smoother that cannot be fitted gives None for
    # both versions alike), and AUC and Brier at 28 days can always be computed here.
    for row in doc["by_horizon"].values():
        for key in ("auc", "brier", "ici"):
            if row[key]["diff"] is not None:
                assert row[key]["diff"] == 0.0
                assert row[key]["lower"] in (0.0, None)
                assert row[key]["upper"] in (0.0, None)
    for key in ("auc", "brier"):
        assert doc["by_horizon"]["28"][key]["diff"] == 0.0
    assert doc["suggested_dates"]["moved_over_7_days"] == 0
    assert doc["suggested_dates"]["patients"] == 240


def test_compare_detects_a_worse_model(models: Path, trained_registry) -> None:
    # B: the same model with every risk flattened to the population mean -> AUC falls.
    import numpy as np

    first = registry.list_versions(models)[0]
    a = registry.load(first, models)
    from forecast.commands.modelling import _load
    from forecast.evaluation.compare import compare_versions

    class Flat:
        def __init__(self, bundle):
            self._b = bundle
            self.horizons = bundle.horizons
            self.time_origin = bundle.time_origin

        def predict_risk(self, X, h, since=None):
            r = self._b.predict_risk(X, h) if since is None else self._b.predict_risk(X, h, since)
            return np.broadcast_to(np.nanmean(r, axis=0), r.shape).copy()

    b = registry.LoadedModel("flat", a.path, a.card, Flat(a.bundle), a.definition)
    cohort = _load(trained_registry.data_dir, ())
    doc = compare_versions(cohort, a, b, reps=30, seed=1, as_of=None)
    auc28 = doc["by_horizon"]["28"]["auc"]
    assert auc28["diff"] < -0.05
    assert auc28["upper"] < 0
