"""The cohort generator: :func:`simulate` and its steps.

Induction sessions, the end of follow-up, the assessment grid, maintenance
sessions, PHQ-9 scores along the latent course, baseline rows, and finally the
contract frames and the truth. Each component draws from its own random
stream, so the same seed gives identical frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecast.cohort import Cohort, canonicalize
from forecast.contract import HORIZONS, PHQ9_ITEMS
from forecast.simulation.mechanism import (
    _draw_patients,
    _draw_wane,
    _Patients,
    _session_attrs,
    _wane_location,
    true_risk,
)
from forecast.simulation.params import (
    _DAY_OFFSET,
    _KEY_STRIDE,
    _PHASE_EPISODE,
    _PHASE_INDUCTION,
    _PHASE_NONRESPONSE,
    SimulationParams,
    SimulationResult,
    _check_params,
)


def _segmented_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every group of ``counts`` consecutive values."""
    if values.size == 0:
        return values.copy()
    cs = np.cumsum(values)
    starts = (np.cumsum(counts) - counts)[counts > 0]
    before = cs[starts] - values[starts]
    return cs - np.repeat(before, counts[counts > 0])


@dataclass
class _Sessions:
    """Sessions as parallel arrays (patient index, day relative to the end date, ...)."""

    pid: np.ndarray
    day: np.ndarray
    kind: np.ndarray  # 0 induction, 1 maintenance
    j: np.ndarray  # induction session number (1..k), 0 for maintenance
    phase: np.ndarray  # _PHASE_* that follows the session
    loc: np.ndarray  # log-scale location of the wane time (NaN outside episodes)
    wane: np.ndarray  # latent days until the benefit wanes (NaN outside episodes)
    epi: np.ndarray  # episode index of the patient (-1 outside episodes)
    attrs: dict[str, np.ndarray]  # recorded values (_session_attrs)


@dataclass
class _Induction:
    """The induction of every patient and its sessions."""

    start: np.ndarray  # day of the first induction session
    done: np.ndarray  # number of completed induction sessions
    last: np.ndarray  # day of the last completed induction session
    sessions: _Sessions


@dataclass
class _Grid:
    """The planned assessment days (patient index, day, sorted search key)."""

    pid: np.ndarray
    day: np.ndarray
    key: np.ndarray


#: Assessment schedules of :func:`simulate` (``schedule=``); the first is the default.
SCHEDULES: tuple[str, ...] = ("weekly", "at-visit", "sparse", "every-3-days")


