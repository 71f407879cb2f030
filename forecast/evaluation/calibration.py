"""Calibration of predicted risks at a horizon.

ICI/E50/E90 as published by Austin, Harrell & van Klaveren 2020
(:func:`published_observed`), with two labelled variants: the
pseudo-observation smoother (:func:`pseudo_observed`) and a Cox smoother
censored at the horizon (:func:`smoothed_observed`), the calibration slope,
calibration-in-the-large, decile curves (:func:`calibration`), and the ICI a
perfectly calibrated model would read under the rows' censoring
(:func:`calibrated_reference_ici`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from threadpoolctl import threadpool_limits

from forecast.models.cox import CoxFit, cox_efron
from forecast.models.nonparametric import km_curve, km_risk, seeded_subsample

#: Rows above which the Cox smoother is fitted on a seeded subsample (the fit grows with n;
#: 50k rows estimate a risk to well under +-0.01).
MAX_SMOOTHER_ROWS = 50_000


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




def _fit_cox(df: pd.DataFrame, penalizer: float = 0.0) -> CoxFit | None:
    """Cox model of ``T``/``E`` on the other columns (at most :data:`MAX_SMOOTHER_ROWS`
    rows, seeded) by :func:`cox_efron`, or None if the fit fails."""
    df = df.iloc[seeded_subsample(len(df), MAX_SMOOTHER_ROWS)]
    return cox_efron(df.drop(columns=["T", "E"]), df["T"].to_numpy(float),
                     df["E"].to_numpy(float) > 0, penalizer)


def _cox_observed(basis: np.ndarray, time: np.ndarray, event: np.ndarray, h: float,
                  penalizer: float = 0.0) -> np.ndarray | None:
    """``1 - S(h | basis)`` of a Cox model of (time, event) on the spline ``basis`` (None if
    the fit or the prediction fails or is not finite)."""
    df = pd.DataFrame(basis, columns=[f"s{j}" for j in range(basis.shape[1])])
    df["T"], df["E"] = time, event.astype(float)
    cph = _fit_cox(df, penalizer=penalizer)
    if cph is None:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            obs = 1.0 - cph.survival_at(df.drop(columns=["T", "E"]), h)
        except Exception:  # noqa: BLE001 - any failure means "not estimable"
            return None
    return obs if np.all(np.isfinite(obs)) else None


def smoothed_observed(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float
                      ) -> np.ndarray | None:
    """Austin et al. (2020) smoothed observed risk at ``h`` for each row (None if not estimable).

    The follow-up is administratively censored at ``h`` before the Cox
    hazard regression is fitted, as in the STRATOS guidance for validating a
    prediction at a fixed horizon (McLernon et al. 2023): the risk at ``h``
    then depends on no assumption about the hazards after ``h``. Fitted on
    the whole follow-up, the proportional-hazards assumption over all time
    pulled the smoothed 56-day risk about 0.03 below Kaplan-Meier on
    simulated cohorts (see docs/design-decisions.md, "Untied event times and
    horizon censoring in the smoothers").
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
    return _cox_observed(basis, time, event, h, penalizer=1e-4)


#: Quantiles of Harrell's default knots for a 3-knot restricted cubic spline (rms::rcspline.eval).
PUBLISHED_KNOT_QUANTILES = (0.10, 0.50, 0.90)


def published_observed(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float
                       ) -> np.ndarray | None:
    """Smoothed observed risk at ``h`` as published (None if not estimable).

    Austin, Harrell & van Klaveren (2020), "Graphical calibration curves and
    the integrated calibration index (ICI) for survival models", Stat Med
    39:2714-2742: a Cox proportional-hazards model of the whole follow-up on a
    restricted cubic spline of ``log(-log(1 - predicted risk at h))`` with 3
    knots at Harrell's default quantiles (10 %, 50 %, 90 %), and the smoothed
    observed risk is ``1 - S(h | x)`` of that model (Efron's ties, Breslow
    baseline). This is the figure the literature reports; the project's
    variants (:func:`pseudo_observed`, :func:`smoothed_observed`) are kept
    beside it. With fewer than 8 distinct predictions or coinciding knots the
    spline reduces to the linear term.
    """
    risk_h = np.clip(np.asarray(risk_h, float), 1e-6, 1 - 1e-6)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    if (event & (time <= h)).sum() < 10 or len(time) < 30:
        return None
    cll = np.log(-np.log(1.0 - risk_h))
    if np.ptp(cll) < 1e-9:
        return None
    basis = cll[:, None]
    if len(np.unique(np.round(cll, 6))) >= 8:
        knots = np.quantile(cll, PUBLISHED_KNOT_QUANTILES)
        if np.all(np.diff(knots) > 1e-9):
            basis = _rcs_basis(cll, knots)
    return _cox_observed(basis, time, event, h)


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
    reads about 1.1-1.3 for the true risks (see docs/evaluation.md, "Commands"),
    so it is kept beside the other, not in its place.

    1 means the risks spread as much as the outcomes; below 1 they are too
    spread (over-fitting), above 1 not spread enough. None for constant
    predictions or fewer than 10 events within ``h``. ``cox_time`` replaces
    ``time`` in the Cox fit (:func:`untied_times`); ``pseudo`` are the rows'
    :func:`km_pseudo_risk` at ``h`` when the caller has them.
    """
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

    ``ici`` (with ``e50``, ``e90`` and the plotted ``curve``) is the
    published ICI (Austin, Harrell & van Klaveren 2020;
    :func:`published_observed`): comparable with the literature. Two
    variants are kept beside it, labelled as such: ``ici_pseudo`` (with
    ``e50_pseudo``, ``e90_pseudo``) smooths Kaplan-Meier pseudo-observations
    at ``h`` (:func:`pseudo_observed`; no proportional hazards over time,
    matches Kaplan-Meier in the large), and ``ici_austin`` fits the Cox
    smoother with the follow-up censored at ``h`` and 4 knots
    (:func:`smoothed_observed`). On small samples every ICI estimate is
    about as large as its noise floor: read it beside
    :func:`calibrated_reference_ici`.

    ``observed_risk`` is the interval-aware (Turnbull) observed risk at ``h``
    of the same rows, used for calibration-in-the-large. ``cox_time``, when
    given, are the event times for the Cox fits (the published smoother,
    Austin's variant, the Cox slope): :func:`untied_times` of the rows, whose
    midpoints ``time`` tie.
    """
    risk_h = np.asarray(risk_h, float)
    out: dict[str, Any] = {"mean_predicted": float(risk_h.mean()) if len(risk_h) else None}
    t_cox = time if cox_time is None else cox_time
    pub = published_observed(t_cox, event, risk_h, h)
    if pub is not None:
        diff = np.abs(risk_h - pub)
        out.update(ici=float(diff.mean()), e50=float(np.median(diff)),
                   e90=float(np.quantile(diff, 0.9)))
        order = np.argsort(risk_h)
        idx = order[np.linspace(0, len(order) - 1, min(50, len(order))).astype(int)]
        out["curve"] = {"predicted": risk_h[idx].round(5).tolist(),
                        "observed": pub[idx].round(5).tolist()}
    else:
        out.update(ici=None, e50=None, e90=None)
    pv = km_pseudo_risk(time, event, h)  # shared by the pseudo smoother and the slope
    obs = pseudo_observed(time, event, risk_h, h, pseudo=pv)
    if obs is not None:
        diff = np.abs(risk_h - obs)
        out.update(ici_pseudo=float(diff.mean()), e50_pseudo=float(np.median(diff)),
                   e90_pseudo=float(np.quantile(diff, 0.9)))
    else:
        out.update(ici_pseudo=None, e50_pseudo=None, e90_pseudo=None)
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




def _ici(time: np.ndarray, event: np.ndarray, risk_h: np.ndarray, h: float) -> float:
    """The headline ICI (the published smoother, as :func:`calibration`'s ``ici``)."""
    obs = published_observed(time, event, risk_h, h)
    return float("nan") if obs is None else float(np.mean(np.abs(risk_h - obs)))



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
    uniq, g = km_curve(np.where(cens, lower, upper), cens)  # g[i] = P(C > uniq[i])
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
    ``upper``), then computes the three ICI estimates (``ici``: the published
    one; ``ici_pseudo``: the pseudo-observation variant; ``ici_austin``: the
    Cox smoother censored at h) of the unchanged predictions. Their mean
    and 95th percentile over the draws show what ICI a calibrated model gets
    on data censored like these: with most follow-up ending at boosters
    before 56 days, both smoothers read well above 0 for calibrated risks
    (see docs/design-decisions.md, "A calibrated reference beside every ICI").

    The draws use exact waning times; the real outcomes are intervals between
    assessments, which the metrics' untied times (:func:`untied_times`) read
    close to exact ones (``research/calibration_floor.py``), so the reference is
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
    vals: dict[int, dict[str, list[float]]] = {
        h: {"ici": [], "ici_pseudo": [], "ici_austin": []} for h in horizons_i}
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
                for key, obs in (("ici", published_observed(time, event, r, h)),
                                 ("ici_pseudo", pseudo_observed(time, event, r, h)),
                                 ("ici_austin", smoothed_observed(time, event, r, h))):
                    vals[h][key].append(np.nan if obs is None
                                        else float(np.mean(np.abs(r - obs))))
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

