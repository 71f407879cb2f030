"""The numpy serving bundle equals lifelines, round-trips through disk, gives sane bands."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from forecast.bundle import KINDS, Bundle, BundleError
from forecast.models import make_estimator
from tests.test_models import FEATS, synthetic

TIMES = np.array([0.0, 0.5, 3.0, 7.0, 13.7, 14.0, 28.0, 41.2, 56.0, 84.0, 200.0, 1000.0])


@pytest.fixture(scope="module")
def fitted() -> dict:
    X, lo, up = synthetic(900, 21)
    groups = np.repeat(np.arange(300), 3)
    out = {}
    for kind in KINDS:
        est = make_estimator(kind, features=FEATS, n_bootstrap=5, random_state=2)
        out[kind] = est.fit(X, lo, up, groups)
    return {"X": X, "est": out}


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_equals_lifelines(kind: str, fitted) -> None:
    est, X = fitted["est"][kind], fitted["X"].iloc[:60]
    bundle = est.to_bundle()
    # estimator.predict_survival goes through lifelines' predict_survival_function / predict
    assert np.abs(bundle.predict_survival(X, TIMES) - est.predict_survival(X, TIMES)).max() < 1e-9
    since = np.linspace(0.0, 60.0, len(X))
    assert np.abs(
        bundle.predict_risk(X, [7, 28, 84], since=since) - est.predict_risk(X, [7, 28, 84], since)
    ).max() < 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_bands(kind: str, fitted, tmp_path) -> None:
    est, X = fitted["est"][kind], fitted["X"].iloc[:40]
    bundle = est.to_bundle()
    bundle.save(tmp_path)
    loaded = Bundle.load(tmp_path)
    assert np.array_equal(loaded.predict_risk(X), bundle.predict_risk(X))
    risk = loaded.predict_risk(X, [7, 14, 28, 56, 84])
    assert np.all(np.diff(risk, axis=1) >= -1e-12)  # monotone in horizon
    lo, hi = loaded.predict_risk_band(X, [7, 14, 28, 56, 84], level=0.9)
    assert np.all(lo <= risk + 1e-12)
    assert np.all(risk <= hi + 1e-12)
    assert loaded.n_bootstrap == 5
    # the band is the quantile of the ensemble (independent recomputation, AFT and Cox kinds)
    if kind in ("weibull", "landmark"):
        a = loaded.arrays
        z = loaded.design(X)
        risks = []
        for b in range(5):
            eta = a["boot_intercept"][b] + z @ a["boot_coef"][b]
            rho = np.exp(a["boot_ancillary"][b])
            risks.append(1 - np.exp(-((28.0 / np.exp(eta)) ** rho)))
        q = np.quantile(np.array(risks), 0.95, axis=0)
        assert np.allclose(hi[:, 2], np.maximum(q, risk[:, 2]))


def test_files_hold_no_pickle_and_no_rows(fitted, tmp_path) -> None:
    bundle = fitted["est"]["landmark"].to_bundle()
    jpath, npath = bundle.save(tmp_path)
    with zipfile.ZipFile(npath) as zf, np.load(npath, allow_pickle=False) as npz:
        assert all(n.endswith(".npy") for n in zf.namelist())
        sizes = {k: npz[k].size for k in npz.files}
    n_rows = len(fitted["X"])
    assert max(sizes.values()) < n_rows  # nothing per training row
    text = jpath.read_text()
    assert "lifelines" not in text
    d = json.loads(text)
    assert d["format"] == "kap-forecast-bundle"
    assert d["kind"] == "landmark"


def test_unknown_format_refused(fitted, tmp_path) -> None:
    fitted["est"]["cox"].to_bundle().save(tmp_path)
    d = json.loads((tmp_path / "bundle.json").read_text())
    d["format_version"] = 99
    (tmp_path / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="format_version 99"):
        Bundle.load(tmp_path)


def test_drivers_sum_to_linear_predictor(fitted) -> None:
    est, X = fitted["est"]["weibull"], fitted["X"].iloc[:30]
    bundle = est.to_bundle()
    contrib = bundle.drivers(X)
    assert list(contrib.columns) == ["a", "b", "sex"]
    eta = bundle.design(X) @ bundle.arrays["coef"]
    assert np.allclose(contrib.sum(axis=1), eta)


def test_median_matches_lifelines(fitted) -> None:
    est, X = fitted["est"]["lognormal"], fitted["X"].iloc[:20]
    ours = est.to_bundle().predict_median(X)
    theirs = est.fitter_.predict_median(est._design(X)).to_numpy()
    assert np.all(np.abs(ours - theirs) <= 0.25)
