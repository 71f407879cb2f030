"""Registry: atomic versions, checksums, refusal of tampered or foreign models, CLI train."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecast import registry
from forecast.bundle import DEFAULT_KIND
from forecast.cli import main
from forecast.models import make_estimator
from forecast.registry import RegistryError
from tests.test_models import FEATS, synthetic


@pytest.fixture(scope="module")
def bundle():
    X, lo, up = synthetic(400, 5)
    return make_estimator("weibull", features=FEATS, n_bootstrap=3, random_state=0).fit(
        X, lo, up).to_bundle()


@pytest.fixture
def reg(tmp_path, bundle) -> tuple[Path, str]:
    root = tmp_path / "models"
    return root, registry.save_version(bundle, models_dir=root)


def test_save_and_load(reg, bundle) -> None:
    root, version = reg
    assert registry.VERSION_RE.match(version)
    m = registry.load(version, root)
    assert m.version == version
    assert m.path == root / version
    X = synthetic(10, 1)[0]
    assert np.array_equal(m.bundle.predict_risk(X), bundle.predict_risk(X))
    assert m.definition.response_fraction == 0.5
    assert m.card["model"]["kind"] == "weibull"
    for key in ("intended_use", "outcome", "censoring", "model", "training_data", "limitations"):
        assert key in m.card
    manifest = json.loads((root / version / registry.MANIFEST).read_text())
    # Every file but the manifest and its signature is listed (and so covered by it).
    assert set(manifest["files"]) == {p.name for p in (root / version).iterdir()} - {
        registry.MANIFEST, "MANIFEST.sig"}
    assert m.signature == "verified"


def test_latest_is_newest_and_ignores_temp(reg, bundle) -> None:
    root, first = reg
    second = registry.save_version(bundle, models_dir=root)
    assert second > first
    (root / ".tmp-half").mkdir()
    (root / "20991231T000000000Z-deadbeef").mkdir()  # no manifest: incomplete, ignored
    assert registry.list_versions(root) == [first, second]
    assert registry.load("latest", root).version == second
    assert registry.load(first, root).version == first


def test_crash_mid_write_leaves_no_version(tmp_path, bundle) -> None:
    root = tmp_path / "models"
    with pytest.raises(RuntimeError, match="simulated crash"):
        registry.save_version(bundle, models_dir=root, _crash_after=registry.CARD_MD)
    assert registry.list_versions(root) == []
    assert list(root.iterdir()) == []  # the temp folder was removed
    with pytest.raises(RegistryError, match="no trained model"):
        registry.load("latest", root)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "how", "message"),
    [
        ("bundle.npz", "flip", "bundle.npz: checksum mismatch"),
        ("bundle.json", "edit", "bundle.json: size differs"),
        ("model_card.json", "truncate", "model_card.json: size differs"),
        ("evil.pkl", "add", "evil.pkl: file not listed"),
        ("bundle.npz", "delete", "bundle.npz: listed in MANIFEST.json but missing"),
    ],
)
def test_tampering_refused(reg, name: str, how: str, message: str) -> None:
    root, version = reg
    path = root / version / name
    if how == "flip":
        _flip_byte(path, path.stat().st_size // 2)
    elif how == "edit":
        d = json.loads(path.read_text())
        d["meta"]["penalizer"] = 123.0
        path.write_text(json.dumps(d))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif how == "add":
        path.write_bytes(b"\x80\x04K\x01.")
    else:
        path.unlink()
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.load(version, root)


def test_unknown_manifest_format_refused(reg) -> None:
    root, version = reg
    mpath = root / version / registry.MANIFEST
    d = json.loads(mpath.read_text())
    d["format"] = "someone-elses-model"
    mpath.write_text(json.dumps(d))
    with pytest.raises(RegistryError, match="MANIFEST.json: unknown format"):
        registry.load(version, root)


def test_paths_outside_registry_refused(reg, tmp_path) -> None:
    root, version = reg
    outside = tmp_path / "elsewhere" / version
    shutil.copytree(root / version, outside)
    with pytest.raises(RegistryError, match="only from the registry folder"):
        registry.load(str(outside), root)
    with pytest.raises(RegistryError, match="only from the registry folder"):
        registry.load(str(root / version / ".." / ".." / "elsewhere" / version), root)
    assert registry.load(str(root / version), root).version == version
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.load("20200101T000000000Z-00000000", root)


def test_renamed_version_refused(reg) -> None:
    root, version = reg
    other = "20200101T000000000Z-0badc0de"
    shutil.copytree(root / version, root / other)
    with pytest.raises(RegistryError, match="names version"):
        registry.load(other, root)


def test_models_dir_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "env"))
    assert registry.models_dir(tmp_path / "opt") == tmp_path / "opt"
    assert registry.models_dir(None) == tmp_path / "env"
    monkeypatch.delenv(registry.ENV_VAR)
    assert registry.models_dir(None) == Path("models")


def test_fingerprint_changes_with_data() -> None:
    a = pd.DataFrame({"patient_id": ["p1", "p2"], "x": [1.0, 2.0]})
    b = a.copy()
    b.loc[1, "x"] = 2.5
    assert registry.fingerprint_frames({"t": a}) == registry.fingerprint_frames({"t": a.copy()})
    assert registry.fingerprint_frames({"t": a}) != registry.fingerprint_frames({"t": b})


def test_trained_registry_fixture_has_no_patient_rows(trained_registry) -> None:
    m = registry.load("latest", trained_registry.models_dir)
    assert m.version == trained_registry.version
    assert m.bundle.kind == DEFAULT_KIND == "piecewise"  # the default kind
    assert m.bundle.n_bootstrap > 0
    assert m.card["training_data"]["episodes"] > 0
    assert len(m.card["population_curve"]["survival"]) == 366
    ids = pd.read_csv(trained_registry.data_dir / "patients.csv", dtype=str)["patient_id"]
    folder = trained_registry.models_dir / m.version
    blob = "".join(p.read_bytes().decode("latin-1") for p in folder.iterdir())
    assert not any(re.search(rf"\b{re.escape(pid)}\b", blob) for pid in ids)


def test_cli_train_prints_only_the_version(trained_registry, tmp_path) -> None:
    runner = CliRunner()
    models = tmp_path / "models"
    result = runner.invoke(
        main,
        ["train", str(trained_registry.data_dir), "--models", str(models), "--kind", "cox",
         "--bootstrap", "2", "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert registry.VERSION_RE.match(lines[0])
    assert registry.list_versions(models) == [lines[0]]
    assert registry.load(lines[0], models).bundle.kind == "cox"


def test_cli_train_reports_bad_data(tmp_path) -> None:
    (tmp_path / "patients.csv").write_text("patient_id,age\np1,400\n")
    (tmp_path / "sessions.csv").write_text("patient_id,date,kind\n")
    (tmp_path / "assessments.csv").write_text("patient_id,date,phq9_total\n")
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--models", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "patients.csv" in result.output
    assert result.stdout == ""


def test_cli_train_rejects_bad_penalizer(trained_registry, tmp_path) -> None:
    result = CliRunner().invoke(main, ["train", str(trained_registry.data_dir), "--models",
                                       str(tmp_path / "m"), "--penalizer", "lots"])
    assert result.exit_code == 2
    assert "expected 'auto' or a number >= 0" in result.output


def test_population_curve_recovers_a_constant_hazard_from_weekly_intervals() -> None:
    """Exponential waning at 0.02 a day seen only at weekly visits, censored at 20-150
    days: the stored curve is exp(-0.02 t) within 0.02 over a year's first 120 days."""
    from forecast.training import population_curve

    rng = np.random.default_rng(3)
    t = rng.exponential(50.0, 20000)
    cens = rng.uniform(20, 150, t.size)
    seen = t <= cens
    lower = np.where(seen, np.floor(t / 7) * 7, np.floor(cens / 7) * 7)
    upper = np.where(seen, lower + 7, np.inf)
    s = np.array(population_curve(lower, upper)["survival"])
    days = np.arange(0, 121)
    assert np.abs(s[days] - np.exp(-0.02 * days)).max() < 0.02


def test_population_curve_follows_turnbull_without_its_steps() -> None:
    """On a simulated weekly cohort the curve is within 0.03 of the Turnbull NPMLE of the
    same episodes at 14-84 days, never rises, and gains at most 2 points in a day where the
    NPMLE, read day by day, jumps by more."""
    from forecast.features import landmark_dataset
    from forecast.models.nonparametric import turnbull_survival
    from forecast.simulation import simulate
    from forecast.training import population_curve

    start = landmark_dataset(simulate(3000, 5).cohort).query("landmark == 0")
    lo, up = start["lower"].to_numpy(float), start["upper"].to_numpy(float)
    s = np.array(population_curve(lo, up)["survival"])
    tb = turnbull_survival(lo, up, np.arange(0, 366.0))
    h = [14, 28, 56, 84]
    assert np.abs(s[h] - tb[h]).max() < 0.03
    assert np.all(np.diff(s) <= 0)
    assert np.max(-np.diff(s)) < 0.02 < np.max(-np.diff(tb))
