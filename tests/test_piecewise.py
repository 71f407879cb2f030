"""The piecewise kind: exposures, likelihood, window effects, bundle and CLI, checked
against independent computations (hand cases, finite differences, quadrature)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecast.bundle import HAZARD_FAMILIES, Bundle, clock_arrays, window_exposure
from forecast.cli import main
from forecast.models import FeatureSet, make_estimator, pwe_hessian, pwe_objective
from forecast.models.base import _bootstrap_weights, _prepare_bounds
from forecast.models.piecewise import pwe_penalty

EDGES = np.array([0.0, 7.0, 14.0])


def test_window_exposure_hand_cases() -> None:
    t = np.array([-1.0, 0.0, 3.0, 7.0, 10.0, 20.0])
    expected = [[0, 0, 0], [0, 0, 0], [3, 0, 0], [7, 0, 0], [7, 3, 0], [7, 7, 6]]
    assert np.array_equal(window_exposure(t, EDGES), np.array(expected, dtype=float))
    assert window_exposure(np.zeros((4, 5)), EDGES).shape == (4, 5, 3)


def _cumhaz_quadrature(rate: np.ndarray, t: float, edges: np.ndarray, step: float = 0.25
                       ) -> float:
    """Sum of the window rate over a fine grid of [0, t] (exact for grid-aligned edges)."""
    mids = np.arange(0.0, t, step) + step / 2
    j = np.searchsorted(edges, mids, side="right") - 1
    return float(rate[j].sum() * step)


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, p = 40, 2
    Z = rng.normal(size=(n, p))
    lo = rng.integers(0, 10, n).astype(float)
    up = lo + rng.integers(1, 9, n)
    event = rng.random(n) < 0.6
    theta = rng.normal(scale=0.3, size=3 + p + 3 * p)
    theta[:3] += np.log(0.05)
    return Z, lo, up, event, theta


def test_objective_equals_an_independent_likelihood() -> None:
    Z, lo, up, event, theta = _toy()
    J, p = 3, Z.shape[1]
    w = np.ones(len(Z))
    exp_lo = window_exposure(lo, EDGES)
    exp_up = window_exposure(np.where(event, up, 0.0), EDGES)
    f, _ = pwe_objective(theta, Z, exp_lo, exp_up, event, w, np.ones(p), 0.0, 0.0)
    a, beta, delta = theta[:J], theta[J:J + p], theta[J + p:].reshape(J, p)
    ll = 0.0
    for i in range(len(Z)):
        rate = np.exp(a + Z[i] @ beta + delta @ Z[i])
        s_lo = np.exp(-_cumhaz_quadrature(rate, lo[i], EDGES))
        s_up = np.exp(-_cumhaz_quadrature(rate, up[i], EDGES)) if event[i] else 0.0
        ll += np.log(s_lo - s_up)
    assert f == pytest.approx(-ll / len(Z), rel=1e-10)


def test_objective_gradient_matches_finite_differences() -> None:
    Z, lo, up, event, theta = _toy(1)
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(Z))
    args = (Z, window_exposure(lo, EDGES), window_exposure(np.where(event, up, 0.0), EDGES),
            event, w, np.array([1.3, 0.7]), 0.1, 0.05)
    _, grad = pwe_objective(theta, *args)
    eps = 1e-6
    num = np.array([(pwe_objective(theta + e, *args)[0] - pwe_objective(theta - e, *args)[0])
                    / (2 * eps) for e in np.eye(theta.size) * eps])
    assert np.abs(num - grad).max() < 1e-7


def test_hessian_matches_finite_differences_of_the_gradient() -> None:
    """The exact Hessian (Newton fit, refit preconditioner) against central differences."""
    Z, lo, up, event, theta = _toy(4)
    w = np.random.default_rng(6).uniform(0.0, 2.0, len(Z))  # zero weights included
    args = (Z, window_exposure(lo, EDGES), window_exposure(np.where(event, up, 0.0), EDGES),
            event, w, np.array([0.8, 1.4]), 0.3, 0.2)
    hess = pwe_hessian(theta, *args, chunk=7)  # several row chunks
    eps = 1e-6
    num = np.column_stack([(pwe_objective(theta + e, *args)[1]
                            - pwe_objective(theta - e, *args)[1]) / (2 * eps)
                           for e in np.eye(theta.size) * eps])
    assert np.abs(num - hess).max() < 1e-7
    assert np.allclose(hess, hess.T)


def test_window_smoothing_penalty_derivatives_and_value() -> None:
    """The smoothing term is 0.5 * ws * sum over neighbouring windows of ((delta[j+1] -
    delta[j]) * sd)^2, written out by hand; its gradient and Hessian are exact."""
    J, p = 4, 3
    rng = np.random.default_rng(8)
    theta = rng.normal(size=J + p + J * p)
    sd = np.array([0.5, 1.0, 2.0])
    ws = 0.7
    f0, g0, h0 = pwe_penalty(theta, J, sd, 0.2, 0.05)
    f, g, h = pwe_penalty(theta, J, sd, 0.2, 0.05, ws)
    delta = theta[J + p:].reshape(J, p)
    by_hand = 0.5 * ws * sum(float(np.sum(((delta[j + 1] - delta[j]) * sd) ** 2))
                             for j in range(J - 1))
    assert f - f0 == pytest.approx(by_hand, rel=1e-12)
    eps = 1e-6
    num_g = np.array([(pwe_penalty(theta + e, J, sd, 0.2, 0.05, ws)[0]
                       - pwe_penalty(theta - e, J, sd, 0.2, 0.05, ws)[0]) / (2 * eps)
                      for e in np.eye(theta.size) * eps])
    assert np.abs(num_g - g).max() < 1e-7
    num_h = np.column_stack([(pwe_penalty(theta + e, J, sd, 0.2, 0.05, ws)[1]
                              - pwe_penalty(theta - e, J, sd, 0.2, 0.05, ws)[1]) / (2 * eps)
                             for e in np.eye(theta.size) * eps])
    assert np.abs(num_h - h).max() < 1e-6
    assert np.allclose(h[:J + p, :J + p], h0[:J + p, :J + p])  # only the deltas' block moves


def test_window_smoothing_pulls_neighbouring_window_effects_together() -> None:
    """A first-week-only effect (hazard ratio 4, then 1): the heavier the smoothing, the
    closer the first two windows' hazard ratios; none gives a ratio outside [1, 4]."""
    X, lo, up = _short_term_signal(6000, 3)
    feats = FeatureSet(("flag", "elapsed_days"), {})
    rows = pd.DataFrame({"flag": [0.0, 1.0], "elapsed_days": 0.0,
                         "days_since_assessment": 0.0, "n_assessments_since_session": 0.0})
    gaps = []
    for ws in (0.0, 0.1, 10.0):
        est = make_estimator("piecewise", features=feats, penalizer=1e-4,
                             window_penalizer=1e-4, window_smoothing=ws,
                             edges=(0.0, 7.0, 14.0, 28.0)).fit(X, lo, up)
        log_s = np.log(est.predict_survival(rows, [7.0, 14.0]))
        hr1 = log_s[1, 0] / log_s[0, 0]
        hr2 = (log_s[1, 1] - log_s[1, 0]) / (log_s[0, 1] - log_s[0, 0])
        assert 0.9 < hr2 <= hr1 < 4.6
        gaps.append(np.log(hr1) - np.log(hr2))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.1 * gaps[0]


