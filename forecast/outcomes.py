"""Measured outcomes: baseline, response, remission, reliable change and benefit waning.

All thresholds live in :class:`OutcomeDefinition` so that a clinic or a
researcher can change them in one place; the defaults:

- Baseline: the last PHQ-9 total on or before the first induction session, at
  most 30 days before it (an assessment on the session day counts as taken
  before the session).
- Response: PHQ-9 <= 50 % of the baseline; remission: PHQ-9 < 5. These are the
  conventions of Frank et al. (1991), Arch Gen Psychiatry 48:851-855, and of
  the ACNP task force, Rush et al. (2006), Neuropsychopharmacology
  31:1841-1853.
- Reliable change: 5 PHQ-9 points, about two standard errors of measurement
  (Loewe et al. 2004, Med Care 42:1194-1201); :func:`reliable_change_index`
  gives the Jacobson & Truax (1991) alternative from a norm SD and reliability.
- Benefit waned (the survival event of an episode): see
  :class:`OutcomeDefinition` and :mod:`forecast.episodes`.

Every function is vectorised over the whole cohort: rows are grouped by
patient through sorted integer keys and ``np.searchsorted``, never through
per-patient Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.instruments import REVIEW, URGENT, score_assessments

#: Patient states reported by :func:`forecast.summary.patient_summary` and the feature context.
STATES: tuple[str, ...] = (
    "in_remission",
    "in_response",
    "not_in_response",
    "not_measured_yet",
    "no_baseline",
    "no_treatment",
)


@dataclass(frozen=True, kw_only=True)
class OutcomeDefinition:
    """The clinical definitions of baseline, response, remission and waning.

    Keyword-only, so that a threshold is never set by position by mistake.

    Parameters
    ----------
    baseline_window_days : int, default 30
        The baseline is the last PHQ-9 on or before the first induction
        session and at most this many days before it; older scores give no
        baseline (the patient is reported as ``no_baseline`` and has no
        episodes).
    response_fraction : float, default 0.5
        Response means PHQ-9 <= ``response_fraction`` x baseline
        (Frank et al. 1991; Rush et al. 2006).
    remission_below : float, default 5
        Remission means PHQ-9 < ``remission_below`` (Kroenke et al. 2001
        "minimal" band; Rush et al. 2006).
    waned_phq9_min : float, default 10
        Symptom criterion of waning: no longer in response *and* PHQ-9 >=
        this value (the Kroenke et al. 2001 cut-off for probable major
        depression), so that drifting from 4 to 6 after a baseline of 12
        does not count as lost benefit.
    si_item9_min : int, default 1
        Suicidal-ideation criterion of waning: PHQ-9 item 9 >= this value
        while item 9 was exactly 0 at the episode's start (the response
        assessment). When item 9 is missing at the start this criterion does
        not apply to the episode (the C-SSRS criterion still does).
    si_cssrs_min : int, default 2
        C-SSRS screener ideation level >= this value (non-specific active
        suicidal thoughts or more; Posner et al. 2011) at any assessment
        after the episode's start marks waning, whatever the level at the
        start.
    confirm_waning : bool, default False
        Require the symptom criterion to be confirmed: an assessment meeting
        a waning criterion is the event only if the next assessment of the
        same episode meets one too (as in the esketamine relapse definitions,
        Daly et al. 2019). The event time is then the first of the two
        assessments, but the event becomes *known* only at the second. The
        suicidal-ideation criteria never wait for confirmation (safety). An
        unconfirmed criterion at the episode's last assessment leaves the
        episode censored at the assessment before it.
    response_window_days : int, default 14
        A session starts an episode when the first PHQ-9 dated after it,
        within this many days and not after the next session, shows response.
    booster_response_window_days : int or None, default 42
        The same window for a session after the first induction session (a
        booster, or a later induction session): its first PHQ-9, at most this
        many days after it and not after the next session, is its response
        assessment. Clinics that score at visits send no PHQ-9 between a
        booster and the next visit weeks later; a patient in response then
        is forecast from that score. None: ``response_window_days`` for every
        session.
    pre_session_window_days : int or None, default 14
        A session after the first induction session (a booster, or a later
        induction session) given while the patient is in response starts
        an episode on that evidence: the latest PHQ-9 on or before the
        session's day, at most this many days before it (the PHQ-9 asks about
        the last two weeks), shows response and
        meets no suicidal-ideation waning criterion (C-SSRS ideation below
        ``si_cssrs_min``). Many clinics take the PHQ-9 at check-in, before
        the session, so no score follows a booster until the next visit.
        This evidence is complete on the session's day, so the rule reads
        the same at any later date. None: only the post-session rule.
    baseline_after_days : int or None, default 7
        Fallback when no PHQ-9 lies in the baseline window: the first PHQ-9
        at most this many days after the first induction session is the
        baseline, provided it is at least ``waned_phq9_min`` (a lower score is
        no reference for response). It is conservative: a score taken after
        the first infusion is likely lowered by ketamine's rapid effect, which
        makes response (<= 50 % of it) harder to reach, never easier. None:
        no fallback.
    reliable_change_points : float, default 5
        A change of at least this many points is reliable (Loewe et al. 2004).
    """

    baseline_window_days: int = 30
    response_fraction: float = 0.5
    remission_below: float = 5.0
    waned_phq9_min: float = 10.0
    si_item9_min: int = 1
    si_cssrs_min: int = 2
    confirm_waning: bool = False
    response_window_days: int = 14
    reliable_change_points: float = 5.0
    pre_session_window_days: int | None = 14
    baseline_after_days: int | None = 7
    booster_response_window_days: int | None = 42

    def __post_init__(self) -> None:
        if not 0 < self.response_fraction < 1:
            raise ValueError(f"response_fraction must lie in (0, 1), got {self.response_fraction}")
        if self.baseline_window_days < 0 or self.response_window_days < 1:
            raise ValueError(
                "baseline_window_days must be >= 0 and response_window_days >= 1, got "
                f"{self.baseline_window_days} and {self.response_window_days}"
            )
        if self.si_item9_min < 1 or self.si_cssrs_min < 1:
            raise ValueError("si_item9_min and si_cssrs_min must be >= 1 (0 means 'no SI')")
        if self.reliable_change_points <= 0:
            raise ValueError("reliable_change_points must be positive")
        for name in ("pre_session_window_days", "baseline_after_days",
                     "booster_response_window_days"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")

    def to_dict(self) -> dict[str, float | int | bool]:
        """The definition as plain JSON-ready values (for model cards and the registry)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict[str, float | int | bool]) -> OutcomeDefinition:
        """Rebuild a definition saved with :meth:`to_dict` (unknown keys are an error).

        Rules added after a version was saved are off for it (None), so a
        model is always served with the rules it was trained with.
        """
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown OutcomeDefinition fields: {sorted(unknown)}")
        later = dict.fromkeys(("pre_session_window_days", "baseline_after_days",
                               "booster_response_window_days"))
        return cls(**{**later, **values})


