"""The per-patient summary of measured outcomes (one row per patient).

It combines the outcome rules of :mod:`forecast.outcomes` with the benefit
episodes of :mod:`forecast.episodes` (episode and waning counts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.episodes import episode_arrays
from forecast.outcomes import (
    OutcomeDefinition,
    Prepared,
    days_to_dates,
    is_remission,
    is_response,
    prepare,
    state_of,
)


def _first_per_group(group: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups and row positions of the first True of ``mask`` per sorted ``group``."""
    rows = np.flatnonzero(mask)
    g, first = np.unique(group[rows], return_index=True)
    return g, rows[first]


def _last_per_group(group: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups and row positions of the last True of ``mask`` per sorted ``group``."""
    rows = np.flatnonzero(mask)[::-1]
    g, first = np.unique(group[rows], return_index=True)
    return g, rows[first]


def patient_summary(cohort: Cohort, definition: OutcomeDefinition | None = None) -> pd.DataFrame:
    """Measured outcomes of every patient, one row each (vectorised).

    Columns
    -------
    patient_id
    anchor_date : first induction session (NaT if none)
    baseline_phq9, baseline_date
    best_phq9, best_date : lowest PHQ-9 after the first induction session
    first_response_date, first_remission_date : first assessment after the
        first induction session meeting the rule
    latest_phq9, latest_date : the most recent PHQ-9 (any date)
    current_state : one of :data:`forecast.outcomes.STATES`, from the latest PHQ-9 (a latest
        score dated on or before the anchor gives ``not_in_response``: no
        response has been measured yet)
    change_from_baseline : baseline minus latest (positive = better)
    reliable_improvement : change >= ``reliable_change_points``
    n_assessments, n_sessions, n_episodes, n_waned : counts (episodes as in
        :func:`forecast.episodes.build_episodes`)
    n_item9_positive : assessments with PHQ-9 item 9 >= 1
    max_cssrs_ideation : highest C-SSRS screener ideation level (NaN if never asked)
    last_si_date : last assessment with item 9 >= 1 or C-SSRS ideation >= 1
    last_safety, last_safety_reason : flag of the most recent assessment (None
        means no rule fired; it is never a clearance)
    """
    definition = definition or OutcomeDefinition()
    prep = prepare(cohort, definition)
    base = prep.base_phq9
    out = pd.DataFrame(
        {
            "patient_id": prep.ids,
            "anchor_date": days_to_dates(prep.anchor_day),
            "baseline_phq9": base,
            "baseline_date": days_to_dates(prep.base_day),
        }
    )
    _add_scores(out, prep, definition)
    _add_counts(out, prep)
    _add_safety(out, prep)
    return out


def _add_scores(out: pd.DataFrame, prep: Prepared, definition: OutcomeDefinition) -> None:
    """Best, first response/remission and latest PHQ-9, current state and change."""
    n = len(prep.ids)
    pc = prep.a_patient
    phq9 = prep.assessments["phq9"].to_numpy(dtype=float)
    has_p = ~np.isnan(phq9)
    base = prep.base_phq9
    treated = ~np.isnan(prep.anchor_day)
    with np.errstate(invalid="ignore"):
        after = prep.a_day > prep.anchor_day[pc]

    # Best score after treatment: sort by (patient, score, day) and take firsts.
    best = np.full(n, np.nan)
    best_day = np.full(n, np.nan)
    rows = np.flatnonzero(has_p & after)
    if len(rows):
        o = rows[np.lexsort((prep.a_day[rows], phq9[rows], pc[rows]))]
        g, first = np.unique(pc[o], return_index=True)
        best[g] = phq9[o[first]]
        best_day[g] = prep.a_day[o[first]]
    out["best_phq9"] = best
    out["best_date"] = days_to_dates(best_day)

    for name, rule in (
        ("first_response_date", is_response(phq9, base[pc], definition)),
        ("first_remission_date", is_remission(phq9, definition)),
    ):
        d = np.full(n, np.nan)
        g, r = _first_per_group(pc, rule & has_p & after)
        d[g] = prep.a_day[r]
        out[name] = days_to_dates(d)

    latest = np.full(n, np.nan)
    latest_day = np.full(n, np.nan)
    g, r = _last_per_group(pc, has_p)
    latest[g] = phq9[r]
    latest_day[g] = prep.a_day[r]
    out["latest_phq9"] = latest
    out["latest_date"] = days_to_dates(latest_day)
    state = state_of(latest, base, treated, definition)
    with np.errstate(invalid="ignore"):
        not_after = ~(latest_day > prep.anchor_day)
    state[np.isin(state, ("in_response", "in_remission")) & not_after] = "not_in_response"
    state[treated & ~np.isnan(base) & np.isnan(latest)] = "not_in_response"
    out["current_state"] = state
    with np.errstate(invalid="ignore"):
        change = base - latest
        out["change_from_baseline"] = change
        out["reliable_improvement"] = change >= definition.reliable_change_points


def _add_counts(out: pd.DataFrame, prep: Prepared) -> None:
    """Counts of assessments, sessions, benefit episodes and waned episodes."""
    n = len(prep.ids)
    pc = prep.a_patient
    out["n_assessments"] = np.bincount(pc, minlength=n)
    out["n_sessions"] = np.bincount(prep.s_patient, minlength=n)
    ep = episode_arrays(prep)
    resp = ep["responded"]
    out["n_episodes"] = np.bincount(prep.s_patient[resp], minlength=n)
    out["n_waned"] = np.bincount(prep.s_patient[resp & ep["event"]], minlength=n)


def _add_safety(out: pd.DataFrame, prep: Prepared) -> None:
    """Suicidal-ideation history and the safety flag of the most recent assessment."""
    n = len(prep.ids)
    a = prep.assessments
    pc = prep.a_patient
    item9 = a["item9"].to_numpy(dtype=float)
    cssrs = a["cssrs_ideation"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        i9pos = item9 >= 1
        si_any = i9pos | (cssrs >= 1)
    out["n_item9_positive"] = np.bincount(pc[i9pos], minlength=n)
    max_c = np.full(n, -np.inf)
    ok = ~np.isnan(cssrs)
    np.maximum.at(max_c, pc[ok], cssrs[ok])
    max_c[np.isinf(max_c)] = np.nan
    out["max_cssrs_ideation"] = max_c
    d = np.full(n, np.nan)
    g, r = _last_per_group(pc, si_any)
    d[g] = prep.a_day[r]
    out["last_si_date"] = days_to_dates(d)
    last_level = np.full(n, None, dtype=object)
    last_reason = np.full(n, None, dtype=object)
    g, r = _last_per_group(pc, np.ones(len(pc), dtype=bool))
    last_level[g] = a["safety"].to_numpy(dtype=object)[r]
    last_reason[g] = a["safety_reason"].to_numpy(dtype=object)[r]
    out["last_safety"] = last_level
    out["last_safety_reason"] = last_reason
