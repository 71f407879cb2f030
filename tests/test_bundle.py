"""The numpy serving bundle equals lifelines, round-trips through disk, gives sane bands."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from forecast.bundle import KINDS, Bundle, BundleError
from forecast.models import FeatureSet, make_estimator
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


def _with_time(n: int, seed: int):
    """Synthetic rows with a time feature, an episode column and a feature moving in time."""
    X, lo, up = synthetic(n, seed)
    rng = np.random.default_rng(seed)
    X = X.reset_index(drop=True)
    X["elapsed_days"] = rng.choice([0.0, 3.0, 7.0, 14.0, 28.0], size=n)
    X["episode_id"] = np.repeat(np.arange(n // 3 + 1), 3)[:n].astype(str)
    X["a"] = X["a"] + 0.01 * X["elapsed_days"]  # moves within an episode
    X["b"] = X.groupby("episode_id")["b"].transform("first")  # constant within one
    return X, lo, up


def test_time_interactions_bundle_equals_lifelines() -> None:
    from forecast.models import FeatureSet

    X, lo, up = _with_time(900, 5)
    feats = FeatureSet(("a", "b", "elapsed_days"), {"sex": ("female", "male", "other")})
    est = make_estimator("landmark", features=feats, random_state=1, n_bootstrap=2,
                         ancillary_features=("elapsed_days",)).fit(X, lo, up, X["episode_id"])
    bundle = est.to_bundle()
    # "a" changes within an episode and gets an interaction; the static "b" does not
    assert bundle.encoder.time_interactions == ("a",)
    assert "a*log1p(elapsed_days)" in bundle.encoder.columns
    assert np.abs(bundle.predict_survival(X, TIMES) - est.predict_survival(X, TIMES)).max() < 1e-9
    z = bundle.design(X)
    col = bundle.encoder.columns.index("a*log1p(elapsed_days)")
    raw = X["a"].to_numpy() * np.log1p(X["elapsed_days"].to_numpy())
    enc = bundle.encoder
    assert np.allclose(z[:, col], (raw - enc.means[3]) / enc.scales[3])


def test_encoding_small_and_large_frames_agree(fitted) -> None:
    """The one-to_numpy path (<= 64 rows) and the per-column path give the same design."""
    X = fitted["X"].reset_index(drop=True)
    X = X.assign(sex=X["sex"].where(np.arange(len(X)) % 7 != 0, None),
                 extra=pd.Timestamp("2026-01-01"))
    X.loc[3, "sex"] = "not-a-level"
    X.loc[5, "a"] = np.nan
    bundle = fitted["est"]["landmark"].to_bundle()
    big = bundle.design(X)
    small = np.vstack([bundle.design(X.iloc[i : i + 40]) for i in range(0, len(X), 40)])
    assert np.array_equal(big, small)
    # a categorical dtype column and text cells encode the same
    Xc = X.assign(sex=X["sex"].astype("category"))
    assert np.array_equal(bundle.design(Xc), big)
    Xt = X.assign(a=X["a"].astype(object).where(X["a"].notna(), "n/a").astype(str))
    assert np.allclose(bundle.design(Xt.iloc[:10]), big[:10])
    assert np.allclose(bundle.design(Xt), big)


@pytest.mark.parametrize("family", ["weibull", "lognormal", "loglogistic"])
def test_direct_survival_equals_log_form(family: str) -> None:
    from forecast.bundle import aft_log_survival, aft_survival

    rng = np.random.default_rng(0)
    eta = rng.normal(3, 1.5, size=(200, 1))
    g = rng.normal(0, 0.5, size=(200, 1))
    log_t = np.log(np.array([1e-100, 0.5, 7, 28, 84, 1e5]))[None, :]
    direct = aft_survival(family, log_t, eta, g)
    assert np.abs(direct - np.exp(aft_log_survival(family, log_t, eta, g))).max() < 1e-12
    assert (direct >= 0).all()
    assert (direct <= 1).all()


@pytest.fixture(scope="module")
def two_categoricals() -> tuple:
    """A model whose categorical features are NOT in sorted order ("sex" before "diag")."""
    X, lo, up = synthetic(600, 33)
    rng = np.random.default_rng(4)
    X["diag"] = rng.choice(["mdd", "trd", "ptsd"], size=len(X))
    # a strong diagnosis effect, so that swapped coefficients change the answers
    shift = X["diag"].map({"mdd": 0.0, "trd": -0.8, "ptsd": 0.6}).to_numpy()
    lo, up = lo * np.exp(shift), up * np.exp(shift)
    feats = FeatureSet(("a", "b"), {"sex": FEATS.categorical["sex"],
                                    "diag": ("mdd", "trd", "ptsd")})
    est = make_estimator("weibull", features=feats).fit(X, lo, up)
    return est, X


def test_round_trip_keeps_categorical_order(two_categoricals, tmp_path) -> None:
    est, X = two_categoricals
    bundle = est.to_bundle()
    assert list(bundle.encoder.categorical) == ["sex", "diag"]
    bundle.save(tmp_path)
    loaded = Bundle.load(tmp_path)
    assert loaded.encoder.columns == bundle.encoder.columns
    # against lifelines (independent of our encoder) after the disk round trip
    h = [7, 28, 56]
    assert np.abs(loaded.predict_risk(X, h) - est.predict_risk(X, h)).max() < 1e-9


def test_version_1_layout_is_read_in_fit_order(two_categoricals, tmp_path) -> None:
    """Version 1 wrote the categorical features as a JSON object (keys sorted on writing)."""
    est, X = two_categoricals
    est.to_bundle().save(tmp_path)
    d = json.loads((tmp_path / "bundle.json").read_text())
    d["format_version"] = 1
    d["encoder"]["categorical"] = dict(sorted(d["encoder"]["categorical"]))
    (tmp_path / "bundle.json").write_text(json.dumps(d, sort_keys=True))
    loaded = Bundle.load(tmp_path)
    assert list(loaded.encoder.categorical) == ["sex", "diag"]
    assert np.abs(loaded.predict_risk(X, [28]) - est.predict_risk(X, [28])).max() < 1e-9


def test_encoder_not_matching_design_columns_refused(two_categoricals, tmp_path) -> None:
    est, _ = two_categoricals
    est.to_bundle().save(tmp_path)
    d = json.loads((tmp_path / "bundle.json").read_text())
    d["encoder"]["categorical"] = d["encoder"]["categorical"][::-1]
    (tmp_path / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="design_columns"):
        Bundle.load(tmp_path)
