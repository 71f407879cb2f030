"""Maintenance-timing suggestions with fixed safety overrides.

The policy turns a patient's history and a trained model into the forecast
answer of DESIGN.md: a status, the safety block, the conditional risk curve,
the suggested session-by date with a window, the drivers and the caveats.

Everything is computed for many (patient, as-of) queries at once: the history
is joined to the queries with sorted merges, the model is called once for all
queries on a daily grid, and the suggestion rules are array operations. Only
the final JSON-able dictionaries are built per query.

Rules (see README.md (policy section) for the clinical reasons):

- ``no_treatment``: no session on record by as-of.
- ``insufficient_data``: no baseline PHQ-9, or no valid PHQ-9 after the last
  session yet (response unknown), or fewer scores than the minimum history.
  The answer carries the population (Turnbull) estimate stored with the model
  version, labelled as such, never a personalised forecast.
- ``not_in_response``: the first PHQ-9 after the last session was not a
  response, or the benefit has visibly waned since (benefit-waned criteria of
  the outcome definition met at a later assessment).
- ``routine`` / ``session_due``: the personalised forecast; ``session_due``
  when the risk already exceeds the threshold within a day, or the clamped
  date is on or before as-of.
- ``urgent_review`` / ``safety_review``: a suicidal-ideation flag in force
  (level "urgent" / "review"; the rules of :mod:`forecast.instruments` and
  :mod:`forecast.safety`: every flagged answer since the last session, and
  any older one no negative screen has followed). It takes precedence over
  every other status; the safety block is filled for every status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecast.bundle import HAZARD_FAMILIES
from forecast.cohort import Cohort
from forecast.contract import HORIZONS, PREDICT_COLUMNS
from forecast.instruments import (
    DEFAULT_SAFETY_RULES,
    URGENT,
    SafetyRules,
    score_assessments,
)
from forecast.safety import (
    NO_FLAG_STATEMENT,
    SAFETY_STATUSES,
    STATUS_OF_LEVEL,
    flag_levels,
    pair_flags,
    safety_block,
)

__all__ = ["NO_FLAG_STATEMENT", "PolicySettings", "forecast_queries", "forecast_frame"]

DECISION_SUPPORT = "Decision support for a clinician only; it does not replace clinical judgement."
NOT_SI_ASSESSMENT = (
    "This forecast is about the waning of the antidepressant benefit; it is not a "
    "suicide-risk assessment, and the absence of a flag is not a clearance."
)
CONDITIONAL_ON = (
    "Probability that the benefit will have waned within H days after as-of, "
    "conditional on everything known up to as-of: the time since the last session, "
    "the scores so far and that no waning has been seen yet."
)
POPULATION_LABEL = "population estimate, not personalised"
FORECAST_STATUSES = ("routine", "session_due")


@dataclass(frozen=True)
class PolicySettings:
    """Knobs of the suggestion and status rules (defaults documented in the README).

    Parameters
    ----------
    threshold : float
        Risk (probability that the benefit has waned) accepted at the suggested
        session-by date. 0.20 books the next session while four in five
        comparable patients are still expected to be in response.
    min_interval_days : int
        No booster sooner than this many days after the last session. Seven
        days: ketamine's antidepressant effect builds over days after a
        session, a response is only measurable about a week later, and
        sessions closer than weekly are induction, not maintenance, schedules
        (SUSTAIN-1 maintenance was weekly at its most frequent).
    max_interval_days : int
        No suggestion later than this many days after the last session: 84
        (12 weeks) is the longest horizon the model reports, so a later date
        would rest on extrapolation.
    window_fraction : float
        The suggested window opens where the risk reaches this fraction of the
        threshold (0.5: half the threshold) and closes at the session-by date.
    min_phq9_scores : int
        Minimum number of valid PHQ-9 totals on record (2: the baseline and one
        after the last session).
    horizons : tuple of int
        Horizons (days after as-of) reported in the answer.
    band_level : float
        Coverage of the uncertainty band from the bootstrap ensemble.
    n_drivers : int
        Number of drivers reported (largest absolute contribution first).
    safety_rules : SafetyRules
        The fixed suicidal-ideation rules (forecast.instruments).
    """

    threshold: float = 0.20
    min_interval_days: int = 7
    max_interval_days: int = 84
    window_fraction: float = 0.5
    min_phq9_scores: int = 2
    horizons: tuple[int, ...] = HORIZONS
    band_level: float = 0.90
    n_drivers: int = 5
    safety_rules: SafetyRules = field(default=DEFAULT_SAFETY_RULES)

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if not 1 <= self.min_interval_days <= self.max_interval_days:
            raise ValueError(
                "min_interval_days must be at least 1 and at most max_interval_days, got "
                f"{self.min_interval_days} and {self.max_interval_days}"
            )
        if not 0.0 < self.window_fraction <= 1.0:
            raise ValueError(f"window_fraction must lie in (0, 1], got {self.window_fraction}")
        if not self.horizons or any(int(h) < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive whole days, got {self.horizons}")
        if not 0.0 < self.band_level < 1.0:
            raise ValueError(f"band_level must lie in (0, 1), got {self.band_level}")
        if self.min_phq9_scores < 1 or self.n_drivers < 0:
            raise ValueError("min_phq9_scores must be >= 1 and n_drivers >= 0")

    @property
    def grid_days(self) -> int:
        """Length of the daily risk grid (days after as-of)."""
        return int(max(self.max_interval_days, *self.horizons))


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, or raise ValueError when it is not in (0, 1)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not (0.0 < t < 1.0) or math.isnan(t):
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    return t


# ----------------------------------------------------------------------------
# Model access (LoadedModel from forecast.registry, or anything shaped like it)
# ----------------------------------------------------------------------------
def _definition(model: Any) -> Any:
    definition = getattr(model, "definition", None)
    if definition is None:
        from forecast.outcomes import OutcomeDefinition

        definition = OutcomeDefinition()
    return definition


def _def(definition: Any, name: str, default: float) -> float:
    """Read one threshold of the outcome definition (defaults of DESIGN.md)."""
    return float(getattr(definition, name, default))


def _version(model: Any) -> str | None:
    v = getattr(model, "version", None)
    return None if v is None else str(v)


def population_from_model(model: Any) -> dict[str, list[float]] | None:
    """The population survival curve stored with a model version, if any.

    Looked up as ``model.population_curve``, ``model.card["population_curve"]``
    or ``model.bundle.population_curve``: a dict with ``days`` (0, 1, ...) and
    ``survival`` (Turnbull estimate over the training episodes, aggregate
    only), stored at train time by :func:`forecast.training.train_and_save`.
    """
    for holder in (model, getattr(model, "bundle", None)):
        curve = getattr(holder, "population_curve", None)
        if curve:
            return dict(curve)
    card = getattr(model, "card", None)
    if isinstance(card, dict) and card.get("population_curve"):
        return dict(card["population_curve"])
    return None


# ----------------------------------------------------------------------------
# Context: what is known about each query's patient at as-of (vectorised)
# ----------------------------------------------------------------------------
def _normalise_queries(queries: pd.DataFrame, settings: PolicySettings) -> pd.DataFrame:
    if not isinstance(queries, pd.DataFrame):
        raise TypeError("queries must be a DataFrame with columns patient_id and as_of")
    missing = {"patient_id", "as_of"} - set(queries.columns)
    if missing:
        raise ValueError(f"queries lacks column(s) {sorted(missing)}; need patient_id, as_of")
    as_of = pd.to_datetime(queries["as_of"].to_numpy()).normalize()
    if as_of.isna().any():
        raise ValueError("queries has a blank as_of; give a date YYYY-MM-DD")
    if "threshold" in queries.columns:
        thr = pd.to_numeric(queries["threshold"], errors="coerce").to_numpy(dtype=float)
        thr = np.where(np.isnan(thr), settings.threshold, thr)
        for t in np.unique(thr):
            check_threshold(t)
    else:
        thr = np.full(len(queries), float(settings.threshold))
    # One constructor call (adding columns one by one costs more than the rest).
    return pd.DataFrame(
        {
            "patient_id": queries["patient_id"].astype(str).to_numpy(),
            "as_of": as_of.astype("datetime64[ns]").to_numpy(),
            "threshold": thr,
            "qi": np.arange(len(queries)),
        }
    )


def _asof_join(q: pd.DataFrame, rows: pd.DataFrame, cols: list[str], prefix: str) -> pd.DataFrame:
    """For each query, the last row of ``rows`` of its patient dated on or before as-of."""
    left = q[["qi", "patient_id", "as_of"]].sort_values("as_of", kind="stable")
    right = rows[["patient_id", "date", *cols]].sort_values("date", kind="stable")
    right = right.rename(columns={c: prefix + c for c in ["date", *cols]})
    merged = pd.merge_asof(
        left,
        right,
        left_on="as_of",
        right_on=prefix + "date",
        by="patient_id",
        direction="backward",
    )
    return merged.sort_values("qi").reset_index(drop=True)


def _context(
    cohort: Cohort, q: pd.DataFrame, settings: PolicySettings, definition: Any
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per-query context and features (aligned with ``q``) and the flagged assessments.

    The context comes from :func:`forecast.features.features_at` (the same
    function that builds the model's training rows, so "in response", "waned
    seen" and the baseline mean exactly what they mean for the model). The
    safety block needs every flagged answer since the last session, not only
    the worst one, so those rows are collected here.
    """
    from forecast.features import _features_at_days
    from forecast.outcomes import OutcomeDefinition

    n = len(q)
    # Assessments are scored once: the feature context scores them with the
    # default rules, so the same frame serves both when the rules are those.
    scored = score_assessments(cohort.assessments, settings.safety_rules)
    shared = scored if settings.safety_rules == DEFAULT_SAFETY_RULES else None
    q_pids = q["patient_id"].to_numpy(dtype=object)
    q_as_of = q["as_of"].to_numpy(dtype="datetime64[ns]")
    # The context's columns as arrays; the frame is built once at the end with
    # the new columns appended (as a concat of both frames would give).
    cols = _features_at_days(
        cohort, q_pids, q_as_of, definition or OutcomeDefinition(), scored=shared
    )
    last_session = np.asarray(cols["last_session"], dtype="datetime64[ns]")
    new: dict[str, np.ndarray] = {
        "qi": q["qi"].to_numpy(),
        "threshold": q["threshold"].to_numpy(),
        "has_session": ~np.isnat(last_session),
    }

    # PHQ-9 at the assessment where waning was seen (for the reason text).
    ctx_ids = np.asarray(cols["patient_id"], dtype=object)
    codes, _ = pd.factorize(np.concatenate([ctx_ids, scored["patient_id"].to_numpy(dtype=object)]))
    ctx_codes, scored_codes = codes[: len(ctx_ids)], codes[len(ctx_ids) :]
    phq9 = scored["phq9"].to_numpy(dtype=float)
    has_phq9 = ~np.isnan(phq9)
    scored_dates = scored["date"].to_numpy(dtype="datetime64[ns]")
    # Queries and the context rows share patient codes (same order, same ids).
    new["n_phq9"] = _count_upto_codes(
        ctx_codes, q_as_of, scored_codes[has_phq9], scored_dates[has_phq9]
    )
    waned_dates = np.asarray(cols["waned_date"], dtype="datetime64[ns]")
    # The first valid PHQ-9 of the patient on that day (as a left merge on
    # patient and date after dropping repeated days would give).
    at = _first_row_at(scored_codes[has_phq9], scored_dates[has_phq9], ctx_codes, waned_dates)
    new["waned_phq9"] = _take(phq9[has_phq9], at)
    # Which waning criterion the waning assessment met, so that the texts say
    # what happened: suicidal ideation can end the benefit while the PHQ-9
    # total is still in response, and "not in response" would then be false.
    # Same criteria and order as forecast.episodes (C-SSRS, item 9, symptoms).
    at = _first_row_at(scored_codes, scored_dates, ctx_codes, waned_dates)
    item9_all = scored["item9"].to_numpy(dtype=float)
    ws_item9 = _take(item9_all, at)
    ws_cssrs = _take(scored["cssrs_ideation"].to_numpy(dtype=float), at)
    # The item-9 criterion applies only when item 9 was exactly 0 at the
    # episode's start (its response assessment), as in forecast.episodes.
    start9 = _take(
        item9_all,
        _first_row_at(
            scored_codes,
            scored_dates,
            ctx_codes,
            np.asarray(cols["response_date"], dtype="datetime64[ns]"),
        ),
    )
    seen = np.asarray(cols["waned_seen"], dtype=bool)
    item9 = np.where(start9 == 0, ws_item9, np.nan)
    cssrs = ws_cssrs
    wphq = new["waned_phq9"]
    base = "baseline_phq9"
    with np.errstate(invalid="ignore"):
        new["waned_symptoms"] = (
            seen
            & (wphq > _def(definition, "response_fraction", 0.5) * np.asarray(cols[base]))
            & (wphq >= _def(definition, "waned_phq9_min", 10.0))
        )
        new["waned_cssrs"] = np.where(
            seen & (cssrs >= _def(definition, "si_cssrs_min", 2)), cssrs, np.nan
        )
        new["waned_item9"] = np.where(
            seen & (item9 >= _def(definition, "si_item9_min", 1)), item9, np.nan
        )

    # Every flagged answer on or before as-of, and whether it is still in force
    # (forecast.safety: since the last session, or not closed by a negative screen).
    pairs = pair_flags(
        scored, scored_codes, ctx_codes, q_as_of, last_session, settings.safety_rules
    )
    safety = scored["safety"].to_numpy(dtype=object)
    qi_all = q["qi"].to_numpy()
    flagged = {
        "qi": qi_all[pairs.query],
        "date": pairs.date,
        "safety": safety[pairs.row],
        "safety_reason": scored["safety_reason"].to_numpy(dtype=object)[pairs.row],
        "closed_by": pairs.closed_by,
        "in_force": pairs.in_force,
    }
    cols["safety"] = flag_levels(pairs, safety, n)
    assert not set(new) & set(cols)
    cols.update(new)
    return pd.DataFrame(cols, copy=False), flagged


