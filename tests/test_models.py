"""Estimators of forecast.models: conventions, correctness against known truth, failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from forecast.bundle import AFT_FAMILIES, KINDS
from forecast.models import (
    PENALIZER_GRID,
    FeatureSet,
    ModelFitError,
    aft_objective,
    check_bounds,
    make_estimator,
)
from forecast.models.base import _bootstrap_weights, _groups_codes, _pen_scale
from forecast.training import static_features

FEATS = FeatureSet(("a", "b"), {"sex": ("female", "male", "other", "unknown")})
TRUE_BETA = {"a": 0.4, "b": -0.05, "male": 0.3}


def synthetic(n: int, seed: int, visit: float = 7.0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Weibull AFT times with known coefficients, interval-censored by a visit grid."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.uniform(0, 10, size=n),
            "sex": rng.choice(["female", "male", "other"], size=n, p=[0.5, 0.45, 0.05]),
        }
    )
    eta = 3.5 + TRUE_BETA["a"] * X["a"] + TRUE_BETA["b"] * X["b"] + TRUE_BETA["male"] * (
        X["sex"] == "male"
    )
    t = np.exp(eta.to_numpy()) * rng.weibull(1.5, size=n)
    lo = np.floor(t / visit) * visit
    up = lo + visit
    cens = rng.uniform(10, 200, size=n)
    rc = cens < lo
    lo = np.where(rc, np.floor(cens / visit) * visit, lo)
    up = np.where(rc, np.inf, up)
    # the clock of the dynamic kind (``forecast.bundle.clock_arrays``): rows at the
    # episode start, nothing seen yet, so every kind models the same times
    X["elapsed_days"] = 0.0
    X["days_since_assessment"] = 0.0
    X["n_assessments_since_session"] = 0.0
    # index deliberately not a RangeIndex: estimators must reset it
    X.index = rng.permutation(n) + 1000
    return X, lo, up


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return synthetic(1500, 7)


@pytest.mark.parametrize("kind", KINDS)
def test_conventions(kind: str, data) -> None:
    X, lo, up = data
    est = make_estimator(kind, features=FEATS, penalizer=0.02)
    assert est.get_params()["penalizer"] == 0.02
    assert clone(est).get_params()["penalizer"] == 0.02
    with pytest.raises(NotFittedError):
        est.predict_risk(X, [7])
    with pytest.raises(NotFittedError):
        est.to_bundle()
    assert est.fit(X, lo, up) is est
    assert not hasattr(clone(est), "n_rows_")
    risk = est.predict_risk(X.iloc[:20], [7, 14, 28, 56, 84])
    assert risk.shape == (20, 5)
    assert np.all(np.diff(risk, axis=1) >= -1e-12)
    assert np.all((risk >= 0) & (risk <= 1))


def test_weibull_recovers_known_coefficients() -> None:
    X, lo, up = synthetic(4000, 11)
    est = make_estimator("weibull", features=FEATS, penalizer=1e-6).fit(X, lo, up)
    cols = est.encoder_.columns
    # coefficients are per SD of the feature (standardised), so undo the scaling
    a = est.coef_[cols.index("a")] / est.encoder_.scales[0]
    b = est.coef_[cols.index("b")] / est.encoder_.scales[1]
    assert a == pytest.approx(TRUE_BETA["a"], abs=0.05)
    assert b == pytest.approx(TRUE_BETA["b"], abs=0.01)
    # reference level is female (most frequent): male effect relative to it
    assert est.encoder_.references["sex"] == "female"
    assert est.coef_[cols.index("sex=male")] == pytest.approx(TRUE_BETA["male"], abs=0.07)
    assert np.exp(-est.ancillary_) == pytest.approx(1 / 1.5, abs=0.06)  # Weibull scale of log T


@pytest.mark.parametrize("family", AFT_FAMILIES)
def test_numpy_objective_matches_lifelines(family: str, data) -> None:
    """Our analytic objective (bootstrap refits) equals lifelines' at lifelines' optimum."""
    X, lo, up = data
    est = make_estimator(family, features=FEATS, penalizer=0.05).fit(X, lo, up)
    active = est.encoder_.active
    Z = est.encoder_.transform(X.reset_index(drop=True))[:, active]
    theta = np.r_[est.coef_[active], est.intercept_, est.ancillary_]
    lo2 = np.maximum(lo, 1e-3)
    f, grad = aft_objective(theta, family, Z, np.log(lo2), np.log(up), np.ones(len(Z)),
                            _pen_scale(Z), 0.05)
    # lifelines reports the penalised log-likelihood sum as log_likelihood_
    assert f == pytest.approx(-est.fitter_.log_likelihood_ / len(Z), rel=1e-8)
    assert np.abs(grad).max() < 1e-3  # lifelines' optimum is a stationary point of ours
    # gradient against central finite differences
    eps = 1e-6
    num = np.array([
        (aft_objective(theta + eps * e, family, Z, np.log(lo2), np.log(up), np.ones(len(Z)),
                       _pen_scale(Z), 0.05)[0]
         - aft_objective(theta - eps * e, family, Z, np.log(lo2), np.log(up), np.ones(len(Z)),
                         _pen_scale(Z), 0.05)[0]) / (2 * eps)
        for e in np.eye(len(theta))
    ])
    assert np.allclose(num, grad, atol=1e-6)


@pytest.mark.parametrize("kind", ["km", "cox", "loglogistic", "landmark"])
def test_conditional_risk_formula(kind: str, data) -> None:
    X, lo, up = data
    est = make_estimator(kind, features=FEATS).fit(X, lo, up)
    rows = X.iloc[:15]
    since = np.linspace(0, 40, 15)
    h = np.array([7.0, 28.0, 56.0])
    risk = est.predict_risk(rows, h, since=since)
    s_at = np.stack([est.predict_survival(rows.iloc[[i]], since[i] + h)[0] for i in range(15)])
    s0 = np.array([est.predict_survival(rows.iloc[[i]], [since[i]])[0, 0] for i in range(15)])
    assert np.allclose(risk, 1 - s_at / s0[:, None], atol=1e-12)


def test_landmark_selects_family(data) -> None:
    X, lo, up = data
    est = make_estimator("landmark", features=FEATS, selection="aic").fit(X, lo, up)
    sel = est.selection_
    assert sel["method"] == "AIC"
    assert set(sel["aic"]) == set(AFT_FAMILIES)
    assert sel["family"] == min(sel["aic"], key=sel["aic"].get) == est.family_
    # data are Weibull: the Weibull family must win clearly
    assert est.family_ == "weibull"
    assert est.to_bundle().time_origin == "landmark"
    cv = make_estimator("landmark", features=FEATS, random_state=0).fit(X, lo, up).selection_
    assert cv["method"] == "CV Brier"
    assert cv["family"] == min(cv["cv_brier"], key=cv["cv_brier"].get)
    assert all(0 < v < 0.25 for v in cv["cv_brier"].values())
    # penalizer="auto": the penalty with the lowest held-out Brier score of the grid
    grid = {float(k): v for k, v in cv["penalizer_cv_brier"].items()}
    assert set(grid) == set(PENALIZER_GRID)
    assert cv["penalizer"] == min(grid, key=grid.get)
    with pytest.raises(ValueError, match="penalizer must be"):
        make_estimator("weibull", features=FEATS, penalizer=-1.0).fit(X, lo, up)


def test_ancillary_covariate_shape(data) -> None:
    """Shape parameter regressed on a covariate: bundle == lifelines, objective == lifelines."""
    X, lo, up = data
    est = make_estimator("landmark", features=FEATS, distribution="loglogistic",
                         ancillary_features=("a",), penalizer=0.05, n_bootstrap=3,
                         random_state=1).fit(X, lo, up)
    assert est.anc_coef_.shape == (1,)
    bundle = est.to_bundle()
    times = [3.0, 7.0, 28.0, 90.0]
    assert np.abs(bundle.predict_survival(X.iloc[:50], times)
                  - est.predict_survival(X.iloc[:50], times)).max() < 1e-9
    assert np.abs(bundle.predict_risk(X.iloc[:50], times, since=10.0)
                  - est.predict_risk(X.iloc[:50], times, since=10.0)).max() < 1e-9
    active = est.encoder_.active
    z = est.encoder_.transform(X.reset_index(drop=True))
    Z, W = z[:, active], z[:, est.anc_index_]
    theta = np.r_[est.coef_[active], est.intercept_, est.ancillary_, est.anc_coef_]
    f, grad = aft_objective(theta, "loglogistic", Z, np.log(np.maximum(lo, 1e-3)), np.log(up),
                            np.ones(len(Z)), _pen_scale(Z), 0.05, W, _pen_scale(W))
    assert f == pytest.approx(-est.fitter_.log_likelihood_ / len(Z), rel=1e-8)
    assert np.abs(grad).max() < 1e-3
    lo_b, hi_b = bundle.predict_risk_band(X.iloc[:5], [28])
    assert np.all(lo_b <= hi_b)


def test_convergence_failure_raises(data) -> None:
    X, lo, up = data
    with pytest.raises(ModelFitError, match="did not converge"):
        make_estimator("weibull", features=FEATS, max_iter=1).fit(X, lo, up)
    with pytest.raises(ModelFitError, match="no events"):
        make_estimator("weibull", features=FEATS).fit(X, lo, np.full(len(lo), np.inf))


def test_bad_outcomes_are_named(data) -> None:
    X, lo, up = data
    bad = up.copy()
    bad[3] = lo[3] - 1
    with pytest.raises(ValueError, match="row 3: upper is smaller than lower"):
        make_estimator("cox", features=FEATS).fit(X, lo, bad)
    with pytest.raises(ValueError, match="lower is NaN"):
        check_bounds([np.nan], [1.0])


def test_unseen_category_is_average_and_counted(data) -> None:
    X, lo, up = data
    est = make_estimator("weibull", features=FEATS).fit(X, lo, up)
    rows = X.iloc[:4].copy()
    rows["sex"] = ["alien", None, "female", "unknown"]  # unseen, missing, known, never-seen level
    bundle = est.to_bundle()
    risk = bundle.predict_risk(rows, [28])
    assert np.all(np.isfinite(risk))
    assert bundle.unknown_categories(rows) == {"sex": 2}
    z = bundle.design(rows)
    sex_cols = [i for i, c in enumerate(bundle.encoder.columns) if c.startswith("sex=")]
    assert np.all(z[:2, sex_cols] == 0)  # all-zero centred block = frequency-weighted average
    # the average effect equals the training-frequency-weighted mean of the level effects
    freq = X["sex"].value_counts(normalize=True)
    eff = {"female": 0.0}
    for i in sex_cols:
        level = bundle.encoder.columns[i].split("=")[1]
        eff[level] = bundle.arrays["coef"][i]
    avg = sum(freq.get(k, 0.0) * v for k, v in eff.items())
    lp_unknown = bundle.drivers(rows)["sex"].iloc[0]
    lp_female = bundle.drivers(rows)["sex"].iloc[2]
    assert lp_unknown - lp_female == pytest.approx(avg, abs=1e-12)


def test_cluster_bootstrap_weights_are_per_patient() -> None:
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    codes = _groups_codes(groups, 6)
    w = _bootstrap_weights(codes, 50, 3)
    assert np.all(w[:, 0] == w[:, 1])
    assert np.all(w[:, 3] == w[:, 5])
    assert np.all(w[:, [0, 2, 3]].sum(axis=1) == 3)  # n patients drawn with replacement
    assert np.array_equal(w, _bootstrap_weights(codes, 50, 3))  # seeded


def test_bootstrap_ensemble_varies_and_is_seeded(data) -> None:
    X, lo, up = data
    groups = np.repeat(np.arange(len(X) // 3 + 1), 3)[: len(X)]
    a = make_estimator("weibull", features=FEATS, n_bootstrap=6, random_state=5).fit(
        X, lo, up, groups)
    b = make_estimator("weibull", features=FEATS, n_bootstrap=6, random_state=5, n_jobs=2).fit(
        X, lo, up, groups)
    assert np.allclose(a.bootstrap_["boot_coef"], b.bootstrap_["boot_coef"], atol=1e-6)
    sd = a.bootstrap_["boot_coef"].std(axis=0)
    assert np.all(sd[a.encoder_.active] > 0)
    # bootstrap SD of a coefficient is of the order of lifelines' (independent) standard error
    se = a.fitter_.standard_errors_.loc[("lambda_", "x0000")]
    assert 0.3 < sd[0] / se < 3


def test_static_features_are_detected_from_data() -> None:
    lm = pd.DataFrame({
        "episode_id": ["e1", "e1", "e2", "e2", "e3"],
        "age": [40.0, 40.0, 30.0, 30.0, 50.0],
        "phq9_latest": [5.0, 7.0, 4.0, 4.0, 9.0],
        "x_nan": [np.nan, np.nan, 1.0, 1.0, np.nan],
        "sex": ["female", "female", None, None, "male"],
        "route": ["iv", "im", "iv", "iv", "iv"],
    })
    spec = FeatureSet(("age", "phq9_latest", "x_nan"), {"sex": ("female", "male"),
                                                         "route": ("iv", "im")})
    out = static_features(lm, spec)
    assert out.numeric == ("age", "x_nan")
    assert list(out.categorical) == ["sex"]


def test_varying_within_finds_the_features_that_move_in_an_episode() -> None:
    from forecast.models import varying_within

    X = pd.DataFrame({"episode_id": ["e1", "e1", "e2", "e2", "e3"],
                      "static": [1.0, 1.0, 2.0, 2.0, 3.0],
                      "moves": [1.0, 1.0, 2.0, 5.0, 3.0],
                      "nan_static": [np.nan, np.nan, 1.0, 1.0, np.nan],
                      "nan_moves": [np.nan, 1.0, 1.0, 1.0, 1.0]})
    names = ("static", "moves", "nan_static", "nan_moves")
    assert varying_within(X, names) == ("moves", "nan_moves")
    # without episode ids every feature may move
    assert varying_within(X.drop(columns="episode_id"), names) == names


def test_time_interactions_off_and_explicit(data) -> None:
    X, lo, up = data
    X = X.reset_index(drop=True).assign(elapsed_days=np.arange(len(X)) % 30 * 1.0)
    feats = FeatureSet(("a", "b", "elapsed_days"), {"sex": ("female", "male", "other")})
    off = make_estimator("landmark", features=feats, time_interactions=None,
                         distribution="weibull").fit(X, lo, up)
    assert off.encoder_.time_interactions == ()
    named = make_estimator("landmark", features=feats, time_interactions=("b", "nope"),
                           distribution="weibull").fit(X, lo, up)
    assert named.encoder_.time_interactions == ("b",)
    assert named.encoder_.columns[3] == "b*log1p(elapsed_days)"
    with pytest.raises(ValueError, match="time_interactions"):
        make_estimator("landmark", features=feats, time_interactions="all",
                       distribution="weibull").fit(X, lo, up)


def test_family_lifelines_cannot_fit_is_replaced_by_the_next_best(monkeypatch) -> None:
    """With distribution="auto", a family lifelines fails to confirm is dropped, and said so."""
    from forecast.models import AFTEstimator, ModelFitError

    X, lo, up = synthetic(600, 5)
    first = make_estimator("landmark", features=FEATS, random_state=0).fit(X, lo, up)
    best = first.family_
    real = AFTEstimator._fit_family

    def refuse_best(self, family, *args, **kwargs):
        if family == best:
            raise ModelFitError(f"{family} AFT model did not converge: test")
        return real(self, family, *args, **kwargs)

    monkeypatch.setattr(AFTEstimator, "_fit_family", refuse_best)
    est = make_estimator("landmark", features=FEATS, random_state=0).fit(X, lo, up)
    scores = first.selection_["cv_brier"]
    runner_up = sorted((f for f in scores if f != best), key=scores.__getitem__)[0]
    assert est.family_ == runner_up
    assert best in est.selection_["rejected_by_lifelines"]
    assert any("lifelines could not fit" in w for w in est.fit_warnings_)
    # a fixed family is not swapped behind the user's back
    with pytest.raises(ModelFitError, match="did not converge"):
        make_estimator("landmark", features=FEATS, distribution=best).fit(X, lo, up)


def test_lifelines_univariate_start_cannot_fail_a_seeded_fit(monkeypatch) -> None:
    """lifelines' AFT fitters fit a univariate start even when given one; ours skips it.

    That univariate fit failed (log-normal, interval censoring with left
    truncation) on a simulated 5,000-patient cohort and failed the whole
    regression although our optimiser had its optimum. Simulated here by
    making lifelines' own start raise: a fixed family still fits, to the same
    parameters.
    """
    import pickle

    from lifelines import LogNormalAFTFitter
    from lifelines.exceptions import ConvergenceError

    X, lo, up = synthetic(600, 5)
    ref = make_estimator("landmark", features=FEATS, distribution="lognormal",
                         random_state=0).fit(X, lo, up)

    def broken(self, *args, **kwargs):
        raise ConvergenceError("univariate start did not converge (test)")

    monkeypatch.setattr(LogNormalAFTFitter, "_create_initial_point", broken)
    est = make_estimator("landmark", features=FEATS, distribution="lognormal",
                         random_state=0).fit(X, lo, up)
    assert est.family_ == "lognormal"
    assert np.allclose(est.fitter_.params_.to_numpy(), ref.fitter_.params_.to_numpy(),
                       rtol=1e-6, atol=1e-8)
    assert type(est.fitter_).__name__ == "SeededLogNormalAFTFitter"
    again = pickle.loads(pickle.dumps(est))
    rows = X.iloc[:5]
    assert np.array_equal(again.predict_risk(rows, [28.0]), est.predict_risk(rows, [28.0]))
