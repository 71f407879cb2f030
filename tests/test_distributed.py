"""Partitioned datasets and the Dask path: same data, same checks, same fit as one machine."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecast.absent import mask_optional_inputs
from forecast.cli import main
from forecast.data import ContractError, load_cohort
from forecast.data.partitioned import check_layout, write_partitioned
from forecast.simulation.partitioned import simulate_partitioned

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-8


@pytest.fixture(scope="module")
def parts_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated cohort written as 3 parts (read-only for the tests)."""
    folder = tmp_path_factory.mktemp("parts") / "cohort"
    simulate_partitioned(360, 11, 120, folder, end_date="2026-06-30")
    return folder


@pytest.fixture(scope="module")
def client():  # noqa: ANN201 - a distributed.Client
    """A LocalCluster of 2 single-threaded worker processes (as in CI)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _cohort_equal(a, b) -> None:  # noqa: ANN001
    for t in ("patients", "sessions", "assessments"):
        pd.testing.assert_frame_equal(getattr(a, t).reset_index(drop=True),
                                      getattr(b, t).reset_index(drop=True))


# ---------------------------------------------------------------- partitioned data
def test_mask_of_slices_equals_the_mask_of_the_whole_frame() -> None:
    rng = np.random.default_rng(4)
    n = 101
    X = pd.DataFrame({"dose_mg_per_kg": rng.random(n), "dose_missing": np.zeros(n),
                      "route": rng.choice(["iv", "im"], n).astype(object),
                      "item9_latest": rng.integers(0, 3, n).astype(float),
                      "item9_missing": np.zeros(n)})
    whole = mask_optional_inputs(X, 0.3, 7, 0.2)
    cuts = [0, 13, 60, 101]
    pieces = [mask_optional_inputs(X.iloc[a:b], 0.3, 7, 0.2, offset=a, total=n)
              for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    pd.testing.assert_frame_equal(pd.concat(pieces), whole)
    assert (whole["dose_missing"] == 1.0).sum() > 0  # something was masked


def test_partition_never_splits_a_patient(sim_small_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    res = CliRunner().invoke(main, ["partition", str(sim_small_folder), "--out", str(out),
                                    "--patients-per-part", "37"])
    assert res.exit_code == 0, res.output
    parts, problems = check_layout(out)
    assert not problems
    assert len(parts) > 2
    owner: dict[str, str] = {}
    for part in parts:
        for pid in pd.read_parquet(out / "patients" / part)["patient_id"]:
            assert pid not in owner
            owner[pid] = part
    for table in ("sessions", "assessments"):
        for part in parts:
            pids = pd.read_parquet(out / table / part)["patient_id"]
            assert {owner[p] for p in pids} <= {part}
    _cohort_equal(load_cohort(out), load_cohort(sim_small_folder))


def test_simulate_writes_parts_one_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    res = CliRunner().invoke(main, ["simulate", "--patients", "50", "--seed", "3",
                                    "--patients-per-part", "20", "--out", str(out),
                                    "--end-date", "2026-06-30"])
    assert res.exit_code == 0, res.output
    parts, problems = check_layout(out)
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    cohort = load_cohort(out)
    assert cohort.patients["patient_id"].is_unique
    assert len(cohort.patients) == 50
    assert sorted(p.name for p in (out / "truth").iterdir()) == [
        "part-00000.csv", "part-00001.csv", "part-00002.csv"]


def test_validation_names_the_part_file_row_and_column(parts_folder: Path,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    write_partitioned(load_cohort(parts_folder), bad, 120)
    path = bad / "sessions" / "part-00001.parquet"
    sessions = pd.read_parquet(path)
    sessions.loc[4, "kind"] = "booster"
    sessions.to_parquet(path, index=False)
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 1
    assert "sessions/part-00001.parquet, row 6, column kind:" in res.output


def test_a_patient_in_two_parts_is_a_problem(parts_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "split"
    write_partitioned(load_cohort(parts_folder), bad, 120)
    first = pd.read_parquet(bad / "patients" / "part-00000.parquet")
    last = bad / "patients" / "part-00002.parquet"
    pd.concat([pd.read_parquet(last), first.iloc[[3]]]).to_parquet(last, index=False)
    with pytest.raises(ContractError) as err:
        load_cohort(bad)
    msgs = [str(p) for p in err.value.problems]
    assert any(m.startswith("patients/part-00002.parquet, row ") and "column patient_id" in m
               and "patients/part-00000.parquet" in m for m in msgs), msgs


# ---------------------------------------------------------------- Dask = one machine
def test_dask_fit_equals_the_single_machine_fit(parts_folder: Path, client) -> None:  # noqa: ANN001
    from forecast.distributed.train import fit_dask
    from forecast.training import fit_kind, training_data

    data = training_data(load_cohort(parts_folder), "piecewise")
    one = fit_kind(data, "piecewise", n_bootstrap=2, random_state=5)
    est, summary, _ = fit_dask(client, parts_folder, n_bootstrap=2, seed=5)
    assert summary == data.summary
    np.testing.assert_allclose(est.theta_, one.theta_, rtol=0, atol=TOL)
    a, b = est.to_bundle(), one.to_bundle()
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        np.testing.assert_allclose(a.arrays[key], b.arrays[key], rtol=0, atol=TOL, err_msg=key)
    np.testing.assert_allclose(a.encoder.means, b.encoder.means, rtol=0, atol=TOL)
    np.testing.assert_allclose(a.encoder.scales, b.encoder.scales, rtol=0, atol=TOL)
    assert np.array_equal(a.encoder.active, b.encoder.active)
    assert abs(est.log_likelihood_ - one.log_likelihood_) < 1e-6 * abs(one.log_likelihood_)
    risk_a = est.predict_risk(data.X.iloc[:200], since=None)
    risk_b = one.predict_risk(data.X.iloc[:200], since=None)
    np.testing.assert_allclose(risk_a, risk_b, rtol=0, atol=TOL)


@pytest.mark.slow
def test_cli_train_predict_evaluate_on_dask_equal_one_machine(parts_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from forecast import registry

    monkeypatch.setenv("FORECAST_SIGNING_KEY_FILE", "")
    models = tmp_path / "models"
    runner = CliRunner()
    common = ["train", str(parts_folder), "--models", str(models), "--bootstrap", "2",
              "--seed", "9"]
    res_d = runner.invoke(main, [*common, "--dask", "local:2"])
    assert res_d.exit_code == 0, res_d.output
    res_1 = runner.invoke(main, common)
    assert res_1.exit_code == 0, res_1.output
    v_d, v_1 = res_d.stdout.strip(), res_1.stdout.strip()
    a, b = registry.load(v_d, models).bundle, registry.load(v_1, models).bundle
    for key in a.arrays:
        np.testing.assert_allclose(a.arrays[key], b.arrays[key], rtol=0, atol=TOL, err_msg=key)
    out_d, out_1 = tmp_path / "d.csv", tmp_path / "1.csv"
    for out, extra in ((out_d, ["--dask", "local:2"]), (out_1, [])):
        res = runner.invoke(main, ["predict", str(parts_folder), "--model", v_d, "--models",
                                   str(models), "--as-of", "2026-05-01", "--out", str(out),
                                   *extra])
        assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_csv(out_d), pd.read_csv(out_1), rtol=0, atol=TOL)
    reports = {}
    for name, extra in (("d", ["--dask", "local:2"]), ("1", [])):
        res = runner.invoke(main, ["evaluate", str(parts_folder), "--model", v_1, "--models",
                                   str(models), "--out", str(tmp_path / name), "--folds", "2",
                                   "--ci-reps", "0", "--no-record", *extra])
        assert res.exit_code == 0, res.output
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())["cv"]
    assert reports["d"] == reports["1"]  # the folds ran as Dask tasks, same figures


def test_train_dask_with_another_kind_is_a_usage_error(parts_folder: Path,
                                                       tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["train", str(parts_folder), "--models",
                                    str(tmp_path / "m"), "--kind", "cox", "--dask", "local:2"])
    assert res.exit_code == 2
    assert "--kind cox needs one machine" in res.output


def test_train_dask_needs_a_partitioned_dataset(sim_small_folder: Path, tmp_path: Path,
                                                client, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from forecast.distributed.train import fit_dask

    with pytest.raises(ContractError, match="needs a partitioned dataset"):
        fit_dask(client, sim_small_folder)


def test_dask_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from forecast.distributed import DaskUnavailable, require_dask

    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(DaskUnavailable, match=r"pip install 'kap-forecast\[dask\]'"):
        require_dask()


def test_dask_is_imported_only_on_the_distributed_path() -> None:
    """No module-level dask import outside forecast.distributed; the service never imports it."""
    for path in [*(ROOT / "forecast").rglob("*.py"), *(ROOT / "service").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = ast.walk(tree) if rel.startswith("service/") else tree.body
        for node in nodes:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("dask", "distributed") for n in names), rel
    code = ("import sys, forecast.cli, service.app, forecast.distributed, forecast.data; "
            "print(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
