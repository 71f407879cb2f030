"""Evaluation: metric wrappers against independent computations, grouped CV, the CLI report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from forecast import evaluation as ev
from forecast.cli import main


def _exp_data(n: int, seed: int, censor: bool = False):
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(-3.5, 0.6, size=n))
    t = rng.exponential(1 / rate)
    event = np.ones(n, dtype=bool)
    if censor:
        c = rng.uniform(5, 150, size=n)
        event = t <= c
        t = np.minimum(t, c)
    return t, event, rate


def test_grouped_folds_never_split_a_patient() -> None:
    groups = np.repeat([f"p{i}" for i in range(37)], np.arange(37) % 4 + 1)
    fold = ev.grouped_folds(groups, 5, seed=3)
    per_patient = pd.Series(fold).groupby(groups).nunique()
    assert per_patient.max() == 1
    assert set(fold) == set(range(5))
    assert np.array_equal(fold, ev.grouped_folds(groups, 5, seed=3))
    assert not np.array_equal(fold, ev.grouped_folds(groups, 5, seed=4))
    with pytest.raises(ValueError, match="cannot fill"):
        ev.grouped_folds(groups[:3], 5, 0)


def test_harrell_c_matches_sksurv_without_ties() -> None:
    from sksurv.metrics import concordance_index_censored

    t, e, rate = _exp_data(400, 1, censor=True)
    risk = rate * np.exp(np.random.default_rng(2).normal(0, 0.5, size=400))
    ours = ev.harrell_c(t, e, risk)
    theirs = concordance_index_censored(e, t, risk)[0]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours > 0.6


def test_uno_equals_harrell_without_censoring() -> None:
    t, e, rate = _exp_data(300, 3)
    risk = rate * np.exp(np.random.default_rng(4).normal(0, 0.5, size=300))
    assert ev.uno_c(t, e, risk, tau=t.max() + 1) == pytest.approx(ev.harrell_c(t, e, risk),
                                                                   abs=1e-9)


def test_auc_and_brier_match_direct_computation_without_censoring() -> None:
    t, e, rate = _exp_data(500, 5)
    h = [7, 28, 56]
    risk = 1 - np.exp(-np.outer(rate, h))
    auc = ev.td_auc(t, e, risk, h)
    bs, _ = ev.brier(t, e, risk, h)
    for j, hh in enumerate(h):
        assert auc[j] == pytest.approx(roc_auc_score(t <= hh, risk[:, j]), abs=1e-9)
        assert bs[j] == pytest.approx(np.mean(((t > hh).astype(float) - (1 - risk[:, j])) ** 2),
                                      abs=1e-9)


def _card_fmt(v: float) -> str:
    return f"{v:.4g}"


def _austin_ici(time, event, risk_h, h) -> float:
    """ICI with Austin's Cox smoother on the given times (``ici_austin`` on untied times)."""
    return float(np.mean(np.abs(risk_h - ev.smoothed_observed(time, event, risk_h, h))))


def test_ici_small_when_calibrated_large_when_not() -> None:
    t, e, rate = _exp_data(3000, 7, censor=True)
    h = 28.0
    risk = 1 - np.exp(-rate * h)
    good = ev.calibration(t, e, risk, h, observed_risk=None)
    bad = ev.calibration(t, e, 0.5 * risk, h, observed_risk=None)
    assert good["ici"] < 0.015
    assert bad["ici"] > 0.05
    assert good["ici_pseudo"] < 0.015
    assert bad["ici_pseudo"] > 0.05
    # Austin's smoother, kept beside it, agrees here (exponential times: hazards proportional)
    assert good["ici_austin"] < 0.015
    assert bad["ici_austin"] > 0.05
    # calibration-in-the-large uses the given (Turnbull) observed risk
    obs = ev.km_risk(t, e, h)
    assert ev.calibration(t, e, 0.5 * risk, h, observed_risk=obs)["citl"] > 0.05


def test_ici_of_true_risks_from_a_model_without_proportional_hazards() -> None:
    # Log-logistic AFT waning times (hazard ratios fade over time): the true risks are
    # calibrated by construction, so the ICI must be near zero at each horizon. Fitted
    # on the whole follow-up, Austin's Cox smoother carried its proportional-hazards
    # assumption past h and read 0.039 at 28 days here; censoring at h removes it.
    rng = np.random.default_rng(1)
    n = 6000
    eta = 4.0 + 0.8 * rng.normal(size=n)
    rho = 1.6
    wane = np.exp(eta) * (1.0 / rng.uniform(size=n) - 1.0) ** (1.0 / rho)
    censor = rng.uniform(20, 300, size=n)
    t, e = np.minimum(wane, censor), wane <= censor
    for h in (28.0, 56.0):
        true = 1.0 - 1.0 / (1.0 + (h / np.exp(eta)) ** rho)
        obs = ev.smoothed_observed(t, e, true, h)
        assert obs is not None
        assert np.mean(np.abs(obs - true)) < 0.02
        # the smoothed risk agrees with Kaplan-Meier in the large
        assert obs.mean() == pytest.approx(ev.km_risk(t, e, h), abs=0.01)


def _floor_bench():
    """Calibrated-by-construction cohorts (tests/fixtures/calibrated_cohorts.py, which
    research/calibration_floor.py measures)."""
    from tests.fixtures import calibrated_cohorts

    return calibrated_cohorts