def simulate(
    n_patients: int,
    seed: int,
    *,
    end_date: str | pd.Timestamp = "2026-10-31",
    params: SimulationParams | None = None,
    schedule: str = "weekly",
    totals_only_share: float = 0.0,
) -> SimulationResult:
    """Simulate a clinic cohort and the latent truth behind it.

    Parameters
    ----------
    n_patients : int
        Number of patients (each starts an induction within the enrolment window).
    seed : int
        Seed of all randomness; the same seed and arguments give identical frames.
    end_date : str or Timestamp
        End of follow-up: no session or assessment is dated after it
        (administrative censoring); the latent truth is never censored.
    params : SimulationParams, optional
        Mechanism parameters; defaults documented on :class:`SimulationParams`.
    schedule : {"weekly", "at-visit", "sparse", "every-3-days"}
        When the clinic records a PHQ-9 (docs/simulator.md, "Clinic workflows"):
        ``weekly`` (the default: every 7-14 days between sessions, none on
        session days), ``at-visit`` (at check-in on the day of or the day
        before each session, plus sparse scores between visits), ``sparse``
        (every 4-8 weeks) or ``every-3-days`` (a dense research schedule that
        shows whether a model describes waning or the questionnaire rhythm).
        The latent course (sessions, waning times, ``truth``) is the same
        under every schedule for the same seed: the clinic's contacts that
        trigger relapse-driven boosters keep the weekly rhythm; only what is
        recorded changes.
    totals_only_share : float
        Share of patients whose clinic records only PHQ-9 totals: no item
        answers, no C-SSRS, no dose, route, psychotherapy, dissociation or
        blood pressure (they are still given and still act on the latent
        course). Drawn from a stream of its own: 0 leaves the frames as they
        are.

    Returns
    -------
    SimulationResult
        ``.cohort`` (canonical frames) and ``.truth`` (one row per response
        episode: the first at the last completed induction session of a
        responder, then one per maintenance session).
    """
    _check_simulate_args(n_patients, schedule, totals_only_share)
    p = params or SimulationParams()
    _check_params(p)
    end = pd.Timestamp(end_date).normalize()
    (rng_pat, rng_ind, rng_maint, rng_grid, rng_score, rng_items, rng_blank, rng_sched,
     rng_totals) = _component_streams(seed)
    n = int(n_patients)
    pat = _draw_patients(rng_pat, n, p)

    ind = _induction(rng_ind, pat, n, p)
    follow = _follow_up_end(rng_grid, pat, ind, p)
    # The weekly contacts: what a relapse-driven clinic learns a relapse from (every
    # schedule), and the recorded PHQ-9 days of the weekly schedule.
    grid = _assessment_grid(rng_grid, pat, ind.start, follow, p)
    sessions = _maintenance(rng_maint, pat, ind, grid, follow, p)
    recorded, on_session_days = _recorded_days(schedule, rng_sched, pat, ind, sessions, grid,
                                               follow, p)
    a_pid, a_day, assessments = _assessments(
        rng_score, rng_items, pat, ind.start, recorded, sessions, p, on_session_days
    )
    totals_only = (rng_totals.random(n) < totals_only_share) if totals_only_share > 0 else (
        np.zeros(n, dtype=bool))

    ids = _patient_ids(n)
    epoch = np.datetime64(end.date(), "D")
    cohort = _cohort_frames(rng_blank, pat, sessions, a_pid, a_day, assessments, ids, epoch, p,
                            totals_only)
    truth = _truth_frame(sessions, ids, epoch, p)
    latent = _latent_frame(ids, pat, totals_only)
    return SimulationResult(cohort, truth, p, int(seed), end, latent, schedule,
                            float(totals_only_share))


