"""Benefit episodes: one per responding session, with an interval-censored waning time.

Rules (defaults in :class:`forecast.outcomes.OutcomeDefinition`):

- Assessments belong to the session before them: an assessment dated on a
  session's day counts as taken *before* that session (clinics score the
  PHQ-9 before dosing), so it belongs to the previous session's episode.
- A session *responds* when the first PHQ-9 dated after it, within
  ``response_window_days`` (14; ``booster_response_window_days``, 42, for a
  session after the patient's first induction session) and not after the next
  session, is <= 50 % of the patient's baseline. That PHQ-9 is the *response assessment*; the
  episode's time origin is the session date. Sessions before the first
  induction session, and patients without a baseline, start no episode.
- A session given while the patient is in response (a booster, or an
  induction session after the first) responds on that evidence: the latest
  PHQ-9 on or before its day, at most ``pre_session_window_days`` (14) before
  it, is in response and meets no C-SSRS waning criterion. That pre-session
  PHQ-9 is then its response assessment (``response_day`` <= 0), whatever
  follows the session.
- The event (benefit waned) is the first assessment after the response
  assessment, and on or before the next session, at which the patient is no
  longer in response and PHQ-9 >= 10, or item 9 >= 1 when item 9 was exactly
  0 at the response assessment, or C-SSRS ideation >= 2. With
  ``confirm_waning`` the next assessment of the episode must meet a criterion
  too (SI criteria never wait for confirmation).
- The event lies in ``(lower, upper]`` days after the start: ``upper`` is the
  day of the event assessment and ``lower`` the day of the last event-free
  assessment dated before it (the response assessment at the latest; 0 when
  that shares the event's date). Without an event the episode is
  right-censored at its last event-free assessment (``upper = inf``):
  ``censor_reason`` is ``next_session`` when a further session followed and
  ``end_of_follow_up`` otherwise.
- Only assessments that can show the state count as event-free: rows with a
  PHQ-9 total. A C-SSRS-only row can be an event (ideation >= 2) but never
  moves ``lower``.

Boosters are often given *because* benefit seems to wane, so censoring at the
next session is informative; the docs' outcomes page (docs/outcomes.md) discusses this.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecast.cohort import Cohort
from forecast.outcomes import OutcomeDefinition, Prepared, day_key, days_to_dates, prepare

#: Columns of :func:`build_episodes` (ARCHITECTURE.md first, then extras).
EPISODE_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "episode_id",
    "episode_index",
    "start",
    "session_kind",
    "lower",
    "upper",
    "event",
    "censor_reason",
    "baseline_phq9",
    "response_phq9",
    "next_session",
    "responded",
    "response_status",
    "response_date",
    "response_day",
    "response_item9",
    "event_reason",
    "event_date",
    "event_known_date",
    "last_event_free_date",
    "n_assessments",
)

#: Why a session did or did not start an episode (``response_status``).
RESPONSE_STATUSES: tuple[str, ...] = (
    "responded",
    "not_responded",
    "no_assessment",
    "no_baseline",
    "before_induction",
)


def episode_arrays(prep: Prepared) -> dict[str, np.ndarray]:
    """Per-session response and episode outcome arrays (aligned with ``prep.sessions``).

    Internal workhorse of :func:`build_episodes`, :func:`session_responses`,
    :func:`forecast.summary.patient_summary` and :mod:`forecast.features`.
    Days are integers since 1970; ``*_day`` arrays are float with NaN for
    "none".
    """
    ns = len(prep.s_patient)
    s_pc, s_day = prep.s_patient, prep.s_day

    same_next = np.zeros(ns, dtype=bool)
    same_next[:-1] = s_pc[1:] == s_pc[:-1]
    next_day = np.full(ns, np.inf)
    next_day[:-1][same_next[:-1]] = s_day[1:][same_next[:-1]]

    anchor = prep.anchor_day[s_pc] if ns else np.zeros(0)
    base = prep.base_phq9[s_pc] if ns else np.zeros(0)
    with np.errstate(invalid="ignore"):
        eligible = s_day >= anchor

    r = _responses(prep, next_day, eligible, anchor, base)
    responded = r["responded"]
    w = _waning(prep, r["r_idx"], responded, r["r_item9"])
    event = w["event"]
    lower_day, upper_day = w["lower_day"], w["upper_day"]

    censor = np.full(ns, None, dtype=object)
    cmask = responded & ~event
    censor[cmask & np.isfinite(next_day)] = "next_session"
    censor[cmask & ~np.isfinite(next_day)] = "end_of_follow_up"

    lower = np.where(responded, lower_day - s_day, np.nan)
    upper = np.where(responded, upper_day - s_day, np.nan)
    return {
        "next_day": next_day,
        "eligible": eligible,
        "responded": responded,
        "status": r["status"],
        "r_idx": r["r_idx"],
        "r_day": r["r_day"],
        "r_phq9": r["r_phq9"],
        "r_item9": r["r_item9"],
        "response_window": r["window"],
        "event": event & responded,
        "lower": lower,
        "upper": upper,
        "lower_day": np.where(responded, lower_day, np.nan),
        "upper_day": np.where(responded & event, upper_day, np.nan),
        "known_day": np.where(responded & event, w["known_day"], np.nan),
        "event_reason": w["reason"],
        "censor_reason": censor,
        "n_assessments": w["n_assessments"],
        "base": base,
    }


def response_windows(prep: Prepared) -> np.ndarray:
    """Per session, the days after it within which its first PHQ-9 is its response
    assessment: ``response_window_days``, or ``booster_response_window_days`` for a
    session after the patient's first induction session."""
    d = prep.definition
    windows = np.full(len(prep.s_patient), float(d.response_window_days))
    if d.booster_response_window_days is not None and len(prep.s_patient):
        with np.errstate(invalid="ignore"):
            later = prep.s_day > prep.anchor_day[prep.s_patient]
        windows[later] = float(max(d.booster_response_window_days, d.response_window_days))
    return windows


