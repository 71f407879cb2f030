"""Evaluation of waning-risk models: grouped cross-validation, metrics, fairness, oracle.

What is evaluated
-----------------
- **At episode start** (landmark 0): every model predicts the risk that the
  benefit has waned within h days of the episode's start, for h in the
  contract horizons. This is comparable across the dynamic model (features
  at the start), the static models and the simulator's oracle (truth.csv
  gives the true risk at the start of each episode).
- **Landmark-conditional** (dynamic model only): every landmark row of the
  test patients, risk of waning within h days after the landmark given the
  features at the landmark. Rows of one episode are correlated; the metrics
  are pooled point estimates.

Cross-validation is patient-grouped K-fold (seeded shuffle of patients, never
one patient on both sides); each fold refits the model spec of the evaluated
version with the same settings and the baselines (KM, static Cox), and
out-of-fold predictions of all folds are pooled before computing metrics.

Interval-censored outcomes and right-censored metric functions
--------------------------------------------------------------
The metric functions of scikit-survival and lifelines want one time and an
event flag. An event known to lie in ``(lower, upper]`` is placed at the
**midpoint** (unbiased for an event uniform within the visit gap); a
right-censored episode is censored at ``lower`` (its last event-free
assessment). As a cross-check each horizon also reports the
*interval-aware* status: waned by h is known when ``upper <= h``, not waned
when ``lower >= h``, unknown otherwise; ``share_known`` and the AUC on the
rows with a known status (``auc_known``) are reported next to the IPCW AUC,
and calibration-in-the-large uses the Turnbull estimate, which needs no
imputation.

Metrics
-------
Harrell's C (lifelines ``concordance_index`` on the risk at 28 days, negated
because it wants higher = longer survival), Uno's C (scikit-survival
``concordance_index_ipcw``, tau = the longest horizon), time-dependent AUC
(``cumulative_dynamic_auc``) and Brier score (``brier_score``) at each
horizon, the integrated Brier score over the horizons (``integrated_brier_score``,
trapezoid over 7..84 days), and per horizon calibration: ICI, E50 and E90
(Austin, Harrell & van Klaveren 2020: ICI is the mean absolute difference
between predicted and smoothed observed risk; the observed risk is smoothed
by regressing Kaplan-Meier pseudo-observations at the horizon on a restricted
cubic spline of ``log(-log(1 - predicted risk))``. ``ici_austin`` keeps
Austin's own smoother, a Cox model of the outcome on that spline with the
follow-up censored at the horizon (fitted by :func:`cox_efron`, lifelines'
model with vectorised risk sets), which misread these AFT risks by up to
0.03; see :func:`calibration`),
calibration-in-the-large (Turnbull observed risk minus mean predicted risk)
and a decile calibration plot (Kaplan-Meier observed risk per decile of
predicted risk). The same metrics are reported by
sex, age band and diagnosis (fairness).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from forecast.contract import HORIZONS
from forecast.models import DEFAULT_KIND, make_estimator
from forecast.training import (
    STATIC_KINDS,
    FeatureSet,
    forecast_point_dataset,
    rows_for_kind,
    spec_of,
    training_landmarks,
)

#: Horizon whose risk ranks patients for the global C-indices.
RANK_HORIZON = 28
#: Smallest subgroup (episodes / events) for which fairness metrics are computed.
MIN_GROUP_N = 50
MIN_GROUP_EVENTS = 10
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", 0, 30), ("30-44", 30, 45), ("45-59", 45, 60), ("60+", 60, 200),
)
CONVERSION_TEXT = (
    "Interval-censored events are placed at the midpoint of (lower, upper] for the "
    "right-censored metric functions; right-censored rows are censored at lower. Cross-check: "
    "interval-aware status at h (waned if upper <= h, not waned if lower >= h, else unknown) "
    "with auc_known on rows of known status; calibration-in-the-large uses the Turnbull "
    "estimate (no imputation)."
)


# --------------------------------------------------------------------------- outcomes
def impute_times(lower: Any, upper: Any) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) for right-censored metric functions: midpoint of events, lower if censored."""
    lo = np.asarray(lower, dtype=float)
    up = np.asarray(upper, dtype=float)
    event = np.isfinite(up)
    time = np.where(event, 0.5 * (lo + np.where(event, up, 0.0)), lo)
    return np.maximum(time, 1e-3), event


