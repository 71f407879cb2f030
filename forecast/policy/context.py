"""What is known about each query's patient at its as-of date (vectorised over queries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.features import _features_at_days
from forecast.instruments import DEFAULT_SAFETY_RULES, score_assessments
from forecast.outcomes import OutcomeDefinition
from forecast.policy.model_access import definition_value
from forecast.policy.settings import PolicySettings, check_threshold
from forecast.safety import flag_levels, pair_flags


def normalise_queries(queries: pd.DataFrame, settings: PolicySettings) -> pd.DataFrame:
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


def _waning_cause(
    cols: dict[str, np.ndarray],
    scored: pd.DataFrame,
    ctx_codes: np.ndarray,
    scored_codes: np.ndarray,
    definition: Any,
) -> dict[str, np.ndarray]:
    """The PHQ-9 where waning was seen and which waning criterion it met.

    So that the texts say what happened: suicidal ideation can end the benefit
    while the PHQ-9 total is still in response, and "not in response" would
    then be false. Same criteria and order as forecast.episodes (C-SSRS,
    item 9, symptoms).
    """
    phq9 = scored["phq9"].to_numpy(dtype=float)
    has_phq9 = ~np.isnan(phq9)
    scored_dates = scored["date"].to_numpy(dtype="datetime64[ns]")
    waned_dates = np.asarray(cols["waned_date"], dtype="datetime64[ns]")
    # The first valid PHQ-9 of the patient on that day (as a left merge on
    # patient and date after dropping repeated days would give).
    at = first_row_on_day(scored_codes[has_phq9], scored_dates[has_phq9], ctx_codes, waned_dates)
    wphq = take_or_nan(phq9[has_phq9], at)
    at = first_row_on_day(scored_codes, scored_dates, ctx_codes, waned_dates)
    item9_all = scored["item9"].to_numpy(dtype=float)
    ws_item9 = take_or_nan(item9_all, at)
    cssrs = take_or_nan(scored["cssrs_ideation"].to_numpy(dtype=float), at)
    # The item-9 criterion applies only when item 9 was exactly 0 at the
    # episode's start (its response assessment), as in forecast.episodes.
    start9 = take_or_nan(
        item9_all,
        first_row_on_day(
            scored_codes,
            scored_dates,
            ctx_codes,
            np.asarray(cols["response_date"], dtype="datetime64[ns]"),
        ),
    )
    seen = np.asarray(cols["waned_seen"], dtype=bool)
    item9 = np.where(start9 == 0, ws_item9, np.nan)
    response_fraction = definition_value(definition, "response_fraction", 0.5)
    with np.errstate(invalid="ignore"):
        return {
            "waned_phq9": wphq,
            "waned_symptoms": (
                seen
                & (wphq > response_fraction * np.asarray(cols["baseline_phq9"]))
                & (wphq >= definition_value(definition, "waned_phq9_min", 10.0))
            ),
            "waned_cssrs": np.where(
                seen & (cssrs >= definition_value(definition, "si_cssrs_min", 2)), cssrs, np.nan
            ),
            "waned_item9": np.where(
                seen & (item9 >= definition_value(definition, "si_item9_min", 1)), item9, np.nan
            ),
        }


def query_context(
    cohort: Cohort, q: pd.DataFrame, settings: PolicySettings, definition: Any
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-query context and features (aligned with ``q``), the flagged assessments,
    and the context's columns as the arrays the frame was built from (read-only:
    the frame shares them; reading an array costs nothing, a frame column does).

    The context comes from :func:`forecast.features.features_at` (the same
    function that builds the model's training rows, so "in response", "waned
    seen" and the baseline mean exactly what they mean for the model). The
    safety block needs every flagged answer on or before as-of with whether
    it is in force (:mod:`forecast.safety`), so those rows are collected here.
    """
    n = len(q)
    # Assessments are scored once: the feature context scores them with the
    # default rules, so the same frame serves both when the rules are those.
    scored = score_assessments(cohort.assessments, settings.safety_rules)
    shared = scored if settings.safety_rules == DEFAULT_SAFETY_RULES else None
    q_pids = q["patient_id"].to_numpy(dtype=object)
    q_as_of = q["as_of"].to_numpy(dtype="datetime64[ns]")
    # The context's columns as arrays; the frame is built once at the end with
    # the new columns appended (as a concat of both frames would give).
    # The safety columns come from the flag pairs below (one pairing, not two).
    cols = _features_at_days(
        cohort, q_pids, q_as_of, definition or OutcomeDefinition(), scored=shared, safety=False
    )
    last_session = np.asarray(cols["last_session"], dtype="datetime64[ns]")
    new: dict[str, np.ndarray] = {
        "qi": q["qi"].to_numpy(),
        "threshold": q["threshold"].to_numpy(),
        "has_session": ~np.isnat(last_session),
    }
    ctx_ids = np.asarray(cols["patient_id"], dtype=object)
    codes, _ = pd.factorize(np.concatenate([ctx_ids, scored["patient_id"].to_numpy(dtype=object)]))
    # Queries and the context rows share patient codes (same order, same ids).
    ctx_codes, scored_codes = codes[: len(ctx_ids)], codes[len(ctx_ids) :]
    has_phq9 = scored["phq9"].notna().to_numpy()
    scored_dates = scored["date"].to_numpy(dtype="datetime64[ns]")
    new["n_phq9"] = count_rows_up_to(
        ctx_codes, q_as_of, scored_codes[has_phq9], scored_dates[has_phq9]
    )
    new.update(_waning_cause(cols, scored, ctx_codes, scored_codes, definition))

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
    return pd.DataFrame(cols, copy=False), flagged, cols