def test_draws_from_a_risk_curve_reproduce_it() -> None:
    rng = np.random.default_rng(4)
    horizons = np.array([7.0, 14.0, 28.0, 56.0, 84.0])
    risk = np.sort(rng.uniform(0, 0.9, size=(400, 5)), axis=1)
    rows = np.repeat(risk, 250, axis=0)
    t = ev._draw_from_risk_curve(rows, horizons, rng.uniform(size=len(rows)))
    for j, h in enumerate(horizons):  # share waned by h = the mean predicted risk at h
        assert np.mean(t <= h) == pytest.approx(risk[:, j].mean(), abs=0.005)
    # between horizons the cumulative risk is linear: day 21 is halfway from 14 to 28
    assert np.mean(t <= 21) == pytest.approx(risk[:, 1:3].mean(), abs=0.005)
    assert np.mean(np.isinf(t)) == pytest.approx(1 - risk[:, -1].mean(), abs=0.005)


def test_censoring_draws_follow_the_reverse_kaplan_meier() -> None:
    from lifelines import KaplanMeierFitter

    lower, upper, _ = _floor_bench().cohort(4000, 5, booster_share=0.5, every=7.0)
    rng = np.random.default_rng(6)
    c = ev._censoring_draws(lower, upper, rng)
    cens = ~np.isfinite(upper)
    assert np.array_equal(c[cens], lower[cens])  # a censored row keeps its own time
    assert np.all(c[~cens] > upper[~cens])  # followed at least until its waning was seen
    # drawn for rows with upper = 28: P(C > t | C > 28) = G(t) / G(28), G the reverse KM
    c_time = np.where(cens, lower, upper)
    g = KaplanMeierFitter().fit(c_time, cens)
    pick = np.flatnonzero(~cens & (upper == 28.0))
    draws = np.concatenate([ev._censoring_draws(lower, upper, rng)[pick] for _ in range(40)])
    for t in (35.0, 70.0, 140.0):
        expect = float(g.predict(t)) / float(g.predict(28.0))
        assert np.mean(draws > t) == pytest.approx(expect, abs=0.02)


def test_calibrated_reference_is_the_floor_of_the_ici_under_booster_censoring() -> None:
    """Calibrated risks read ICI(56) well above 0 when most follow-up ends at boosters.

    The reference draws outcomes from the predictions themselves, so it tells a
    reader about what a perfectly calibrated model reads on the same rows
    (exact times; at the interval midpoints, the true risks on the weekly-assessed
    outcomes read more), and risks that are too spread read far above it.
    """
    bench = _floor_bench()
    horizons, rho = bench.HORIZONS, bench.RHO
    lower, upper, eta = bench.cohort(6000, 7, booster_share=0.7, every=7.0)
    true = bench.ll_risk(eta, rho)
    time, event = ev.impute_times(lower, upper)
    ref = ev.calibrated_reference_ici(lower, upper, true, horizons, reps=10, seed=1)
    r56 = ref["by_horizon"]["56"]
    # the floor: a calibrated model cannot read near 0 at 56 days on these rows, and it
    # reads higher with Austin's smoother than with the pseudo-observation one
    assert r56["ici_austin_mean"] > r56["ici_pseudo_mean"] > 0.005
    assert r56["ici_mean"] > 0.005  # the published ICI's floor
    # at the interval midpoints the true risks on weekly outcomes read more with Austin's
    # smoother (tied times)
    assert _austin_ici(time, event, true[:, 1], 56) > r56["ici_austin_mean"]
    # too-spread risks (log-logistic scale x 1.6) read above the calibrated range
    spread = bench.ll_risk(eta, rho * 1.6)
    assert ev._ici(time, event, spread[:, 1], 56) > 2 * r56["ici_p95"]
    assert _austin_ici(time, event, spread[:, 1], 56) > 2 * r56["ici_austin_p95"]
    # with light censoring the floor is low
    lo2, up2, eta2 = bench.cohort(6000, 8, booster_share=0.0, every=7.0)
    ref2 = ev.calibrated_reference_ici(lo2, up2, bench.ll_risk(eta2, rho), horizons,
                                       reps=10, seed=1)
    for key in ("ici_mean", "ici_austin_mean"):
        assert ref2["by_horizon"]["56"][key] < r56[key]
    assert ev.calibrated_reference_ici(lower, upper, true, horizons, reps=0) is None


def test_calibration_slope_is_one_for_true_risks_and_shows_over_spread() -> None:
    """Exponential waning (proportional hazards): cll of the true risk is log(rate * h),
    so both slopes are 1; predictions whose cll is stretched 1.5 times read 1/1.5.
    The Cox slope is checked against the partial likelihood maximised here directly
    (no ties)."""
    from scipy.optimize import minimize_scalar

    def cox_coef(time: np.ndarray, event: np.ndarray, x: np.ndarray) -> float:
        order = np.argsort(-time)  # risk set of each event = rows with time >= its time

        def neg_pl(b: float) -> float:
            lse = np.logaddexp.accumulate(b * x[order])
            return -float(np.sum((b * x[order] - lse)[event[order]]))

        return float(minimize_scalar(neg_pl, bounds=(-5, 5), method="bounded",
                                     options={"xatol": 1e-8}).x)

    t, e, rate = _exp_data(4000, 12, censor=True)
    for h in (28.0, 56.0):
        true = 1.0 - np.exp(-rate * h)
        got = ev.calibration_slope(t, e, true, h)
        cll = np.log(-np.log(1.0 - true))
        ref = cox_coef(np.minimum(t, h), e & (t <= h), cll)
        # lifelines' Newton steps stop at its own tolerance (4e-4 off here), far
        # inside the slope's standard error (about 0.03)
        assert got["slope_cox"] == pytest.approx(ref, abs=2e-3)
        for key in ("slope", "slope_cox"):
            lo, hi = got[f"{key}_ci95"]
            assert lo < 1.0 < hi, key
        stretched = ev.calibration_slope(t, e, 1.0 - np.exp(-np.exp(1.5 * cll + 0.2)), h)
        assert stretched["slope"] == pytest.approx(1 / 1.5, abs=0.08)
        assert stretched["slope_cox"] == pytest.approx(1 / 1.5, abs=0.08)
    # constant predictions (Kaplan-Meier) have no slope
    assert ev.calibration_slope(t, e, np.full(len(t), 0.3), 28.0) is None


