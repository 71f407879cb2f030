"""Discrimination and accuracy metrics of one set of predicted risks.

Outcome conversions for right-censored metric functions (:func:`impute_times`,
:func:`untied_times`, :func:`status_at`), Harrell's and Uno's C, time-dependent
AUC, Brier score and IBS, all metrics of one prediction set
(:func:`survival_metrics`) and the same by subgroup (:func:`fairness`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from forecast.contract import HORIZONS
from forecast.evaluation.calibration import calibration
from forecast.models.nonparametric import turnbull_risk

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
    (``research/calibration_floor.py``). One seeded draw keeps the metrics
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



# --------------------------------------------------------------------------- metric wrappers
def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of a risk score (higher = earlier waning) via lifelines."""
    from lifelines.utils import concordance_index  # local: heavy, loaded on first use

    if event.sum() == 0 or len(time) < 2:
        return float("nan")
    return float(concordance_index(time, -np.asarray(risk, float), event))


def _surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv  # local: heavy, loaded on first use

    return Surv.from_arrays(event.astype(bool), time)


def uno_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tau: float) -> float:
    """Uno's IPCW C (scikit-survival) truncated at ``tau``; censoring estimated on the same rows."""
    from sksurv.metrics import concordance_index_ipcw  # local: heavy, loaded on first use

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
    """Cumulative/dynamic AUC per horizon (NaN where it cannot be computed;
    :func:`td_auc_with_reasons` says why)."""
    return td_auc_with_reasons(time, event, risk, horizons)[0]


def td_auc_with_reasons(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                        horizons: Sequence[float]) -> tuple[np.ndarray, list[str | None]]:
    """Cumulative/dynamic AUC per horizon (scikit-survival) and, where it is NaN, why.

    The reason is None where the AUC was computed. scikit-survival needs cases
    (an event at or before h), controls (a row followed beyond h) and a
    censoring distribution that is not zero at the cases' times; its own
    message is passed on when it refuses a horizon.
    """
    from sksurv.metrics import cumulative_dynamic_auc  # local: heavy, loaded on first use

    hs = np.asarray(horizons, float)
    out = np.full(len(hs), np.nan)
    reasons: list[str | None] = [None] * len(hs)
    risk = np.asarray(risk, float)
    t_max = float(time.max()) if len(time) else 0.0
    t_ev = float(time[event].min()) if event.any() else np.inf
    for j, h in enumerate(hs):
        if len(time) < 2:
            reasons[j] = "fewer than 2 rows"
        elif not event.any():
            reasons[j] = "no event in the data (every row is censored)"
        elif h < t_ev:
            reasons[j] = (f"no event at or before {h:g} days (first event at {t_ev:g}): "
                          "no cases")
        elif h >= t_max:
            reasons[j] = (f"no row followed beyond {h:g} days (longest follow-up "
                          f"{t_max:g}): no controls")
        elif not np.all(np.isfinite(risk[:, j])):
            reasons[j] = "some predicted risks are not finite"
    ok = np.array([r is None for r in reasons])
    if ok.any():
        y = _surv(time, event)
        try:
            out[ok] = cumulative_dynamic_auc(y, y, risk[:, ok], hs[ok])[0]
        except ValueError:  # find the horizons it refuses, one at a time
            for j in np.flatnonzero(ok):
                try:
                    out[j] = cumulative_dynamic_auc(y, y, risk[:, [j]], hs[[j]])[0][0]
                except ValueError as exc:
                    reasons[j] = f"scikit-survival refused it: {exc}"
    for j in np.flatnonzero(ok):
        if reasons[j] is None and not np.isfinite(out[j]):
            reasons[j] = "scikit-survival returned a non-finite value"
    return out, reasons


def brier(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
          horizons: Sequence[float]) -> tuple[np.ndarray, float]:
    """IPCW Brier score per horizon and the integrated Brier score over the horizons."""
    from sksurv.metrics import brier_score, integrated_brier_score  # local: heavy

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
        auc, auc_why = td_auc_with_reasons(time, event, risk, horizons)
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
                auc_known = float(roc_auc_score(st[known], risk[known, j]))
            entry: dict[str, Any] = {
                "auc": _num(auc[j]),
                **({"auc_note": auc_why[j]} if auc_why[j] is not None else {}),
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

