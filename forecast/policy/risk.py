"""Risk curves, the session-by suggestion and the vectorised forecast frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecast.absent import absent_inputs
from forecast.bundle import Bundle
from forecast.cohort import Cohort
from forecast.policy.context import base_statuses, query_context
from forecast.policy.model_access import model_bundle, outcome_definition, population_from_model
from forecast.policy.settings import PolicySettings
from forecast.safety import STATUS_OF_LEVEL


def bundle_since_argument(model: Any, days_since_session: np.ndarray) -> np.ndarray | None:
    """``since`` argument of the bundle: None for the dynamic kinds (features at as-of
    already condition on the time survived), else the days since the episode start."""
    if getattr(model_bundle(model), "time_origin", "landmark") in ("landmark", "as_of"):
        return None
    return np.asarray(days_since_session, dtype=float)


def encoded(
    model: Any, columns: dict[str, np.ndarray], rows: np.ndarray | None
) -> dict[str, np.ndarray]:
    """``{"design": ...}`` of a serving bundle's rows, encoded once for its three uses
    (risk, band, drivers) from the context's column arrays (``rows`` of them, None:
    all); empty for other model objects (they encode their frame themselves)."""
    bundle = model_bundle(model)
    if not isinstance(bundle, Bundle):
        return {}
    if bundle.encoder is None:
        return {"design": np.zeros((len(next(iter(columns.values()))) if rows is None
                                    else len(rows), 0))}
    names = (*bundle.encoder.numeric, *bundle.encoder.categorical)
    picked = {c: columns[c] if rows is None else np.asarray(columns[c])[rows] for c in names}
    return {"design": bundle.design(picked)}


def risk_grid(
    model: Any, X: pd.DataFrame, days: np.ndarray, since: Any, **design: np.ndarray
) -> np.ndarray:
    risk = np.asarray(model_bundle(model).predict_risk(X, days, since=since, **design),
                      dtype=float)
    return np.clip(risk.reshape(len(X), len(days)), 0.0, 1.0)


def band_grid(
    model: Any, X: pd.DataFrame, days: np.ndarray, level: float, since: Any,
    **design: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    bundle = model_bundle(model)
    if not hasattr(bundle, "predict_risk_band") or getattr(bundle, "n_bootstrap", 0) == 0:
        return None
    lo, hi = bundle.predict_risk_band(X, days, level, since=since, **design)
    lo = np.clip(np.asarray(lo, dtype=float).reshape(len(X), len(days)), 0.0, 1.0)
    hi = np.clip(np.asarray(hi, dtype=float).reshape(len(X), len(days)), 0.0, 1.0)
    return lo, hi


def population_risk(
    curve: dict[str, list[float]] | None, since: np.ndarray, days: np.ndarray
) -> np.ndarray:
    """Conditional population risk ``1 - S(t+h)/S(t)``; NaN beyond the curve's grid."""
    out = np.full((len(since), len(days)), np.nan)
    if not curve:
        return out
    grid = np.asarray(curve["days"], dtype=int)
    surv = np.asarray(curve["survival"], dtype=float)
    full = np.full(int(grid.max()) + 1, np.nan)
    full[grid] = surv
    t0 = np.nan_to_num(np.asarray(since, dtype=float), nan=0.0).clip(0).astype(int)
    t1 = t0[:, None] + days[None, :].astype(int)
    inside = t1 < len(full)
    s0 = np.where(t0 < len(full), full[np.clip(t0, 0, len(full) - 1)], np.nan)
    s1 = np.where(inside, full[np.clip(t1, 0, len(full) - 1)], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - s1 / s0[:, None]
    out[~np.isfinite(out)] = np.nan
    return np.clip(out, 0.0, 1.0)


def suggest_offsets(
    daily: np.ndarray,
    threshold: np.ndarray | float,
    days_since_session: np.ndarray,
    settings: PolicySettings,
) -> dict[str, np.ndarray]:
    """Session-by date and window as day offsets from as-of.

    Parameters
    ----------
    daily : ndarray of shape (n, D)
        Conditional risk at days 1..D after as-of (non-decreasing per row).
    threshold : float or ndarray of shape (n,)
        Risk accepted at the session-by date.
    days_since_session : ndarray of shape (n,)
        Days from the last session to as-of (>= 0).
    settings : PolicySettings
        Minimum / maximum interval and window fraction.

    Returns
    -------
    dict of ndarray
        ``session_by`` and ``window_start`` (days after as-of, >= 0),
        ``due`` (bool: session_due), ``raw`` (latest day with risk at or
        below the threshold, before clamping), ``clamp`` ("min", "max" or
        "") and ``risk_at`` (risk at the session-by date).
    """
    daily = np.asarray(daily, dtype=float)
    n, d_max = daily.shape
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), (n,))
    since = np.asarray(days_since_session, dtype=float).astype(int)
    # Latest day d in 0..D with risk(d) <= threshold (risk(0) = 0): the first
    # day above the threshold minus one, or D when it never crosses.
    above = daily > thr[:, None]
    raw = np.where(above.any(axis=1), above.argmax(axis=1), d_max)
    half = daily > (settings.window_fraction * thr)[:, None]
    raw_half = np.where(half.any(axis=1), half.argmax(axis=1), d_max)
    lo = settings.min_interval_days - since
    hi = settings.max_interval_days - since
    clamped = np.clip(raw, lo, hi)
    # "max" also when the risk never reaches the threshold on the grid: the
    # date is then set by the longest interval, not by the risk.
    at_max = (raw > hi) | (~above.any(axis=1) & (raw >= hi))
    clamp = np.where(raw < lo, "min", np.where(at_max, "max", ""))
    due = (raw == 0) | (clamped <= 0)
    session_by = np.maximum(clamped, 0)
    window_start = np.minimum(np.maximum(np.clip(raw_half, lo, hi), 0), session_by)
    idx = np.clip(session_by, 1, d_max) - 1
    risk_at = np.where(session_by > 0, daily[np.arange(n), idx], 0.0)
    # The risk within a week, quoted when the session is due today (risk_at is then 0).
    risk_week = daily[np.arange(n), min(7, d_max) - 1] if d_max else np.zeros(n)
    return {
        "session_by": session_by,
        "window_start": window_start,
        "due": due,
        "raw": raw,
        "clamp": clamp,
        "risk_at": risk_at,
        "risk_week": risk_week,
    }