def test_calibration_slope_of_true_risks_without_proportional_hazards() -> None:
    """Log-logistic waning, booster censoring: the pseudo-observation slope of the true
    risks is 1 within its interval; the Cox slope reads too high (its assumption of
    proportional hazards within [0, h] fails), which is why it is not the headline."""
    bench = _floor_bench()
    for seed in (1, 2):
        lower, upper, eta = bench.cohort(6000, seed, booster_share=0.7, every=7.0)
        time, event = ev.impute_times(lower, upper)
        got = ev.calibration_slope(time, event, bench.ll_risk(eta, bench.RHO)[:, 1], 56.0)
        lo, hi = got["slope_ci95"]
        assert lo < 1.0 < hi
        assert got["slope_cox"] > 1.1


def test_reported_ici_of_true_risks_with_monthly_assessments() -> None:
    """Waning seen at assessments every 28 days: at the interval midpoints every event
    shares one of a few times, and Austin's smoother read 0.07 for risks calibrated by
    construction; the metrics place each waning inside its interval (seeded) instead."""
    bench = _floor_bench()
    lower, upper, eta = bench.cohort(6000, 3, booster_share=0.5, every=28.0)
    true = bench.ll_risk(eta, bench.RHO)
    m = ev.survival_metrics(lower, upper, true, bench.HORIZONS, uno=False)["by_horizon"]
    time, event = ev.impute_times(lower, upper)
    for j, h in enumerate(bench.HORIZONS):
        assert m[str(h)]["ici"] < 0.03  # the published ICI, on untied times
        assert m[str(h)]["ici_pseudo"] < 0.03  # pseudo-observations: Kaplan-Meier handles ties
        assert m[str(h)]["ici_austin"] < 0.03  # Austin's, on untied times
        assert _austin_ici(time, event, true[:, j], h) > 0.05  # Austin's at the midpoints
    # one seeded draw: the same rows give the same figures
    again = ev.survival_metrics(lower, upper, true, bench.HORIZONS, uno=False)["by_horizon"]
    assert again["56"]["ici_austin"] == m["56"]["ici_austin"]
    t_u, e_u = ev.untied_times(lower, upper)
    assert np.array_equal(e_u, event)
    assert np.all((t_u[event] >= lower[event]) & (t_u[event] <= upper[event]))
    assert np.array_equal(t_u[~event], np.maximum(lower[~event], 1e-3))


def _smoother_frame(n: int, seed: int, h: float = 28.0) -> pd.DataFrame:
    """A calibration smoother's input: spline of cll(risk), follow-up censored at ``h``."""
    rng = np.random.default_rng(seed)
    cll = np.log(-np.log(1.0 - rng.uniform(0.05, 0.95, n)))
    t = rng.exponential(30 * np.exp(-0.8 * cll))
    c = rng.uniform(0, 80, n)
    e = (t <= c) & (t <= h)
    basis = ev._cll_basis(cll)
    df = pd.DataFrame(basis, columns=[f"s{j}" for j in range(basis.shape[1])])
    df["T"], df["E"] = np.minimum(np.minimum(t, c), h), e.astype(float)
    return df


@pytest.mark.parametrize("penalizer", [0.0, 1e-4, 0.1])
def test_vectorised_cox_equals_lifelines_without_tied_event_times(penalizer: float) -> None:
    from lifelines import CoxPHFitter

    df = _smoother_frame(3000, 11)
    X = df.drop(columns=["T", "E"])
    ours = ev.cox_efron(X, df["T"].to_numpy(), df["E"].to_numpy() > 0, penalizer)
    # lifelines' default precision stops about 1e-4 short of the optimum on 3,000 rows
    ref = CoxPHFitter(penalizer=penalizer).fit(df, "T", "E", fit_options={"precision": 1e-12})
    assert ours is not None
    assert list(ours.params_.index) == list(ref.params_.index)
    assert np.abs(ours.params_.to_numpy() - ref.params_.to_numpy()).max() < 1e-6
    assert np.abs(ours.standard_errors_.to_numpy()
                  - ref.standard_errors_.to_numpy()).max() < 1e-6
    # at the horizon the follow-up is censored at (the smoothers' use) and at an event
    # time: lifelines interpolates its baseline linearly between durations, the
    # Breslow estimator is a step function, and the two agree at the durations
    for h in (28.0, float(np.sort(df["T"].to_numpy()[df["E"].to_numpy() > 0])[400])):
        want = ref.predict_survival_function(X, times=[h]).to_numpy()[0]
        assert np.abs(ours.survival_at(X, h) - want).max() < 1e-7
    assert abs(ours.params_["s0"]) > 0.1  # a real fit, not the zero start


