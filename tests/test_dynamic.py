"""The dynamic kind (DynamicAFT): episode clock, left truncation, known truth, bundle parity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.stats import fisk, gumbel_l, logistic, lognorm, norm, weibull_min

from forecast.bundle import AFT_FAMILIES, CLOCK_FEATURES, Bundle, clock_arrays
from forecast.model_card import build_card
from forecast.models import DynamicAFT, FeatureSet, aft_objective, make_estimator
from forecast.models.base import _pen_scale

#: Weibull AFT truth of the simulated episodes: log T = B0 + BX * x + W / RHO (lifelines' form).
B0, BX, RHO = 3.5, 0.5, 1.5
LANDMARKS = (0.0, 14.0, 35.0, 60.0)
CLOCK = list(CLOCK_FEATURES.values())
H = [7.0, 28.0, 84.0]


def landmark_rows(n: int, seed: int) -> pd.DataFrame:
    """Landmark rows of simulated episodes, with their episode-clock truth alongside.

    Each episode has a Weibull waning time T (known coefficient on ``x``) and
    assessments every 4-14 days until drop-out; waning is seen at the first
    assessment on or after T. At landmark s an episode has a row when it is
    still followed and not seen waned yet, i.e. T > its last assessment up to s
    (the entry; 0 without one): exactly a left truncation at the entry. The
    residual bounds ``lower, upper`` count from s (lower 0 when the last
    waning-free assessment was on or before s); ``lower_ep, upper_ep, entry_ep``
    are the same interval on the episode clock, built here independently.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = np.exp(B0 + BX * x) * rng.weibull(RHO, size=n)
    cens = rng.uniform(20.0, 150.0, size=n)
    rows = []
    for i in range(n):
        visits = np.cumsum(rng.integers(4, 15, size=60)).astype(float)
        visits = visits[visits <= cens[i]]
        hit = visits[visits >= t[i]]
        v = hit[0] if hit.size else np.inf  # assessment at which the waning is seen
        before = visits[visits < v]
        prev = before[-1] if before.size else 0.0  # last waning-free assessment
        for s in LANDMARKS:
            if s >= cens[i] or v <= s:
                continue
            seen = visits[visits <= s]
            rows.append({
                "episode_id": i, "x": x[i], "elapsed_days": s,
                "days_since_assessment": s - seen[-1] if seen.size else 0.0,
                "n_assessments_since_session": float(seen.size),
                "lower": max(prev - s, 0.0), "upper": v - s,
                "entry_ep": seen[-1] if seen.size else 0.0, "lower_ep": prev, "upper_ep": v,
            })
    return pd.DataFrame(rows)


def true_surv(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.exp(-((t / np.exp(B0 + BX * x)) ** RHO))


def clock_frame(x, elapsed, dsa, n_seen) -> pd.DataFrame:
    """Feature rows for prediction (broadcast): covariate plus the three clock features."""
    x, el, d, k = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in
                                        (x, elapsed, dsa, n_seen)))
    return pd.DataFrame({"x": x, "elapsed_days": el, "days_since_assessment": d,
                         "n_assessments_since_session": k})


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return landmark_rows(3000, 3)


@pytest.fixture(scope="module")
def weib(sim) -> DynamicAFT:
    """Correctly specified fit: covariate x plus elapsed_days (whose true effect is 0)."""
    est = DynamicAFT(features=FeatureSet(("x", "elapsed_days"), {}), distribution="weibull",
                     time_interactions=None, ancillary_features=None, penalizer=1e-6,
                     n_bootstrap=6, random_state=0)
    return est.fit(sim, sim["lower"], sim["upper"], sim["episode_id"])


@pytest.fixture(scope="module")
def llog(sim) -> DynamicAFT:
    """Misspecified family with an ancillary covariate and a time interaction (parity tests)."""
    feats = FeatureSet(("x", "elapsed_days", "n_assessments_since_session",
                        "days_since_assessment"), {})
    est = DynamicAFT(features=feats, distribution="loglogistic", time_interactions=("x",),
                     ancillary_features=("elapsed_days",), penalizer=0.01, n_bootstrap=3,
                     random_state=1)
    return est.fit(sim, sim["lower"], sim["upper"], sim["episode_id"])