def _check_simulate_args(n_patients: int, schedule: str, totals_only_share: float) -> None:
    """Raise ValueError for a patient count, schedule or totals-only share out of range."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not 0.0 <= totals_only_share <= 1.0:
        raise ValueError(f"totals_only_share is a share in [0, 1], got {totals_only_share}")


def _component_streams(seed: int) -> list[np.random.Generator]:
    """The nine independent random streams of :func:`simulate`, in their fixed order."""
    # Independent streams per component, so changing one part of the mechanism
    # does not reshuffle the others. The first seven are the latent course and the
    # weekly records; the schedule and the totals-only clinics have streams of their
    # own (children 7 and 8 of the same SeedSequence), so the latent part is drawn
    # identically whatever the schedule and share.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)]


def _recorded_days(
    schedule: str,
    rng: np.random.Generator,
    pat: _Patients,
    ind: _Induction,
    sessions: _Sessions,
    grid: _Grid,
    follow: np.ndarray,
    p: SimulationParams,
) -> tuple[_Grid, bool]:
    """The PHQ-9 days the clinic records under ``schedule``, and whether on session days."""
    if schedule == "weekly":
        return grid, False
    if schedule == "sparse":
        return _periodic_grid(rng, ind.start, follow, p.sparse_gap_days, pat.skip, p), False
    if schedule == "every-3-days":
        return _periodic_grid(rng, ind.start, follow, (p.dense_gap_days,) * 2, pat.skip, p,
                              jitter=(0, 0)), False
    return _visit_grid(rng, pat, ind, sessions, follow, p), True


def _latent_frame(ids: np.ndarray, pat: _Patients, totals_only: np.ndarray) -> pd.DataFrame:
    """One row per patient: the latent traits behind the records and the totals-only flag."""
    return pd.DataFrame(
        {
            "patient_id": ids,
            "frailty": pat.frailty,
            "depth": pat.depth,
            "response_logit_rest": pat.response_logit_rest,
            "totals_only": totals_only,
        }
    )


def _induction(rng: np.random.Generator, pat: _Patients, n: int, p: SimulationParams) -> _Induction:
    """Induction sessions (how many each patient completes) and the first episodes."""
    pid_all = np.arange(n)
    k_ind = p.induction_sessions
    start = -rng.integers(p.last_start_days, p.enrolment_days + 1, n)
    gaps = rng.integers(p.induction_gap_days[0], p.induction_gap_days[1] + 1, (n, k_ind - 1))
    ind_days = start[:, None] + np.concatenate([np.zeros((n, 1), int), np.cumsum(gaps, 1)], 1)
    probs_r = np.asarray(p.completed_probs_responder, dtype=float)
    probs_n = np.asarray(p.completed_probs_nonresponder, dtype=float)
    done = (
        np.where(
            pat.responder,
            rng.choice(k_ind, size=n, p=probs_r / probs_r.sum()),
            rng.choice(k_ind, size=n, p=probs_n / probs_n.sum()),
        )
        + 1
    )
    last_ind = ind_days[pid_all, done - 1]
    j_mat = np.broadcast_to(np.arange(1, k_ind + 1), (n, k_ind))
    ind_keep = (j_mat <= done[:, None]) & (ind_days <= 0)
    s_pid = np.repeat(pid_all, k_ind)[ind_keep.ravel()]
    s_day = ind_days.ravel()[ind_keep.ravel()]
    s_j = j_mat.ravel()[ind_keep.ravel()]
    s_attrs = _session_attrs(rng, pat, s_pid, p)
    is_last = s_j == done[s_pid]
    s_phase = np.where(
        is_last,
        np.where(pat.responder[s_pid], _PHASE_EPISODE, _PHASE_NONRESPONSE),
        _PHASE_INDUCTION,
    )
    s_loc = np.where(
        s_phase == _PHASE_EPISODE,
        _wane_location(pat, s_pid, s_attrs["psychotherapy"], s_attrs["rel_dose"], False, p),
        np.nan,
    )
    s_wane = np.full(len(s_pid), np.nan)
    ep = s_phase == _PHASE_EPISODE
    s_wane[ep] = _draw_wane(rng, s_loc[ep], p.wane_scale)
    s_epi = np.where(ep, 0, -1)
    s_kind = np.zeros(len(s_pid), dtype=int)
    sessions = _Sessions(s_pid, s_day, s_kind, s_j, s_phase, s_loc, s_wane, s_epi, s_attrs)
    return _Induction(start, done, last_ind, sessions)


def _follow_up_end(
    rng: np.random.Generator, pat: _Patients, ind: _Induction, p: SimulationParams
) -> np.ndarray:
    """Last day each patient is followed (maintenance, non-response or drop-out)."""
    n = len(ind.done)
    completer = ind.done == p.induction_sessions
    maint = rng.exponential(p.maintenance_mean_days, n)
    follow = np.where(
        completer & pat.responder,
        ind.last + np.maximum(p.maintenance_min_days, np.rint(maint)),
        np.where(
            completer,
            ind.last + rng.integers(*p.nonresponder_followup_days, n, endpoint=True),
            ind.last + rng.integers(*p.dropout_followup_days, n, endpoint=True),
        ),
    )
    return np.minimum(follow, 0).astype(int)


def _assessment_grid(
    rng: np.random.Generator,
    pat: _Patients,
    start: np.ndarray,
    follow: np.ndarray,
    p: SimulationParams,
) -> _Grid:
    """Planned assessment days: weekly-ish, with jitter and skips."""
    n = len(start)
    first = start + rng.integers(*p.first_assessment_days, n, endpoint=True)
    span = np.maximum(follow - first, -1)
    counts = np.where(span >= 0, span // np.maximum(pat.gap + p.gap_jitter[0], 1) + 1, 0)
    g_pid = np.repeat(np.arange(n), counts)
    g_gap = pat.gap[g_pid] + rng.integers(p.gap_jitter[0], p.gap_jitter[1] + 1, len(g_pid))
    starts = np.cumsum(counts) - counts
    g_gap[starts[counts > 0]] = 0
    g_day = first[g_pid] + _segmented_cumsum(g_gap, counts)
    keep = (g_day <= follow[g_pid]) & (rng.random(len(g_pid)) >= pat.skip[g_pid])
    g_pid, g_day = g_pid[keep], g_day[keep]
    g_key = g_pid.astype(np.int64) * _KEY_STRIDE + g_day + _DAY_OFFSET
    return _Grid(g_pid, g_day, g_key)


def _periodic_grid(
    rng: np.random.Generator,
    start: np.ndarray,
    follow: np.ndarray,
    gap_days: tuple[int, int],
    skip: np.ndarray,
    p: SimulationParams,
    jitter: tuple[int, int] | None = None,
) -> _Grid:
    """Assessment days every ``gap_days`` (a per-patient gap, jittered by ``jitter``,
    default ``p.gap_jitter``; skips as weekly)."""
    jit = p.gap_jitter if jitter is None else jitter
    n = len(start)
    gap = rng.integers(gap_days[0], gap_days[1] + 1, n)
    first = start + rng.integers(*p.first_assessment_days, n, endpoint=True)
    span = np.maximum(follow - first, -1)
    counts = np.where(span >= 0, span // np.maximum(gap + jit[0], 1) + 1, 0)
    g_pid = np.repeat(np.arange(n), counts)
    g_gap = gap[g_pid] + rng.integers(jit[0], jit[1] + 1, len(g_pid))
    starts = np.cumsum(counts) - counts
    g_gap[starts[counts > 0]] = 0
    g_day = first[g_pid] + _segmented_cumsum(g_gap, counts)
    keep = (g_day <= follow[g_pid]) & (rng.random(len(g_pid)) >= skip[g_pid])
    g_pid, g_day = g_pid[keep], g_day[keep]
    return _Grid(g_pid, g_day, g_pid.astype(np.int64) * _KEY_STRIDE + g_day + _DAY_OFFSET)


def _visit_grid(
    rng: np.random.Generator,
    pat: _Patients,
    ind: _Induction,
    sessions: _Sessions,
    follow: np.ndarray,
    p: SimulationParams,
) -> _Grid:
    """The ``at-visit`` schedule: a check-in PHQ-9 on the day of or the day before each
    session after the first (the intake baseline stands for the first), plus sparse
    scores between visits (none within ``between_visit_min_days`` of a session)."""
    later = sessions.day > ind.start[sessions.pid]
    s_pid, s_day = sessions.pid[later], sessions.day[later]
    before = rng.random(len(s_pid)) < p.at_visit_day_before
    answered = rng.random(len(s_pid)) >= p.at_visit_missing
    c_pid, c_day = s_pid[answered], (s_day - before.astype(int))[answered]
    extra = _periodic_grid(rng, ind.start, follow, p.between_visit_gap_days, pat.skip, p)
    s_key = sessions.pid.astype(np.int64) * _KEY_STRIDE + sessions.day + _DAY_OFFSET
    pos = np.searchsorted(s_key, extra.key)
    near = np.zeros(len(extra.key), dtype=bool)
    for k in (pos - 1, pos):  # the sessions just before and just after each score
        ok = (k >= 0) & (k < len(s_key))
        kk = np.clip(k, 0, max(len(s_key) - 1, 0))
        near |= ok & (sessions.pid[kk] == extra.pid) & (
            np.abs(sessions.day[kk] - extra.day) < p.between_visit_min_days)
    pid = np.concatenate([c_pid, extra.pid[~near]])
    day = np.concatenate([c_day, extra.day[~near]])
    key = np.unique(pid.astype(np.int64) * _KEY_STRIDE + day + _DAY_OFFSET)
    pid = (key // _KEY_STRIDE).astype(int)
    return _Grid(pid, key - pid.astype(np.int64) * _KEY_STRIDE - _DAY_OFFSET, key)


def _next_booster(
    rng: np.random.Generator,
    pat: _Patients,
    grid: _Grid,
    act_pid: np.ndarray,
    act_start: np.ndarray,
    act_wane: np.ndarray,
    p: SimulationParams,
) -> np.ndarray:
    """Day of the next maintenance session of each active episode (fixed or after relapse)."""
    fixed_next = (
        act_start
        + pat.interval[act_pid]
        + rng.integers(-p.fixed_interval_jitter, p.fixed_interval_jitter + 1, act_pid.size)
    )
    # Relapse-driven clinics boost after the first assessment that shows the relapse.
    target = np.ceil(act_start + act_wane + p.relapse_detect_days)
    target = np.minimum(target, _DAY_OFFSET - 1).astype(np.int64)
    g_key = grid.key
    pos = np.searchsorted(g_key, act_pid.astype(np.int64) * _KEY_STRIDE + target + _DAY_OFFSET)
    pos_c = np.minimum(pos, len(g_key) - 1)
    seen = (
        (pos < len(g_key)) & (grid.pid[pos_c] == act_pid)
        if len(g_key)
        else np.zeros(act_pid.size, bool)
    )
    delay = rng.integers(p.relapse_delay_days[0], p.relapse_delay_days[1] + 1, act_pid.size)
    relapse_next = np.where(seen, grid.day[pos_c] + delay, np.iinfo(np.int32).max)
    early = (relapse_next < fixed_next) & (rng.random(act_pid.size) < p.fixed_early_booster)
    return np.where(pat.fixed[act_pid] & ~early, fixed_next, relapse_next)


def _maintenance(
    rng: np.random.Generator,
    pat: _Patients,
    ind: _Induction,
    grid: _Grid,
    follow: np.ndarray,
    p: SimulationParams,
) -> _Sessions:
    """Add maintenance sessions to the induction ones; all sessions sorted by patient, day.

    The loop runs over episodes (a few dozen at most), vectorised over patients.
    """
    s = ind.sessions
    m_cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("pid", "day", "loc", "wane", "epi", *s.attrs)
    }
    completer = ind.done == p.induction_sessions
    cur = np.flatnonzero((s.phase == _PHASE_EPISODE) & completer[s.pid])
    act_pid = s.pid[cur]
    act_start = s.day[cur]
    act_wane = s.wane[cur]
    k = 0
    while act_pid.size:
        k += 1
        nxt = _next_booster(rng, pat, grid, act_pid, act_start, act_wane, p)
        go = nxt <= follow[act_pid]
        act_pid, nxt = act_pid[go], nxt[go]
        if not act_pid.size:
            break
        attrs = _session_attrs(rng, pat, act_pid, p)
        loc = _wane_location(pat, act_pid, attrs["psychotherapy"], attrs["rel_dose"], True, p)
        wane = _draw_wane(rng, loc, p.wane_scale)
        for name, arr in (("pid", act_pid), ("day", nxt), ("loc", loc), ("wane", wane)):
            m_cols[name].append(arr)
        m_cols["epi"].append(np.full(act_pid.size, k))
        for name, arr in attrs.items():
            m_cols[name].append(arr)
        act_start, act_wane = nxt, wane

    def _cat(name: str, dtype: type) -> np.ndarray:
        return np.concatenate(m_cols[name]) if m_cols[name] else np.zeros(0, dtype)

    m_pid = _cat("pid", int)
    n_m = len(m_pid)
    all_pid = np.concatenate([s.pid, m_pid])
    all_day = np.concatenate([s.day, _cat("day", int)])
    order = np.lexsort((all_day, all_pid))
    return _Sessions(
        pid=all_pid[order],
        day=all_day[order],
        kind=np.concatenate([s.kind, np.ones(n_m, int)])[order],
        j=np.concatenate([s.j, np.zeros(n_m, int)])[order],
        phase=np.concatenate([s.phase, np.full(n_m, _PHASE_EPISODE)])[order],
        loc=np.concatenate([s.loc, _cat("loc", float)])[order],
        wane=np.concatenate([s.wane, _cat("wane", float)])[order],
        epi=np.concatenate([s.epi, _cat("epi", int)])[order],
        attrs={name: np.concatenate([s.attrs[name], _cat(name, float)])[order] for name in s.attrs},
    )


def _scores(
    rng: np.random.Generator,
    pat: _Patients,
    grid: _Grid,
    sessions: _Sessions,
    p: SimulationParams,
    on_session_days: bool = False,
) -> tuple[_Grid, np.ndarray, np.ndarray]:
    """PHQ-9 totals and item 9 along the latent course, at assessments off session days.

    Returns the assessments kept (those not on a session day, unless
    ``on_session_days``: check-ins before the session, scored in the state the
    session finds), their totals and their item 9 answers.
    """
    s_key = sessions.pid.astype(np.int64) * _KEY_STRIDE + sessions.day + _DAY_OFFSET
    off = np.isin(grid.key, s_key) & (not on_session_days)
    g_pid, g_day, g_key = grid.pid[~off], grid.day[~off], grid.key[~off]
    # The session in effect at each assessment.
    idx = np.searchsorted(s_key, g_key, side="left") - 1
    phase = sessions.phase[idx]
    u = (g_day - sessions.day[idx]).astype(float)
    wane = sessions.wane[idx]
    B = pat.baseline[g_pid]
    L = pat.level_end[g_pid]
    resp_thr = np.floor(B / 2.0)
    event_thr = np.maximum(10.0, resp_thr + 1.0)
    # Induction: each session moves the score part of the way to its end level.
    lev_ind = B - (B - L) * (1.0 - (1.0 - p.induction_step) ** sessions.j[idx])
    # Episode: in response, drifting up over the weeks before the latent wane,
    # then climbing past both event thresholds within about a week.
    peak = np.maximum(L, resp_thr - 1.5)
    frac = np.clip((u - (wane - p.drift_days)) / p.drift_days, 0.0, 1.0)
    pre = L + (peak - L) * frac**2
    rl = pat.relapse_level[g_pid]
    post = (event_thr + 1.0) + (rl - event_thr - 1.0) * np.clip((u - wane) / p.rise_days, 0, 1)
    waned = u >= wane
    lev_ep = np.where(waned, post, pre)
    # Non-responders drift half-way back to baseline over two months.
    lev_nr = L + 0.5 * (B - L) * np.clip(u / 60.0, 0.0, 1.0)
    level = np.select(
        [phase == _PHASE_INDUCTION, phase == _PHASE_EPISODE], [lev_ind, lev_ep], lev_nr
    )
    sd = p.noise_sd + p.noise_sd_per_point * level
    total = np.clip(np.rint(level + sd * rng.standard_normal(len(level))), 0, 27)

    # Item 9 follows severity: rare while in response, frequent after waning in
    # patients prone to SI; during induction and non-response it stays near baseline.
    si_base = pat.si_base[g_pid]
    r = rng.random(len(level))
    si_vals = rng.choice([1.0, 2.0, 3.0], size=len(level), p=list(p.si_after_wane_probs))
    p_after = np.where(pat.si_prone[g_pid], p.si_after_wane_prone, p.si_after_wane_other)
    si_ep = np.where(
        waned, np.where(r < p_after, si_vals, 0.0), np.where(r < p.si_in_response, 1.0, 0.0)
    )
    si_other = np.where(r < 0.5, si_base, np.maximum(si_base - 1.0, 0.0))
    item9 = np.where(phase == _PHASE_EPISODE, si_ep, si_other)
    return _Grid(g_pid, g_day, g_key), total, item9


def _assessments(
    rng_score: np.random.Generator,
    rng_items: np.random.Generator,
    pat: _Patients,
    start: np.ndarray,
    grid: _Grid,
    sessions: _Sessions,
    p: SimulationParams,
    on_session_days: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Baseline rows and follow-up assessments: patient index, day and the answers."""
    kept, total, item9 = _scores(rng_score, pat, grid, sessions, p, on_session_days)
    n = len(start)
    has_base = rng_score.random(n) >= p.baseline_missing
    b_day = start - rng_score.integers(*p.baseline_days_before, n, endpoint=True)
    b_pid = np.arange(n)[has_base]
    a_pid = np.concatenate([b_pid, kept.pid])
    a_day = np.concatenate([b_day[has_base], kept.day])
    a_total = np.concatenate([pat.baseline[has_base], total])
    a_item9 = np.concatenate([pat.si_base[has_base], item9])
    is_base = np.concatenate([np.ones(len(b_pid), bool), np.zeros(len(kept.pid), bool)])
    assessments = _assessment_rows(rng_items, pat, a_pid, a_total, a_item9, is_base, p)
    assessments["date"] = a_day
    return a_pid, a_day, assessments