def test_vectorised_cox_reaches_the_optimum_of_a_brute_force_partial_likelihood() -> None:
    """Few events and a steep spline: the optimum of the penalised partial likelihood
    written out risk set by risk set and minimised by scipy from several starts.
    (On such subgroups lifelines' Newton steps can stop far from it: a fold of a
    simulated cohort read -269.4 where the optimum is -91.1.)"""
    from scipy.optimize import minimize

    df = _smoother_frame(400, 13).iloc[:100]
    X = df.drop(columns=["T", "E"])
    x, T, E = X.to_numpy(), df["T"].to_numpy(), df["E"].to_numpy() > 0
    assert 10 <= E.sum() <= 60
    pen = 1e-4
    sd = x.std(axis=0, ddof=1)

    def nll(beta: np.ndarray) -> float:
        lin = x @ beta
        ll = sum(lin[i] - np.log(np.exp(lin[T >= T[i]]).sum()) for i in np.flatnonzero(E))
        return -(ll - 0.5 * len(T) * pen * np.sum((beta * sd) ** 2))

    best = min((minimize(nll, start, method="BFGS", options={"gtol": 1e-9})
                for start in (np.zeros(3), np.ones(3), -np.ones(3))), key=lambda r: r.fun)
    ours = ev.cox_efron(X, T, E, pen)
    assert ours is not None
    assert nll(ours.params_.to_numpy()) <= best.fun + 1e-8
    np.testing.assert_allclose(ours.params_.to_numpy(), best.x, atol=1e-4)


def test_vectorised_cox_fits_a_nearly_constant_risk_on_many_rows() -> None:
    """The Kaplan-Meier baseline's risks: five values within 0.1 on the cll scale and
    8,000 rows. The log-likelihood is about -6,000, so the convergence tests must be
    relative to it (an absolute 1e-12 made this fit "not estimable")."""
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)  # a draw where the absolute tolerance failed
    n = 8000
    cll = rng.choice([-1.60, -1.57, -1.56, -1.55, -1.47], size=n)
    t = rng.exponential(60 * np.exp(-0.6 * cll), size=n)
    c = rng.uniform(0, 120, size=n)
    df = pd.DataFrame({"cll": cll, "T": np.minimum(np.minimum(t, c), 28.0),
                       "E": ((t <= c) & (t <= 28.0)).astype(float)})
    ours = ev._fit_cox(df, penalizer=1e-4)
    ref = CoxPHFitter(penalizer=1e-4).fit(df, "T", "E", fit_options={"precision": 1e-12})
    assert isinstance(ours, ev.CoxFit)
    assert ours.params_["cll"] == pytest.approx(ref.params_["cll"], abs=1e-4)
    X = df[["cll"]]
    want = ref.predict_survival_function(X, times=[28.0]).to_numpy()[0]
    assert np.abs(ours.survival_at(X, 28.0) - want).max() < 1e-6


@pytest.mark.parametrize("penalizer", [0.0, 1e-4])
def test_vectorised_cox_equals_lifelines_efron_with_tied_event_times(penalizer: float) -> None:
    from lifelines import CoxPHFitter

    df = _smoother_frame(1500, 12)
    df["T"] = np.ceil(df["T"])  # day-rounded: up to dozens of events tied on a day
    assert df.loc[df["E"] > 0, "T"].value_counts().max() >= 10
    X = df.drop(columns=["T", "E"])
    ours = ev._fit_cox(df, penalizer)
    ref = CoxPHFitter(penalizer=penalizer).fit(df, "T", "E", fit_options={"precision": 1e-12})
    assert isinstance(ours, ev.CoxFit)
    assert np.abs(ours.params_.to_numpy() - ref.params_.to_numpy()).max() < 1e-6
    assert np.abs(ours.standard_errors_.to_numpy()
                  - ref.standard_errors_.to_numpy()).max() < 1e-6
    for h in (14.0, 28.0):  # durations: lifelines' interpolation equals the step there
        want = ref.predict_survival_function(X, times=[h]).to_numpy()[0]
        assert np.abs(ours.survival_at(X, h) - want).max() < 1e-7
    batch = CoxPHFitter(penalizer=penalizer).fit(df, "T", "E", fit_options={
        "precision": 1e-12}, batch_mode=True)  # the same Efron model in lifelines' other path
    assert np.abs(batch.params_.to_numpy() - ours.params_.to_numpy()).max() < 1e-6


def test_vectorised_cox_is_not_estimable_without_information() -> None:
    untied = _smoother_frame(600, 12)
    constant = untied.assign(s0=1.0, s1=2.0, s2=3.0)  # no information: not estimable
    assert ev.cox_efron(constant.drop(columns=["T", "E"]), constant["T"].to_numpy(),
                         constant["E"].to_numpy() > 0) is None
    assert ev.cox_efron(untied.drop(columns=["T", "E"]), untied["T"].to_numpy(),
                         np.zeros(len(untied), dtype=bool)) is None


def test_km_risk_matches_lifelines() -> None:
    from lifelines import KaplanMeierFitter

    t, e, _ = _exp_data(300, 8, censor=True)
    t = np.round(t)  # ties
    km = KaplanMeierFitter().fit(t, e)
    for h in (7, 28, 56):
        assert ev.km_risk(t, e, h) == pytest.approx(1 - km.predict(h), abs=1e-12)