def mixed_rows(sim: pd.DataFrame) -> pd.DataFrame:
    """Training rows plus hand-made clocks: no assessment, assessment on the as-of day, dsa > el."""
    extra = clock_frame([-1.0, 0.0, 1.0, 0.5, 0.0], [0.0, 30.0, 30.0, 10.0, 90.0],
                        [0.0, 0.0, 12.0, 25.0, 40.0], [0.0, 3.0, 2.0, 1.0, 5.0])
    return pd.concat([sim.iloc[:60][extra.columns], extra], ignore_index=True)


# --------------------------------------------------------------------------- clock
def test_clock_arrays_hand_checked() -> None:
    frame = pd.DataFrame({
        "elapsed_days": [30.0, 30.0, 10.0, np.nan, 20.0, 20.0, 20.0, -3.0, 45.0],
        "days_since_assessment": [5.0, 5.0, 15.0, 3.0, np.nan, 2.0, 0.0, 1.0, 45.0],
        "n_assessments_since_session": [2.0, 0.0, 1.0, 1.0, 1.0, np.nan, 3.0, 1.0, 1.0],
    }, index=[10, 11, 12, 13, 14, 15, 16, 17, 18])
    start, entry = clock_arrays(frame)
    assert np.array_equal(start, [30.0, 30.0, 10.0, 0.0, 20.0, 20.0, 20.0, 0.0, 45.0])
    # 25 = 30 - 5 (assessment after the session); no assessment since -> 0; dsa > elapsed
    # -> clipped to 0; missing elapsed -> 0; missing dsa or count -> no entry; dsa 0 -> the
    # as-of date itself; negative elapsed -> 0; assessment on the session day -> 0.
    assert np.array_equal(entry, [25.0, 0.0, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0, 0.0])
    assert np.all((entry >= 0) & (entry <= start))