def median_days(daily: np.ndarray) -> np.ndarray:
    """First day with risk >= 0.5 (float, NaN when not reached on the grid)."""
    hit = daily >= 0.5
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, np.nan).astype(float)


def unknown_inputs(model: Any, X: pd.DataFrame | None, rows: np.ndarray, n: int) -> list[list[str]]:
    """Per query, the inputs the history did not carry or that training never saw.

    Absent optional inputs are named as in :data:`forecast.absent.OPTIONAL_INPUTS`;
    a category value unseen in training as ``"<name> '<value>' (not seen in
    training)"``. The encoder gives both the average effect; the answer's
    caveats say so.
    """
    out: list[list[str]] = [[] for _ in range(n)]
    if X is None:
        return out
    for r, names in zip(rows, absent_inputs(X), strict=True):
        out[r].extend(names)
    encoder = getattr(model_bundle(model), "encoder", None)
    if encoder is None:
        return out
    for name, levels in encoder.categorical.items():
        if name not in X:
            continue
        values = X[name].to_numpy(dtype=object)
        unseen = pd.notna(values) & ~np.isin(values, np.asarray(levels, dtype=object))
        for r, v in zip(rows[unseen], values[unseen], strict=True):
            out[r].append(f"{name} '{v}' (not seen in training)")
    return out