def untied_times(lower: Any, upper: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) with each waning placed uniformly inside its interval (seeded).

    For the Cox fits of the calibration (Austin's smoother, the Cox slope).
    At midpoints, every waning seen at the same assessment day shares one time:
    with assessments every 28 days, thousands of tied times. Efron's handling of
    ties then biases those fits: risks calibrated by construction read an ICI
    of 0.07 at midpoints, 0.01-0.02 placed inside their intervals
    (``bench/calibration_floor.py``). One seeded draw keeps the metrics
    reproducible. Censored rows keep ``lower``.
    """
    lo = np.asarray(lower, dtype=float)
    up = np.asarray(upper, dtype=float)
    event = np.isfinite(up)
    u = np.random.default_rng(seed).uniform(size=len(lo))
    time = np.where(event, lo + u * (np.where(event, up, lo) - lo), lo)
    return np.maximum(time, 1e-3), event


def status_at(lower: Any, upper: Any, h: float) -> np.ndarray:
    """Interval-aware status at ``h``: 1 waned, 0 not waned, NaN unknown."""
    lo = np.asarray(lower, dtype=float)
    up = np.asarray(upper, dtype=float)
    return np.where(up <= h, 1.0, np.where(lo >= h, 0.0, np.nan))


def _km_curve(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier product-limit: (distinct times, S just after each), vectorised."""
    order = np.argsort(time, kind="stable")
    t, e = time[order], np.asarray(event)[order].astype(float)
    uniq, first = np.unique(t, return_index=True)
    d = np.add.reduceat(e, first)
    at_risk = len(t) - first
    return uniq, np.cumprod(1.0 - d / at_risk)


def km_risk(time: np.ndarray, event: np.ndarray, h: float) -> float:
    """Kaplan-Meier risk 1 - S(h) (vectorised product-limit)."""
    if len(time) == 0:
        return float("nan")
    uniq, s = _km_curve(time, event)
    k = np.searchsorted(uniq, h, side="right") - 1
    return float(1.0 - (s[k] if k >= 0 else 1.0))


#: Rows above which the Turnbull estimate and the calibration smoother use a seeded subsample
#: (the NPMLE's EM and the Cox smoother grow with n; 200k and 50k rows estimate a risk to
#: well under +-0.01).
MAX_TURNBULL_ROWS = 200_000
MAX_SMOOTHER_ROWS = 50_000


def _subsample(n: int, cap: int, seed: int = 0) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def turnbull_survival(lower: Any, upper: Any, times: Sequence[float], *, tol: float = 1e-6,
                      max_iter: int = 10_000) -> np.ndarray:
    """Turnbull's self-consistent (EM) NPMLE of S(t) for interval-censored data.

    Vectorised for evaluation at scale (lifelines' implementation takes
    seconds per call). The support is the set of elementary intervals between
    consecutive distinct bounds; each row's event lies in ``(lower, upper]``
    (``upper = inf`` right-censored). Mass is read at the right end of its
    elementary interval. Rows with the same interval are pooled with their
    count (the EM terms are the same), so a day-grid cohort iterates over a
    few hundred intervals, not tens of thousands of rows. Iterates until no
    mass moves by more than ``tol`` (survival values then stable to about
    1e-4). Tested against Kaplan-Meier on day intervals and against a
    row-by-row self-consistency iteration on overlapping intervals.
    """
    lo = np.asarray(lower, dtype=float)
    up = np.asarray(upper, dtype=float)
    pts = np.unique(np.r_[0.0, lo, up[np.isfinite(up)]])
    # Rows with the same interval share every EM term: iterate over the distinct
    # intervals with their counts (a day-grid cohort of 25,000 rows has about 200)
    pairs, count = np.unique(np.c_[lo, up], axis=0, return_counts=True)
    lo, up, count = pairs[:, 0], pairs[:, 1], count.astype(float)
    k = len(pts)  # elementary intervals 1..k-1 = (pts[j-1], pts[j]], and k = (pts[-1], inf)
    a = np.searchsorted(pts, lo)  # row covers intervals a+1 .. b
    b = np.where(np.isfinite(up), np.searchsorted(pts, np.where(np.isfinite(up), up, 0.0)), k)
    p = np.full(k + 1, 1.0 / k)
    p[0] = 0.0
    n = count.sum()
    for _ in range(max_iter):
        c = np.cumsum(p)
        d = c[b] - c[a]
        inv = np.where(d > 0, count / np.where(d > 0, d, 1.0), 0.0)
        acc = (np.bincount(a + 1, weights=inv, minlength=k + 2)
               - np.bincount(b + 1, weights=inv, minlength=k + 2))
        new = p * np.cumsum(acc)[: k + 1] / n
        new /= new.sum()
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    right = np.r_[0.0, pts[1:], np.inf]  # right end of interval j (j = 0 holds no mass)
    cdf = np.cumsum(p)
    t = np.asarray(times, dtype=float)
    idx = np.searchsorted(right, t, side="right") - 1
    return 1.0 - cdf[np.clip(idx, 0, None)]


def turnbull_risk(lower: np.ndarray, upper: np.ndarray, horizons: Sequence[float]) -> np.ndarray:
    """Turnbull (interval-aware) risk 1 - S(h) at each horizon (subsampled above 200k rows)."""
    idx = _subsample(len(lower), MAX_TURNBULL_ROWS)
    return 1.0 - turnbull_survival(np.asarray(lower, float)[idx], np.asarray(upper, float)[idx],
                                   horizons)


# --------------------------------------------------------------------------- metric wrappers
def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of a risk score (higher = earlier waning) via lifelines."""
    from lifelines.utils import concordance_index

    if event.sum() == 0 or len(time) < 2:
        return float("nan")
    return float(concordance_index(time, -np.asarray(risk, float), event))


def _surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event.astype(bool), time)


def uno_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tau: float) -> float:
    """Uno's IPCW C (scikit-survival) truncated at ``tau``; censoring estimated on the same rows."""
    from sksurv.metrics import concordance_index_ipcw

    y = _surv(time, event)
    try:
        return float(concordance_index_ipcw(y, y, np.asarray(risk, float), tau=tau)[0])
    except ValueError:
        return float("nan")


def _valid_horizons(time: np.ndarray, event: np.ndarray, horizons: Sequence[float]) -> np.ndarray:
    # sksurv needs each time inside the follow-up of the data and some event before it
    t_max = time.max() if len(time) else 0.0
    t_ev = time[event].min() if event.any() else np.inf
    return np.asarray([(h < t_max) and (h >= t_ev) for h in horizons])


def td_auc(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
           horizons: Sequence[float]) -> np.ndarray:
    """Cumulative/dynamic AUC per horizon (NaN where it cannot be computed)."""
    from sksurv.metrics import cumulative_dynamic_auc

    out = np.full(len(horizons), np.nan)
    ok = _valid_horizons(time, event, horizons)
    if ok.any():
        y = _surv(time, event)
        h = np.asarray(horizons, float)[ok]
        try:
            out[ok] = cumulative_dynamic_auc(y, y, np.asarray(risk, float)[:, ok], h)[0]
        except ValueError:
            pass
    return out


def brier(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
          horizons: Sequence[float]) -> tuple[np.ndarray, float]:
    """IPCW Brier score per horizon and the integrated Brier score over the horizons."""
    from sksurv.metrics import brier_score, integrated_brier_score

    out = np.full(len(horizons), np.nan)
    ok = _valid_horizons(time, event, horizons)
    ibs = float("nan")
    if ok.any():
        y = _surv(time, event)
        h = np.asarray(horizons, float)[ok]
        surv = 1.0 - np.asarray(risk, float)[:, ok]
        try:
            out[ok] = brier_score(y, y, surv, h)[1]
            if ok.sum() >= 2:
                ibs = float(integrated_brier_score(y, y, surv, h))
        except ValueError:
            pass
    return out, ibs


def _rcs_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Restricted cubic spline basis (Harrell), linear term first."""
    k = len(knots)
    scale = (knots[-1] - knots[0]) ** 2
    cols = [x]
    for j in range(k - 2):
        term = (np.maximum(x - knots[j], 0) ** 3
                - np.maximum(x - knots[-2], 0) ** 3 * (knots[-1] - knots[j])
                / (knots[-1] - knots[-2])
                + np.maximum(x - knots[-1], 0) ** 3 * (knots[-2] - knots[j])
                / (knots[-1] - knots[-2]))
        cols.append(term / scale)
    return np.column_stack(cols)


def _cll_basis(cll: np.ndarray) -> np.ndarray:
    """The calibration smoothers' regressors: a restricted cubic spline of
    ``log(-log(1 - risk))`` with 4 knots, or the value itself when it takes
    fewer than 8 distinct values or its knots coincide."""
    if len(np.unique(np.round(cll, 6))) >= 8:
        knots = np.quantile(cll, [0.05, 0.35, 0.65, 0.95])
        if np.all(np.diff(knots) > 1e-9):
            return _rcs_basis(cll, knots)
    return cll[:, None]


@dataclass
class CoxFit:
    """A Cox model of the calibration smoothers: coefficients, standard errors and
    the Breslow baseline, enough to predict ``S(h | x)``."""

    params_: pd.Series
    standard_errors_: pd.Series
    mean_: np.ndarray
    event_times_: np.ndarray
    baseline_cumhaz_: np.ndarray

    def survival_at(self, X: pd.DataFrame, h: float) -> np.ndarray:
        """``S(h | x)`` for each row of ``X`` (the fitted columns)."""
        k = int(np.searchsorted(self.event_times_, h, side="right"))
        h0 = float(self.baseline_cumhaz_[k - 1]) if k else 0.0
        lin = (X[self.params_.index].to_numpy(float) - self.mean_) @ self.params_.to_numpy()
        return np.exp(-h0 * np.exp(lin))


def _risk_set_sums(first: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sums of ``values`` over each row's risk set {j: T_j >= T_i}, rows sorted by T and
    ``first`` = each row's first position among equal times (``searchsorted(T, T)``)."""
    return np.cumsum(values[::-1], axis=0)[::-1][first]


def cox_efron(X: pd.DataFrame, T: np.ndarray, E: np.ndarray, penalizer: float = 0.0,
              max_iter: int = 50) -> CoxFit | None:
    """Cox proportional-hazards fit, vectorised: lifelines' ``CoxPHFitter`` model.

    The same model as ``CoxPHFitter(penalizer=penalizer)`` (no l1): covariates
    standardised with their mean and sample SD, Efron's partial likelihood
    for tied event times, the penalty ``n * penalizer / 2 * |beta|^2`` on the
    standardised coefficients, the Breslow baseline. Newton's method with step
    halving until the Newton decrement is below 1e-12 of the log-likelihood.
    The risk-set sums are reverse cumulative sums and Efron's terms are taken
    per event row (its rank within its tied group), so a fit on 25,000 rows
    takes milliseconds where lifelines' per-time loop took about a second
    (the smoothers fit hundreds per evaluation). None when the fit is not
    finite or the Hessian is not negative definite. Tested against lifelines
    (coefficients, standard errors and predicted survival, with and without
    ties) and a brute-force partial likelihood.
    """
    cols = list(X.columns)
    x = X.to_numpy(float)
    T = np.asarray(T, dtype=float)
    E = np.asarray(E, dtype=bool)
    n, d = x.shape
    order = np.argsort(T, kind="stable")
    x, T, E = x[order], T[order], E[order]
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) if n > 1 else np.ones(d)
    if not np.all(np.isfinite(std)) or np.any(std <= 0) or not E.any():
        return None
    z = (x - mean) / std
    ze = z[E]
    outer = z[:, :, None] * z[:, None, :]
    outer_e = outer[E]
    at = np.searchsorted(T, T, side="left")  # the risk set of row i starts at at[i]
    # Efron: the l-th of the d events tied at a time (l = 0..d-1) sees the risk
    # set minus l/d of the tied events' own sums
    te = T[E]
    group = np.searchsorted(np.unique(te), te)  # event rows are sorted by time
    first = np.searchsorted(group, group)
    frac = (np.arange(len(te)) - first) / np.bincount(group)[group]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    any_ties = len(starts) < len(te)

    def tied(v: np.ndarray) -> np.ndarray | float:
        """Per event row, the sum of ``v`` over its tied group (0 without ties)."""
        return np.add.reduceat(v, starts, axis=0)[group] if any_ties else 0.0

    def pieces(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        lin = z @ beta
        w = np.exp(lin - lin.max())  # a common factor cancels in every ratio below
        we = w[E]
        s0 = _risk_set_sums(at, w)[E] - frac * tied(we)
        s1 = (_risk_set_sums(at, w[:, None] * z)[E]
              - frac[:, None] * tied(we[:, None] * ze)) / s0[:, None]
        s2 = (_risk_set_sums(at, w[:, None, None] * outer)[E]
              - frac[:, None, None] * tied(we[:, None, None] * outer_e)) / s0[:, None, None]
        ll = float(np.sum(lin[E] - lin.max() - np.log(s0))) - 0.5 * n * penalizer * beta @ beta
        g = (ze - s1).sum(axis=0) - n * penalizer * beta
        hess = -(s2 - s1[:, :, None] * s1[:, None, :]).sum(axis=0) - n * penalizer * np.eye(d)
        return ll, g, hess

    beta = np.zeros(d)
    with np.errstate(all="ignore"):
        ll, g, hess = pieces(beta)
        for _ in range(max_iter):
            try:
                step = np.linalg.solve(-hess, g)
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.isfinite(step)):
                return None
            # the log-likelihood is a sum over thousands of rows: its rounding is
            # about 1e-16 of its size, so both tests are relative to it
            noise = 1e-12 * (1.0 + abs(ll))
            if float(g @ step) < noise:
                break
            t = 1.0
            while True:
                ll_new, g_new, hess_new = pieces(beta + t * step)
                if np.isfinite(ll_new) and ll_new >= ll - noise:
                    break
                t /= 2.0
                if t < 1e-10:
                    return None
            beta, ll, g, hess = beta + t * step, ll_new, g_new, hess_new
        else:
            return None
        try:
            cov = np.linalg.inv(-hess)
        except np.linalg.LinAlgError:
            return None
    if not (np.all(np.isfinite(beta)) and np.all(np.diag(cov) > 0)):
        return None
    params = beta / std
    se = np.sqrt(np.diag(cov)) / std
    # Breslow baseline (d events / the risk set's sum at each time) with covariates
    # centred on their mean, lifelines' convention; tied rows share their risk set
    w = np.exp((x - mean) @ params)
    cumhaz = np.cumsum(1.0 / _risk_set_sums(at, w)[E])
    if not np.all(np.isfinite(cumhaz)):
        return None
    return CoxFit(pd.Series(params, index=cols), pd.Series(se, index=cols), mean, te, cumhaz)