def count_rows_up_to(
    q_codes: np.ndarray, q_dates: np.ndarray, r_codes: np.ndarray, r_dates: np.ndarray
) -> np.ndarray:
    """Per query, the number of rows of its patient (shared codes) dated on or before as-of."""
    r_keys = np.sort(day_keys(r_codes, r_dates))
    q_keys = day_keys(q_codes, q_dates)
    first = np.searchsorted(r_keys, day_keys(q_codes, None), side="left")
    upto = np.searchsorted(r_keys, q_keys, side="right")
    return np.where(q_keys >= 0, upto - first, 0).astype(int)


#: Days are offset so that every datetime64[ns] day is a positive number below this.
DAY_SPAN = 1_000_000


DAY_OFFSET = 500_000


def day_keys(codes: np.ndarray, dates: np.ndarray | None) -> np.ndarray:
    """One sortable int64 per (patient code, day); -1 for a blank date.

    ``dates=None`` gives each patient's smallest key (before any day).
    """
    base = codes.astype(np.int64) * DAY_SPAN
    if dates is None:
        return base
    days = dates.astype("datetime64[D]").astype(np.int64)
    keys = base + days + DAY_OFFSET
    keys[np.isnat(dates) | (codes < 0)] = -1
    return keys


def first_row_on_day(
    r_codes: np.ndarray, r_dates: np.ndarray, q_codes: np.ndarray, q_dates: np.ndarray
) -> np.ndarray:
    """Per query, the first row (in row order) of its patient on its day, else -1."""
    r_keys = day_keys(r_codes, r_dates)
    q_keys = day_keys(q_codes, q_dates)
    if not len(r_keys):
        return np.full(len(q_keys), -1)
    order = np.argsort(r_keys, kind="stable")
    sorted_keys = r_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, q_keys, side="left"), 0, len(order) - 1)
    hit = (sorted_keys[pos] == q_keys) & (q_keys >= 0)
    return np.where(hit, order[pos], -1)


def take_or_nan(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values[at]`` with NaN where ``at`` is -1."""
    if not len(values):
        return np.full(len(at), np.nan)
    return np.where(at >= 0, values[np.clip(at, 0, None)], np.nan)


def base_statuses(
    ctx: pd.DataFrame | Mapping[str, np.ndarray], settings: PolicySettings
) -> np.ndarray:
    """Status before the safety override ("forecast" where the model applies).

    Built from the ``response_status`` of the feature context: ``responded``
    (the first PHQ-9 within the response window after the last session was a
    response) is forecast unless waning has been seen since; ``not_responded``
    is not_in_response; ``pending`` (no PHQ-9 yet), ``no_baseline`` and too
    few scores are insufficient_data; ``no_assessment`` (the response window
    passed without a PHQ-9) is not_in_response when a later PHQ-9 since the
    session is out of response, else insufficient_data. ``ctx`` is the
    context frame or its column arrays (cheaper to read).
    """
    rs = np.asarray(ctx["response_status"], dtype=object)
    n = len(rs)
    has_session = np.asarray(ctx["has_session"], dtype=bool)
    latest = np.asarray(ctx["latest_phq9"], dtype=float)
    cut = np.asarray(ctx["response_threshold"], dtype=float)
    after = np.asarray(ctx["latest_phq9_date"], dtype="datetime64[ns]") > np.asarray(
        ctx["last_session"], dtype="datetime64[ns]"
    )
    with np.errstate(invalid="ignore"):
        latest_out = after & (latest > cut)
    status = np.full(n, "insufficient_data", dtype=object)
    status[rs == "responded"] = "forecast"
    status[(rs == "responded") & np.asarray(ctx["waned_seen"], dtype=bool)] = "not_in_response"
    status[rs == "not_responded"] = "not_in_response"
    status[(rs == "no_assessment") & latest_out] = "not_in_response"
    few = np.asarray(ctx["n_phq9"]) < settings.min_phq9_scores
    status[(status == "forecast") & few] = "insufficient_data"
    status[~has_session] = "no_treatment"
    return status