def _short_term_signal(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A binary flag that quadruples the hazard in the first week only, weekly visits."""
    rng = np.random.default_rng(seed)
    x = rng.random(n) < 0.4
    base = 0.03
    # exact inversion of the piecewise hazard: first week base * (4 if x else 1), then base
    e = rng.exponential(size=n)
    first = base * np.where(x, 4.0, 1.0)
    t = np.where(e < 7 * first, e / first, 7 + (e - 7 * first) / base)
    lo = np.floor(t / 7) * 7
    up = lo + 7
    cens = rng.uniform(20, 120, n)
    rc = cens < lo
    lo = np.where(rc, np.floor(cens / 7) * 7, lo)
    up = np.where(rc, np.inf, up)
    X = pd.DataFrame({"flag": x.astype(float), "elapsed_days": 0.0,
                      "days_since_assessment": 0.0, "n_assessments_since_session": 0.0})
    return X, lo, up


@pytest.fixture(scope="module")
def signal_fit():
    X, lo, up = _short_term_signal(6000, 3)
    feats = FeatureSet(("flag", "elapsed_days"), {})
    est = make_estimator("piecewise", features=feats, penalizer=1e-4, window_penalizer=1e-4,
                         window_smoothing=0.0, edges=(0.0, 7.0, 14.0, 28.0), n_bootstrap=3,
                         random_state=0)
    return X, est.fit(X, lo, up, groups=np.arange(len(X)))


def test_effect_confined_to_its_window(signal_fit) -> None:
    """The flag's hazard ratio is about 4 in the first week and about 1 after it."""
    _, est = signal_fit
    rows = pd.DataFrame({"flag": [0.0, 1.0], "elapsed_days": 0.0,
                         "days_since_assessment": 0.0, "n_assessments_since_session": 0.0})
    log_s = np.log(est.predict_survival(rows, [7.0, 14.0, 28.0]))
    hr_week1 = log_s[1, 0] / log_s[0, 0]
    hr_later = (log_s[1, 2] - log_s[1, 0]) / (log_s[0, 2] - log_s[0, 0])
    assert hr_week1 == pytest.approx(4.0, rel=0.2)
    assert hr_later == pytest.approx(1.0, abs=0.15)
    # the first window's rate for flag = 0 is the true 0.03 a day
    assert -log_s[0, 0] / 7 == pytest.approx(0.03, rel=0.15)


def test_bundle_equals_quadrature_of_the_hazard(signal_fit, tmp_path) -> None:
    """Conditional risks of the bundle from an independent sum over a fine time grid."""
    X, est = signal_fit
    rng = np.random.default_rng(5)
    rows = X.iloc[:30].copy()
    rows["elapsed_days"] = rng.integers(0, 40, len(rows)).astype(float)
    rows["days_since_assessment"] = np.minimum(rng.integers(0, 12, len(rows)),
                                               rows["elapsed_days"]).astype(float)
    rows["n_assessments_since_session"] = 2.0
    bundle = est.to_bundle()
    bundle.save(tmp_path)
    loaded = Bundle.load(tmp_path)
    horizons = np.array([7.0, 14.0, 28.0, 56.0])
    since = rng.integers(0, 10, len(rows)).astype(float)
    ours = loaded.predict_risk(rows, horizons, since=since)
    start, entry = clock_arrays(rows)
    z = loaded.design(rows)
    a = loaded.arrays
    for i in range(len(rows)):
        rate = np.exp(a["log_base"] + z[i] @ a["coef"] + a["window_coef"] @ z[i])
        cond = start[i] + since[i] if since[i] > 0 else entry[i]
        h_c = _cumhaz_quadrature(rate, cond - entry[i], a["edges"])
        for k, h in enumerate(horizons):
            h_t = _cumhaz_quadrature(rate, start[i] + since[i] + h - entry[i], a["edges"])
            assert ours[i, k] == pytest.approx(1.0 - np.exp(h_c - h_t), abs=1e-12)
    assert np.abs(loaded.predict_survival(rows, horizons)
                  - est.predict_survival(rows, horizons)).max() < 1e-12
    lo, hi = loaded.predict_risk_band(rows, horizons)
    point = loaded.predict_risk(rows, horizons)
    assert np.all(lo <= point + 1e-12)
    assert np.all(point <= hi + 1e-12)


def _fit_problem(est, X, lo, up):
    """The fitted estimator's objective arguments rebuilt from its rows (weights set later)."""
    from forecast.models.base import _pen_scale

    lo, up = _prepare_bounds(lo, up)
    Z = np.ascontiguousarray(est.encoder_.transform(X)[:, est.encoder_.active])
    exp_lo, exp_up, event = est._rows(X, lo, up)
    scale = _pen_scale(Z) if est.penalty_scale == "sd" else np.ones(Z.shape[1])
    return Z, exp_lo, exp_up, event, scale


def _lbfgs(args, x0):
    """scipy's L-BFGS run to its tightest tolerances: the independent optimiser."""
    from scipy.optimize import minimize

    with np.errstate(all="ignore"):
        res = minimize(pwe_objective, x0, args=args, jac=True, method="L-BFGS-B",
                       options={"maxiter": 50_000, "gtol": 1e-12, "ftol": 1e-16,
                                "maxcor": 50})
    return res


def test_newton_fit_and_refits_equal_an_independent_optimiser(signal_fit) -> None:
    """The Newton fit and the whitened bootstrap refits reach the optimum that
    plain L-BFGS reaches from zero when run to its tightest tolerance."""
    X, est = signal_fit
    _, lo, up = _short_term_signal(6000, 3)
    Z, exp_lo, exp_up, event, sd = _fit_problem(est, X, lo, up)
    pen = (est._penalty(), float(est.window_penalizer))
    x0 = np.zeros_like(est.theta_)
    x0[:exp_lo.shape[1]] = np.log(0.03)
    full = _lbfgs((Z, exp_lo, exp_up, event, np.ones(len(Z)), sd, *pen), x0)
    ours_f, _ = pwe_objective(est.theta_, Z, exp_lo, exp_up, event, np.ones(len(Z)), sd, *pen)
    assert ours_f <= full.fun + 1e-12
    assert np.abs(est.theta_ - full.x).max() < 1e-4
    weights = _bootstrap_weights(np.arange(len(X)), est.n_bootstrap, est.random_state)
    for b, w in enumerate(weights):
        ref = est._unpack(_lbfgs((Z, exp_lo, exp_up, event, w, sd, *pen), x0).x)
        for name, arr in zip(("log_base", "coef", "window_coef"), ref, strict=True):
            assert np.abs(est.bootstrap_[f"boot_{name}"][b] - arr).max() < 1e-4, (b, name)


def test_unit_penalty_shrinks_a_rare_category_more_than_the_sd_penalty() -> None:
    """``penalty_scale="unit"`` penalises a category per indicator (its SD is
    about 0.17 at 3 %), ``"sd"`` per SD; a standardised numeric column is
    penalised alike by both."""
    X, lo, up = _short_term_signal(4000, 8)
    X["site"] = np.where(np.random.default_rng(9).random(len(X)) < 0.03, "rare", "common")
    feats = FeatureSet(("flag", "elapsed_days"), {"site": ("common", "rare")})
    fits = {sc: make_estimator("piecewise", features=feats, penalizer=0.3, window_penalizer=0.3,
                               edges=(0.0, 7.0, 14.0), penalty_scale=sc).fit(X, lo, up)
            for sc in ("unit", "sd")}
    cols = fits["unit"].encoder_.columns
    rare, flag = cols.index("site=rare"), cols.index("flag")
    assert abs(fits["unit"].coef_[rare]) < 0.5 * abs(fits["sd"].coef_[rare])
    assert fits["unit"].coef_[flag] == pytest.approx(fits["sd"].coef_[flag], rel=0.01)
    assert fits["unit"].to_bundle().meta["penalty_scale"] == "unit"
    with pytest.raises(ValueError, match="penalty_scale"):
        make_estimator("piecewise", features=feats, penalty_scale="raw").fit(X, lo, up)


def test_drivers_read_on_the_hazard_scale(signal_fit) -> None:
    from forecast.policy.drivers import feature_drivers as _drivers

    X, est = signal_fit
    bundle = est.to_bundle()
    assert bundle.family in HAZARD_FAMILIES
    flagged = X[X["flag"] == 1.0].iloc[:1].reset_index(drop=True)
    (items,) = _drivers(bundle, flagged, 3)
    flag = next(d for d in items if d["feature"] == "flag")
    assert flag["direction"] == "shortens"  # the flag raises the hazard
    assert flag["size_meaning"].startswith("hazard ratio")


def test_cli_trains_and_predicts_the_piecewise_kind(sim_small_folder, tmp_path) -> None:
    models = tmp_path / "models"
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(sim_small_folder), "--models", str(models),
                               "--kind", "piecewise", "--bootstrap", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    version = res.stdout.strip()
    from forecast import registry

    loaded = registry.load(version, models)
    assert loaded.bundle.kind == "piecewise"
    assert loaded.card["model"]["windows_days"] == [0.0, 7.0, 14.0, 28.0, 42.0, 56.0, 84.0]
    # the Markdown card shows each window's baseline hazard and each column's effect in it
    md = (models / version / "model_card.md").read_text()
    assert "log hazard ratios" in md
    arrays = loaded.bundle.arrays
    assert f"0-7 d {np.exp(arrays['log_base'][0]):.4g}" in md
    col = loaded.bundle.encoder.columns.index("phq9_latest")
    row = next(line for line in md.splitlines() if line.startswith("| phq9_latest |"))
    cells = [float(c) for c in row.strip("|").split("|")[1:]]
    expected = [arrays["coef"][col], *(arrays["coef"][col] + arrays["window_coef"][:, col])]
    assert len(cells) == 2 + len(arrays["log_base"])
    assert np.allclose([cells[0], *cells[2:]], expected, rtol=1e-3, atol=1e-6)
    out = tmp_path / "preds.csv"
    res = runner.invoke(main, ["predict", str(sim_small_folder), "--model", version,
                               "--models", str(models), "--as-of", "2026-06-01",
                               "--out", str(out)])
    assert res.exit_code == 0, res.output
    preds = pd.read_csv(out)
    risks = preds[[f"risk_{h}d" for h in (7, 14, 28, 56, 84)]].dropna()
    assert len(risks) > 0
    assert np.all(np.diff(risks.to_numpy(), axis=1) >= -1e-9)
    assert risks.to_numpy().min() >= 0
    assert risks.to_numpy().max() <= 1


def test_fit_agrees_with_lifelines_piecewise_exponential() -> None:
    """With the average effects unpenalised, our objective is lifelines'
    PiecewiseExponentialRegressionFitter's (its penalty: the variance of each
    coefficient across the pieces), so both optima give the same curves."""
    from lifelines import PiecewiseExponentialRegressionFitter
    from lifelines.exceptions import ApproximationWarning

    X, lo, up = _short_term_signal(3000, 11)
    X["age"] = np.random.default_rng(4).normal(50, 10, len(X))
    feats = FeatureSet(("flag", "age", "elapsed_days"), {})
    w_pen, edges = 0.02, (0.0, 7.0, 14.0)
    est = make_estimator("piecewise", features=feats, penalizer=0.0, window_penalizer=w_pen,
                         window_smoothing=0.0, edges=edges).fit(X, lo, up)
    z = est.encoder_.transform(X)[:, est.encoder_.active]
    df = pd.DataFrame(z, columns=[f"x{i}" for i in range(z.shape[1])])
    df["lower"], df["upper"] = np.maximum(lo, 0.0), up
    # ours: 0.5 * w * sum_j (delta_j * sd)^2 with beta free = 0.5 * w * J * variance
    ref = PiecewiseExponentialRegressionFitter(breakpoints=[7.0, 14.0],
                                               penalizer=0.5 * w_pen * len(edges))
    with warnings.catch_warnings():  # lifelines' median approximation while it reports
        warnings.simplefilter("ignore", ApproximationWarning)
        ref.fit_interval_censoring(df, "lower", "upper")
    times = np.array([3.0, 7.0, 10.0, 14.0, 28.0, 60.0])
    theirs = ref.predict_survival_function(df.iloc[:200], times=times).to_numpy().T
    ours = est.predict_survival(X.iloc[:200], times)
    assert np.abs(ours - theirs).max() < 2e-3


@pytest.fixture(scope="module")
def piecewise_registry(tmp_path_factory, sim_small_folder):
    from forecast.data import load_cohort
    from forecast.training import train_and_save

    models = tmp_path_factory.mktemp("piecewise_models")
    train_and_save(load_cohort(sim_small_folder), models, kind="piecewise", n_bootstrap=2,
                   seed=1, simulated=True)
    return models


def test_service_serves_and_audits_a_piecewise_model(make_app, piecewise_registry,
                                                      sim_small) -> None:
    from tests.fixtures.service import client_for
    from tests.test_service_api import stateless_body

    client = client_for(make_app(models=piecewise_registry))
    answers = []
    for pid in sim_small.cohort.patients["patient_id"].tolist()[:40]:
        resp = client.post("/api/v1/forecast",
                           stateless_body(sim_small.cohort, pid, as_of="2026-06-01"))
        assert resp.status_code == 200, resp.json
        answers.append(resp.json)
    personal = [a for a in answers if a["risk"] and a["risk"].get("kind") == "personalised"]
    assert personal, "no personalised forecast among 40 patients"
    for a in answers:
        assert a["decision_support"] is True
        assert a["model_version"] == answers[0]["model_version"]
    for a in personal:
        risks = [h["risk"] for h in a["risk"]["horizons"]]
        assert risks == sorted(risks)
        assert all(h["lower"] <= h["risk"] <= h["upper"] for h in a["risk"]["horizons"])
        for d in a["drivers"]:  # the hazard scale: a factor below 1 lengthens the benefit
            assert d["size_meaning"].startswith("hazard ratio")
            assert (d["size"] < 1) == (d["direction"] == "lengthens")
    assert len(client.app.extensions["kap_store"].audit_rows()) == len(answers)