def _responses(
    prep: Prepared,
    next_day: np.ndarray,
    eligible: np.ndarray,
    anchor: np.ndarray,
    base: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each session's response assessment, whether it responded, and its status."""
    d = prep.definition
    a = prep.assessments
    ns = len(prep.s_patient)
    na = len(prep.a_patient)
    s_pc, s_day = prep.s_patient, prep.s_day
    phq9 = a["phq9"].to_numpy(dtype=float)
    item9 = a["item9"].to_numpy(dtype=float)

    # Response assessment: the first PHQ-9 row strictly after the session day.
    p_rows = np.flatnonzero(~np.isnan(phq9))
    windows = response_windows(prep)
    r_idx = np.full(ns, -1, dtype=np.int64)
    if len(p_rows) and ns:
        j = np.searchsorted(prep.a_key[p_rows], prep.s_key, side="right")
        jj = np.clip(j, 0, len(p_rows) - 1)
        row = p_rows[jj]
        window_end = np.minimum(s_day + windows, next_day)
        found = (j < len(p_rows)) & (prep.a_patient[row] == s_pc) & (prep.a_day[row] <= window_end)
        r_idx[found] = row[found]
    has_r = r_idx >= 0
    r_safe = np.clip(r_idx, 0, None)
    r_phq9 = np.where(has_r, phq9[r_safe] if na else np.nan, np.nan)
    r_day = np.where(has_r, prep.a_day[r_safe] if na else np.nan, np.nan)
    r_item9 = np.where(has_r, item9[r_safe] if na else np.nan, np.nan)
    with np.errstate(invalid="ignore"):
        responded = eligible & has_r & (r_phq9 <= d.response_fraction * base)
    pre = _pre_session_responses(prep, eligible, base, p_rows)
    if pre is not None:
        # The pre-session evidence wins: it is complete on the session's day.
        use = pre >= 0
        r_idx[use] = pre[use]
        r_safe = np.clip(r_idx, 0, None)
        has_r = r_idx >= 0
        r_phq9 = np.where(has_r, phq9[r_safe], np.nan)
        r_day = np.where(has_r, prep.a_day[r_safe], np.nan)
        r_item9 = np.where(has_r, item9[r_safe], np.nan)
        responded = responded | use

    status = np.full(ns, "not_responded", dtype=object)
    status[~has_r] = "no_assessment"
    status[np.isnan(base)] = "no_baseline"
    status[~eligible & ~np.isnan(anchor)] = "before_induction"
    status[np.isnan(anchor)] = "no_baseline"
    status[responded] = "responded"
    return {
        "r_idx": r_idx,
        "r_day": r_day,
        "r_phq9": r_phq9,
        "r_item9": r_item9,
        "responded": responded,
        "status": status,
        "window": windows,
    }


def _pre_session_responses(
    prep: Prepared, eligible: np.ndarray, base: np.ndarray, p_rows: np.ndarray
) -> np.ndarray | None:
    """Per session, the pre-session PHQ-9 row that shows response (-1: none).

    Every session after the first induction session qualifies (a booster, or
    a later induction session given once the patient is in response): the
    latest PHQ-9 on or before the session's day, at most
    ``pre_session_window_days`` before it, is in response and meets no C-SSRS
    waning criterion (None: rule off). The first induction session's own
    check-in score is the baseline, never a response.
    """
    d = prep.definition
    ns = len(prep.s_patient)
    if d.pre_session_window_days is None or not ns or not len(p_rows):
        return None
    a = prep.assessments
    j = np.searchsorted(prep.a_key[p_rows], prep.s_key, side="right") - 1
    row = p_rows[np.clip(j, 0, None)]
    found = (
        (j >= 0)
        & (prep.a_patient[row] == prep.s_patient)
        & (prep.a_day[row] >= prep.s_day - d.pre_session_window_days)
    )
    phq9 = a["phq9"].to_numpy(dtype=float)[row]
    cssrs = a["cssrs_ideation"].to_numpy(dtype=float)[row]
    anchor = prep.anchor_day[prep.s_patient]
    with np.errstate(invalid="ignore"):
        ok = (
            found
            & eligible
            & (prep.s_day > anchor)
            & (phq9 <= d.response_fraction * base)
            & ~(cssrs >= d.si_cssrs_min)
        )
    return np.where(ok, row, -1)


def _waning(
    prep: Prepared, r_idx: np.ndarray, responded: np.ndarray, r_item9: np.ndarray
) -> dict[str, np.ndarray]:
    """The first waning event of each episode and its interval, or the censoring day."""
    d = prep.definition
    a = prep.assessments
    ns = len(prep.s_patient)
    na = len(prep.a_patient)
    s_pc, s_day = prep.s_patient, prep.s_day
    phq9 = a["phq9"].to_numpy(dtype=float)
    item9 = a["item9"].to_numpy(dtype=float)
    cssrs = a["cssrs_ideation"].to_numpy(dtype=float)

    # Each assessment belongs to the last session dated strictly before it.
    own = np.searchsorted(prep.s_key, prep.a_key, side="left") - 1
    own_ok = own >= 0
    own_ok[own_ok] = s_pc[own[own_ok]] == prep.a_patient[own_ok]
    own_safe = np.where(own_ok, own, 0)

    def at_owner(values: np.ndarray, fill: float) -> np.ndarray:
        # Session values seen from each assessment (no sessions: all ``fill``).
        return values[own_safe] if ns else np.full(na, fill)

    pos = np.arange(na)
    own_r = at_owner(r_idx, -1)
    in_ep = own_ok & at_owner(responded, False).astype(bool) & (pos >= own_r)
    is_r = in_ep & (pos == own_r)

    a_base = prep.base_phq9[prep.a_patient] if na else np.zeros(0)
    with np.errstate(invalid="ignore"):
        sym = (phq9 > d.response_fraction * a_base) & (phq9 >= d.waned_phq9_min)
        si9 = (item9 >= d.si_item9_min) & (at_owner(r_item9, np.nan) == 0)
        sic = cssrs >= d.si_cssrs_min
    si = si9 | sic
    crit = (sym | si) & ~is_r
    informative = ~np.isnan(phq9) | si

    # J: the rows that decide an episode's outcome, in (patient, date) order.
    J = np.flatnonzero(in_ep & (informative | is_r))
    own_J = own[J]
    day_J = prep.a_day[J]
    ev_J, pending_J, known_J = _events_among(d, own_J, day_J, crit[J], si[J] & ~is_r[J])

    event = np.zeros(ns, dtype=bool)
    lower_day = np.full(ns, np.nan)
    upper_day = np.full(ns, np.inf)
    known_day = np.full(ns, np.nan)
    reason = np.full(ns, None, dtype=object)
    # First event per episode.
    ev_rows = np.flatnonzero(ev_J)
    sess_e, first = np.unique(own_J[ev_rows], return_index=True)
    e = ev_rows[first]
    if len(e):
        event[sess_e] = True
        upper_day[sess_e] = day_J[e]
        known_day[sess_e] = known_J[e]
        # Last J row of the same episode dated strictly before the event.
        okey = day_key(own_J, day_J)
        k = np.searchsorted(okey, day_key(sess_e, day_J[e]), side="left") - 1
        kk = np.clip(k, 0, None)
        same = (k >= 0) & (own_J[kk] == sess_e)
        lower_day[sess_e] = np.where(same, day_J[kk], s_day[sess_e])
        rows = J[e]
        why = np.where(
            sic[rows], "cssrs_ideation", np.where(si9[rows], "item9", "symptoms")
        ).astype(object)
        reason[sess_e] = why
    # Censored episodes: the last non-pending row of the episode.
    rows_np = np.flatnonzero(~pending_J)[::-1]
    sess_c, first = np.unique(own_J[rows_np], return_index=True)
    cens = ~event[sess_c]
    lower_day[sess_c[cens]] = day_J[rows_np[first[cens]]]

    # An episode with no row yet (a pre-session response) is censored at its start.
    lower_day = np.where(responded & np.isnan(lower_day), s_day, lower_day)
    n_ass = np.bincount(own[in_ep], minlength=ns) if ns else np.zeros(0, dtype=np.int64)
    return {
        "event": event,
        "lower_day": lower_day,
        "upper_day": upper_day,
        "known_day": known_day,
        "reason": reason,
        "n_assessments": n_ass,
    }


def _events_among(
    d: OutcomeDefinition, own_J: np.ndarray, day_J: np.ndarray, c_J: np.ndarray, si_J: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which decisive rows are events, which await confirmation, and when each is known.

    ``c_J`` marks rows meeting a waning criterion, ``si_J`` those meeting a
    suicidal-ideation criterion (never waiting for confirmation).
    """
    n = len(day_J)
    has_next = np.zeros(n, dtype=bool)
    has_next[:-1] = own_J[1:] == own_J[:-1]
    if d.confirm_waning:
        nxt_c = np.zeros(n, dtype=bool)
        nxt_c[:-1] = c_J[1:] & has_next[:-1]
        ev_J = si_J | (c_J & nxt_c)
        pending_J = c_J & ~si_J & ~has_next
        known_J = np.where(si_J, day_J, np.r_[day_J[1:], 0] if n else day_J)
    else:
        ev_J = c_J
        pending_J = np.zeros(n, dtype=bool)
        known_J = day_J
    return ev_J, pending_J, known_J


def _table(prep: Prepared, ep: dict[str, np.ndarray], rows: np.ndarray) -> pd.DataFrame:
    s = prep.sessions
    pid = prep.ids[prep.s_patient[rows]] if len(rows) else np.zeros(0, dtype=object)
    responded = ep["responded"][rows]
    # Episode number within the patient, counting responding sessions from 1.
    resp_rows = np.flatnonzero(ep["responded"])
    k_all = np.zeros(len(ep["responded"]), dtype=np.int64)
    if len(resp_rows):
        pcs = prep.s_patient[resp_rows]
        starts = np.r_[True, pcs[1:] != pcs[:-1]]
        grp_start = np.maximum.accumulate(np.where(starts, np.arange(len(pcs)), 0))
        k_all[resp_rows] = np.arange(len(pcs)) - grp_start + 1
    k = k_all[rows]
    ep_id = np.full(len(rows), None, dtype=object)
    if responded.any():
        ep_id[responded] = (
            pd.Series(pid[responded], dtype=object).astype(str)
            + "#"
            + pd.Series(k[responded]).astype(str)
        ).to_numpy(dtype=object)
    next_dates = days_to_dates(
        np.where(np.isfinite(ep["next_day"][rows]), ep["next_day"][rows], np.nan)
    )
    return pd.DataFrame(
        {
            "patient_id": pid,
            "episode_id": ep_id,
            "episode_index": np.where(responded, k, 0),
            "start": s["date"].to_numpy()[rows],
            "session_kind": s["kind"].to_numpy(dtype=object)[rows],
            "lower": ep["lower"][rows],
            "upper": ep["upper"][rows],
            "event": ep["event"][rows],
            "censor_reason": ep["censor_reason"][rows],
            "baseline_phq9": ep["base"][rows],
            "response_phq9": ep["r_phq9"][rows],
            "next_session": next_dates,
            "responded": responded,
            "response_status": ep["status"][rows],
            "response_date": days_to_dates(ep["r_day"][rows]),
            "response_day": ep["r_day"][rows] - prep.s_day[rows],
            "response_item9": ep["r_item9"][rows],
            "event_reason": ep["event_reason"][rows],
            "event_date": days_to_dates(ep["upper_day"][rows]),
            "event_known_date": days_to_dates(ep["known_day"][rows]),
            "last_event_free_date": days_to_dates(ep["lower_day"][rows]),
            "n_assessments": ep["n_assessments"][rows].astype(np.int64),
        },
        columns=list(EPISODE_COLUMNS),
    )


def build_episodes(
    cohort: Cohort,
    definition: OutcomeDefinition | None = None,
    *,
    include_non_responding: bool = False,
) -> pd.DataFrame:
    """One row per benefit episode, with its interval-censored waning time.

    Parameters
    ----------
    cohort : Cohort
        Canonical cohort (see :mod:`forecast.cohort`).
    definition : OutcomeDefinition, optional
        Clinical definitions; the defaults of :class:`OutcomeDefinition` when omitted.
    include_non_responding : bool, default False
        Also return one row per session that started no episode
        (``responded`` False, ``episode_id`` None, ``lower``/``upper`` NaN,
        ``response_status`` saying why), for response-rate reports.

    Returns
    -------
    DataFrame
        Columns :data:`EPISODE_COLUMNS`. ``lower``/``upper`` are days after
        ``start``; the event lies in ``(lower, upper]``; ``upper`` is inf when
        right-censored at ``lower``. ``episode_id`` is ``"<patient_id>#<k>"``
        with ``episode_index`` k counting the patient's episodes from 1.
        ``event_known_date`` is when the event became observable (the
        confirming assessment when ``confirm_waning``).
    """
    prep = prepare(cohort, definition or OutcomeDefinition())
    ep = episode_arrays(prep)
    mask = np.ones(len(prep.s_patient), dtype=bool) if include_non_responding else ep["responded"]
    return _table(prep, ep, np.flatnonzero(mask))


def session_responses(cohort: Cohort, definition: OutcomeDefinition | None = None) -> pd.DataFrame:
    """Every session with its response status (``build_episodes`` with all sessions)."""
    return build_episodes(cohort, definition, include_non_responding=True)