@dataclass(frozen=True)
class ForecastFrame:
    """Everything computed for a set of queries before the answers are written.

    Attributes
    ----------
    q : DataFrame
        The normalised queries (``qi``, ``patient_id``, ``as_of``, ``threshold``).
    ctx : DataFrame
        Per query: the feature context at as-of and the safety level in force.
    flagged : dict of ndarray
        Flagged answers paired with their query (``qi``, ``date``, ``safety``,
        ``safety_reason``, ``closed_by``, ``in_force``).
    status, pre_safety : ndarray of str
        Status of each query after and before the safety override.
    days : ndarray of int
        The daily grid 1..D (days after as-of).
    daily, lower, upper : ndarray of shape (n, D)
        Risk curve and band per query (NaN where no risk applies).
    suggestion : dict of ndarray
        Output of :func:`suggest_offsets`.
    X : DataFrame or None
        The model's input rows of the personalised forecasts.
    forecast_rows : ndarray of int
        Queries that got a personalised forecast (rows of ``X``).
    unknown : list of list of str
        Per query, the categorical inputs missing or unseen in training.
    population : dict or None
        The model version's population curve.
    encoded : dict
        ``{"design": ...}``: the serving bundle's encoding of ``X`` (empty when
        the model object encodes its rows itself).
    """

    q: pd.DataFrame
    ctx: pd.DataFrame
    flagged: dict[str, np.ndarray]
    status: np.ndarray
    pre_safety: np.ndarray
    days: np.ndarray
    daily: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    suggestion: dict[str, np.ndarray]
    X: pd.DataFrame | None
    forecast_rows: np.ndarray
    unknown: list[list[str]]
    population: dict[str, list[float]] | None
    encoded: dict[str, np.ndarray] = field(default_factory=dict)


def forecast_frame(
    cohort: Cohort,
    model: Any,
    q: pd.DataFrame,
    settings: PolicySettings,
    daily: bool = True,
    *,
    answers: bool = True,
) -> ForecastFrame:
    """The vectorised core: context, statuses, risk grids and suggestions.

    ``q`` must come from the query normaliser (columns ``qi``, ``patient_id``,
    ``as_of``, ``threshold``). Used by :func:`forecast_queries` and by the
    policy evaluation (which re-suggests for many thresholds at once).

    The daily risk curve is always computed (the suggestion reads it); the
    bootstrap band only at the horizons unless ``daily`` (the band of each day
    does not depend on the other days, so the horizons' values are the same).
    With ``answers=False`` neither the band nor the unknown inputs are
    computed (only the answers show them; the predict table does not).
    """
    with_daily = daily
    definition = outcome_definition(model)
    ctx, flagged, columns = query_context(cohort, q, settings, definition)
    base_status = base_statuses(columns, settings)
    n = len(ctx)
    days = np.arange(1, settings.grid_days + 1)
    daily = np.full((n, len(days)), np.nan)
    lower = np.full_like(daily, np.nan)
    upper = np.full_like(daily, np.nan)
    rows = np.flatnonzero(base_status == "forecast")
    since = np.asarray(columns["days_since_session"], dtype=float)
    X = None
    design: dict[str, np.ndarray] = {}
    if len(rows):
        # Every row (a one-patient forecast, usually): the frame as it is, not a copy.
        X = ctx if len(rows) == n else ctx.iloc[rows].reset_index(drop=True)
        design = encoded(model, columns, None if len(rows) == n else rows)
        s0 = bundle_since_argument(model, since[rows])
        daily[rows] = risk_grid(model, X, days, s0, **design)
        band_days = days if with_daily else np.asarray(settings.horizons, dtype=int)
        band = (band_grid(model, X, band_days, settings.band_level, s0, **design)
                if answers else None)
        if band is not None:
            at = np.ix_(rows, band_days - 1)
            lower[at] = band[0]
            upper[at] = band[1]
    pop_rows = np.flatnonzero(base_status == "insufficient_data")
    pop_curve = population_from_model(model)
    pop = population_risk(pop_curve, since[pop_rows], days)
    daily[pop_rows] = pop
    sugg = suggest_offsets(
        np.nan_to_num(daily, nan=1.0), np.asarray(columns["threshold"]), np.nan_to_num(since),
        settings,
    )
    status = base_status.copy()
    fc = base_status == "forecast"
    status[fc] = np.where(sugg["due"][fc], "session_due", "routine")
    pre_safety = status.copy()
    level = np.asarray(columns["safety"], dtype=object)
    flagged_now = pd.notna(level)
    status[flagged_now] = [STATUS_OF_LEVEL[v] for v in level[flagged_now]]
    return ForecastFrame(
        q=q,
        ctx=ctx,
        flagged=flagged,
        status=status,
        pre_safety=pre_safety,
        days=days,
        daily=daily,
        lower=lower,
        upper=upper,
        suggestion=sugg,
        X=X,
        forecast_rows=rows,
        unknown=unknown_inputs(model, X if answers else None, rows, n),
        population=pop_curve,
        encoded=design,
    )