def _fit_cox(df: pd.DataFrame, penalizer: float = 0.0) -> CoxFit | None:
    """Cox model of ``T``/``E`` on the other columns (at most :data:`MAX_SMOOTHER_ROWS`
    rows, seeded) by :func:`cox_efron`, or None if the fit fails."""
    df = df.iloc[_subsample(len(df), MAX_SMOOTHER_ROWS)]
    return cox_efron(df.drop(columns=["T", "E"]), df["T"].to_numpy(float),
                     df["E"].to_numpy(float) > 0, penalizer)


def smoothed_observed(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float
                      ) -> np.ndarray | None:
    """Austin et al. (2020) smoothed observed risk at ``h`` for each row (None if not estimable).

    The follow-up is administratively censored at ``h`` before the Cox
    hazard regression is fitted, as in the STRATOS guidance for validating a
    prediction at a fixed horizon (McLernon et al. 2023): the risk at ``h``
    then depends on no assumption about the hazards after ``h``. Fitted on
    the whole follow-up, the proportional-hazards assumption over all time
    pulled the smoothed 56-day risk about 0.03 below Kaplan-Meier on
    simulated cohorts (docs/modelling-history.md, "Calibration measured at the horizon").
    The metrics pass :func:`untied_times`, not the interval midpoints, whose
    ties bias the fit.
    """
    risk_h = np.clip(np.asarray(risk_h, float), 1e-6, 1 - 1e-6)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool) & (time <= h)
    time = np.minimum(time, h)
    if event.sum() < 10 or len(time) < 30:
        return None
    basis = _cll_basis(np.log(-np.log(1.0 - risk_h)))
    if np.ptp(basis[:, 0]) < 1e-9:
        return None
    df = pd.DataFrame(basis, columns=[f"s{j}" for j in range(basis.shape[1])])
    df["T"], df["E"] = time, event.astype(float)
    cph = _fit_cox(df, penalizer=1e-4)
    if cph is None:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            obs = 1.0 - cph.survival_at(df.drop(columns=["T", "E"]), h)
        except Exception:  # noqa: BLE001 - any failure means "not estimable"
            return None
    return obs if np.all(np.isfinite(obs)) else None


def calibration_slope(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float,
                      *, cox_time: np.ndarray | None = None,
                      pseudo: np.ndarray | None = None) -> dict[str, Any] | None:
    """Calibration slope at ``h`` of the predicted risks, two ways (None if not estimable).

    ``slope``: the Kaplan-Meier pseudo-observations at ``h``
    (:func:`km_pseudo_risk`) regressed on ``log(-log(1 - risk))`` through a
    complementary log-log link, ``E[pseudo] = 1 - exp(-exp(a + b * cll))``,
    by least squares (a GEE with independence working correlation; Andersen
    & Perme 2010), with a sandwich 95 % interval. It assumes nothing about
    the hazard at other times than ``h``.

    ``slope_cox``: the Cox coefficient of the same ``cll`` with the follow-up
    censored at ``h`` (Wald interval). It assumes proportional hazards within
    [0, h]; for log-logistic waning, whose hazard ratios fade over time, it
    reads about 1.1-1.3 for the true risks (README, the slope under "Commands"),
    so it is kept beside the other, not in its place.

    1 means the risks spread as much as the outcomes; below 1 they are too
    spread (over-fitting), above 1 not spread enough. None for constant
    predictions or fewer than 10 events within ``h``. ``cox_time`` replaces
    ``time`` in the Cox fit (:func:`untied_times`); ``pseudo`` are the rows'
    :func:`km_pseudo_risk` at ``h`` when the caller has them.
    """
    from scipy.optimize import least_squares

    risk_h = np.clip(np.asarray(risk_h, float), 1e-6, 1 - 1e-6)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    within = event & (time <= h)
    if within.sum() < 10 or len(time) < 30:
        return None
    cll = np.log(-np.log(1.0 - risk_h))
    if np.ptp(cll) < 1e-9:
        return None
    z = 1.959964
    if pseudo is None:
        pseudo = km_pseudo_risk(time, event, h)

    def resid(p: np.ndarray) -> np.ndarray:
        return -np.expm1(-np.exp(p[0] + p[1] * cll)) - pseudo

    fit = least_squares(resid, np.array([0.0, 1.0]), method="lm")
    a, b = (float(v) for v in fit.x)
    jac, r = fit.jac, fit.fun
    out: dict[str, Any] = {"slope": None, "slope_ci95": None, "slope_intercept": None}
    bread = np.linalg.pinv(jac.T @ jac)
    meat = (jac * r[:, None] ** 2).T @ jac
    se = float(np.sqrt(max((bread @ meat @ bread)[1, 1], 0.0)))
    if fit.success and np.isfinite(b) and np.isfinite(se):
        out.update(slope=b, slope_ci95=[b - z * se, b + z * se], slope_intercept=a)
    t_cox = time if cox_time is None else np.asarray(cox_time, dtype=float)
    within_cox = event & (t_cox <= h)
    df = pd.DataFrame({"cll": cll, "T": np.minimum(t_cox, h), "E": within_cox.astype(float)})
    out.update(slope_cox=None, slope_cox_ci95=None)
    cph = _fit_cox(df)
    if cph is not None:
        bc, sc = float(cph.params_["cll"]), float(cph.standard_errors_["cll"])
        if np.isfinite(bc) and np.isfinite(sc):
            out.update(slope_cox=bc, slope_cox_ci95=[bc - z * sc, bc + z * sc])
    return out