def _cohort_frames(
    rng: np.random.Generator,
    pat: _Patients,
    sessions: _Sessions,
    a_pid: np.ndarray,
    a_day: np.ndarray,
    assessments: dict[str, np.ndarray],
    ids: np.ndarray,
    epoch: np.datetime64,
    p: SimulationParams,
    totals_only: np.ndarray | None = None,
) -> Cohort:
    """The canonical contract frames, with the blank cells a clinic export has.

    Patients flagged ``totals_only`` get the frames of a clinic that records
    only PHQ-9 totals (after the usual blanks are drawn, so the other
    patients' cells are unchanged).
    """
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "age": _blank(rng, pat.age, p.blank_patient["age"]),
            "sex": _blank(rng, pat.sex, p.blank_patient["sex"]),
            "diagnosis": _blank(rng, pat.diagnosis, p.blank_patient["diagnosis"]),
            "prior_treatments": _blank(rng, pat.prior, p.blank_patient["prior_treatments"]),
        }
    )
    bs = p.blank_session
    attrs = sessions.attrs
    session_frame = pd.DataFrame(
        {
            "patient_id": ids[sessions.pid],
            "date": epoch + sessions.day.astype("timedelta64[D]"),
            "kind": np.where(sessions.kind == 0, "induction", "maintenance").astype(object),
            "dose_mg_per_kg": _blank(rng, attrs["dose_mg_per_kg"], bs["dose_mg_per_kg"]),
            "route": _blank(rng, pat.route[sessions.pid], bs["route"]),
            "psychotherapy": _blank(rng, attrs["psychotherapy"].astype(float), bs["psychotherapy"]),
            "dissociation": _blank(rng, attrs["dissociation"], bs["dissociation"]),
            "systolic_bp_max": _blank(rng, attrs["systolic_bp_max"], bs["systolic_bp_max"]),
        }
    )
    assessments["patient_id"] = ids[a_pid]
    assessments["date"] = epoch + a_day.astype("timedelta64[D]")
    latent_total = assessments.pop("_total")
    if totals_only is not None and totals_only.any():
        s_tot = totals_only[sessions.pid]
        for col in ("dose_mg_per_kg", "psychotherapy", "dissociation", "systolic_bp_max"):
            session_frame.loc[s_tot, col] = np.nan
        session_frame.loc[s_tot, "route"] = None
        a_tot = totals_only[a_pid]
        for col in (*PHQ9_ITEMS, "cssrs_ideation", "cssrs_behavior"):
            assessments[col] = np.where(a_tot, np.nan, assessments[col])
        assessments["phq9_total"] = np.where(a_tot, latent_total, assessments["phq9_total"])
    return Cohort(
        canonicalize("patients", patients),
        canonicalize("sessions", session_frame),
        canonicalize("assessments", pd.DataFrame(assessments)),
    )