def _count_upto_codes(
    q_codes: np.ndarray, q_dates: np.ndarray, r_codes: np.ndarray, r_dates: np.ndarray
) -> np.ndarray:
    """Per query, the number of rows of its patient (shared codes) dated on or before as-of."""
    r_keys = np.sort(_day_keys(r_codes, r_dates))
    q_keys = _day_keys(q_codes, q_dates)
    first = np.searchsorted(r_keys, _day_keys(q_codes, None), side="left")
    upto = np.searchsorted(r_keys, q_keys, side="right")
    return np.where(q_keys >= 0, upto - first, 0).astype(int)


def _count_upto(q: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Number of ``rows`` of the query's patient dated on or before as-of."""
    q_codes, r_codes = _patient_codes(q["patient_id"], rows["patient_id"])
    r_keys = np.sort(_day_keys(r_codes, rows["date"].to_numpy(dtype="datetime64[ns]")))
    q_keys = _day_keys(q_codes, q["as_of"].to_numpy(dtype="datetime64[ns]"))
    # Rows of the patient sit between key(code, -inf) and key(code, as-of).
    first = np.searchsorted(r_keys, _day_keys(q_codes, None), side="left")
    upto = np.searchsorted(r_keys, q_keys, side="right")
    return np.where(q_keys >= 0, upto - first, 0).astype(int)


#: Days are offset so that every datetime64[ns] day is a positive number below this.
_DAY_SPAN = 1_000_000
_DAY_OFFSET = 500_000


def _patient_codes(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of patient ids, shared by two columns."""
    left = a.to_numpy(dtype=object)
    codes, _ = pd.factorize(np.concatenate([left, b.to_numpy(dtype=object)]))
    return codes[: len(left)], codes[len(left) :]


def _day_keys(codes: np.ndarray, dates: np.ndarray | None) -> np.ndarray:
    """One sortable int64 per (patient code, day); -1 for a blank date.

    ``dates=None`` gives each patient's smallest key (before any day).
    """
    base = codes.astype(np.int64) * _DAY_SPAN
    if dates is None:
        return base
    days = dates.astype("datetime64[D]").astype(np.int64)
    keys = base + days + _DAY_OFFSET
    keys[np.isnat(dates) | (codes < 0)] = -1
    return keys


def _first_row_at(
    r_codes: np.ndarray, r_dates: np.ndarray, q_codes: np.ndarray, q_dates: np.ndarray
) -> np.ndarray:
    """Per query, the first row (in row order) of its patient on its day, else -1."""
    r_keys = _day_keys(r_codes, r_dates)
    q_keys = _day_keys(q_codes, q_dates)
    if not len(r_keys):
        return np.full(len(q_keys), -1)
    order = np.argsort(r_keys, kind="stable")
    sorted_keys = r_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, q_keys, side="left"), 0, len(order) - 1)
    hit = (sorted_keys[pos] == q_keys) & (q_keys >= 0)
    return np.where(hit, order[pos], -1)


def _take(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values[at]`` with NaN where ``at`` is -1."""
    if not len(values):
        return np.full(len(at), np.nan)
    return np.where(at >= 0, values[np.clip(at, 0, None)], np.nan)


# ----------------------------------------------------------------------------
# Status rules (vectorised)
# ----------------------------------------------------------------------------
def _statuses(ctx: pd.DataFrame, settings: PolicySettings) -> np.ndarray:
    """Status before the safety override ("forecast" where the model applies).

    Built from the ``response_status`` of the feature context: ``responded``
    (the first PHQ-9 within the response window after the last session was a
    response) is forecast unless waning has been seen since; ``not_responded``
    is not_in_response; ``pending`` (no PHQ-9 yet), ``no_baseline`` and too
    few scores are insufficient_data; ``no_assessment`` (the response window
    passed without a PHQ-9) is not_in_response when a later PHQ-9 since the
    session is out of response, else insufficient_data.
    """
    n = len(ctx)
    rs = ctx["response_status"].to_numpy(dtype=object)
    has_session = ctx["has_session"].to_numpy(dtype=bool)
    latest = ctx["latest_phq9"].to_numpy(dtype=float)
    cut = ctx["response_threshold"].to_numpy(dtype=float)
    after = ctx["latest_phq9_date"].to_numpy(dtype="datetime64[ns]") > ctx[
        "last_session"
    ].to_numpy(dtype="datetime64[ns]")
    with np.errstate(invalid="ignore"):
        latest_out = after & (latest > cut)
    status = np.full(n, "insufficient_data", dtype=object)
    status[rs == "responded"] = "forecast"
    status[(rs == "responded") & ctx["waned_seen"].to_numpy(dtype=bool)] = "not_in_response"
    status[rs == "not_responded"] = "not_in_response"
    status[(rs == "no_assessment") & latest_out] = "not_in_response"
    few = ctx["n_phq9"].to_numpy() < settings.min_phq9_scores
    status[(status == "forecast") & few] = "insufficient_data"
    status[~has_session] = "no_treatment"
    return status


# ----------------------------------------------------------------------------
# Risk curves
# ----------------------------------------------------------------------------
def _bundle(model: Any) -> Any:
    return getattr(model, "bundle", model)


def _since_origin(model: Any, days_since_session: np.ndarray) -> np.ndarray | None:
    """``since`` argument of the bundle: None for the dynamic kinds (features at as-of
    already condition on the time survived), else the days since the episode start."""
    if getattr(_bundle(model), "time_origin", "landmark") in ("landmark", "as_of"):
        return None
    return np.asarray(days_since_session, dtype=float)


def _risk_grid(model: Any, X: pd.DataFrame, days: np.ndarray, since: Any) -> np.ndarray:
    risk = np.asarray(_bundle(model).predict_risk(X, days, since=since), dtype=float)
    return np.clip(risk.reshape(len(X), len(days)), 0.0, 1.0)


def _band_grid(
    model: Any, X: pd.DataFrame, days: np.ndarray, level: float, since: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    bundle = _bundle(model)
    if not hasattr(bundle, "predict_risk_band") or getattr(bundle, "n_bootstrap", 0) == 0:
        return None
    lo, hi = bundle.predict_risk_band(X, days, level, since=since)
    lo = np.clip(np.asarray(lo, dtype=float).reshape(len(X), len(days)), 0.0, 1.0)
    hi = np.clip(np.asarray(hi, dtype=float).reshape(len(X), len(days)), 0.0, 1.0)
    return lo, hi


def _population_risk(
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


# ----------------------------------------------------------------------------
# The suggestion (vectorised over queries and, for the evaluation, thresholds)
# ----------------------------------------------------------------------------
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
    return {
        "session_by": session_by,
        "window_start": window_start,
        "due": due,
        "raw": raw,
        "clamp": clamp,
        "risk_at": risk_at,
    }


def _median_days(daily: np.ndarray) -> np.ndarray:
    """First day with risk >= 0.5 (float, NaN when not reached on the grid)."""
    hit = daily >= 0.5
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, np.nan).astype(float)


# ----------------------------------------------------------------------------
# Drivers
# ----------------------------------------------------------------------------
#: Missingness indicators whose feature name is not ``<name>_missing``.
_MISSING_OF: dict[str, str] = {
    "dose_missing": "dose_mg_per_kg",
    "slope_missing": "phq9_slope_28d",
    "item9_missing": "item9_latest",
    "cssrs_missing": "cssrs_latest",
}


def _merge_missing(contrib: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Fold each ``*_missing`` indicator into its feature (one driver per clinical item).

    A filled value (0 where missing) would otherwise show as a driver with a
    value the patient never had. Returns the merged contributions and a map
    feature -> indicator column.
    """
    values, indicator = _merge_missing_arrays(contrib)
    return pd.DataFrame(values, index=contrib.index), indicator


def _merge_missing_arrays(
    contrib: pd.DataFrame,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`_merge_missing` as a dict of column arrays (no frame built)."""
    matrix = contrib.to_numpy()
    values = {col: matrix[:, j] for j, col in enumerate(contrib.columns)}
    indicator: dict[str, str] = {}
    for col in list(contrib.columns):
        if not col.endswith("_missing"):
            continue
        target = _MISSING_OF.get(col, col[: -len("_missing")])
        if target in values:
            values[target] = values[target] + values.pop(col)
            indicator[target] = col
    return values, indicator


def _drivers(model: Any, X: pd.DataFrame, k: int) -> list[list[dict]]:
    """Top-``k`` contributions of each feature to the linear predictor, per row of ``X``.

    ``Bundle.drivers`` gives, per feature, coefficient x encoded value; the
    encoding is centred on the training mean, so a contribution says how this
    patient's value moves the prediction relative to the average training
    patient. For AFT families a positive contribution multiplies the expected
    benefit duration by ``exp(c)`` (lengthens); for Cox and the piecewise kind
    (``HAZARD_FAMILIES``) a positive contribution multiplies the waning hazard
    by ``exp(c)`` (shortens; for piecewise, averaged over its time windows). Missingness
    indicators are folded into their feature, whose value is then shown as
    null (missing).
    """
    bundle = _bundle(model)
    out: list[list[dict]] = [[] for _ in range(len(X))]
    if k == 0 or len(X) == 0 or not hasattr(bundle, "drivers"):
        return out
    idx = X.index
    plain = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
    # Read only: the frame as it is when its index is already 0..n-1.
    values = X if plain else X.reset_index(drop=True)
    merged, indicator = _merge_missing_arrays(bundle.drivers(values))
    if not merged:
        return out
    aft = getattr(bundle, "family", "") not in HAZARD_FAMILIES
    c = np.column_stack(list(merged.values())).astype(float, copy=False)
    names = list(merged)
    order = np.argsort(-np.abs(c), axis=1, kind="stable")[:, :k]
    meaning = (
        "time ratio: the expected benefit duration is multiplied by this factor compared "
        "with the average training patient"
        if aft
        else "hazard ratio: the waning hazard is multiplied by this factor compared with "
        "the average training patient"
    )
    for r in range(len(X)):
        items = []
        for col in order[r]:
            v = float(c[r, col])
            # Contributions below 1 % on the multiplicative scale move nothing
            # a clinician could see; leave them out.
            if not np.isfinite(v) or abs(v) < 0.01:
                continue
            feat = names[col]
            ind = indicator.get(feat)
            missing = ind is not None and ind in values and values.at[r, ind] == 1
            value = None if missing or feat not in values else _jsonable(values.at[r, feat])
            longer = (v > 0) == aft
            factor = float(np.exp(v))
            items.append(
                {
                    "feature": feat,
                    "value": value,
                    "direction": "lengthens" if longer else "shortens",
                    "size": round(factor, 2),
                    "size_meaning": meaning,
                }
            )
        out[r] = items
    return out


# ----------------------------------------------------------------------------
# Answers
# ----------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d")
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else round(float(v), 3)
    if isinstance(v, str):
        return v
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _d(ts: Any) -> str | None:
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d")


def _human(ts: Any) -> str:
    t = pd.Timestamp(ts)
    return f"{t.day} {t.strftime('%b %Y')}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _int(x: Any) -> int | None:
    return None if x is None or pd.isna(x) else int(x)


def forecast_queries(
    cohort: Cohort,
    model: Any,
    queries: pd.DataFrame,
    settings: PolicySettings | None = None,
) -> list[dict]:
    """Forecast answers for (patient, as-of) queries.

    Parameters
    ----------
    cohort : Cohort
        Histories of the queried patients (rows after a query's as-of are
        ignored for that query).
    model : LoadedModel
        A registry version (``.version``, ``.card``, ``.bundle``, ``.definition``).
    queries : DataFrame
        ``patient_id``, ``as_of`` and an optional per-row ``threshold``.
    settings : PolicySettings, optional
        Rules and defaults.

    Returns
    -------
    list of dict
        One JSON-able answer per query, in query order (see module docstring
        and README.md (policy section) for the keys).
    """
    settings = settings or PolicySettings()
    q = _normalise_queries(queries, settings)
    unknown = set(q["patient_id"]) - set(cohort.patients["patient_id"].astype(str))
    if unknown:
        raise ValueError(f"{len(unknown)} queried patient(s) are not in the cohort")
    frame = forecast_frame(cohort, model, q, settings)
    return _answers(frame, model, settings)


def forecast_frame(
    cohort: Cohort, model: Any, q: pd.DataFrame, settings: PolicySettings
) -> dict[str, Any]:
    """The vectorised core: context, statuses, risk grids and suggestions.

    ``q`` must come from the query normaliser (columns ``qi``, ``patient_id``,
    ``as_of``, ``threshold``). Used by :func:`forecast_queries` and by the
    policy evaluation (which re-suggests for many thresholds at once).
    """
    definition = _definition(model)
    ctx, flagged = _context(cohort, q, settings, definition)
    base_status = _statuses(ctx, settings)
    n = len(ctx)
    days = np.arange(1, settings.grid_days + 1)
    daily = np.full((n, len(days)), np.nan)
    lower = np.full_like(daily, np.nan)
    upper = np.full_like(daily, np.nan)
    rows = np.flatnonzero(base_status == "forecast")
    since = ctx["days_since_session"].to_numpy(dtype=float)
    X = None
    if len(rows):
        # Every row (a one-patient forecast, usually): the frame as it is, not a copy.
        X = ctx if len(rows) == n else ctx.iloc[rows].reset_index(drop=True)
        s0 = _since_origin(model, since[rows])
        daily[rows] = _risk_grid(model, X, days, s0)
        band = _band_grid(model, X, days, settings.band_level, s0)
        if band is not None:
            lower[rows], upper[rows] = band
    pop_rows = np.flatnonzero(base_status == "insufficient_data")
    pop_curve = population_from_model(model)
    pop = _population_risk(pop_curve, since[pop_rows], days)
    daily[pop_rows] = pop
    sugg = suggest_offsets(
        np.nan_to_num(daily, nan=1.0), ctx["threshold"].to_numpy(), np.nan_to_num(since), settings
    )
    status = base_status.copy()
    fc = base_status == "forecast"
    status[fc] = np.where(sugg["due"][fc], "session_due", "routine")
    pre_safety = status.copy()
    level = ctx["safety"].to_numpy(dtype=object)
    flagged_now = pd.notna(level)
    status[flagged_now] = [STATUS_OF_LEVEL[v] for v in level[flagged_now]]
    return {
        "q": q,
        "ctx": ctx,
        "flagged": flagged,
        "status": status,
        "pre_safety": pre_safety,
        "days": days,
        "daily": daily,
        "lower": lower,
        "upper": upper,
        "suggestion": sugg,
        "X": X,
        "forecast_rows": rows,
        "unknown": _unknown_inputs(model, X, rows, n),
        "population": pop_curve,
    }


def _unknown_inputs(
    model: Any, X: pd.DataFrame | None, rows: np.ndarray, n: int
) -> list[list[str]]:
    """Per query, the categorical inputs that were missing or unseen in training.

    The encoder gives such values the average effect (forecast.bundle.Encoder);
    the answer says so in its caveats.
    """
    out: list[list[str]] = [[] for _ in range(n)]
    encoder = getattr(_bundle(model), "encoder", None)
    if X is None or encoder is None:
        return out
    for name, levels in encoder.categorical.items():
        if name not in X:
            continue
        bad = ~np.isin(X[name].to_numpy(dtype=object), np.asarray(levels, dtype=object))
        for r in rows[bad]:
            out[r].append(name)
    return out


def _answers(frame: dict[str, Any], model: Any, settings: PolicySettings) -> list[dict]:
    ctx = frame["ctx"]
    status = frame["status"]
    pre = frame["pre_safety"]
    days = frame["days"]
    daily, lower, upper = frame["daily"], frame["lower"], frame["upper"]
    sugg = frame["suggestion"]
    version = _version(model)
    frac = _def(_definition(model), "response_fraction", 0.5)
    medians = _median_days(np.nan_to_num(daily, nan=0.0))
    hidx = np.asarray(settings.horizons, dtype=int) - 1
    drivers: list[list[dict]] = [[] for _ in range(len(ctx))]
    if frame["X"] is not None:
        for r, items in zip(
            frame["forecast_rows"], _drivers(model, frame["X"], settings.n_drivers), strict=True
        ):
            drivers[r] = items
    flagged = frame["flagged"]
    # Stable order by (qi, date), as a stable sort of the rows by both.
    f_order = np.lexsort((flagged["date"], flagged["qi"]))
    f_dates = pd.DatetimeIndex(flagged["date"][f_order])
    # Each query's flagged answers (date, answer, level, closed by, in force), in date order.
    flag_groups: dict[int, list[tuple[Any, str, str, Any, bool]]] = {}
    for qi, day, reason, level, closed_by, in_force in zip(
        flagged["qi"][f_order].tolist(),
        list(f_dates),
        flagged["safety_reason"][f_order].tolist(),
        flagged["safety"][f_order].tolist(),
        list(pd.DatetimeIndex(flagged["closed_by"][f_order])),
        flagged["in_force"][f_order].tolist(),
        strict=True,
    ):
        flag_groups.setdefault(qi, []).append((day, str(reason), level, closed_by, in_force))
    population_text = _population_text(model)
    caveats_base = [
        DECISION_SUPPORT,
        NOT_SI_ASSESSMENT,
        f"Model version {version or 'unknown'}; valid only for patients like those it was "
        f"trained on{population_text}.",
    ]

    answers = []
    records = _records(ctx)
    for i, c in enumerate(records):
        st = str(status[i])
        base = str(pre[i])
        as_of = pd.Timestamp(c["as_of"])
        safety = safety_block(
            c["safety"], flag_groups.get(i, []), c["last_session"] if c["has_session"] else None
        )
        personal = base in FORECAST_STATUSES
        population = base == "insufficient_data" and not np.isnan(daily[i]).all()
        risk = None
        median = None
        median_reason = None
        if personal or population:
            risk = _risk_block(days, daily[i], lower[i], upper[i], hidx, personal, settings)
            if personal:
                median = _int(medians[i])
                if median is None:
                    median_reason = (
                        f"The risk stays below 50 % within the {len(days)}-day horizon, so the "
                        "median remaining benefit lies beyond what the model reports."
                    )
        if median is None and median_reason is None:
            median_reason = "No personalised forecast applies to this status."
        suggestion = _suggestion_block(c, i, sugg, base, personal, population, as_of, settings)
        if st in SAFETY_STATUSES:
            first = (
                "Review the suicidal-ideation answer first; this maintenance timing applies "
                "only after that review. "
                if suggestion["session_by"]
                else "Review the suicidal-ideation answer first. "
            )
            suggestion["rationale"] = first + suggestion["rationale"]
        caveats = list(caveats_base)
        if personal and frame["unknown"][i]:
            caveats.append(
                "Not recorded or not seen in training: "
                + ", ".join(frame["unknown"][i])
                + "; the model used the average effect of the training patients for it."
            )
        if population:
            caveats.append(
                "The risks shown are a population estimate from the model's training "
                "episodes, not a personalised forecast."
            )
        if st in SAFETY_STATUSES:
            caveats.append(
                "Suicidal-ideation answers override any maintenance timing; review them first."
            )
        answers.append(
            {
                "patient_id": c["patient_id"],
                "as_of": _d(as_of),
                "model_version": version,
                "status": st,
                "status_reason": _status_reason(st, base, c, sugg, i, safety, frac),
                "safety": safety,
                "days_since_session": _int(c["days_since_session"]),
                "last_session": (
                    {"date": _d(c["last_session"]), "kind": c["last_session_kind"]}
                    if c["has_session"]
                    else None
                ),
                "current": {
                    "phq9": _int(c["latest_phq9"]),
                    "severity": (c["severity"] if _int(c["latest_phq9"]) is not None else None),
                    "date": _d(c["latest_phq9_date"]),
                    "response_state": c["response_state"],
                    "baseline_phq9": _int(c["baseline_phq9"]),
                    "change_from_baseline": (
                        None
                        if pd.isna(c["baseline_phq9"]) or pd.isna(c["latest_phq9"])
                        else int(c["latest_phq9"] - c["baseline_phq9"])
                    ),
                },
                "risk": risk,
                "median_remaining_days": median,
                "median_reason": median_reason,
                "suggestion": suggestion,
                "drivers": drivers[i],
                "caveats": caveats,
                "decision_support": True,
            }
        )
    return answers


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame.to_dict("records")``: the same Python values, at a fraction of the cost.

    ``to_dict`` works column by column, which dominates on the wide context
    frame of a one-patient forecast; one conversion of the whole frame to
    objects gives the same values (Timestamps for dates, Python numbers and
    booleans, object cells boxed as ``to_dict`` boxes them). A test checks
    both agree.
    """
    from pandas.core.dtypes.cast import maybe_box_native

    columns = frame.columns.tolist()
    values = frame.to_numpy(dtype=object)
    for j, dtype in enumerate(frame.dtypes):
        if not isinstance(dtype, np.dtype) or dtype.kind == "O":
            values[:, j] = [maybe_box_native(v) for v in values[:, j]]
    return [dict(zip(columns, row, strict=True)) for row in values.tolist()]


def _population_text(model: Any) -> str:
    card = getattr(model, "card", None)
    if isinstance(card, dict):
        use = card.get("intended_use")
        pop = use.get("population") if isinstance(use, dict) else card.get("population")
        if isinstance(pop, str) and pop:
            return f" ({pop})"
    return ""


def _risk_block(
    days: np.ndarray,
    daily: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    hidx: np.ndarray,
    personal: bool,
    settings: PolicySettings,
) -> dict:
    def r(a: np.ndarray) -> list[float | None]:
        # Python floats and one finiteness mask: the same values as rounding
        # each numpy scalar, at a third of the cost on daily curves.
        finite = np.isfinite(a).tolist()
        return [round(x, 4) if f else None for x, f in zip(a.tolist(), finite, strict=True)]

    has_band = personal and np.isfinite(lower).any()
    horizons = []
    for h, j in zip(settings.horizons, hidx, strict=True):
        horizons.append(
            {
                "days": int(h),
                "risk": r(daily[[j]])[0],
                "lower": r(lower[[j]])[0] if has_band else None,
                "upper": r(upper[[j]])[0] if has_band else None,
            }
        )
    block = {
        "kind": "personalised" if personal else "population",
        "horizons": horizons,
        "daily": {
            "days": days.astype(int).tolist(),
            "risk": r(daily),
            "lower": r(lower) if has_band else [],
            "upper": r(upper) if has_band else [],
        },
        "conditional_on": CONDITIONAL_ON,
        "band": (
            f"{100 * settings.band_level:.0f} % band: quantiles of the model's bootstrap "
            "ensemble (the model refitted on resampled patients), showing how much the "
            "estimate moves with the training data."
            if has_band
            else "No band: "
            + (
                "the model version has no bootstrap ensemble."
                if personal
                else "the population estimate is shown without a band."
            )
        ),
    }
    if not personal:
        block["label"] = POPULATION_LABEL
        block["conditional_on"] = (
            "Population estimate, not personalised: the share of the model's training "
            "episodes whose benefit waned within H days, among those still without waning "
            "this long after their session (Turnbull estimate)."
        )
    return block


def _suggestion_block(
    c: dict,
    i: int,
    sugg: dict[str, np.ndarray],
    base: str,
    personal: bool,
    population: bool,
    as_of: pd.Timestamp,
    settings: PolicySettings,
) -> dict:
    thr = float(c["threshold"])
    empty = {
        "session_by": None,
        "window_start": None,
        "window_end": None,
        "threshold": round(thr, 3),
        "basis": None,
    }
    if not (personal or population):
        reasons = {
            "no_treatment": "No maintenance date is suggested: there is no session on record.",
            "not_in_response": (
                f"No maintenance date is suggested: {_not_in_response_why(c)}; review the "
                "treatment plan."
            ),
            "insufficient_data": (
                "No maintenance date is suggested: the data are insufficient and the model "
                "version stores no population estimate."
            ),
        }
        return {**empty, "rationale": reasons.get(base, "No maintenance date is suggested.")}
    by = as_of + pd.Timedelta(days=int(sugg["session_by"][i]))
    ws = as_of + pd.Timedelta(days=int(sugg["window_start"][i]))
    risk_at = float(sugg["risk_at"][i])
    if sugg["due"][i]:
        text = (
            f"Book the next session now (by {_human(by)}): the risk that the benefit has "
            f"waned is already above the {_pct(thr)} threshold"
        )
        if sugg["clamp"][i] == "min":
            text += f" (not sooner than {settings.min_interval_days} days after the last session)"
    elif sugg["clamp"][i] == "max":
        text = (
            f"Book the next session by {_human(by)}; risk that the benefit has waned by then "
            f"is {_pct(risk_at)} ({settings.max_interval_days // 7} weeks after the last session "
            "is the longest interval the model reports)"
        )
    elif sugg["clamp"][i] == "min":
        text = (
            f"Book the next session by {_human(by)}; risk that the benefit has waned by then "
            f"is {_pct(risk_at)} (not sooner than {settings.min_interval_days} days after the "
            "last session)"
        )
    else:
        text = (
            f"Book the next session by {_human(by)}; risk that the benefit has waned by then "
            f"is {_pct(risk_at)}"
        )
    if population:
        text += "; population estimate, not personalised"
    return {
        "session_by": _d(by),
        "window_start": _d(ws),
        "window_end": _d(by),
        "threshold": round(thr, 3),
        "basis": "personalised" if personal else "population",
        "rationale": text + ".",
    }


def _si_waning(c: dict) -> str | None:
    """``"C-SSRS ... level 4 on <date>"`` when suicidal ideation ended the benefit, else None."""
    parts = []
    if pd.notna(c.get("waned_cssrs")):
        parts.append(f"C-SSRS screener ideation level {_int(c['waned_cssrs'])}")
    if pd.notna(c.get("waned_item9")):
        parts.append(f"PHQ-9 item 9 answered {_int(c['waned_item9'])}")
    if not c.get("waned_seen") or not parts:
        return None
    return " and ".join(parts) + f" on {_d(c['waned_date'])}"


def _not_in_response_why(c: dict) -> str:
    """Why status not_in_response applies, as a clause that agrees with ``current``.

    The status comes from the last session's episode (no response, or waning
    seen since); ``current.response_state`` describes the latest PHQ-9 only.
    The clause names the measured cause so that the two never read as a
    contradiction (e.g. waning by suicidal ideation while the PHQ-9 is still
    in response, or a later score back in response after a non-response).
    """
    si = _si_waning(c)
    if si is not None:
        out = f"suicidal ideation re-emerged since the last session ({si})"
        if c.get("waned_symptoms"):
            out += f" and PHQ-9 {_int(c['waned_phq9'])} is no longer in response"
        return out
    if c["waned_seen"]:
        return (
            f"the benefit has waned since the last session (PHQ-9 {_int(c['waned_phq9'])} "
            f"on {_d(c['waned_date'])}, no longer in response)"
        )
    if c["response_status"] == "not_responded":
        return (
            f"the last session ({_d(c['last_session'])}) did not lead to response (PHQ-9 "
            f"{_int(c['response_phq9'])} on {_d(c['response_date'])})"
        )
    return (
        f"the latest PHQ-9 since the last session ({_int(c['latest_phq9'])} on "
        f"{_d(c['latest_phq9_date'])}) is not in response"
    )


def _in_response_now(c: dict) -> bool:
    return c["response_state"] in ("in_response", "in_remission")


def _status_reason(
    st: str, base: str, c: dict, sugg: dict[str, np.ndarray], i: int, safety: dict, frac: float
) -> str:
    """One explanatory sentence (or two) for every status, with the measured numbers."""
    if st in SAFETY_STATUSES:
        worst = [t for t in safety["triggered_by"] if t["level"] == safety["level"]]
        pick = worst[-1] if worst else None
        kind = "An urgent" if safety["level"] == URGENT else "A review"
        where = ""
        if pick:
            when = (
                "since the last session"
                if pick["since_last_session"] or not c["has_session"]
                else "before the last session, with no negative screen since"
            )
            where = f" ({pick['answer']} on {pick['date']}, {when})"
        more = len(safety["triggered_by"]) - 1
        extra = (
            f"; {more} further flagged answer{'s' if more > 1 else ''} listed under safety"
            if more > 0
            else ""
        )
        return (
            f"{kind} suicidal-ideation flag is in force{where}{extra}. Clinical "
            "review of the suicidal-ideation answer comes before any maintenance planning."
        )
    if st == "no_treatment":
        return "No ketamine session is on record by this date, so there is no benefit to forecast."
    b = _int(c["baseline_phq9"])
    cut = _int(np.floor(c["response_threshold"])) if pd.notna(c["response_threshold"]) else None
    rule = f"response means a PHQ-9 at or below {cut} ({_pct(frac)} of the baseline {b})"
    population = "the risks shown, if any, are a population estimate, not personalised."
    if st == "insufficient_data":
        if pd.isna(c["baseline_phq9"]):
            return (
                "No baseline PHQ-9 (the last score on or before the first induction session, "
                "within the baseline window), so response cannot be measured; " + population
            )
        if c["response_status"] == "pending":
            return (
                f"No PHQ-9 since the last session on {_d(c['last_session'])} yet, so the "
                "response to it is not known; " + population
            )
        if c["response_status"] == "no_assessment":
            return (
                f"No PHQ-9 within the response window after the last session on "
                f"{_d(c['last_session'])}, so its response was not measured; " + population
            )
        return (
            f"Only {int(c['n_phq9'])} PHQ-9 score(s) on record; too few for a personalised "
            "forecast; " + population
        )
    if st == "not_in_response":
        si = _si_waning(c)
        if si is not None:
            phq = (
                f"; the PHQ-9 ({_int(c['latest_phq9'])} on {_d(c['latest_phq9_date'])}) is "
                "still in response"
                if _in_response_now(c)
                else ""
            )
            return (
                f"Suicidal ideation re-emerged since the last session ({si}), which counts as "
                f"the benefit having waned{phq}. Review the suicidal-ideation answer and the "
                "treatment plan."
            )
        if c["waned_seen"]:
            return (
                f"The benefit has visibly waned since the last session: PHQ-9 "
                f"{_int(c['waned_phq9'])} on {_d(c['waned_date'])}; {rule}. Review the "
                "treatment plan."
            )
        if c["response_status"] == "not_responded":
            later = (
                f" The latest PHQ-9 ({_int(c['latest_phq9'])} on {_d(c['latest_phq9_date'])}) "
                "is in response, but the response to a session is measured at its first PHQ-9."
                if _in_response_now(c)
                else ""
            )
            return (
                f"The last session ({_d(c['last_session'])}) did not lead to response: PHQ-9 "
                f"{_int(c['response_phq9'])} on {_d(c['response_date'])}; {rule}.{later} Review "
                "the treatment plan."
            )
        return (
            f"Not in response since the last session ({_d(c['last_session'])}): PHQ-9 "
            f"{_int(c['latest_phq9'])} on {_d(c['latest_phq9_date'])}; {rule}. Review the "
            "treatment plan."
        )
    if st == "session_due":
        if sugg["raw"][i] == 0:
            why = "the forecast risk that the benefit has waned exceeds the threshold already"
        else:
            why = "the longest interval after the last session has been reached"
        return f"{_responded_text(c, rule)}, but {why}: a session is due now."
    return f"{_responded_text(c, rule)}; the suggestion follows the personalised forecast."


def _responded_text(c: dict, rule: str) -> str:
    """The first clause of routine / session_due, true to ``current.response_state``.

    The forecast applies from the session's response until waning is seen;
    a latest score above the response threshold but below the waning
    cut-off is neither "in response" nor "waned", and is said as such.
    """
    latest = f"PHQ-9 {_int(c['latest_phq9'])} on {_d(c['latest_phq9_date'])}"
    if _in_response_now(c):
        return f"In response after the last session ({latest}; {rule})"
    return (
        f"Responded after the last session (PHQ-9 {_int(c['response_phq9'])} on "
        f"{_d(c['response_date'])}); the latest score ({latest}) is above the response "
        f"threshold but not counted as waned ({rule})"
    )


def forecast_cohort(
    cohort: Cohort,
    model: Any,
    as_of: str | pd.Timestamp,
    settings: PolicySettings | None = None,
) -> list[dict]:
    """Forecast answers for every patient of ``cohort`` at one date.

    Parameters
    ----------
    cohort : Cohort
        A clinic's data.
    model : LoadedModel
        A registry version.
    as_of : str or Timestamp
        Date of the forecast (rows after it are ignored).
    settings : PolicySettings, optional
        Rules and defaults.

    Returns
    -------
    list of dict
        One answer per patient, in the order of ``cohort.patients``.
    """
    q = pd.DataFrame(
        {"patient_id": cohort.patients["patient_id"].astype(str).to_numpy(), "as_of": as_of}
    )
    return forecast_queries(cohort, model, q, settings)


def forecast_rows(answers: list[dict]) -> pd.DataFrame:
    """Flatten answers into the ``forecast predict`` table (contract.PREDICT_COLUMNS).

    ``risk_Hd`` and ``median_days`` are blank unless the answer carries a
    personalised forecast; ``safety`` is "urgent", "review" or blank;
    ``suggested_date`` is the session-by date of a personalised suggestion.
    """
    rows = []
    for a in answers:
        risk = a.get("risk") or {}
        personal = risk.get("kind") == "personalised"
        by_h = {h["days"]: h["risk"] for h in risk.get("horizons", [])} if personal else {}
        sugg = a.get("suggestion") or {}
        row = {
            "patient_id": a["patient_id"],
            "as_of": a["as_of"],
            "status": a["status"],
            "safety": (a.get("safety") or {}).get("level"),
            "days_since_session": a.get("days_since_session"),
            **{f"risk_{h}d": by_h.get(h) for h in HORIZONS},
            "median_days": a.get("median_remaining_days") if personal else None,
            "suggested_date": (
                sugg.get("session_by") if sugg.get("basis") == "personalised" else None
            ),
        }
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(PREDICT_COLUMNS))
    df["days_since_session"] = df["days_since_session"].astype("Int64")
    df["median_days"] = df["median_days"].astype("Int64")
    for h in HORIZONS:
        df[f"risk_{h}d"] = pd.to_numeric(df[f"risk_{h}d"], errors="coerce").astype(float)
    return df
