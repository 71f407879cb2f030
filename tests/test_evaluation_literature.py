"""Evaluation figures checked against the survival libraries on real datasets.

Each test is a regression test of a defect found by comparing the project's
figures with lifelines and scikit-survival on the datasets they ship
(``sksurv.datasets``, ``lifelines.datasets``; no download): exact event times
dropped by the Turnbull estimator, the KM baseline's closed intervals, the
Turnbull stopping rule, the published ICI and the reason of a missing AUC.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi
from sksurv.datasets import load_gbsg2, load_veterans_lung_cancer, load_whas500

import forecast.evaluation as ev
from forecast.models import make_estimator


def _whas500() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    X, y = load_whas500()
    X = X.apply(lambda c: c.astype(float) if c.dtype.name == "category" else c)
    return X, y["lenfol"].astype(float), y["fstat"].astype(bool)


def _veterans() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    X, y = load_veterans_lung_cancer()
    X = pd.get_dummies(X, drop_first=True, dtype=float)
    return X, y["Survival_in_days"].astype(float), y["Status"].astype(bool)


def _exact(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes in the project's form with exact event times: lower == upper."""
    return time.copy(), np.where(event, time, np.inf)


def _km(time: np.ndarray, event: np.ndarray, t: np.ndarray) -> np.ndarray:
    return KaplanMeierFitter().fit(time, event).predict(t).to_numpy(float)


# --------------------------------------------------------------------------- Turnbull
@pytest.mark.parametrize("loader", [_whas500, _veterans])
def test_turnbull_reads_exact_event_times_as_events(loader) -> None:
    """lower == upper is an event at that time: Turnbull = Kaplan-Meier (lifelines).

    Before the fix those rows were dropped and the observed risk was 0.
    """
    _, time, event = loader()
    lo, up = _exact(time, event)
    grid = np.quantile(time, [0.1, 0.25, 0.5, 0.75, 0.9])
    ours = ev.turnbull_survival(lo, up, grid)
    assert np.allclose(ours, _km(time, event, grid), atol=1e-4)


def test_calibration_in_the_large_on_exact_times_matches_kaplan_meier() -> None:
    """survival_metrics' observed (Turnbull) risk on whas500 given with exact times."""
    _, time, event = _whas500()
    lo, up = _exact(time, event)
    horizons = [90, 365, 730]
    risk = np.tile(np.linspace(0.1, 0.4, len(horizons)), (len(time), 1))
    m = ev.survival_metrics(lo, up, risk, horizons, uno=False)
    km = 1.0 - _km(time, event, np.asarray(horizons, float))
    for j, h in enumerate(horizons):
        assert m["by_horizon"][str(h)]["observed_turnbull"] == pytest.approx(km[j], abs=1e-4)