def _truth_frame(
    sessions: _Sessions, ids: np.ndarray, epoch: np.datetime64, p: SimulationParams
) -> pd.DataFrame:
    """One row per response episode: latent wane days and the true risks."""
    t_mask = sessions.phase == _PHASE_EPISODE
    risk = true_risk(sessions.loc[t_mask], p.wane_scale)
    return pd.DataFrame(
        {
            "patient_id": ids[sessions.pid[t_mask]],
            "episode_start": (epoch + sessions.day[t_mask].astype("timedelta64[D]")).astype(
                "datetime64[ns]"
            ),
            "episode_index": sessions.epi[t_mask].astype(int),
            "latent_wane_days": sessions.wane[t_mask],
            **{f"risk_{h}d": risk[:, i] for i, h in enumerate(HORIZONS)},
        }
    )


def _patient_ids(n: int) -> np.ndarray:
    width = max(4, len(str(n)))
    return np.char.add("S", np.char.zfill(np.arange(1, n + 1).astype(str), width)).astype(object)


def _blank(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """Blank a random ``share`` of ``values`` (NaN for numbers, None for categories)."""
    hole = rng.random(len(values)) < share
    if values.dtype == object:
        out = values.astype(object).copy()
        out[hole] = None
        return out
    out = values.astype(float).copy()
    out[hole] = np.nan
    return out


def _assessment_rows(
    rng: np.random.Generator,
    pat: _Patients,
    a_pid: np.ndarray,
    total: np.ndarray,
    item9: np.ndarray,
    is_base: np.ndarray,
    p: SimulationParams,
) -> dict[str, np.ndarray]:
    """Item answers, totals and C-SSRS for each assessment (vectorised)."""
    m = len(a_pid)
    item9 = np.maximum(item9, total - 24.0)
    other = np.clip(total - item9, 0.0, 24.0)
    total = other + item9
    # Spread the other eight items evenly, then move single points at random
    # between items so that profiles differ while the sum stays the same.
    # (Flat int8 indexing: this runs over every assessment of the cohort.)
    base = (other // 8).astype(np.int8)
    rem = (other - 8 * base).astype(np.int8)
    # argsort of uniform noise is a uniformly random permutation per row.
    perm = np.argsort(rng.random((m, 8)), axis=1).astype(np.int8)
    flat = (base[:, None] + (perm < rem[:, None])).astype(np.int8).ravel()
    row8 = np.arange(m) * 8
    for _ in range(6):
        i = row8 + rng.integers(0, 8, m)
        j = row8 + rng.integers(0, 8, m)
        move = (flat[i] > 0) & (flat[j] < 3) & (i != j)
        flat[i[move]] -= 1
        flat[j[move]] += 1
    items = np.concatenate([flat.reshape(m, 8).astype(float), item9[:, None]], axis=1)

    r = rng.random(m)
    total_only = pat.total_only[a_pid] | (r < p.total_only_row)
    missing = ~total_only & (r < p.total_only_row + p.missing_items_row) & ~is_base
    # One or two distinct missing items per affected row.
    first_hole = rng.integers(0, 9, m)
    second_hole = np.where(
        rng.random(m) < 0.5, (first_hole + rng.integers(1, 9, m)) % 9, first_hole
    )
    rows = np.flatnonzero(missing)
    items[rows, first_hole[rows]] = np.nan
    items[rows, second_hole[rows]] = np.nan
    items[total_only] = np.nan
    with_total = total_only | (~missing & (rng.random(m) < p.total_with_items))
    phq9_total = np.where(with_total, total, np.nan)

    # C-SSRS screener where the clinic uses it: ideation tracks the latent item 9.
    ci_levels = np.array(
        [
            [0.97, 0.03, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.50, 0.40, 0.10, 0.0, 0.0],
            [0.0, 0.0, 0.40, 0.35, 0.20, 0.05],
            [0.0, 0.0, 0.0, 0.30, 0.40, 0.30],
        ]
    )
    cdf = np.cumsum(ci_levels, axis=1)[item9.astype(int)]
    ideation = np.sum(rng.random(m)[:, None] > cdf, axis=1).clip(0, 5).astype(float)
    behavior = ((ideation >= 3) & (rng.random(m) < p.cssrs_behavior)).astype(float)
    given = pat.cssrs[a_pid] & (rng.random(m) < p.cssrs_row)
    out: dict[str, np.ndarray] = {c: items[:, i] for i, c in enumerate(PHQ9_ITEMS)}
    out["phq9_total"] = phq9_total
    out["cssrs_ideation"] = np.where(given, ideation, np.nan)
    out["cssrs_behavior"] = np.where(given, behavior, np.nan)
    out["_total"] = total  # the latent total, for totals-only clinics (not a column)
    return out