def km_pseudo_risk(time: np.ndarray, event: np.ndarray, h: float) -> np.ndarray:
    """Jackknife pseudo-observations of the Kaplan-Meier risk ``1 - S(h)``, one per row.

    ``n * R - (n - 1) * R_(-i)`` with ``R_(-i)`` the Kaplan-Meier risk without
    row i, exact and vectorised: leaving row i out lowers the number at risk by
    one at every time up to its own, and its event (if any) at its time.
    Their mean is close to the Kaplan-Meier risk (the jackknife estimate);
    they need no model of the hazard over time (Andersen & Perme 2010).
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    n = len(time)
    uniq, inv = np.unique(time, return_inverse=True)
    d = np.bincount(inv, weights=event.astype(float), minlength=len(uniq))
    at_risk = n - np.r_[0, np.cumsum(np.bincount(inv, minlength=len(uniq)))[:-1]]
    inside = uniq <= h
    with np.errstate(divide="ignore", invalid="ignore"):
        full = np.where(inside, np.log1p(-d / at_risk), 0.0)  # log factors, all rows
        less = np.log1p(-d / (at_risk - 1.0))  # one fewer at risk, same events
    # 0/0 or more events than the others at risk: only at a time nobody outlives,
    # so the factor is never used; -inf (everyone else at risk wanes) is kept.
    less = np.where(inside & ~np.isnan(less), less, 0.0)
    # Sums before and after each time without subtracting (a factor can be -inf).
    before_less = np.r_[0.0, np.cumsum(less)[:-1]]
    after_full = np.r_[np.cumsum(full[::-1])[::-1][1:], 0.0]
    log_s = float(np.sum(full))
    k = inv
    with np.errstate(divide="ignore"):
        own = np.where(at_risk[k] > 1,
                       np.log1p(-(d[k] - event) / np.maximum(at_risk[k] - 1.0, 1.0)), 0.0)
    own = np.where(uniq[k] <= h, own, 0.0)
    log_s_i = np.where(
        uniq[k] > h,
        np.sum(less),  # at risk at every time up to h
        before_less[k] + own + after_full[k],
    )
    return n * (1.0 - np.exp(log_s)) - (n - 1.0) * (1.0 - np.exp(log_s_i))


def pseudo_observed(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float,
                    pseudo: np.ndarray | None = None) -> np.ndarray | None:
    """Smoothed observed risk at ``h`` from pseudo-observations (None if not estimable).

    The Kaplan-Meier pseudo-observations (:func:`km_pseudo_risk`) regressed by
    least squares on the restricted cubic spline of ``log(-log(1 - risk))``
    that :func:`smoothed_observed` uses. Unlike the Cox hazard regression
    there, it assumes nothing about the hazard at other times than h, and its
    mean equals that of the pseudo-observations (least squares with an
    intercept), the jackknife Kaplan-Meier risk at h. ``pseudo``: those
    pseudo-observations when the caller has them.
    """
    risk_h = np.clip(np.asarray(risk_h, float), 1e-6, 1 - 1e-6)
    if event.sum() < 10 or len(time) < 30:
        return None
    basis = _cll_basis(np.log(-np.log(1.0 - risk_h)))
    X = np.column_stack([np.ones(len(basis)), basis])
    if pseudo is None:
        pseudo = km_pseudo_risk(time, event, h)
    beta = np.linalg.lstsq(X, pseudo, rcond=None)[0]
    return np.clip(X @ beta, 0.0, 1.0)


def calibration(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float,
                observed_risk: float | None = None, n_bins: int = 10, *,
                cox_time: np.ndarray | None = None) -> dict[str, Any]:
    """ICI/E50/E90, calibration slope, calibration-in-the-large, deciles.

    ``ici`` (with ``e50``, ``e90`` and the plotted ``curve``) smooths the
    observed risk with pseudo-observations (:func:`pseudo_observed`), which
    needs no proportional hazards over time and matches Kaplan-Meier in the
    large. ``ici_austin`` smooths it with Austin et al.'s (2020) Cox hazard
    regression (:func:`smoothed_observed`), the headline until 2026-12-06.
    Why the change: on fresh simulated cohorts of 50,000 patients the
    pseudo-observation ICI stayed within 0.008 of a nonparametric reading
    (Turnbull in 20 groups of predicted risk) for every model measured,
    while Austin's differed from it by up to 0.03, in both directions, with
    the spread of the risks (its proportional-hazards assumption within [0,
    h]; docs/modelling-history.md, "The fold models measured on a fresh
    50,000-patient cohort").

    ``observed_risk`` is the interval-aware (Turnbull) observed risk at ``h``
    of the same rows, used for calibration-in-the-large. ``cox_time``, when
    given, are the event times for the Cox fits (Austin's smoother, the Cox
    slope): :func:`untied_times` of the rows, whose midpoints ``time`` tie.
    """
    risk_h = np.asarray(risk_h, float)
    out: dict[str, Any] = {"mean_predicted": float(risk_h.mean()) if len(risk_h) else None}
    t_cox = time if cox_time is None else cox_time
    pv = km_pseudo_risk(time, event, h)  # shared by the pseudo smoother and the slope
    obs = pseudo_observed(time, event, risk_h, h, pseudo=pv)
    if obs is not None:
        diff = np.abs(risk_h - obs)
        out.update(ici=float(diff.mean()), e50=float(np.median(diff)),
                   e90=float(np.quantile(diff, 0.9)))
        order = np.argsort(risk_h)
        idx = order[np.linspace(0, len(order) - 1, min(50, len(order))).astype(int)]
        out["curve"] = {"predicted": risk_h[idx].round(5).tolist(),
                        "observed": obs[idx].round(5).tolist()}
    else:
        out.update(ici=None, e50=None, e90=None)
    austin = smoothed_observed(t_cox, event, risk_h, h)
    out["ici_austin"] = None if austin is None else float(np.mean(np.abs(risk_h - austin)))
    out.update(calibration_slope(time, event, risk_h, h, cox_time=t_cox, pseudo=pv)
               or {"slope": None})
    if observed_risk is not None and out["mean_predicted"] is not None:
        out["observed_turnbull"] = float(observed_risk)
        out["citl"] = float(observed_risk) - out["mean_predicted"]
    edges = np.unique(np.quantile(risk_h, np.linspace(0, 1, n_bins + 1))) if len(risk_h) else []
    if len(edges) >= 2:
        b = np.clip(np.searchsorted(edges, risk_h, side="right") - 1, 0, len(edges) - 2)
        pts = []
        for k in range(len(edges) - 1):
            m = b == k
            if m.sum() >= 5:
                pts.append([float(risk_h[m].mean()), km_risk(time[m], event[m], h), int(m.sum())])
        out["deciles"] = pts
    return out


#: Patient-level bootstrap replicates of the headline figures (``forecast evaluate --ci-reps``).
DEFAULT_CI_REPS = 100


def _patient_resampler(patients: Any, seed: int) -> Any:
    """A function returning the row indices of one patient-level bootstrap resample.

    Patients are drawn with replacement and each drawn patient brings all its
    rows (episodes of one patient are correlated), vectorised: no Python loop
    over patients.
    """
    codes = pd.factorize(np.asarray(patients, dtype=object))[0]
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        pick = rng.integers(0, len(starts), len(starts))
        n = counts[pick]
        first_out = np.cumsum(n) - n
        pos = np.arange(int(n.sum())) - np.repeat(first_out, n) + np.repeat(starts[pick], n)
        return order[pos]

    return draw


def _ici(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float) -> float:
    """The headline ICI (pseudo-observation smoother, as :func:`calibration`'s ``ici``)."""
    obs = pseudo_observed(time, event, risk_h, h)
    return float("nan") if obs is None else float(np.mean(np.abs(risk_h - obs)))


def headline_bootstrap(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray, patients: Any,
                       horizons: Sequence[int], oracle: np.ndarray | None = None, *,
                       reps: int = DEFAULT_CI_REPS, seed: int = 0, level: float = 0.95,
                       with_ici: bool = True) -> dict[str, Any] | None:
    """Percentile intervals of the headline figures over patient-level resamples.

    AUC(28), ICI(28) and ICI(56) of ``risk`` (and, with ``oracle``, the AUC(28)
    gap oracle - model, paired: both on the same resample). The out-of-fold
    predictions stay fixed, so the interval is the evaluation sample's
    uncertainty, not the refitting's. ICI is a mean absolute difference and
    its estimate is biased upward in small samples (the replicates' mean is
    reported too). None when ``reps`` is 0 or 28 days is not a horizon.
    ``with_ici=False`` skips the ICI intervals (a smoother fit per replicate).
    """
    horizons = [int(h) for h in horizons]
    if reps <= 0 or 28 not in horizons or len(lower) == 0:
        return None
    time, event = impute_times(lower, upper)  # the ICI's smoother, as in survival_metrics
    risk = np.asarray(risk, dtype=float)
    cols = {h: horizons.index(h) for h in (28, 56) if h in horizons}
    draw = _patient_resampler(patients, seed)
    reps_out: dict[str, list[float]] = {"auc28": []}
    if with_ici:
        reps_out.update(ici28=[], ici56=[])
    if oracle is not None:
        reps_out["auc28_gap_to_oracle"] = []
    j28 = cols[28]
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(reps)):
            idx = draw()
            t, e = time[idx], event[idx]
            auc = float(td_auc(t, e, risk[idx][:, [j28]], [28])[0])
            reps_out["auc28"].append(auc)
            if oracle is not None:
                reps_out["auc28_gap_to_oracle"].append(
                    float(td_auc(t, e, np.asarray(oracle)[idx][:, [j28]], [28])[0]) - auc)
            for h in (28, 56):
                if with_ici and h in cols:
                    reps_out[f"ici{h}"].append(_ici(t, e, risk[idx, cols[h]], h))
    a = (1.0 - level) / 2.0
    out: dict[str, Any] = {"reps": int(reps), "level": level, "seed": seed, "unit": "patient",
                           "note": "percentile intervals over patient-level resamples of the "
                                   "out-of-fold predictions (not refitted)"}
    for k, v in reps_out.items():
        arr = np.asarray(v, dtype=float)
        arr = arr[np.isfinite(arr)]
        if len(arr) >= max(10, reps // 2):
            out[k] = [float(np.quantile(arr, a)), float(np.quantile(arr, 1.0 - a))]
            out[f"{k}_replicate_mean"] = float(arr.mean())
    return out


#: Draws of :func:`calibrated_reference_ici` (each one smoother fit per horizon and smoother).
REFERENCE_REPS = 20


def _draw_from_risk_curve(risk: np.ndarray, horizons: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Event times drawn from each row's own predicted risk curve (inverse CDF).

    The cumulative risk is taken as linear between (0, 0) and the points
    ``(h, risk_h)``; a draw above the last horizon's risk is ``inf`` (no event
    within the horizons).
    """
    n, k = risk.shape
    cdf = np.c_[np.zeros(n), np.maximum.accumulate(np.clip(risk, 0.0, 1.0), axis=1)]
    grid = np.r_[0.0, horizons]
    j = np.minimum((u[:, None] >= cdf[:, 1:]).sum(axis=1), k)  # segment of each draw
    rows = np.arange(n)
    jj = np.minimum(j, k - 1)
    lo_f, hi_f = cdf[rows, jj], cdf[rows, jj + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(hi_f > lo_f, (u - lo_f) / (hi_f - lo_f), 0.0)
    t = grid[jj] + np.clip(frac, 0.0, 1.0) * (grid[jj + 1] - grid[jj])
    return np.where(j >= k, np.inf, t)


def _censoring_draws(lower: np.ndarray, upper: np.ndarray, rng: np.random.Generator
                     ) -> np.ndarray:
    """A censoring time per row: its own for a right-censored row, else drawn.

    A row with an observed waning was followed up to at least ``upper``; its
    censoring time is drawn from the reverse Kaplan-Meier estimate of the
    censoring distribution conditional on exceeding ``upper`` (``inf`` for
    the mass beyond the last censoring time).
    """
    cens = ~np.isfinite(upper)
    uniq, g = _km_curve(np.where(cens, lower, upper), cens)  # g[i] = P(C > uniq[i])
    out = np.where(cens, lower, np.inf)
    ev = ~cens
    if ev.any() and len(uniq):
        # P(C > up) for each event row, then v = G(up) * U; C = first time with G <= v.
        i = np.searchsorted(uniq, upper[ev], side="right") - 1
        g_up = np.where(i >= 0, g[np.maximum(i, 0)], 1.0)
        v = g_up * rng.uniform(size=int(ev.sum()))
        first = np.searchsorted(-g, -v, side="left")  # -g is non-decreasing
        out[ev] = np.where(first < len(uniq), uniq[np.minimum(first, len(uniq) - 1)], np.inf)
    return out


def calibrated_reference_ici(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray,
                             horizons: Sequence[int], *, reps: int = REFERENCE_REPS,
                             seed: int = 0) -> dict[str, Any] | None:
    """The ICI a perfectly calibrated model would read on these rows: the measurement floor.

    Each draw replaces the outcomes by waning times drawn from the model's own
    risk curves (so the predictions are calibrated by construction) and keeps
    the rows' censoring (a right-censored row at its own time; a row with an
    observed waning at a time drawn from the censoring distribution beyond its
    ``upper``), then computes both ICI estimates (``ici``: the
    pseudo-observation smoother; ``ici_austin``: Austin's Cox smoother) of
    the unchanged predictions. Their mean
    and 95th percentile over the draws show what ICI a calibrated model gets
    on data censored like these: with most follow-up ending at boosters
    before 56 days, both smoothers read well above 0 for calibrated risks
    (docs/modelling-history.md, "What ICI can measure under booster censoring").

    The draws use exact waning times; the real outcomes are intervals between
    assessments, which the metrics' untied times (:func:`untied_times`) read
    close to exact ones (``bench/calibration_floor.py``), so the reference is
    an approximate floor, not an exact one. (A draw of the intervals
    themselves, widths from the rows' own at a random phase, overstated it:
    weekly assessments that fall on the horizons blur nothing, and the
    assessment schedules are not in the data.) None when ``reps`` is 0.
    """
    horizons_i = [int(h) for h in horizons]
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    risk = np.asarray(risk, dtype=float)
    if reps <= 0 or len(lower) < 30:
        return None
    h_arr = np.asarray(horizons_i, dtype=float)
    order = np.argsort(h_arr)
    rng = np.random.default_rng(seed)
    vals: dict[int, dict[str, list[float]]] = {h: {"ici": [], "ici_austin": []}
                                               for h in horizons_i}
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(reps)):
            wane = _draw_from_risk_curve(risk[:, order], h_arr[order],
                                         rng.uniform(size=len(lower)))
            cens = _censoring_draws(lower, upper, rng)
            time = np.minimum(wane, cens)
            event = wane <= cens
            time = np.where(np.isfinite(time), time, 10.0 * h_arr.max())
            for j, h in enumerate(horizons_i):
                r = risk[:, j]
                aus = smoothed_observed(time, event, r, h)
                pse = pseudo_observed(time, event, r, h)
                vals[h]["ici"].append(np.nan if pse is None else float(np.mean(np.abs(r - pse))))
                vals[h]["ici_austin"].append(
                    np.nan if aus is None else float(np.mean(np.abs(r - aus))))
    by_h: dict[str, Any] = {}
    for h, v in vals.items():
        entry: dict[str, Any] = {}
        for key, xs in v.items():
            arr = np.asarray(xs, dtype=float)
            arr = arr[np.isfinite(arr)]
            if len(arr):
                entry[f"{key}_mean"] = float(arr.mean())
                entry[f"{key}_p95"] = float(np.quantile(arr, 0.95))
        by_h[str(h)] = entry
    return {"reps": int(reps), "seed": seed, "by_horizon": by_h,
            "note": "ICI of risks calibrated by construction under these rows' censoring "
                    "(outcomes drawn from the predicted risk curves): about the estimate a "
                    "perfectly calibrated model would get (exact event times, not the real "
                    "outcomes' assessment intervals)"}


def survival_metrics(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray,
                     horizons: Sequence[int] = HORIZONS, *, uno: bool = True,
                     calibrate: bool = True) -> dict[str, Any]:
    """All metrics of one set of predictions (risk shape (n, len(horizons)))."""
    lower = np.asarray(lower, float)
    upper = np.asarray(upper, float)
    risk = np.asarray(risk, float)
    time, event = impute_times(lower, upper)
    cox_time = untied_times(lower, upper)[0]
    horizons = [int(h) for h in horizons]
    rank_col = horizons.index(RANK_HORIZON) if RANK_HORIZON in horizons else len(horizons) - 1
    with threadpool_limits(limits=1, user_api="blas"):
        observed = turnbull_risk(lower, upper, horizons) if calibrate and len(lower) else None
        auc = td_auc(time, event, risk, horizons)
        bs, ibs = brier(time, event, risk, horizons)
        res: dict[str, Any] = {
            "n": int(len(time)),
            "events": int(event.sum()),
            "harrell_c": harrell_c(time, event, risk[:, rank_col]),
            "uno_c": uno_c(time, event, risk[:, rank_col], float(max(horizons)))
            if uno else None,
            "ibs": ibs,
            "by_horizon": {},
        }
        for j, h in enumerate(horizons):
            st = status_at(lower, upper, h)
            known = ~np.isnan(st)
            auc_known = None
            if known.any() and 0 < st[known].sum() < known.sum():
                from sklearn.metrics import roc_auc_score

                auc_known = float(roc_auc_score(st[known], risk[known, j]))
            entry: dict[str, Any] = {
                "auc": _num(auc[j]),
                "brier": _num(bs[j]),
                "share_known": float(known.mean()) if len(known) else None,
                "auc_known": auc_known,
            }
            if calibrate:
                entry.update(calibration(time, event, risk[:, j], h,
                                         None if observed is None else observed[j],
                                         cox_time=cox_time))
            res["by_horizon"][str(h)] = entry
    return res


def _num(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


# --------------------------------------------------------------------------- subgroups
def subgroups(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Fairness attributes per row: sex, age band and diagnosis (``unknown`` when missing)."""
    out: dict[str, np.ndarray] = {}
    n = len(rows)
    for col in ("sex", "diagnosis"):
        if col in rows.columns:
            v = rows[col].astype(object).where(rows[col].notna(), "unknown")
            out[col] = v.astype(str).to_numpy()
    if "age" in rows.columns:
        age = pd.to_numeric(rows["age"], errors="coerce").to_numpy(float)
        if "age_missing" in rows.columns:
            age = np.where(rows["age_missing"].to_numpy(float) > 0, np.nan, age)
        band = np.full(n, "unknown", dtype=object)
        for name, a, b in AGE_BANDS:
            band[(age >= a) & (age < b)] = name
        out["age_band"] = band.astype(str)
    return out


def fairness(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray, groups: dict[str, np.ndarray],
             horizons: Sequence[int] = HORIZONS) -> dict[str, Any]:
    """Metrics per subgroup (counts only below MIN_GROUP_N episodes or MIN_GROUP_EVENTS events)."""
    out: dict[str, Any] = {}
    for attr, values in groups.items():
        out[attr] = {}
        for level in sorted(set(values.tolist())):
            m = values == level
            n_ev = int(np.isfinite(upper[m]).sum())
            if m.sum() >= MIN_GROUP_N and n_ev >= MIN_GROUP_EVENTS:
                out[attr][level] = survival_metrics(lower[m], upper[m], risk[m], horizons,
                                                    uno=False)
                for hh in out[attr][level]["by_horizon"].values():
                    hh.pop("curve", None)
                    hh.pop("deciles", None)
            else:
                out[attr][level] = {"n": int(m.sum()), "events": n_ev,
                                    "note": "too few episodes or events for metrics"}
    return out


# --------------------------------------------------------------------------- folds / CV
def grouped_folds(groups: Any, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per row; all rows of a patient share one fold (seeded shuffle)."""
    codes, uniques = pd.factorize(np.asarray(groups))
    if n_folds < 2:
        raise ValueError("--folds must be at least 2")
    if len(uniques) < n_folds:
        raise ValueError(f"{len(uniques)} patients cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(len(uniques), dtype=int)
    fold_of_group[rng.permutation(len(uniques))] = np.arange(len(uniques)) % n_folds
    return fold_of_group[codes]


@dataclass
class ModelSpec:
    """What a fold refits: the kind and the estimator settings of the evaluated version."""

    kind: str = DEFAULT_KIND
    params: dict[str, Any] | None = None


def _fold_job(ld: pd.DataFrame, spec: FeatureSet, fold: np.ndarray, k: int,
              models: dict[str, ModelSpec], horizons: Sequence[int],
              fp: pd.DataFrame | None = None, fp_fold: np.ndarray | None = None,
              seed: int = 0) -> dict[str, Any]:
    train = ld[fold != k].reset_index(drop=True)
    test = ld[fold == k].reset_index(drop=True)
    test0 = test[test["landmark"] == 0].reset_index(drop=True)
    out: dict[str, Any] = {"test0_index": np.flatnonzero((fold == k) & (ld["landmark"] == 0)),
                           "test_index": np.flatnonzero(fold == k), "pred0": {}, "pred_lm": {},
                           "pred_fp": {}, "errors": {}}
    test_fp = None
    if fp is not None and fp_fold is not None:
        out["fp_index"] = np.flatnonzero(fp_fold == k)
        test_fp = fp.iloc[out["fp_index"]].reset_index(drop=True)
    h = np.asarray(horizons, float)
    with threadpool_limits(limits=1, user_api="blas"):
        for name, ms in models.items():
            X, lo, up, groups, feats = rows_for_kind(train, spec, ms.kind)
            params = dict(ms.params or {})
            params.update(n_bootstrap=0, n_jobs=1)
            # Seeded: the landmark kinds draw the family-selection split from it.
            params.setdefault("random_state", seed)
            try:
                est = make_estimator(ms.kind, features=feats, **params).fit(X, lo, up, groups)
            except Exception as exc:  # noqa: BLE001 - recorded in the report, other models go on
                out["errors"][name] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            bundle = est.to_bundle()
            out["pred0"][name] = bundle.predict_risk(test0, h)
            if ms.kind not in STATIC_KINDS:
                out["pred_lm"][name] = bundle.predict_risk(test, h)
            if test_fp is not None:
                out["pred_fp"][name] = forecast_point_risk(bundle, test_fp, h)
    return out


def forecast_point_risk(bundle: Any, rows: pd.DataFrame, horizons: Sequence[float]) -> np.ndarray:
    """Risk within each horizon after as-of, as the service would compute it.

    A landmark bundle reads the features at as-of; a static bundle (time
    origin = the episode start) is conditioned on survival to the days
    already elapsed, ``since = rows["landmark"]``.
    """
    h = np.asarray(horizons, float)
    if bundle.time_origin in ("landmark", "as_of"):
        return bundle.predict_risk(rows, h)
    return bundle.predict_risk(rows, h, since=rows["landmark"].to_numpy(float))


def cross_validate(ld: pd.DataFrame, spec: FeatureSet, models: dict[str, ModelSpec], *,
                   n_folds: int = 5, seed: int = 0, jobs: int = 1,
                   horizons: Sequence[int] = HORIZONS, progress: Any = None,
                   fp: pd.DataFrame | None = None) -> dict[str, Any]:
    """Out-of-fold predictions of each model (patient-grouped K-fold on the landmark dataset).

    ``seed`` draws the folds and seeds every fold's model whose settings give
    no ``random_state``, so a repeated call gives the same predictions.
    ``fp`` (optional, :func:`forecast.training.forecast_point_dataset`) gets
    out-of-fold predictions too; its rows go to the fold of their patient.
    """
    fold = grouped_folds(ld["patient_id"].to_numpy(), n_folds, seed)
    fp_fold = None
    if fp is not None:
        fold_of = pd.Series(fold, index=ld["patient_id"].astype(str).to_numpy())
        fold_of = fold_of[~fold_of.index.duplicated()]
        fp_fold = (fold_of.reindex(fp["patient_id"].astype(str).to_numpy())
                   .fillna(-1).to_numpy(dtype=int))
    jobs_out = Parallel(n_jobs=jobs)(
        delayed(_fold_job)(ld, spec, fold, k, models, horizons, fp, fp_fold, seed)
        for k in range(n_folds)
    )
    n0 = int((ld["landmark"] == 0).sum())
    start_pos = np.full(len(ld), -1)
    start_pos[np.flatnonzero(ld["landmark"].to_numpy() == 0)] = np.arange(n0)
    pred0 = {name: np.full((n0, len(horizons)), np.nan) for name in models}
    pred_lm = {name: np.full((len(ld), len(horizons)), np.nan) for name in models
               if models[name].kind not in STATIC_KINDS}
    n_fp = 0 if fp is None else len(fp)
    pred_fp = {name: np.full((n_fp, len(horizons)), np.nan) for name in models}
    errors: dict[str, list[str]] = {}
    for res in jobs_out:
        for name, p in res["pred0"].items():
            pred0[name][start_pos[res["test0_index"]]] = p
        for name, p in res["pred_lm"].items():
            pred_lm[name][res["test_index"]] = p
        for name, p in res["pred_fp"].items():
            pred_fp[name][res["fp_index"]] = p
        for name, e in res["errors"].items():
            errors.setdefault(name, []).append(e)
        if progress is not None:
            progress()
    return {"fold": fold, "pred0": pred0, "pred_lm": pred_lm, "pred_fp": pred_fp,
            "fp_fold": fp_fold, "errors": errors}


# --------------------------------------------------------------------------- oracle
def _truth_rows(rows: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Index into ``truth`` of each row's episode (matched on patient and start date), -1 if none.

    ``rows`` needs ``patient_id`` and ``episode_start`` (or ``as_of`` for
    landmark-0 rows, where it is the start).
    """
    t = pd.DataFrame({"patient_id": truth["patient_id"].astype(str).to_numpy(),
                      "_key_date": pd.to_datetime(truth["episode_start"]).dt.normalize()
                      .to_numpy(),
                      "_truth_row": np.arange(len(truth))})
    t = t.drop_duplicates(["patient_id", "_key_date"])
    start = rows["episode_start"] if "episode_start" in rows.columns else rows["as_of"]
    q = pd.DataFrame({"patient_id": rows["patient_id"].astype(str).to_numpy(),
                      "_key_date": pd.to_datetime(start).dt.normalize().to_numpy()})
    merged = q.merge(t, how="left", on=["patient_id", "_key_date"])
    return merged["_truth_row"].fillna(-1).to_numpy(dtype=int)


def oracle_risks(start_rows: pd.DataFrame, truth: pd.DataFrame,
                 horizons: Sequence[int] = HORIZONS) -> np.ndarray:
    """Oracle risk per episode-start row from truth.csv (NaN rows where no truth matches)."""
    idx = _truth_rows(start_rows.drop(columns=["episode_start"], errors="ignore"), truth)
    cols = [f"risk_{h}d" for h in horizons]
    vals = truth[cols].to_numpy(dtype=float)
    out = np.full((len(idx), len(cols)), np.nan)
    out[idx >= 0] = vals[idx[idx >= 0]]
    return out


def truth_scale(truth: pd.DataFrame) -> float:
    """The log-logistic scale of the simulator run that wrote ``truth``.

    Read from the file itself: with ``logit(risk_h) = (log h - location) /
    scale`` two horizons give ``scale = log(28 / 7) / (logit r28 - logit
    r7)`` (median over the rows; the risks are rounded to 6 decimals). Falls
    back to the simulator's default when the file has too few usable rows.
    """
    from forecast.simulation import SimulationParams

    if {"risk_7d", "risk_28d"} <= set(truth.columns):
        r7 = truth["risk_7d"].to_numpy(dtype=float)
        r28 = truth["risk_28d"].to_numpy(dtype=float)
        ok = (r7 > 1e-3) & (r7 < 0.999) & (r28 > 1e-3) & (r28 < 0.999) & (r28 > r7)
        if ok.sum() >= 10:
            with np.errstate(divide="ignore"):
                d = np.log(r28[ok] / (1 - r28[ok])) - np.log(r7[ok] / (1 - r7[ok]))
            return float(np.median(np.log(4.0) / d))
    return float(SimulationParams().wane_scale)


def oracle_conditional_risks(rows: pd.DataFrame, truth: pd.DataFrame,
                             horizons: Sequence[int] = HORIZONS) -> np.ndarray:
    """Oracle risk within h days after as-of, given survival to ``s = rows["landmark"]``.

    ``P(T <= s + h | T > s)`` from the episode's true location (recovered
    from truth.csv by :func:`forecast.simulation.truth_location`) and
    :func:`forecast.simulation.true_risk`; NaN rows where no truth matches.
    """
    from forecast.simulation import true_risk, truth_location

    idx = _truth_rows(rows, truth)
    out = np.full((len(rows), len(horizons)), np.nan)
    m = idx >= 0
    if m.any():
        scale = truth_scale(truth)
        loc = truth_location(truth.iloc[idx[m]].reset_index(drop=True), scale)
        out[m] = true_risk(loc, scale, tuple(int(h) for h in horizons),
                           since=rows["landmark"].to_numpy(float)[m])
    return out


# --------------------------------------------------------------------------- top level
def _model_block(lower: np.ndarray, upper: np.ndarray, risk: np.ndarray,
                 groups: dict[str, np.ndarray] | None, horizons: Sequence[int]) -> dict[str, Any]:
    ok = np.all(np.isfinite(risk), axis=1)
    if not ok.any():
        return {"overall": None, "note": "no predictions (every fold failed, see errors)"}
    block = {"overall": survival_metrics(lower[ok], upper[ok], risk[ok], horizons)}
    if groups is not None:
        block["fairness"] = fairness(lower[ok], upper[ok], risk[ok],
                                     {k: v[ok] for k, v in groups.items()}, horizons)
    return block


def evaluate_cohort(
    cohort: Any,
    spec_model: ModelSpec,
    *,
    definition: Any = None,
    truth: pd.DataFrame | None = None,
    n_folds: int = 5,
    seed: int = 0,
    jobs: int = 1,
    baselines: Sequence[str] = ("cox", "km"),
    horizons: Sequence[int] = HORIZONS,
    progress: Any = None,
    ci_reps: int = DEFAULT_CI_REPS,
) -> dict[str, Any]:
    """Cross-validated metrics of a model spec and the baselines (and the oracle if ``truth``).

    ``ci_reps`` patient-level bootstrap replicates give the headline figures'
    intervals (:func:`headline_bootstrap`; 0 skips them).

    Returns a JSON-able dict (see the module notes); the main model is
    reported under ``"model"``, baselines under their kind, the oracle under
    ``"oracle"``.
    """
    from forecast.features import landmark_dataset

    ld = landmark_dataset(cohort, definition)
    if len(ld) == 0:
        raise ValueError("no response episodes in the data: nothing to evaluate")
    if spec_model.kind not in STATIC_KINDS:  # the rows the dynamic kind trains on
        ld = training_landmarks(cohort, definition, ld)
    spec = spec_of(cohort)
    models = {"model": spec_model}
    for b in baselines:
        models[b] = ModelSpec(b, {"penalizer": (spec_model.params or {}).get("penalizer", 0.01)}
                              if b != "km" else {})
    fp = forecast_point_dataset(cohort, definition)
    cv = cross_validate(ld, spec, models, n_folds=n_folds, seed=seed, jobs=jobs,
                        horizons=horizons, progress=progress, fp=fp)
    start = ld[ld["landmark"] == 0].reset_index(drop=True)
    lo0 = start["lower"].to_numpy(float)
    up0 = start["upper"].to_numpy(float)
    groups = subgroups(start)
    out: dict[str, Any] = {
        "folds": n_folds,
        "seed": seed,
        "n_patients": int(start["patient_id"].nunique()),
        "n_episodes": int(len(start)),
        "n_events": int(np.isfinite(up0).sum()),
        "model_kind": spec_model.kind,
        "models": {},
        "errors": cv["errors"],
    }
    for name in models:
        out["models"][name] = _model_block(lo0, up0, cv["pred0"][name],
                                           groups if name == "model" else None, horizons)
    if truth is not None:
        orc = oracle_risks(start, truth, horizons)
        matched = np.all(np.isfinite(orc), axis=1)
        out["oracle_matched_episodes"] = int(matched.sum())
        if matched.any():
            out["models"]["oracle"] = _model_block(lo0[matched], up0[matched], orc[matched],
                                                   {k: v[matched] for k, v in groups.items()},
                                                   horizons)
            # The oracle exists only for the simulator's episodes: compare on those.
            out["on_oracle_episodes"] = {
                name: _model_block(lo0[matched], up0[matched], cv["pred0"][name][matched], None,
                                   horizons)
                for name in models
            }
    out["forecast_point"] = _forecast_point_block(fp, cv["pred_fp"], cv["fp_fold"], truth,
                                                  horizons, ci_reps=ci_reps, seed=seed)
    if cv["pred_lm"].get("model") is not None:
        p = cv["pred_lm"]["model"]
        ok = np.all(np.isfinite(p), axis=1)  # rows of a failed fold have no prediction
        if "grid_landmark" in ld.columns:  # the grid rows only; the forecast point is above
            ok &= ld["grid_landmark"].to_numpy(dtype=bool)
        if ok.any():
            out["landmark_conditional"] = {
                "n_rows": int(ok.sum()),
                "note": "all landmark rows of the test patients; rows of one episode are "
                        "correlated, metrics are pooled point estimates (Uno's C skipped)",
                **survival_metrics(ld["lower"].to_numpy(float)[ok],
                                   ld["upper"].to_numpy(float)[ok], p[ok], horizons, uno=False),
            }
    return out


FORECAST_POINT_NOTE = (
    "First forecast point: one row per episode at its response assessment (the first "
    "PHQ-9 after the session that shows the response, when the service starts to "
    "forecast), risk of waning within h days after that date given everything known "
    "then; outcome = the residual interval (lower - s, upper - s] with s the response "
    "day. Landmark model: features at that date; static Cox/AFT and KM: conditional on "
    "survival to s, 1 - S(s + h) / S(s); oracle: the simulator's true P(T <= s + h | "
    "T > s). Episodes right-censored at the response assessment carry no information "
    "after it and are left out."
)


def _forecast_point_block(fp: pd.DataFrame, preds: dict[str, np.ndarray],
                          fp_fold: np.ndarray | None, truth: pd.DataFrame | None,
                          horizons: Sequence[int], *, ci_reps: int = 0,
                          seed: int = 0, reference_reps: int | None = None) -> dict[str, Any]:
    """Metrics at the first forecast point (the headline; see :data:`FORECAST_POINT_NOTE`).

    ``ci_reps`` bootstrap replicates of the headline figures;
    ``reference_reps`` draws of the calibrated reference (default: ``ci_reps``
    capped at :data:`REFERENCE_REPS`).
    """
    if reference_reps is None:
        reference_reps = min(int(ci_reps), REFERENCE_REPS)
    ok_rows = np.ones(len(fp), dtype=bool) if fp_fold is None else fp_fold >= 0
    lo = fp["lower"].to_numpy(float)[ok_rows]
    up = fp["upper"].to_numpy(float)[ok_rows]
    rows = fp.loc[ok_rows].reset_index(drop=True)
    groups = subgroups(rows)
    s = rows["landmark"].to_numpy(float)
    block: dict[str, Any] = {
        "note": FORECAST_POINT_NOTE,
        "n_patients": int(rows["patient_id"].nunique()),
        "n_episodes": int(len(rows)),
        "n_events": int(np.isfinite(up).sum()),
        "response_day": {"median": float(np.median(s)) if len(s) else None,
                         "min": float(s.min()) if len(s) else None,
                         "max": float(s.max()) if len(s) else None},
        "models": {},
    }
    if len(rows) == 0:
        return block
    for name, p in preds.items():
        block["models"][name] = _model_block(lo, up, p[ok_rows],
                                             groups if name == "model" else None, horizons)
    if truth is not None:
        orc = oracle_conditional_risks(rows, truth, horizons)
        matched = np.all(np.isfinite(orc), axis=1)
        block["oracle_matched_episodes"] = int(matched.sum())
        if matched.any():
            block["models"]["oracle"] = _model_block(lo[matched], up[matched], orc[matched],
                                                     None, horizons)
            block["on_oracle_episodes"] = {
                name: _model_block(lo[matched], up[matched], p[ok_rows][matched], None,
                                   horizons)
                for name, p in preds.items()
            }
    if "model" in preds:
        # The headline's rows: those the oracle covers when there is one, else all.
        sel = np.ones(len(rows), dtype=bool) if truth is None else matched
        p = preds["model"][ok_rows]
        sel = sel & np.all(np.isfinite(p), axis=1)
        boot = headline_bootstrap(
            lo[sel], up[sel], p[sel], rows["patient_id"].to_numpy(object)[sel], horizons,
            None if truth is None or not sel.any() else orc[sel], reps=ci_reps, seed=seed)
        if boot is not None:
            block["bootstrap"] = boot
        if reference_reps > 0 and sel.any():
            ref = calibrated_reference_ici(lo[sel], up[sel], p[sel], horizons,
                                           reps=reference_reps, seed=seed)
            if ref is not None:
                block["calibrated_reference"] = ref
    return block


def evaluate_bundle(cohort: Any, bundle: Any, *, definition: Any = None,
                    truth: pd.DataFrame | None = None,
                    horizons: Sequence[int] = HORIZONS, ci_reps: int = 0) -> dict[str, Any]:
    """Metrics of a fitted bundle applied to another cohort (``--holdout``).

    ``ci_reps`` > 0 adds, at the first forecast point, the calibrated
    reference ICI (up to :data:`REFERENCE_REPS` draws) as in
    :func:`evaluate_cohort`; the bootstrap intervals are left to the
    cross-validation (on 17,000 holdout rows they cost about 2 minutes).
    """
    from forecast.features import landmark_dataset

    ld = landmark_dataset(cohort, definition)
    if len(ld) == 0:
        raise ValueError("no response episodes in the holdout data")
    start = ld[ld["landmark"] == 0].reset_index(drop=True)
    lo0, up0 = start["lower"].to_numpy(float), start["upper"].to_numpy(float)
    h = np.asarray(horizons, float)
    groups = subgroups(start)
    out: dict[str, Any] = {
        "n_patients": int(start["patient_id"].nunique()),
        "n_episodes": int(len(start)),
        "n_events": int(np.isfinite(up0).sum()),
        "models": {"model": _model_block(lo0, up0, bundle.predict_risk(start, h), groups,
                                         horizons)},
    }
    if truth is not None:
        orc = oracle_risks(start, truth, horizons)
        matched = np.all(np.isfinite(orc), axis=1)
        if matched.any():
            out["models"]["oracle"] = _model_block(lo0[matched], up0[matched], orc[matched],
                                                   {k: v[matched] for k, v in groups.items()},
                                                   horizons)
    fp = forecast_point_dataset(cohort, definition)
    out["forecast_point"] = _forecast_point_block(
        fp, {"model": forecast_point_risk(bundle, fp, h)} if len(fp) else {}, None, truth,
        horizons, reference_reps=min(int(ci_reps), REFERENCE_REPS))
    if bundle.time_origin in ("landmark", "as_of"):
        out["landmark_conditional"] = {
            "n_rows": int(len(ld)),
            **survival_metrics(ld["lower"].to_numpy(float), ld["upper"].to_numpy(float),
                               bundle.predict_risk(ld, h), horizons, uno=False),
        }
    return out


def targets(cv: dict[str, Any]) -> dict[str, Any]:
    """The done-when figures at the FIRST FORECAST POINT (the response assessment).

    AUC(28) gap to the oracle, ICI at 28/56, and whether the model beats the
    static Cox model and KM (each conditional on survival to the response
    day). The oracle comparison uses the episodes the oracle covers. The same
    figures at the episode start are kept under ``episode_start``.
    """
    fp = cv.get("forecast_point") or {}
    out = _targets_of(fp.get("models", {}), fp.get("on_oracle_episodes"))
    boot = fp.get("bootstrap") or {}
    for key, name in (("auc28", "auc28_model"), ("ici28", "ici28_model"),
                      ("ici56", "ici56_model"), ("auc28_gap_to_oracle", "auc28_gap_to_oracle")):
        if key in boot:
            out[f"{name}_ci{round(100 * boot['level'])}"] = boot[key]
    if boot:
        out["ci_note"] = (f"{boot['reps']} patient-level bootstrap resamples of the out-of-fold "
                          "predictions; the targets compare the point estimates")
    ref = (fp.get("calibrated_reference") or {}).get("by_horizon") or {}
    for h in (28, 56):
        r = ref.get(str(h)) or {}
        if "ici_mean" in r:
            # what a perfectly calibrated model reads on these rows (mean, 95th percentile)
            out[f"ici{h}_calibrated_reference"] = [r["ici_mean"], r["ici_p95"]]
        if "ici_austin_mean" in r:
            out[f"ici{h}_austin_calibrated_reference"] = [r["ici_austin_mean"],
                                                          r["ici_austin_p95"]]
    out["evaluated_at"] = "first forecast point (response assessment)"
    out["episode_start"] = _targets_of(cv.get("models", {}), cv.get("on_oracle_episodes"))
    return out


def _targets_of(all_models: dict[str, Any], on_oracle: dict[str, Any] | None) -> dict[str, Any]:
    models = dict(all_models)
    if on_oracle:  # the oracle comparison on the episodes the oracle covers
        models.update(on_oracle)

    def get(name: str, h: int, key: str) -> float | None:
        o = (models.get(name) or {}).get("overall") or {}
        return o.get("by_horizon", {}).get(str(h), {}).get(key)

    out: dict[str, Any] = {
        "auc28_model": get("model", 28, "auc"),
        "auc28_oracle": get("oracle", 28, "auc"),
        "ici28_model": get("model", 28, "ici"),
        "ici56_model": get("model", 56, "ici"),
        "ici28_model_austin": get("model", 28, "ici_austin"),
        "ici56_model_austin": get("model", 56, "ici_austin"),
        "slope28_model": get("model", 28, "slope"),
        "slope56_model": get("model", 56, "slope"),
    }
    if out["auc28_model"] is not None and out["auc28_oracle"] is not None:
        out["auc28_gap_to_oracle"] = out["auc28_oracle"] - out["auc28_model"]
    for base in ("cox", "km"):
        if base in models and (models.get("model") or {}).get("overall"):
            mb = models["model"]["overall"]
            bb = models[base].get("overall") or {}
            out[f"beats_{base}"] = {
                "auc28": _better(get("model", 28, "auc"), get(base, 28, "auc"), True),
                "ibs": _better(mb.get("ibs"), bb.get("ibs"), False),
                "harrell_c": _better(mb.get("harrell_c"), bb.get("harrell_c"), True),
            }
    return out


def _better(a: float | None, b: float | None, higher: bool) -> bool | None:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
        return None
    return bool(a > b) if higher else bool(a < b)