def _inspected(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """gbsg2 recurrence times seen only at irregular visits: overlapping intervals."""
    _, y = load_gbsg2()
    t, e = y["time"].astype(float), y["cens"].astype(bool)
    rng = np.random.default_rng(seed)
    visits = np.cumsum(rng.uniform(60, 400, (len(t), 15)), axis=1)
    lo, up = np.zeros(len(t)), np.full(len(t), np.inf)
    for i in range(len(t)):
        seen = visits[i][visits[i] <= t[i]]
        lo[i] = seen[-1] if len(seen) else 0.0
        if e[i]:
            after = visits[i][visits[i] >= t[i]]
            up[i] = after[0]
    return np.round(lo), np.round(up)


def _plain_em(lo: np.ndarray, up: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Turnbull's self-consistency iteration written out row by row (matrix form).

    Returns the support's right ends and the masses, for an independent check
    of the library's accelerated iteration and its stopping rule.
    """
    pts = np.unique(np.r_[0.0, lo, up[np.isfinite(up)]])
    right = np.r_[pts[1:], np.inf]  # elementary interval j = (pts[j], right[j]]
    left = pts
    alpha = ((left[None, :] >= lo[:, None]) & (right[None, :] <= up[:, None])).astype(float)
    p = np.full(len(pts), 1.0 / len(pts))
    for _ in range(iters):
        d = alpha @ p
        p = p * (alpha.T @ (1.0 / d)) / len(lo)
    return right, p


def test_turnbull_default_tolerance_is_within_1e_4_of_the_converged_npmle() -> None:
    """The documented accuracy holds: default stop vs a plain EM run to convergence.

    The reference is checked to be the NPMLE by its optimality conditions
    (gradient of the log-likelihood <= n everywhere, = n on the support).
    The old per-step rule (no mass moves by more than 1e-6) stopped 1.6e-3
    away on these data.
    """
    lo, up = _inspected(3)
    keep = np.random.default_rng(0).choice(len(lo), 300, replace=False)
    lo, up = lo[keep], up[keep]  # 300 rows, 368 support intervals: a slow case for EM
    right, p = _plain_em(lo, up, 150_000)
    lo_b = np.r_[0.0, right[:-1]]
    alpha = ((lo_b[None, :] >= lo[:, None]) & (right[None, :] <= up[:, None])).astype(float)
    grad = alpha.T @ (1.0 / (alpha @ p)) / len(lo)  # = 1 on the support at the optimum
    assert grad.max() < 1 + 1e-4
    assert np.all(np.abs(grad[p > 1e-6] - 1) < 1e-4)
    grid = np.arange(0.0, 2500.0, 25.0)
    ref = 1.0 - np.cumsum(p)[np.searchsorted(right, grid, side="right") - 1]
    ref = np.where(grid < right[0], 1.0, ref)
    ours = ev.turnbull_survival(lo, up, grid)
    assert np.max(np.abs(ours - ref)) < 1e-4


# --------------------------------------------------------------------------- KM baseline
def test_km_baseline_is_kaplan_meier_on_rossi() -> None:
    """Rossi's weekly arrests as (week-1, week] and exact weeks: the km kind = lifelines' KM.

    lifelines' closed-interval NPMLE, read at its upper column, gave 0.0646
    at 17 weeks where Kaplan-Meier gives 0.0694.
    """
    r = load_rossi()
    w, e = r["week"].to_numpy(float), r["arrest"].to_numpy(bool)
    weeks = np.array([5.0, 17.0, 30.0, 45.0])
    km = 1.0 - _km(w, e, weeks)
    assert km[1] == pytest.approx(0.0694, abs=1e-4)
    X = pd.DataFrame({"elapsed_days": np.zeros(len(w))})
    for lo, up in ((np.where(e, w - 1, w), np.where(e, w, np.inf)), _exact(w, e)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = make_estimator("km", n_bootstrap=0).fit(X, lo, up)
        assert np.allclose(fit.predict_risk(X.iloc[:1], weeks)[0], km, atol=1e-4)


# --------------------------------------------------------------------------- published ICI
def _natural_spline(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis (Hastie, Tibshirani & Friedman, eq. 5.4-5.5).

    A different parameterisation from Harrell's restricted cubic spline that
    spans the same functions (linear beyond the outer knots), so a Cox model
    on it gives the same fitted risks.
    """
    k = len(knots)

    def dk(j: int) -> np.ndarray:
        return ((np.maximum(x - knots[j], 0) ** 3 - np.maximum(x - knots[-1], 0) ** 3)
                / (knots[-1] - knots[j]))

    return np.column_stack([x] + [dk(j) - dk(k - 2) for j in range(k - 2)])


def _published_ici_lifelines(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                             h: float) -> float:
    """Austin, Harrell & van Klaveren (2020) written out with lifelines' CoxPHFitter."""
    cll = np.log(-np.log(1.0 - risk))
    knots = np.quantile(cll, [0.1, 0.5, 0.9])
    B = _natural_spline(cll, knots)
    df = pd.DataFrame(B, columns=[f"b{j}" for j in range(B.shape[1])])
    df["T"], df["E"] = time, event.astype(int)
    cph = CoxPHFitter().fit(df, "T", "E")
    obs = 1.0 - cph.predict_survival_function(df.drop(columns=["T", "E"]),
                                              times=[h]).to_numpy()[0]
    return float(np.mean(np.abs(risk - obs)))


@pytest.mark.parametrize(("loader", "h"), [(_whas500, 365.0), (_veterans, 90.0)])
def test_published_ici_matches_an_independent_implementation(loader, h) -> None:
    """The headline ICI is the published one: same figure as lifelines on spline columns."""
    X, time, event = loader()
    df = X.copy()
    df["T"], df["E"] = time, event.astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CoxPHFitter(penalizer=0.01).fit(df, "T", "E")
        risk = 1.0 - model.predict_survival_function(X, times=[h]).to_numpy()[0]
        expected = _published_ici_lifelines(time, event, risk, h)
    got = ev.calibration(time, event, risk, h)
    assert got["ici"] == pytest.approx(expected, abs=1e-4)
    assert ev._ici(time, event, risk, h) == pytest.approx(expected, abs=1e-4)
    assert got["ici_pseudo"] is not None
    assert got["ici_pseudo"] != got["ici"]
    lo, up = _exact(time, event)
    m = ev.survival_metrics(lo, up, risk[:, None], [int(h)], uno=False)
    assert m["by_horizon"][str(int(h))]["ici"] == pytest.approx(expected, abs=1e-4)


def test_calibrated_reference_reports_the_published_ici_floor() -> None:
    """The noise floor is computed for the published ICI and both variants."""
    _, time, event = _veterans()
    lo, up = _exact(time, event)
    risk = np.column_stack([np.full(len(time), 0.3), np.full(len(time), 0.6)])
    risk = risk * np.random.default_rng(0).uniform(0.7, 1.3, risk.shape)
    ref = ev.calibrated_reference_ici(lo, up, risk, [30, 90], reps=5, seed=1)
    for h in ("30", "90"):
        for key in ("ici", "ici_pseudo", "ici_austin"):
            assert 0 < ref["by_horizon"][h][f"{key}_mean"] <= ref["by_horizon"][h][f"{key}_p95"]


# --------------------------------------------------------------------------- AUC reasons
def test_time_dependent_auc_says_why_it_is_missing() -> None:
    """veterans: no event before day 1, nobody followed beyond the last time."""
    _, time, event = _veterans()
    lo, up = _exact(time, event)
    horizons = [0, 30, 2000]
    risk = np.tile([0.05, 0.3, 0.99], (len(time), 1)) * np.linspace(0.5, 1.0, len(time))[:, None]
    m = ev.survival_metrics(lo, up, risk, horizons, uno=False, calibrate=False)
    early, mid, late = (m["by_horizon"][str(h)] for h in horizons)
    assert early["auc"] is None
    assert "no cases" in early["auc_note"]
    assert late["auc"] is None
    assert "no controls" in late["auc_note"]
    assert mid["auc"] is not None
    assert "auc_note" not in mid
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    y = Surv.from_arrays(event, time)
    expected = cumulative_dynamic_auc(y, y, risk[:, [1]], [30.0])[0][0]
    assert mid["auc"] == pytest.approx(expected, abs=1e-12)