def reliable_change_index(sd: float, reliability: float) -> float:
    """Smallest reliable individual change by Jacobson & Truax (1991).

    ``1.96 * sqrt(2) * sd * sqrt(1 - reliability)``: the change that a
    patient's score must exceed to be unlikely (p < 0.05) under measurement
    error alone. Use it to set ``OutcomeDefinition.reliable_change_points``
    from the SD and test-retest reliability of a local norm group.

    Parameters
    ----------
    sd : float
        Standard deviation of the PHQ-9 total in the reference group (> 0).
    reliability : float
        Reliability coefficient in [0, 1).

    Returns
    -------
    float
        The reliable-change threshold in PHQ-9 points.
    """
    if not sd > 0:
        raise ValueError(f"sd must be positive, got {sd}")
    if not 0 <= reliability < 1:
        raise ValueError(f"reliability must lie in [0, 1), got {reliability}")
    return float(1.96 * np.sqrt(2.0) * sd * np.sqrt(1.0 - reliability))


# --- internal: the cohort as sorted integer arrays ----------------------------

#: Days fit in 22 bits after the offset (about +-5,700 years around 1970).
_DAY_BITS = 22
_DAY_OFFSET = 1 << (_DAY_BITS - 1)


def day_numbers(dates: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """Whole days since 1970-01-01 as int64 (dates are midnight by contract)."""
    values = np.asarray(dates, dtype="datetime64[ns]")
    return values.astype("datetime64[D]").astype(np.int64)


def day_key(pcode: np.ndarray, day: np.ndarray) -> np.ndarray:
    """One sortable int64 per (patient code, day): patient-major, then day."""
    return (np.asarray(pcode, dtype=np.int64) << _DAY_BITS) + (
        np.asarray(day, dtype=np.int64) + _DAY_OFFSET
    )


def days_to_dates(day: np.ndarray) -> np.ndarray:
    """Inverse of :func:`day_numbers` (NaN or sentinel -> NaT)."""
    d = np.asarray(day, dtype=float)
    out = np.full(len(d), np.datetime64("NaT"), dtype="datetime64[ns]")
    ok = np.isfinite(d)
    out[ok] = d[ok].astype(np.int64).astype("datetime64[D]").astype("datetime64[ns]")
    return out


@dataclass
class Prepared:
    """A cohort turned into sorted arrays, shared by outcomes, episodes and features.

    Attributes are internal to ``forecast.outcomes``, ``forecast.episodes``
    and ``forecast.features``; build it with :func:`prepare`.
    """

    definition: OutcomeDefinition
    ids: np.ndarray  # sorted unique patient ids (object)
    patients: pd.DataFrame  # one row per code, aligned with ids
    assessments: pd.DataFrame  # scored assessments, sorted by (pcode, day), RangeIndex
    a_patient: np.ndarray  # patient code of each assessment row
    a_day: np.ndarray
    a_key: np.ndarray
    a_rank: np.ndarray  # safety flag rank per assessment: 2 urgent, 1 review, 0 none
    sessions: pd.DataFrame  # sessions, sorted by (pcode, day), RangeIndex
    s_patient: np.ndarray  # patient code of each session row
    s_day: np.ndarray
    s_key: np.ndarray
    anchor_day: np.ndarray  # per patient, float (NaN: no induction session)
    base_phq9: np.ndarray  # per patient, float (NaN: no baseline)
    base_day: np.ndarray  # per patient, float
    covariates: tuple[str, ...]


def _sort_by_key(pc: np.ndarray, day: np.ndarray) -> np.ndarray | None:
    """Stable order by (patient code, day), or None when already sorted (canonical frames)."""
    key = day_key(pc, day)
    if len(key) > 1 and np.any(key[1:] < key[:-1]):
        return np.lexsort((day, pc))
    return None


def _patients_frame(cohort: Cohort, index: pd.Index, ids: np.ndarray) -> pd.DataFrame:
    """One row per patient code (aligned with ``ids``), blank where ``patients`` lacks one."""
    n = len(ids)
    p_idx = index.get_indexer(cohort.patients["patient_id"].astype(str))
    p_cols: dict[str, np.ndarray] = {"patient_id": ids}
    for col in cohort.patients.columns:
        if col == "patient_id":
            continue
        values = cohort.patients[col]
        if values.dtype == object:
            out = np.full(n, None, dtype=object)
        else:
            out = np.full(n, np.nan)
        out[p_idx] = values.to_numpy()
        p_cols[col] = out
    patients = pd.DataFrame(p_cols)
    return patients


def _baselines(
    a: pd.DataFrame,
    a_pc: np.ndarray,
    a_day: np.ndarray,
    anchor_day: np.ndarray,
    definition: OutcomeDefinition,
) -> tuple[np.ndarray, np.ndarray]:
    """Per patient, the baseline PHQ-9 and its day (NaN: none).

    The last PHQ-9 on or before the first induction session, within the
    baseline window; else (``baseline_after_days``) the first one shortly
    after it, if it is at least ``waned_phq9_min``.
    """
    n = len(anchor_day)
    base_phq9 = np.full(n, np.nan)
    base_day = np.full(n, np.nan)
    p_rows = np.flatnonzero(a["phq9"].notna().to_numpy())
    has_anchor = np.flatnonzero(~np.isnan(anchor_day))
    if len(p_rows) and len(has_anchor):
        p_key = day_key(a_pc[p_rows], a_day[p_rows])
        q_key = day_key(has_anchor, anchor_day[has_anchor].astype(np.int64))
        j = np.searchsorted(p_key, q_key, side="right") - 1
        jj = np.clip(j, 0, None)
        row = p_rows[jj]
        ok = (
            (j >= 0)
            & (a_pc[row] == has_anchor)
            & (a_day[row] >= anchor_day[has_anchor] - definition.baseline_window_days)
        )
        base_phq9[has_anchor[ok]] = a["phq9"].to_numpy()[row[ok]]
        base_day[has_anchor[ok]] = a_day[row[ok]]
        if definition.baseline_after_days is not None:
            # Fallback: the first PHQ-9 after the anchor day, within the window.
            miss = has_anchor[~ok]
            q_key = day_key(miss, anchor_day[miss].astype(np.int64))
            j = np.searchsorted(p_key, q_key, side="right")
            jj = np.clip(j, 0, len(p_rows) - 1)
            row = p_rows[jj]
            ok2 = (
                (j < len(p_rows))
                & (a_pc[row] == miss)
                & (a_day[row] <= anchor_day[miss] + definition.baseline_after_days)
                # A lower score after the first infusion is no reference for response.
                & (a["phq9"].to_numpy()[row] >= definition.waned_phq9_min)
            )
            base_phq9[miss[ok2]] = a["phq9"].to_numpy()[row[ok2]]
            base_day[miss[ok2]] = a_day[row[ok2]]

    return base_phq9, base_day


def prepare(
    cohort: Cohort, definition: OutcomeDefinition, scored: pd.DataFrame | None = None
) -> Prepared:
    """Score assessments and index a cohort by patient and day (vectorised).

    ``scored``: ``score_assessments(cohort.assessments)`` when the caller has
    it already (default rules, same rows and index); it is not modified.
    """
    # Validated cohorts name every patient in ``patients``; others get the union.
    ids = np.unique(cohort.patients["patient_id"].to_numpy(dtype=object).astype(str))
    index = pd.Index(ids.astype(object))
    a_ids = cohort.assessments["patient_id"].astype(str)
    s_ids = cohort.sessions["patient_id"].astype(str)
    a_pc = index.get_indexer(a_ids)
    s_pc = index.get_indexer(s_ids)
    if (a_pc < 0).any() or (s_pc < 0).any():
        ids = np.unique(np.concatenate([ids, a_ids.to_numpy(), s_ids.to_numpy()]).astype(str))
        index = pd.Index(ids.astype(object))
        a_pc = index.get_indexer(a_ids)
        s_pc = index.get_indexer(s_ids)
    ids = ids.astype(object)

    a = score_assessments(cohort.assessments) if scored is None else scored
    a_day = day_numbers(a["date"])
    order = _sort_by_key(a_pc, a_day)
    if order is not None:
        a = a.iloc[order].reset_index(drop=True)
        a_pc, a_day = a_pc[order], a_day[order]
    elif not isinstance(a.index, pd.RangeIndex) or a.index.start != 0:
        a = a.reset_index(drop=True)
    level = a["safety"].to_numpy(dtype=object)
    a_rank = (level == URGENT) * 2 + (level == REVIEW)

    s = cohort.sessions
    if not isinstance(s.index, pd.RangeIndex) or s.index.start != 0:
        s = s.reset_index(drop=True)
    s_day = day_numbers(s["date"])
    order = _sort_by_key(s_pc, s_day)
    if order is not None:
        s = s.iloc[order].reset_index(drop=True)
        s_pc, s_day = s_pc[order], s_day[order]

    n = len(ids)
    patients = _patients_frame(cohort, index, ids)

    # Anchor: the first induction session (sessions are sorted, so the first hit).
    anchor_day = np.full(n, np.nan)
    ind = np.flatnonzero(s["kind"].to_numpy(dtype=object) == "induction")
    if len(ind):
        first = ind[np.r_[True, s_pc[ind][1:] != s_pc[ind][:-1]]]
        anchor_day[s_pc[first]] = s_day[first]

    base_phq9, base_day = _baselines(a, a_pc, a_day, anchor_day, definition)

    return Prepared(
        definition=definition,
        ids=ids,
        patients=patients,
        assessments=a,
        a_patient=a_pc,
        a_day=a_day,
        a_key=day_key(a_pc, a_day),
        a_rank=a_rank.astype(np.int64),
        sessions=s,
        s_patient=s_pc,
        s_day=s_day,
        s_key=day_key(s_pc, s_day),
        anchor_day=anchor_day,
        base_phq9=base_phq9,
        base_day=base_day,
        covariates=tuple(cohort.covariates),
    )


def is_response(
    phq9: np.ndarray, baseline: np.ndarray, definition: OutcomeDefinition
) -> np.ndarray:
    """Response rule: PHQ-9 <= ``response_fraction`` x baseline (False where either is NaN)."""
    phq9 = np.asarray(phq9, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    with np.errstate(invalid="ignore"):
        return phq9 <= definition.response_fraction * baseline


def is_remission(phq9: np.ndarray, definition: OutcomeDefinition) -> np.ndarray:
    """Remission rule: PHQ-9 < ``remission_below`` (False where NaN)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(phq9, dtype=float) < definition.remission_below


def state_of(
    phq9: np.ndarray,
    baseline: np.ndarray,
    treated: np.ndarray,
    definition: OutcomeDefinition,
) -> np.ndarray:
    """Name the response state of PHQ-9 scores (one of :data:`STATES`).

    Remission is checked first (an absolute threshold), then response relative
    to the baseline. ``treated`` False gives ``no_treatment``; a missing
    baseline gives ``no_baseline``; a missing score gives ``not_in_response``
    only when there is nothing better to say, so callers pass a score.
    """
    phq9 = np.asarray(phq9, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    treated = np.asarray(treated, dtype=bool)
    out = np.full(len(phq9), "not_in_response", dtype=object)
    out[is_response(phq9, baseline, definition)] = "in_response"
    out[is_remission(phq9, definition)] = "in_remission"
    out[np.isnan(baseline)] = "no_baseline"
    out[~treated] = "no_treatment"
    return out


def baselines(cohort: Cohort, definition: OutcomeDefinition | None = None) -> pd.DataFrame:
    """The baseline PHQ-9 of every patient.

    Returns
    -------
    DataFrame
        One row per patient (sorted by ``patient_id``): ``anchor_date`` (first
        induction session, NaT if none), ``baseline_phq9`` and
        ``baseline_date`` (NaN/NaT when no PHQ-9 lies in the window).
    """
    prep = prepare(cohort, definition or OutcomeDefinition())
    return pd.DataFrame(
        {
            "patient_id": prep.ids,
            "anchor_date": days_to_dates(prep.anchor_day),
            "baseline_phq9": prep.base_phq9,
            "baseline_date": days_to_dates(prep.base_day),
        }
    )


def assessment_states(cohort: Cohort, definition: OutcomeDefinition | None = None) -> pd.DataFrame:
    """Score every assessment and state its response/remission relative to baseline.

    Returns
    -------
    DataFrame
        The scored assessments (see :func:`forecast.instruments.score_assessments`)
        sorted by patient and date, plus ``baseline_phq9``, ``after_treatment``
        (dated after the first induction session), ``in_response``,
        ``in_remission``, ``change_from_baseline`` (baseline minus score;
        positive is improvement) and ``reliable_improvement``.
    """
    definition = definition or OutcomeDefinition()
    prep = prepare(cohort, definition)
    a = prep.assessments.copy()
    base = prep.base_phq9[prep.a_patient]
    phq9 = a["phq9"].to_numpy(dtype=float)
    a["baseline_phq9"] = base
    with np.errstate(invalid="ignore"):
        a["after_treatment"] = prep.a_day > prep.anchor_day[prep.a_patient]
        change = base - phq9
        a["in_response"] = is_response(phq9, base, definition)
        a["in_remission"] = is_remission(phq9, definition)
        a["change_from_baseline"] = change
        a["reliable_improvement"] = change >= definition.reliable_change_points
    return a