def test_clock_arrays_coerces_text_and_uses_given_names() -> None:
    frame = pd.DataFrame({"el": ["40", "abc", 12], "dsa": ["4", "1", None],
                          "k": ["1", "2", "x"]})
    names = {"elapsed": "el", "since_assessment": "dsa", "assessments": "k"}
    start, entry = clock_arrays(frame, names)
    assert np.array_equal(start, [40.0, 0.0, 12.0])
    assert np.array_equal(entry, [36.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="days_since_assessment"):
        clock_arrays(pd.DataFrame({"elapsed_days": [1.0], "n_assessments_since_session": [1]}))


# --------------------------------------------------------------------------- objective
def _objective_data(family: str, seed: int, ancillary: bool):
    rng = np.random.default_rng(seed)
    n = 40
    Z = rng.normal(size=(n, 2))
    W = rng.normal(size=(n, 1)) if ancillary else None
    theta = np.r_[0.3, -0.2, 3.0, 0.15, (0.2,) if ancillary else ()]
    entry = np.where(rng.uniform(size=n) < 0.4, 0.0, rng.uniform(1.0, 40.0, size=n))
    lo = np.maximum(entry + np.where(rng.uniform(size=n) < 0.5, 0.0,
                                     rng.uniform(0.0, 20.0, size=n)), 0.5)
    up = np.where(rng.uniform(size=n) < 0.3, np.inf, lo + rng.uniform(1.0, 15.0, size=n))
    w = rng.uniform(0.5, 2.0, size=n)
    return theta, Z, W, entry, lo, up, w


def _params(theta, Z, W):
    p = Z.shape[1]
    eta = theta[p] + Z @ theta[:p]
    g = theta[p + 1] + (W @ theta[p + 2:] if W is not None else 0.0)
    return eta, np.exp(np.broadcast_to(g, eta.shape))


def _sf(family: str, t: np.ndarray, eta: np.ndarray, a: np.ndarray) -> np.ndarray:
    """S(t) from scipy in lifelines' parametrisation (a = rho, sigma or beta)."""
    scale = np.exp(eta)
    if family == "weibull":
        return weibull_min.sf(t, a, scale=scale)
    if family == "lognormal":
        return lognorm.sf(t, a, scale=scale)
    return fisk.sf(t, a, scale=scale)


def _log_sf_logscale(family: str, t: np.ndarray, eta: np.ndarray, a: np.ndarray) -> np.ndarray:
    """log S(t) via the log-time location-scale forms (no underflow far in the tail)."""
    with np.errstate(divide="ignore"):
        y = np.log(t) - eta
    if family == "weibull":
        return gumbel_l.logsf(a * y)
    if family == "lognormal":
        return norm.logsf(y / a)
    return logistic.logsf(a * y)


def _call(theta, family, Z, lo, up, w, pen, W, entry):
    with np.errstate(divide="ignore"):
        log_lo, log_up = np.log(lo), np.log(up)
    log_e = None if entry is None else np.where(
        entry > 0, np.log(np.where(entry > 0, entry, 1.0)), -np.inf)
    return aft_objective(theta, family, Z, log_lo, log_up, w, _pen_scale(Z), pen, W,
                         None if W is None else _pen_scale(W), log_e)


@pytest.mark.parametrize("ancillary", [False, True])
@pytest.mark.parametrize("family", AFT_FAMILIES)
def test_objective_equals_scipy_truncated_likelihood(family: str, ancillary: bool) -> None:
    theta, Z, W, entry, lo, up, w = _objective_data(family, 5, ancillary)
    eta, a = _params(theta, Z, W)
    s_e = np.where(entry > 0, _sf(family, np.where(entry > 0, entry, 1.0), eta, a), 1.0)
    s_u = np.where(np.isfinite(up), _sf(family, np.where(np.isfinite(up), up, 1.0), eta, a), 0.0)
    ll = np.log(_sf(family, lo, eta, a) - s_u) - np.log(s_e)
    expected = -(w @ ll) / w.sum()
    f, _ = _call(theta, family, Z, lo, up, w, 0.0, W, entry)
    assert f == pytest.approx(expected, rel=1e-10)
    # truncation matters here: the untruncated objective differs
    assert abs(_call(theta, family, Z, lo, up, w, 0.0, W, None)[0] - f) > 1e-2
    # penalty as documented: coefficients in SD units; the ancillary intercept only
    # when the ancillary parameter has no covariates
    pen = 0.3
    beta = theta[:2] * _pen_scale(Z)
    extra = (theta[4:] * _pen_scale(W)) if ancillary else theta[3:4]
    f_pen, _ = _call(theta, family, Z, lo, up, w, pen, W, entry)
    assert f_pen - f == pytest.approx(0.5 * pen * (beta @ beta + extra @ extra), rel=1e-10)


@pytest.mark.parametrize("family", AFT_FAMILIES)
def test_objective_far_tail_entry_does_not_underflow(family: str) -> None:
    """Rows entering where S(entry) underflows to 0 still have their exact conditional term."""
    rng = np.random.default_rng(8)
    n = 6
    Z = rng.normal(size=(n, 1))
    theta = np.r_[0.2, 2.5, 0.1]
    eta, a = _params(theta, Z, None)
    # standardised residual at entry: S(entry) < 1e-308 for every family
    u_e = {"weibull": 7.0, "lognormal": 40.0, "loglogistic": 720.0}[family]
    y_e = u_e * a if family == "lognormal" else u_e / a  # log(entry) - eta
    entry = np.exp(eta + y_e * np.linspace(1.0, 1.05, n))
    lo = entry * np.r_[1.0, 1.0, 1.001, 1.002, 1.0, 1.003]
    up = np.r_[lo[:4] * 1.002, np.inf, np.inf]
    w = np.ones(n)
    assert np.all(_log_sf_logscale(family, entry, eta, a) < np.log(1e-300))
    log_l = _log_sf_logscale(family, lo, eta, a)
    log_u = _log_sf_logscale(family, up, eta, a)
    ll = log_l + np.log1p(-np.exp(log_u - log_l)) - _log_sf_logscale(family, entry, eta, a)
    f, grad = _call(theta, family, Z, lo, up, w, 0.0, None, entry)
    assert np.isfinite(f)
    assert np.all(np.isfinite(grad))
    assert f == pytest.approx(-ll.mean(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("ancillary", [False, True])
@pytest.mark.parametrize("family", AFT_FAMILIES)
def test_objective_gradient_with_entries(family: str, ancillary: bool) -> None:
    theta, Z, W, entry, lo, up, w = _objective_data(family, 6, ancillary)
    theta = theta + np.random.default_rng(1).normal(scale=0.1, size=theta.size)
    f0, grad = _call(theta, family, Z, lo, up, w, 0.05, W, entry)
    eps = 1e-6
    num = np.array([(_call(theta + eps * e, family, Z, lo, up, w, 0.05, W, entry)[0]
                     - _call(theta - eps * e, family, Z, lo, up, w, 0.05, W, entry)[0])
                    / (2 * eps) for e in np.eye(theta.size)])
    assert np.allclose(grad, num, atol=1e-6, rtol=1e-5)
    assert np.abs(grad).max() > 1e-3  # not at a stationary point: the check has teeth


@pytest.mark.parametrize("family", AFT_FAMILIES)
def test_objective_without_entries_equals_untruncated(family: str) -> None:
    theta, Z, W, _, lo, up, w = _objective_data(family, 7, True)
    plain = _call(theta, family, Z, lo, up, w, 0.02, W, None)
    zero = _call(theta, family, Z, lo, up, w, 0.02, W, np.zeros(len(Z)))
    assert zero[0] == pytest.approx(plain[0], rel=1e-12)
    assert np.allclose(zero[1], plain[1], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- fitting
def test_likelihood_is_on_the_episode_clock(weib, sim) -> None:
    """lifelines' maximised log-likelihood = the truncated objective on hand-built bounds.

    The bounds here come from the simulation's own episode-clock intervals, so
    this checks the residual -> episode-clock conversion of the estimator too.
    """
    assert weib.kind == "dynamic"
    z = weib.encoder_.transform(sim)[:, weib.encoder_.active]
    theta = np.r_[weib.coef_[weib.encoder_.active], weib.intercept_, weib.ancillary_]
    lo = np.maximum(sim["lower_ep"].to_numpy(), 1e-3)
    f, grad = _call(theta, "weibull", z, lo, sim["upper_ep"].to_numpy(), np.ones(len(z)),
                    1e-6, None, sim["entry_ep"].to_numpy())
    assert f == pytest.approx(-weib.fitter_.log_likelihood_ / len(z), rel=1e-8)
    assert np.abs(grad).max() < 1e-3


def test_recovers_known_truth_and_truncation_matters(weib, sim) -> None:
    enc = weib.encoder_
    cols = enc.columns
    bx = weib.coef_[cols.index("x")] / enc.scales[0]
    b_el = weib.coef_[cols.index("elapsed_days")]  # per SD of elapsed_days
    b0 = weib.intercept_ - np.sum(weib.coef_ / enc.scales * enc.means)
    # tolerances about 3 SD over simulation seeds (3,000 episodes)
    assert bx == pytest.approx(BX, abs=0.06)
    assert abs(b_el) < 0.03  # the landmark carries no information beyond the clock
    assert b0 == pytest.approx(B0, abs=0.06)
    assert np.exp(weib.ancillary_) == pytest.approx(RHO, abs=0.1)
    # the same rows without the truncation: survivors of later landmarks look long-lived
    z = enc.transform(sim)
    lo = np.log(np.maximum(sim["lower_ep"].to_numpy(), 1e-3))
    with np.errstate(divide="ignore"):
        up = np.log(sim["upper_ep"].to_numpy())
    args = ("weibull", z, lo, up, np.ones(len(z)), np.ones(2), 0.0, None, None, None)
    naive = minimize(aft_objective, np.r_[0.0, 0.0, 3.0, 0.0], args=args, jac=True,
                     method="L-BFGS-B").x
    assert naive[1] > 0.1  # spurious effect of the landmark (about 0.19 over seeds)


def test_risk_matches_the_true_conditional_risk(weib) -> None:
    """Risk within h of as-of = 1 - S(start + h) / S(entry) under the simulation's truth."""
    x = np.repeat([-1.0, 0.0, 1.0], 4)
    start = np.tile([14.0, 35.0, 35.0, 60.0], 3)
    dsa = np.tile([3.0, 0.0, 20.0, 10.0], 3)
    rows = clock_frame(x, start, dsa, 2.0)
    entry = start - dsa
    truth = 1.0 - true_surv(start[:, None] + np.array(H)[None, :], x[:, None]) / true_surv(
        entry, x)[:, None]
    bundle = weib.to_bundle()
    assert np.abs(bundle.predict_risk(rows, H) - truth).max() < 0.03
    # the hand formula from the stored Weibull parameters, without the bundle's code path
    eta = bundle.arrays["intercept"] + bundle.design(rows) @ bundle.arrays["coef"]
    rho = np.exp(bundle.arrays["ancillary"])

    def surv(t):
        return np.exp(-((t / np.exp(eta)[:, None]) ** rho))

    hand = 1.0 - surv(start[:, None] + np.array(H)) / surv(entry[:, None])
    assert np.allclose(bundle.predict_risk(rows, H), hand, atol=1e-12)
    since = np.tile([0.0, 5.0, 12.0], 4)
    base = start + since
    cond = np.where(since > 0, base, entry)
    hand_since = 1.0 - surv(base[:, None] + np.array(H)) / surv(cond[:, None])
    assert np.allclose(bundle.predict_risk(rows, H, since=since), hand_since, atol=1e-12)


def test_risk_semantics(weib) -> None:
    bundle = weib.to_bundle()
    # same features and as-of date; the last reassuring assessment 2, 10, 20, 35 days ago,
    # or none at all (entry 0): the longer unseen stretch, the higher the risk
    rows = clock_frame(0.3, 35.0, [2.0, 10.0, 20.0, 35.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0])
    start, entry = clock_arrays(rows)
    assert np.array_equal(entry, [33.0, 25.0, 15.0, 0.0, 0.0])
    # days_since_assessment is the clock, not a covariate: same design for all five
    z = bundle.design(rows)
    assert np.allclose(z[:4], z[0])
    risk = bundle.predict_risk(rows, [7, 14, 28, 56, 84])
    assert np.all(np.diff(risk[:4, 2]) > 0.01)
    assert np.all(np.diff(risk, axis=1) > 0)  # increases with the horizon
    assert np.all((risk > 0) & (risk < 1))
    # the estimator (lifelines) agrees on the ordering
    assert np.all(np.diff(weib.predict_risk(rows.iloc[:4], [28])[:, 0]) > 0.01)


def test_bootstrap_refits_keep_the_truncation(weib) -> None:
    boot = weib.bootstrap_["boot_coef"]
    assert boot.shape == (6, 2)
    assert np.all(boot.std(axis=0) > 0)
    # untruncated refits would put the landmark's coefficient near 0.2 (per SD)
    assert np.abs(boot[:, 1]).max() < 0.08
    assert np.abs(boot[:, 0].mean() - weib.coef_[0]) < 0.05
    band = weib.to_bundle().predict_risk_band(clock_frame([0.0, 1.0], 35.0, 5.0, 2.0), H)
    assert np.all(band[0] <= band[1])


def test_auto_family_selection_with_truncation(sim) -> None:
    est = DynamicAFT(features=FeatureSet(("x",), {}), selection="aic", time_interactions=None,
                     ancillary_features=None, penalizer=0.01)
    est.fit(sim, sim["lower"], sim["upper"], sim["episode_id"])
    sel = est.selection_
    assert set(sel["aic"]) == set(AFT_FAMILIES)
    assert est.family_ == sel["family"] == "weibull"  # the data are Weibull


# --------------------------------------------------------------------------- bundle
@pytest.mark.parametrize("which", ["weib", "llog"])
def test_bundle_equals_lifelines(which: str, request, sim, tmp_path) -> None:
    est = request.getfixturevalue(which)
    X = mixed_rows(sim)
    bundle = est.to_bundle()
    times = np.array([0.0, 0.5, 7.0, 28.0, 84.0, 400.0])
    assert np.abs(bundle.predict_survival(X, times) - est.predict_survival(X, times)).max() < 1e-9
    assert np.abs(bundle.predict_risk(X, H) - est.predict_risk(X, H)).max() < 1e-9
    since = np.where(np.arange(len(X)) % 3 == 0, 0.0, np.arange(len(X)) % 17 + 0.5)
    risk_since = bundle.predict_risk(X, H, since=since)
    assert np.abs(risk_since - est.predict_risk(X, H, since=since)).max() < 1e-9
    # since 0 is the plain as-of risk; since > 0 differs from it
    assert np.array_equal(risk_since[since == 0], bundle.predict_risk(X, H)[since == 0])
    assert np.all(np.abs(risk_since - bundle.predict_risk(X, H))[since > 0].max(axis=1) > 1e-6)
    bundle.save(tmp_path)
    loaded = Bundle.load(tmp_path)
    assert loaded.kind == "dynamic"
    assert loaded.time_origin == "as_of"
    assert loaded.meta["clock"] == CLOCK_FEATURES
    assert np.abs(loaded.predict_risk(X, H) - est.predict_risk(X, H)).max() < 1e-9
    assert np.abs(loaded.predict_risk(X, H, since=since)
                  - est.predict_risk(X, H, since=since)).max() < 1e-9


def test_predict_survival_design_needs_the_clock(llog, sim) -> None:
    bundle = llog.to_bundle()
    X = mixed_rows(sim)
    z = bundle.design(X)
    times = [0.0, 7.0, 28.0]
    with pytest.raises(ValueError, match="clock"):
        bundle.predict_survival_design(z, times)
    direct = bundle.predict_survival_design(z, times, clock=clock_arrays(X))
    assert np.array_equal(direct, bundle.predict_survival(X, times))
    since = np.full(len(X), 4.0)
    assert np.array_equal(
        bundle.predict_survival_design(z, times, since=since, clock=clock_arrays(X)),
        bundle.predict_survival(X, times, since=since))


def test_bundle_metadata_and_card(llog, sim) -> None:
    assert isinstance(make_estimator("dynamic"), DynamicAFT)
    bundle = llog.to_bundle()
    assert (bundle.kind, bundle.family, bundle.time_origin) == ("dynamic", "loglogistic",
                                                                "as_of")
    assert bundle.meta["clock"] == CLOCK_FEATURES
    # days_since_assessment is read as the clock and dropped from the covariates
    # (it was in the feature spec); the bundle still asks for it
    assert "days_since_assessment" not in bundle.encoder.numeric
    assert "n_assessments_since_session" in bundle.encoder.numeric
    assert set(CLOCK) <= set(bundle.features)
    assert len(bundle.features) == len(set(bundle.features))
    assert bundle.meta["ancillary_covariates"] == ["elapsed_days"]
    assert bundle.encoder.time_interactions == ("x",)
    X = mixed_rows(sim)
    with pytest.raises(ValueError, match="days_since_assessment"):
        bundle.predict_risk(X.drop(columns="days_since_assessment"), H)
    # a renamed clock in the metadata is read from the renamed columns
    renamed = Bundle(bundle.kind, bundle.family, bundle.time_origin, bundle.horizons,
                     bundle.encoder, bundle.arrays,
                     {**bundle.meta, "clock": {**CLOCK_FEATURES, "since_assessment": "dsa"}})
    X2 = X.rename(columns={"days_since_assessment": "dsa"})
    assert np.array_equal(renamed.predict_risk(X2, H), bundle.predict_risk(X, H))
    assert "dsa" in renamed.features
    card = build_card(bundle, version="t", definition=None, training={}, fingerprint={},
                      metrics=None, environment={})
    assert card["model"]["time_origin"] == "as_of"
    assert "truncated" in card["model"]["time_origin_text"]
    assert "truncated" in card["model"]["training_rows"]
    assert "log S(entry)" in card["censoring"]


@pytest.mark.parametrize("family", ["weibull", "loglogistic", "lognormal"])
def test_ratio_kernel_on_many_rows_equals_row_by_row(family: str, weib) -> None:
    """Over 64 rows the kernel skips the clipping when every entry <= start.

    The values must be those of the clipped path row by row (exactly, when the
    clock is ordered), and a clock with an entry after the times still gives
    ratios <= 1.
    """
    b = weib.to_bundle()
    p = len(b.arrays["coef"])
    arrays = {"coef": np.zeros(p), "intercept": np.asarray(3.2),
              "ancillary": np.asarray(0.3 if family != "lognormal" else -0.3)}
    bundle = Bundle(b.kind, family, b.time_origin, b.horizons, b.encoder, arrays, b.meta)
    rng = np.random.default_rng(3)
    n = 300
    z = np.zeros((n, p))
    start = rng.integers(1, 120, size=n).astype(float)
    entry = np.floor(start * rng.uniform(size=n))
    times = np.array([7.0, 14.0, 28.0, 56.0, 84.0])
    many = bundle.predict_survival_design(z, times, clock=(start, entry))
    one = np.vstack([bundle.predict_survival_design(z[i:i + 1], times,
                                                    clock=(start[i:i + 1], entry[i:i + 1]))
                     for i in range(n)])
    assert np.array_equal(many, one)
    assert np.all((many > 0.0) & (many <= 1.0))
    # unordered: an entry after start + 7 on one row; that row's ratio is clipped to 1
    entry_bad = entry.copy()
    entry_bad[0] = start[0] + 30.0
    bad = bundle.predict_survival_design(z, times, clock=(start, entry_bad))
    assert np.all(bad <= 1.0)
    assert np.array_equal(bad[1:], many[1:])
    # start + 7 and start + 14 lie before that entry
    assert np.array_equal(bad[0, :2], [1.0, 1.0])


@pytest.mark.parametrize("family", ["weibull", "loglogistic", "lognormal"])
def test_ratio_kernel_matches_high_precision_arithmetic_into_the_tails(family: str, weib) -> None:
    """The one-pass S(start + h) / S(entry) against 40-digit decimal arithmetic.

    Clocks from the episode start (t = 0) to where u = (t / e^eta)^rho overflows a
    double at the horizons only, or at the entry too (Weibull: S ratio 0 unless
    t = entry; log-logistic: about (entry / t)^rho); shapes below and above 1.
    """
    import decimal

    b = weib.to_bundle()
    p = len(b.arrays["coef"])
    start = np.array([0.0, 0.0, 3.0, 20.0, 60.0, 400.0, 2000.0, 9000.0, 9000.0])
    entry = np.array([0.0, 0.0, 0.0, 20.0, 41.0, 400.0, 1500.0, 8990.0, 0.0])
    times = np.array([0.0, 7.0, 28.0, 84.0])
    ctx = decimal.Context(prec=40, Emin=-10**9, Emax=10**9)

    def log_surv(t: float, b0: float, scale: float) -> decimal.Decimal:
        if t == 0.0:
            return decimal.Decimal(0)
        y = ctx.multiply(decimal.Decimal(scale), ctx.subtract(ctx.ln(decimal.Decimal(t)),
                                                              decimal.Decimal(b0)))
        if family == "weibull":
            return -ctx.exp(y)
        if family == "loglogistic":
            return -ctx.ln(ctx.add(1, ctx.exp(y)))
        return decimal.Decimal(float(norm.logsf(float(y))))  # y as double: log_ndtr's input

    for b0, scale in [(3.0, 0.8), (4.0, 1.7), (0.5, 110.0), (-2.0, 95.0)]:
        arrays = {"coef": np.zeros(p), "intercept": np.asarray(b0),
                  "ancillary": np.asarray(np.log(scale) if family != "lognormal"
                                          else -np.log(scale))}
        bundle = Bundle(b.kind, family, b.time_origin, b.horizons, b.encoder, arrays, b.meta)
        got = bundle.predict_survival_design(np.zeros((len(start), p)), times,
                                             clock=(start, entry))
        assert np.all(np.isfinite(got))
        assert np.all((got >= 0.0) & (got <= 1.0))
        for i in range(len(start)):
            ls_c = log_surv(entry[i], b0, scale)
            for j, h in enumerate(times):
                ls_t = log_surv(start[i] + h, b0, scale)
                want = float(ctx.exp(ctx.subtract(ls_t, ls_c)))
                assert got[i, j] == pytest.approx(want, rel=1e-9, abs=1e-12), (b0, scale, i, h)


@pytest.mark.parametrize("which", ["weib", "llog"])
def test_far_tail_never_reads_as_no_risk(which: str, request, sim) -> None:
    """Far in the tail (u overflows a double) the risk stays a number, never 0 by accident.

    Weibull's hazard grows with u: the benefit has certainly waned (risk 1).
    Log-logistic's falls like rho / t: from the episode start the risk is 1,
    after a late event-free assessment it is 1 - (entry / t)^rho, finite and
    growing with the horizon.
    """
    bundle = request.getfixturevalue(which).to_bundle()
    X = mixed_rows(sim)
    with np.errstate(over="ignore"):
        bundle.arrays["intercept"] = np.asarray(-2000.0)  # scale e^-2000 days: far past
    risk = bundle.predict_risk(X, H)
    if which == "weib":
        assert np.all(risk == 1.0)
        return
    _, entry = clock_arrays(X)
    assert np.all(np.isfinite(risk))
    assert np.all((risk > 0.0) & (risk <= 1.0))
    assert np.all(risk[entry == 0.0] == 1.0)
    assert np.all(risk[entry > 0.0] < 1.0)
    assert np.all(np.diff(risk, axis=1) >= 0.0)


@pytest.mark.parametrize("family", AFT_FAMILIES)
def test_no_rows_give_an_empty_answer(family: str, weib, sim) -> None:
    """An empty frame (no patient to forecast) is an empty (0, k) answer, not an error."""
    b = weib.to_bundle()
    bundle = Bundle(b.kind, family, b.time_origin, b.horizons, b.encoder, b.arrays, b.meta)
    empty = mixed_rows(sim).iloc[:0]
    assert bundle.predict_risk(empty, H).shape == (0, len(H))
    lo, hi = bundle.predict_risk_band(empty, H)
    assert lo.shape == hi.shape == (0, len(H))