def test_interval_conversion() -> None:
    lo = np.array([7.0, 14.0, 28.0, 0.0])
    up = np.array([14.0, np.inf, 35.0, 7.0])
    time, event = ev.impute_times(lo, up)
    assert np.allclose(time, [10.5, 14.0, 31.5, 3.5])
    assert event.tolist() == [True, False, True, True]
    st = ev.status_at(lo, up, 14)
    assert st[0] == 1
    assert st[1] == 0
    assert st[2] == 0  # lower 28 >= 14: not waned by 14
    assert st[3] == 1


def test_subgroups_bands() -> None:
    rows = pd.DataFrame({"sex": ["female", None], "diagnosis": ["trd", "mdd"],
                         "age": [25.0, 0.0], "age_missing": [0.0, 1.0]})
    g = ev.subgroups(rows)
    assert g["sex"].tolist() == ["female", "unknown"]
    assert g["age_band"].tolist() == ["<30", "unknown"]


@pytest.fixture(scope="module")
def report(trained_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    import forecast.policy.replay as pe

    mp = pytest.MonkeyPatch()
    mp.setattr(pe, "evaluate_policy", lambda cohort, model, truth, out_dir: {
        "table": [{"schedule": "fixed 28d", "waned_days": 1.0}], "html": "<p id='pol'>replay</p>"})
    result = CliRunner().invoke(main, [
        "evaluate", str(trained_registry.data_dir), "--models", str(trained_registry.models_dir),
        "--model", "latest", "--out", str(out), "--folds", "2", "--policy",
        "--holdout", str(trained_registry.data_dir), "--no-record"])  # the registry is shared
    mp.undo()
    assert result.exit_code == 0, result.output
    return out


def test_evaluate_writes_report(report, trained_registry) -> None:
    assert {p.name for p in report.iterdir()} >= {"metrics.json", "report.html", "model_card.md"}
    m = json.loads((report / "metrics.json").read_text())
    assert m["model_version"] == trained_registry.version
    assert set(m["cv"]["models"]) == {"model", "cox", "km", "oracle"}
    o = m["cv"]["models"]["model"]["overall"]
    assert set(o) >= {"harrell_c", "uno_c", "ibs", "by_horizon"}
    assert set(o["by_horizon"]) == {"7", "14", "28", "56", "84"}
    assert set(o["by_horizon"]["28"]) >= {"auc", "brier", "ici", "citl", "auc_known"}
    assert set(m["cv"]["models"]["model"]["fairness"]) == {"sex", "diagnosis", "age_band"}
    assert "landmark_conditional" in m["cv"]
    fp = m["cv"]["forecast_point"]
    assert set(fp["models"]) == {"model", "cox", "km", "oracle"}
    assert 0 < fp["n_episodes"] <= m["cv"]["n_episodes"]
    assert set(fp["models"]["model"]["overall"]["by_horizon"]["28"]) >= {"auc", "ici", "citl"}
    assert set(fp["on_oracle_episodes"]) == {"model", "cox", "km"}
    assert m["targets"]["evaluated_at"].startswith("first forecast point")
    assert "auc28_gap_to_oracle" in m["targets"]
    assert "auc28_model" in m["targets"]["episode_start"]
    # 95 % intervals of the headline figures (default --ci-reps) bracket the point estimates
    boot = fp["bootstrap"]
    assert boot["reps"] == ev.DEFAULT_CI_REPS
    assert boot["unit"] == "patient"
    t = m["targets"]
    for key in ("auc28_model", "ici28_model", "auc28_gap_to_oracle"):
        lo, hi = t[f"{key}_ci95"]
        assert lo <= hi
        assert lo - 0.02 <= t[key] <= hi + 0.02, key
    assert m["holdout"]["forecast_point"]["models"]["model"]["overall"]["n"] > 0
    # the holdout's first forecast point has its calibrated reference too
    hfp = m["holdout"]["forecast_point"]
    assert hfp["calibrated_reference"]["reps"] == ev.REFERENCE_REPS
    assert hfp["calibrated_reference"]["by_horizon"]["56"]["ici_mean"] > 0
    assert m["holdout"]["models"]["model"]["overall"]["n"] > 0
    assert m["policy"] == {"table": [{"schedule": "fixed 28d", "waned_days": 1.0}]}
    html = (report / "report.html").read_text()
    assert "auc28_model_ci95" in html
    assert "data:image/png;base64," in html
    assert "<p id='pol'>replay</p>" in html
    assert "first forecast point" in html
    # beside each calibration plot: how many rows reach each horizon (metrics.json's share)
    share56 = fp["models"]["model"]["overall"]["by_horizon"]["56"]["share_known"]
    assert 0 < share56 < 1
    assert "followed past h): 7 d " in html
    assert f"56 d {share56:.2f}" in html
    card = (report / "model_card.md").read_text()
    assert "cross-validation" in card
    assert card.index("first forecast point") < card.index("at episode start")
    assert "| model | Harrell C |" in card
    assert "95 % intervals of the model's headline figures" in card
    # beside the model's ICI: what a perfectly calibrated model reads on the same rows
    ref = fp["calibrated_reference"]
    assert ref["reps"] == ev.REFERENCE_REPS
    assert set(ref["by_horizon"]) == {"7", "14", "28", "56", "84"}
    mean56, p95_56 = t["ici56_calibrated_reference"]
    assert 0 < mean56 <= p95_56 == ref["by_horizon"]["56"]["ici_p95"]
    assert "calibrated reference ICI" in html
    # the headline ICI is the published one; the variants stay beside it, labelled. The
    # headline is read on the episodes the oracle covers (a later induction session that
    # starts an episode by the pre-session rule has no truth row).
    m56 = fp["models"]["model"]["overall"]["by_horizon"]["56"]
    h56 = fp["on_oracle_episodes"]["model"]["overall"]["by_horizon"]["56"]
    assert (t["ici56_model"], t["ici56_model_austin"]) == (h56["ici"], h56["ici_austin"])
    assert t["ici56_model_pseudo"] == h56["ici_pseudo"]
    assert 0 < fp["oracle_matched_episodes"] <= fp["n_episodes"]
    assert t["ici56_austin_calibrated_reference"][1] == ref["by_horizon"]["56"]["ici_austin_p95"]
    assert t["ici56_pseudo_calibrated_reference"][1] == ref["by_horizon"]["56"]["ici_pseudo_p95"]
    assert "model ICI (Austin" in html  # the calibrated-reference table's column
    assert "ici_austin" in html
    assert "ici_pseudo" in html
    assert "as published" in card
    # the noise floor beside every ICI of the headline table (each model, the oracle)
    for name in ("model", "cox", "km", "oracle"):
        hh = fp["models"][name]["overall"]["by_horizon"]["56"]
        assert 0 < hh["ici_floor"][0] <= hh["ici_floor"][1], name
    # the floor beside the headline is the one of the headline's rows: the model block's
    # own when the oracle covers every episode, else recomputed on the covered ones
    same_rows = fp["oracle_matched_episodes"] == fp["n_episodes"]
    own_floor = [ref["by_horizon"]["56"]["ici_mean"], ref["by_horizon"]["56"]["ici_p95"]]
    assert (m56["ici_floor"] == own_floor) == same_rows
    assert f"{_card_fmt(m56['ici'])} ({_card_fmt(m56['ici_floor'][0])})" in card
    # the calibration slope per horizon, in metrics.json, the report and the card
    slope28 = fp["models"]["model"]["overall"]["by_horizon"]["28"]
    assert slope28["slope_ci95"][0] < slope28["slope"] < slope28["slope_ci95"][1]
    assert slope28["slope_cox_ci95"][0] < slope28["slope_cox"] < slope28["slope_cox_ci95"][1]
    assert t["slope28_model"] == (
        fp["on_oracle_episodes"]["model"]["overall"]["by_horizon"]["28"]["slope"])
    assert "Calibration slope" in html
    assert "Calibration slope of the model" in card
    assert "ICI a perfectly calibrated model would read" in card


def test_evaluate_refuses_foreign_model(trained_registry, tmp_path) -> None:
    result = CliRunner().invoke(main, [
        "evaluate", str(trained_registry.data_dir), "--models", str(trained_registry.models_dir),
        "--model", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "only from the registry folder" in result.output


def test_turnbull_equals_kaplan_meier_on_day_intervals() -> None:
    """Events known to a day, (t-1, t], censored at c (T > c): Turnbull = KM at integer days."""
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(9)
    t = np.ceil(rng.exponential(30, size=600))
    c = np.ceil(rng.uniform(5, 90, size=600))
    event = t <= c
    lower = np.where(event, t - 1, c)
    upper = np.where(event, t, np.inf)
    km = KaplanMeierFitter().fit(np.where(event, t, c), event)
    days = np.array([1, 7, 14, 28, 56, 84], dtype=float)
    ours = ev.turnbull_survival(lower, upper, days, tol=1e-10)
    assert np.allclose(ours, km.predict(days).to_numpy(), atol=1e-4)


def test_turnbull_equals_a_row_by_row_em_on_overlapping_intervals() -> None:
    """Overlapping assessment intervals with many repeated rows (which the estimator
    pools): the same NPMLE as a row-by-row self-consistency iteration written out
    with an indicator matrix, and at least as likely."""
    rng = np.random.default_rng(15)
    n = 400
    t = rng.weibull(1.4, size=n) * 40
    step = rng.choice([7.0, 14.0, 28.0], size=n)  # each row's assessment interval
    start = rng.choice([0.0, 3.0, 5.0], size=n)  # clinics' assessment grids
    lower = np.maximum(np.floor((t - start) / step) * step + start, 0.0)
    lower = np.where(t < start, 0.0, lower)
    upper = np.where(t < start, start, lower + step)
    c = 7.0 * rng.integers(3, 17, size=n)
    censored = upper > c
    lower = np.where(censored, np.minimum(lower, c), lower).round()
    upper = np.where(censored, np.inf, upper).round()
    upper = np.where(upper <= lower, lower + 1, upper)
    assert len(np.unique(np.c_[lower, upper], axis=0)) < n / 2  # pooling matters here

    pts = np.unique(np.r_[0.0, lower, upper[np.isfinite(upper)]])
    right = np.r_[pts[1:], np.inf]  # elementary intervals (pts[j], right[j]]
    cover = (pts[None, :] >= lower[:, None]) & (right[None, :] <= upper[:, None])
    p = np.full(len(pts), 1.0 / len(pts))
    for _ in range(100_000):
        new = (cover * p / (cover @ p)[:, None]).mean(axis=0)
        if np.max(np.abs(new - p)) < 1e-12:
            break
        p = new
    days = np.array([7, 14, 28, 56, 84], dtype=float)
    ref = 1.0 - np.array([p[right <= d].sum() for d in days])
    ours = ev.turnbull_survival(lower, upper, days, tol=1e-12)
    np.testing.assert_allclose(ours, ref, atol=1e-6)

    def loglik(surv_at: np.ndarray) -> float:  # S at every bound, from a step function
        return float(np.sum(np.log(surv_at[0] - surv_at[1])))

    bounds = np.unique(np.r_[lower, upper[np.isfinite(upper)]])
    s_ours = dict(zip(bounds, ev.turnbull_survival(lower, upper, bounds, tol=1e-12),
                      strict=True))
    s_ref = {b: 1.0 - p[right <= b].sum() for b in bounds}
    for s in (s_ours, s_ref):
        s[np.inf] = 0.0
    ll_ours = loglik(np.array([[s_ours[v] for v in lower], [s_ours[v] for v in upper]]))
    ll_ref = loglik(np.array([[s_ref[v] for v in lower], [s_ref[v] for v in upper]]))
    assert ll_ours >= ll_ref - 1e-5  # both EM, stopped at mass moves of 1e-12


@pytest.fixture(scope="module")
def small_sim():
    from forecast.simulation import simulate

    return simulate(150, 31)


def test_forecast_point_rows_sit_at_the_response_assessment() -> None:
    """At the response assessment, or on the session day when the response was read at a
    check-in before it (pre-session rule): then the episode is known from its start."""
    from forecast.episodes import build_episodes
    from forecast.simulation import simulate
    from forecast.training import forecast_point_dataset, training_landmarks

    cohort = simulate(400, 31, schedule="at-visit").cohort
    all_ep = build_episodes(cohort)
    fp = forecast_point_dataset(cohort)
    ep = all_ep.set_index("episode_id").loc[fp["episode_id"]]
    assert len(fp) > 20
    assert fp["episode_id"].is_unique
    before = (ep["response_day"] < 0).to_numpy()
    assert before.sum() > 10  # check-ins before the session give forecast points too
    want = np.where(before, ep["start"].to_numpy(), ep["response_date"].to_numpy())
    assert (pd.to_datetime(fp["as_of"]).to_numpy() == want).all()
    s = np.maximum(ep["response_day"].to_numpy(float), 0.0)
    assert np.array_equal(fp["landmark"].to_numpy(float), s)
    # every episode that still carries information after its forecast point has a row
    r = np.maximum(all_ep["response_day"].to_numpy(float), 0.0)
    informative = np.isfinite(r) & (r < np.where(all_ep["event"], all_ep["upper"],
                                                 all_ep["lower"]).astype(float))
    assert len(fp) == informative.sum()
    assert np.allclose(fp["lower"], np.maximum(ep["lower"].to_numpy(float) - s, 0))
    assert np.array_equal(fp["upper"].to_numpy(float), ep["upper"].to_numpy(float) - s)
    assert (fp["response_known"] == 1).all()  # known on that date, from history up to it
    # each row still carries information: not right-censored at the forecast point
    assert ((fp["upper"] > 0) & ((fp["lower"] > 0) | np.isfinite(fp["upper"]))).all()
    both = training_landmarks(cohort)
    assert not both.duplicated(["episode_id", "landmark"]).any()
    on_grid = fp.merge(both.loc[both["grid_landmark"], ["episode_id", "landmark"]],
                       on=["episode_id", "landmark"]).shape[0]
    assert (~both["grid_landmark"]).sum() == len(fp) - on_grid  # one row per (episode, day)


def test_oracle_conditional_risk_is_the_true_residual_risk(small_sim) -> None:
    from forecast.simulation import SimulationParams, true_risk

    truth = small_sim.truth.copy()
    scale = SimulationParams().wane_scale
    assert ev.truth_scale(truth) == pytest.approx(scale, rel=1e-3)
    rows = pd.DataFrame({"patient_id": truth["patient_id"], "episode_start":
                         truth["episode_start"], "landmark": np.arange(len(truth)) % 9})
    got = ev.oracle_conditional_risks(rows, truth, (7, 28))
    loc = np.log(28.0) - scale * np.log(truth["risk_28d"] / (1 - truth["risk_28d"]))
    want = true_risk(loc.to_numpy(), scale, (7, 28), since=rows["landmark"].to_numpy(float))
    ok = ~truth.duplicated(["patient_id", "episode_start"]).to_numpy()
    assert np.allclose(got[ok], want[ok], atol=1e-6)
    # at landmark 0 it is the risk column of truth.csv itself
    assert np.allclose(got[(rows["landmark"] == 0).to_numpy() & ok, 1],
                       truth.loc[(rows["landmark"] == 0).to_numpy() & ok, "risk_28d"], atol=1e-6)
    unknown = rows.assign(patient_id="nobody")
    assert np.isnan(ev.oracle_conditional_risks(unknown.iloc[:3], truth, (7,))).all()


def test_a_foreign_truth_file_is_treated_as_real_data(trained_registry, tmp_path) -> None:
    """Another generator's truth.csv must not be read as ours (no crash, no oracle)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained_registry.data_dir, data)
    pd.DataFrame({"patient_id": ["S0001"], "true_weibull_scale": [40.0]}).to_csv(
        data / "truth.csv", index=False)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "evaluate", str(data), "--models", str(trained_registry.models_dir),
        "--model", "latest", "--out", str(out), "--folds", "2", "--no-record"])
    assert result.exit_code == 0, result.output
    assert "is not a truth file of `forecast simulate`" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["cv"]["models"]) == {"model", "cox", "km"}


def test_patient_resampler_keeps_each_patients_rows_together() -> None:
    patients = np.array(["c", "a", "b", "a", "c", "c", "d"], dtype=object)
    draw = ev._patient_resampler(patients, seed=3)
    again = ev._patient_resampler(patients, seed=3)
    for _ in range(20):
        idx = draw()
        assert np.array_equal(idx, again())  # seeded
        drawn = pd.Series(patients[idx]).value_counts()
        size = pd.Series(patients).value_counts()
        # every drawn patient comes with all of its rows, a whole number of times
        for pid, n in drawn.items():
            assert n % size[pid] == 0
        assert drawn.sum() == len(idx)
        assert set(idx[patients[idx] == "c"]) in (set(), {0, 4, 5})


def test_headline_bootstrap_pairs_the_oracle_and_groups_by_patient() -> None:
    """Paired resamples: an oracle equal to the model gives a gap of exactly 0. Rows of
    one patient move together: duplicating every patient's row widens the interval by
    about sqrt(2) against treating the copies as separate patients."""
    t, e, rate = _exp_data(500, 4, censor=True)
    h = np.array([7, 14, 28, 56, 84], dtype=float)
    risk = 1.0 - np.exp(-rate[:, None] * h[None, :])
    lo = np.where(e, np.maximum(t - 3.0, 0.0), t)
    up = np.where(e, t + 3.0, np.inf)
    pid = np.array([f"p{i}" for i in range(len(t))], dtype=object)
    b = ev.headline_bootstrap(lo, up, risk, pid, h.astype(int), oracle=risk, reps=20, seed=1)
    assert b["auc28_gap_to_oracle"] == [0.0, 0.0]
    assert b["auc28"][0] < b["auc28"][1]
    assert b["ici28"][0] < b["ici28"][1]
    assert ev.headline_bootstrap(lo, up, risk, pid, h.astype(int), reps=0) is None
    two = np.r_[pid, pid]
    lo2, up2, risk2 = np.r_[lo, lo], np.r_[up, up], np.r_[risk, risk]
    together = ev.headline_bootstrap(lo2, up2, risk2, two, h.astype(int), reps=200, seed=2,
                                     with_ici=False)
    apart = ev.headline_bootstrap(lo2, up2, risk2, np.arange(len(two)), h.astype(int),
                                  reps=200, seed=2, with_ici=False)
    ratio = np.diff(together["auc28"])[0] / np.diff(apart["auc28"])[0]
    assert 1.15 < ratio < 1.75


def test_km_pseudo_risk_equals_brute_force_leave_one_out() -> None:
    """Exact jackknife pseudo-observations, checked against refitting KM without each row
    (lifelines, independent of our product-limit code); ties and censoring included."""
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(5)
    t = np.round(rng.exponential(30, 80))  # rounded: ties
    e = rng.random(80) < 0.7
    for h in (10.0, 28.0, 200.0):
        def km(tt, ee, h=h):
            return 1.0 - float(KaplanMeierFitter().fit(tt, ee).survival_function_at_times(h)
                               .iloc[0])
        full = km(t, e)
        brute = np.array([80 * full - 79 * km(np.delete(t, i), np.delete(e, i))
                          for i in range(80)])
        got = ev.km_pseudo_risk(t, e, h)
        assert np.allclose(got, brute, atol=1e-10)
        assert np.mean(got) == pytest.approx(full, abs=5e-3)


def test_pseudo_smoother_matches_km_in_the_large_and_finds_miscalibration() -> None:
    t, e, rate = _exp_data(3000, 8, censor=True)
    true = 1.0 - np.exp(-rate * 28.0)
    obs = ev.pseudo_observed(t, e, true, 28.0)
    assert np.mean(obs) == pytest.approx(ev.km_risk(t, e, 28.0), abs=2e-3)
    good = ev.calibration(t, e, true, 28.0)["ici"]
    bad = ev.calibration(t, e, np.clip(true * 1.6, 0, 1), 28.0)["ici"]
    assert good < 0.02
    assert bad > 0.08


def test_cross_validation_seeds_the_fold_models(small_sim, monkeypatch) -> None:
    """Fold models without a ``random_state`` get the CV seed: the family-selection split
    of the landmark kinds is drawn from it, so a repeated evaluation repeats its figures."""
    from forecast.features import landmark_dataset
    from forecast.training import spec_of, training_landmarks

    cohort = small_sim.cohort
    ld = training_landmarks(cohort, None, landmark_dataset(cohort))
    seen: list[object] = []
    real = ev.make_estimator

    def recording(kind, **params):
        seen.append(params.get("random_state"))
        return real(kind, **params)

    monkeypatch.setattr(ev, "make_estimator", recording)
    models = {"model": ev.ModelSpec("dynamic", {}),
              "fixed": ev.ModelSpec("dynamic", {"random_state": 5})}
    runs = [ev.cross_validate(ld, spec_of(cohort), models, n_folds=2, seed=3) for _ in range(2)]
    assert seen == [3, 5] * 4  # two folds, two models, two runs
    assert np.array_equal(runs[0]["pred_lm"]["model"], runs[1]["pred_lm"]["model"],
                          equal_nan=True)
