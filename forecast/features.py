"""Covariates of a patient "as of" a date: the ONE feature function of training and serving.

:func:`features_at` answers many ``(patient_id, as_of)`` queries at once and
uses only rows dated on or before each ``as_of``. :func:`landmark_dataset`
builds the training set by calling the very same computation at
``episode start + s`` for the landmarks ``s`` of :data:`DEFAULT_LANDMARKS`, so
the features a model is trained on and the features it is served are equal by
construction (and tested).

Missing values: every numeric feature is filled so that a model can consume
every row. The fill is 0 and, where missingness varies among training rows, a
``<name>_missing`` (or ``first_episode`` / ``response_known`` / ...) 0/1
indicator says that the value was filled. A missing categorical stays None
(one-hot encoders with the fixed levels of :data:`FEATURES` give all zeros);
``sex`` None is read as its contract level ``unknown``. Raw (unfilled) values
of the clinically shown numbers are in the context columns.

Context columns (not features) serve the policy and the explanations: the
episode, the last session, whether the response is known yet, whether waning
has been seen, the latest PHQ-9 / severity / response state with the baseline
and the response threshold, and the safety flag (the most severe flag in
force by the rule of :mod:`forecast.safety`, which every answer uses: any
flagged answer since the last session's day, and any older one no negative
screen has closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecast.arrays import (
    episode_ids,
    fill_missing,
    group_cumsum,
    last_at_or_before,
    range_sum,
    run_cummax,
    take,
    take_objects,
)
from forecast.cohort import Cohort
from forecast.contract import DIAGNOSES, ROUTES, SESSION_KINDS, SEXES
from forecast.episodes import episode_arrays
from forecast.instruments import severity_band
from forecast.outcomes import (
    OutcomeDefinition,
    Prepared,
    day_key,
    day_numbers,
    days_to_dates,
    prepare,
    state_of,
)
from forecast.safety import pair_flags

#: Landmarks (days after the episode start) of the training set.
DEFAULT_LANDMARKS: tuple[int, ...] = (0, 7, 14, 21, 28, 35, 42, 56, 70, 84, 112, 140)

#: Window (days, inclusive) of the PHQ-9 least-squares slope.
SLOPE_WINDOW_DAYS = 28

_STATIC_NUMERIC: tuple[str, ...] = (
    "age",
    "age_missing",
    "prior_treatments",
    "prior_treatments_missing",
    "phq9_baseline",
    "dose_mg_per_kg",
    "dose_missing",
    "psychotherapy",
    "psychotherapy_missing",
    "dissociation",
    "dissociation_missing",
    "n_prev_sessions",
    "n_prev_episodes",
    "first_episode",
    "prev_benefit_days_mean",
    "prev_waned_share",
    "prev_response_ratio_mean",
)
_DYNAMIC_NUMERIC: tuple[str, ...] = (
    "elapsed_days",
    "response_known",
    "response_day",
    "phq9_response",
    "phq9_response_ratio",
    "phq9_latest",
    "phq9_latest_ratio",
    "phq9_mean_ratio_since_session",
    "phq9_change",
    "phq9_max_since_session",
    "phq9_slope_28d",
    "slope_missing",
    "item9_latest",
    "item9_missing",
    "cssrs_latest",
    "cssrs_missing",
    "days_since_assessment",
    "n_assessments_since_session",
)


@dataclass(frozen=True)
class FeatureSpec:
    """Names of the model features.

    Attributes
    ----------
    numeric : tuple of str
        Numeric features (float, never NaN).
    categorical : dict of str to tuple of str
        Categorical features with their fixed levels (values are one of the
        levels or None).
    """

    numeric: tuple[str, ...]
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """All feature columns, numeric first."""
        return (*self.numeric, *self.categorical)


def feature_spec(covariates: tuple[str, ...] | list[str] = ()) -> FeatureSpec:
    """The feature spec for a cohort with declared extra ``covariates``.

    Each declared covariate adds ``<name>`` and ``<name>_missing``.
    """
    extra: list[str] = []
    for c in covariates:
        extra += [c, f"{c}_missing"]
    return FeatureSpec(
        numeric=(*_STATIC_NUMERIC, *extra, *_DYNAMIC_NUMERIC),
        categorical={
            "sex": SEXES,
            "diagnosis": DIAGNOSES,
            "route": ROUTES,
            "session_kind": SESSION_KINDS,
        },
    )


#: Features of a cohort without declared covariates (use :func:`feature_spec`
#: with ``cohort.covariates`` otherwise).
FEATURES: FeatureSpec = feature_spec(())


@dataclass
class _Context:
    """Everything precomputed once per cohort for many queries."""

    prep: Prepared
    ep: dict[str, np.ndarray]
    s_first: np.ndarray  # per patient: index of the first session (or -1)
    prev_ep: np.ndarray  # per session: responding sessions before it (same patient)
    prev_events: np.ndarray
    prev_dur_sum: np.ndarray
    prev_r_sum: np.ndarray  # per session: sum of the response PHQ-9 of earlier episodes
    ep_index: np.ndarray  # per session: episode number k (0 if not responding)
    p_rows: np.ndarray  # assessment rows with a PHQ-9
    p_key: np.ndarray
    p_cum: dict[str, np.ndarray]  # cumulative sums for the slope
    p_max_since: np.ndarray  # running max of PHQ-9 since the owning session
    p_owner: np.ndarray
    i9_rows: np.ndarray
    c_rows: np.ndarray


def _context(prep: Prepared) -> _Context:
    ep = episode_arrays(prep)
    n_pat = len(prep.ids)
    ns = len(prep.s_patient)
    a = prep.assessments
    s_first = np.full(n_pat, -1, dtype=np.int64)
    if ns:
        starts = np.flatnonzero(np.r_[True, prep.s_patient[1:] != prep.s_patient[:-1]])
        s_first[prep.s_patient[starts]] = starts
    resp = ep["responded"].astype(float)
    ev = (ep["event"] & ep["responded"]).astype(float)
    dur = np.where(ep["event"], (ep["lower"] + ep["upper"]) / 2.0, ep["lower"])
    dur = np.where(ep["responded"], dur, 0.0)
    cum_ep = group_cumsum(resp, prep.s_patient)
    prev_ep = cum_ep - resp
    prev_events = group_cumsum(ev, prep.s_patient) - ev
    prev_dur_sum = group_cumsum(dur, prep.s_patient) - dur
    r_sc = np.where(ep["responded"], np.nan_to_num(ep["r_phq9"].astype(float)), 0.0)
    prev_r_sum = group_cumsum(r_sc, prep.s_patient) - r_sc
    ep_index = np.where(ep["responded"], cum_ep, 0).astype(np.int64)

    phq9 = a["phq9"].to_numpy(dtype=float)
    p_rows = np.flatnonzero(~np.isnan(phq9))
    p_pc = prep.a_patient[p_rows]
    p_day = prep.a_day[p_rows].astype(float)
    # Days relative to the patient's first PHQ-9 keep the squared sums small.
    first = np.r_[True, p_pc[1:] != p_pc[:-1]] if len(p_rows) else np.zeros(0, dtype=bool)
    ref = p_day[np.maximum.accumulate(np.where(first, np.arange(len(p_rows)), 0))]
    x = p_day - ref
    y = phq9[p_rows]
    p_cum = {
        "n": np.cumsum(np.ones(len(p_rows))),
        "x": np.cumsum(x),
        "y": np.cumsum(y),
        "xx": np.cumsum(x * x),
        "xy": np.cumsum(x * y),
    }
    # Owner = last session dated strictly before the assessment (as in episodes).
    own = np.searchsorted(prep.s_key, prep.a_key, side="left") - 1
    own_ok = own >= 0
    own_ok[own_ok] = prep.s_patient[own[own_ok]] == prep.a_patient[own_ok]
    own = np.where(own_ok, own, -1 - prep.a_patient)  # per-patient group before any session
    p_owner = own[p_rows]
    p_max_since = (
        run_cummax(y.astype(np.int64), p_owner).astype(float) if len(p_rows) else np.zeros(0)
    )

    item9 = a["item9"].to_numpy(dtype=float)
    cssrs = a["cssrs_ideation"].to_numpy(dtype=float)
    return _Context(
        prep=prep,
        ep=ep,
        s_first=s_first,
        prev_ep=prev_ep,
        prev_events=prev_events,
        prev_dur_sum=prev_dur_sum,
        prev_r_sum=prev_r_sum,
        ep_index=ep_index,
        p_rows=p_rows,
        p_key=prep.a_key[p_rows],
        p_cum=p_cum,
        p_max_since=p_max_since,
        p_owner=p_owner,
        i9_rows=np.flatnonzero(~np.isnan(item9)),
        c_rows=np.flatnonzero(~np.isnan(cssrs)),
    )


def _compute(ctx: _Context, q_pc: np.ndarray, q_day: np.ndarray, *, full: bool) -> pd.DataFrame:
    """Features (and, when ``full``, all context columns) for encoded queries."""
    return pd.DataFrame(_query_columns(ctx, q_pc, q_day, full=full), copy=False)


@dataclass
class _AtQuery:
    """What is known at each query's ``as_of`` (arrays with one entry per query)."""

    q_pc: np.ndarray  # patient code
    qd: np.ndarray  # as_of day (float)
    # Treatment, baseline and the last session on or before as_of.
    anchor: np.ndarray
    treated: np.ndarray
    base: np.ndarray
    si: np.ndarray  # index of the last session (-1: none)
    has_s: np.ndarray
    s_day: np.ndarray
    n_sessions: np.ndarray
    responded: np.ndarray
    r_day: np.ndarray
    response_known: np.ndarray
    in_episode: np.ndarray
    r_phq9: np.ndarray
    waned_seen: np.ndarray
    elapsed: np.ndarray
    # Previous episodes (all of them ended by the last session).
    prev_ep: np.ndarray
    prev_r: np.ndarray
    first_episode: np.ndarray
    prev_mean: np.ndarray
    prev_share: np.ndarray
    # Assessments up to as_of.
    latest: np.ndarray
    latest_day: np.ndarray
    item9: np.ndarray
    cssrs: np.ndarray
    last_a_day: np.ndarray
    n_since: np.ndarray
    max_since: np.ndarray
    mean_since: np.ndarray
    slope: np.ndarray


def _query_columns(
    ctx: _Context, q_pc: np.ndarray, q_day: np.ndarray, *, full: bool, safety: bool = True
) -> dict[str, np.ndarray]:
    """The columns of :func:`_compute`, in its order, as arrays (``safety=False``:
    the safety columns left blank for a caller that pairs the flags itself)."""
    q = _state_at(ctx, q_pc, q_day)
    out = _feature_values(ctx, q)
    ep_k = take(ctx.ep_index, q.si, 0).astype(np.int64)
    ids = ctx.prep.ids[q_pc]
    episode_id = np.full(len(q_pc), None, dtype=object)
    if q.in_episode.any():
        episode_id[q.in_episode] = episode_ids(ids[q.in_episode], ep_k[q.in_episode])
    ctx_cols: dict[str, np.ndarray] = {
        "patient_id": ids,
        "as_of": days_to_dates(q.qd),
        "episode_id": episode_id,
        "in_episode": q.in_episode,
    }
    if full:
        ctx_cols.update(_context_values(ctx, q, safety=safety))
    spec = feature_spec(ctx.prep.covariates)
    # Feature names never repeat a context name (features are filled, context is raw).
    assert not set(spec.names) & set(ctx_cols)
    ctx_cols.update((k, out[k]) for k in spec.names)
    return ctx_cols


def _state_at(ctx: _Context, q_pc: np.ndarray, q_day: np.ndarray) -> _AtQuery:
    q_key = day_key(q_pc, q_day)
    qd = q_day.astype(float)
    session = _session_state(ctx, q_pc, qd, q_key)
    assessed = _assessment_state(
        ctx, q_pc, qd, q_key, session["si"], session["has_s"], session["s_day"]
    )
    return _AtQuery(q_pc=q_pc, qd=qd, **session, **assessed)


def _session_state(
    ctx: _Context, q_pc: np.ndarray, qd: np.ndarray, q_key: np.ndarray
) -> dict[str, np.ndarray]:
    """Treatment, baseline, the last session and the previous episodes at as_of."""
    prep, ep = ctx.prep, ctx.ep
    nq = len(q_pc)
    anchor = prep.anchor_day[q_pc]
    with np.errstate(invalid="ignore"):
        treated = anchor <= qd
    # A fallback baseline (after the first session) is known from its own day only.
    with np.errstate(invalid="ignore"):
        base_known = treated & (prep.base_day[q_pc] <= qd)
    base = np.where(base_known, prep.base_phq9[q_pc], np.nan)
    si = last_at_or_before(prep.s_key, prep.s_patient, q_key, q_pc)
    has_s = si >= 0
    si0 = np.clip(si, 0, None)
    s_day = take(prep.s_day, si)
    n_sessions = np.where(has_s, si - ctx.s_first[q_pc] + 1, 0)
    responded = has_s & ep["responded"][si0] if len(prep.s_patient) else np.zeros(nq, dtype=bool)
    r_day = take(ep["r_day"], si)
    with np.errstate(invalid="ignore"):
        response_known = has_s & (r_day <= qd)
    in_episode = responded & response_known & treated
    r_phq9 = np.where(response_known, take(ep["r_phq9"], si), np.nan)
    with np.errstate(invalid="ignore"):
        waned_seen = in_episode & (take(ep["known_day"], si) <= qd)
    elapsed = qd - s_day

    prev_ep = take(ctx.prev_ep, si, 0.0)
    prev_ev = take(ctx.prev_events, si, 0.0)
    prev_dur = take(ctx.prev_dur_sum, si, 0.0)
    prev_r = take(ctx.prev_r_sum, si, 0.0)
    first_episode = prev_ep == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        prev_mean = np.where(first_episode, 0.0, prev_dur / prev_ep)
        prev_share = np.where(first_episode, 0.0, prev_ev / prev_ep)
    return {
        "anchor": anchor,
        "treated": treated,
        "base": base,
        "si": si,
        "has_s": has_s,
        "s_day": s_day,
        "n_sessions": n_sessions,
        "responded": responded,
        "r_day": r_day,
        "response_known": response_known,
        "in_episode": in_episode,
        "r_phq9": r_phq9,
        "waned_seen": waned_seen,
        "elapsed": elapsed,
        "prev_ep": prev_ep,
        "prev_r": prev_r,
        "first_episode": first_episode,
        "prev_mean": prev_mean,
        "prev_share": prev_share,
    }


def _assessment_state(
    ctx: _Context,
    q_pc: np.ndarray,
    qd: np.ndarray,
    q_key: np.ndarray,
    si: np.ndarray,
    has_s: np.ndarray,
    s_day: np.ndarray,
) -> dict[str, np.ndarray]:
    """The latest answers, the PHQ-9 since the last session, the slope and the safety flag."""
    prep = ctx.prep
    a = prep.assessments
    ai = last_at_or_before(prep.a_key, prep.a_patient, q_key, q_pc)
    pi = last_at_or_before(ctx.p_key, prep.a_patient[ctx.p_rows], q_key, q_pc)
    p_idx = np.where(pi >= 0, ctx.p_rows[np.clip(pi, 0, None)] if len(ctx.p_rows) else 0, -1)
    latest = take(a["phq9"].to_numpy(dtype=float), p_idx)
    latest_day = take(prep.a_day, p_idx)
    i9i = last_at_or_before(prep.a_key[ctx.i9_rows], prep.a_patient[ctx.i9_rows], q_key, q_pc)
    item9 = take(a["item9"].to_numpy(dtype=float)[ctx.i9_rows], i9i)
    ci = last_at_or_before(prep.a_key[ctx.c_rows], prep.a_patient[ctx.c_rows], q_key, q_pc)
    cssrs = take(a["cssrs_ideation"].to_numpy(dtype=float)[ctx.c_rows], ci)
    last_a_day = take(prep.a_day, ai)

    # Assessments since the session: dated strictly after it, on or before as_of.
    s_key_q = np.where(has_s, day_key(q_pc, np.nan_to_num(s_day).astype(np.int64)), 0)
    n_since = np.where(
        has_s,
        np.searchsorted(prep.a_key, q_key, side="right")
        - np.searchsorted(prep.a_key, s_key_q, side="right"),
        0,
    )
    p_since = (pi >= 0) & has_s & (take(ctx.p_owner, pi, -1) == si)
    max_since = np.where(p_since, take(ctx.p_max_since, pi), np.nan)
    # Mean PHQ-9 since the session: its PHQ-9 rows form one run (sorted by day).
    first_p = np.searchsorted(ctx.p_key, s_key_q, side="right")
    n_p_since = np.where(p_since, pi - first_p + 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_since = np.where(
            n_p_since > 0, range_sum(ctx.p_cum["y"], first_p, pi) / n_p_since, np.nan
        )

    # Least-squares slope over PHQ-9 rows dated in [as_of - 28, as_of].
    lo = np.searchsorted(ctx.p_key, q_key - SLOPE_WINDOW_DAYS, side="left")
    hi = np.where(pi >= 0, pi, lo - 1)
    n_w, sx, sy, sxx, sxy = (range_sum(ctx.p_cum[k], lo, hi) for k in ("n", "x", "y", "xx", "xy"))
    den = n_w * sxx - sx * sx
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where((n_w >= 2) & (den > 1e-9), 7.0 * (n_w * sxy - sx * sy) / den, np.nan)

    return {
        "latest": latest,
        "latest_day": latest_day,
        "item9": item9,
        "cssrs": cssrs,
        "last_a_day": last_a_day,
        "n_since": n_since,
        "max_since": max_since,
        "mean_since": mean_since,
        "slope": slope,
    }


def _feature_values(ctx: _Context, q: _AtQuery) -> dict[str, np.ndarray]:
    """Every feature column (missing values filled, with ``*_missing`` indicators)."""
    prep = ctx.prep
    s = prep.sessions
    q_pc, si, base = q.q_pc, q.si, q.base
    nq = len(q_pc)
    out: dict[str, np.ndarray] = {}
    pat = prep.patients
    age, age_m = fill_missing(
        pat["age"].to_numpy(dtype=float)[q_pc] if "age" in pat else np.full(nq, np.nan)
    )
    prior, prior_m = fill_missing(
        pat["prior_treatments"].to_numpy(dtype=float)[q_pc]
        if "prior_treatments" in pat
        else np.full(nq, np.nan)
    )
    dose, dose_m = fill_missing(take(s["dose_mg_per_kg"].to_numpy(dtype=float), si))
    psy, psy_m = fill_missing(take(s["psychotherapy"].to_numpy(dtype=float), si))
    dis, dis_m = fill_missing(take(s["dissociation"].to_numpy(dtype=float), si))
    out.update(
        age=age,
        age_missing=age_m,
        prior_treatments=prior,
        prior_treatments_missing=prior_m,
        phq9_baseline=np.nan_to_num(base),
        dose_mg_per_kg=dose,
        dose_missing=dose_m,
        psychotherapy=psy,
        psychotherapy_missing=psy_m,
        dissociation=dis,
        dissociation_missing=dis_m,
        n_prev_sessions=np.clip(q.n_sessions - 1, 0, None).astype(float),
        n_prev_episodes=q.prev_ep,
        first_episode=q.first_episode.astype(float),
        prev_benefit_days_mean=q.prev_mean,
        prev_waned_share=q.prev_share,
        prev_response_ratio_mean=np.where(
            q.first_episode | ~(base > 0),
            0.0,
            np.nan_to_num(q.prev_r / np.maximum(q.prev_ep, 1.0) / np.where(base > 0, base, 1.0)),
        ),
    )
    for c in prep.covariates:
        v, m = fill_missing(pat[c].to_numpy(dtype=float)[q_pc])
        out[c] = v
        out[f"{c}_missing"] = m
    with np.errstate(invalid="ignore", divide="ignore"):
        r_ratio = np.where(base > 0, q.r_phq9 / base, np.nan)
        l_ratio = np.where(base > 0, q.latest / base, np.nan)
        m_ratio = np.where(base > 0, q.mean_since / base, np.nan)
    item9_f, item9_m = fill_missing(q.item9)
    cssrs_f, cssrs_m = fill_missing(q.cssrs)
    slope_f, slope_m = fill_missing(q.slope)
    out.update(
        elapsed_days=np.nan_to_num(q.elapsed),
        response_known=q.response_known.astype(float),
        response_day=np.where(q.response_known, np.nan_to_num(q.r_day - q.s_day), 0.0),
        phq9_response=np.nan_to_num(q.r_phq9),
        phq9_response_ratio=np.nan_to_num(r_ratio),
        phq9_latest=np.nan_to_num(q.latest),
        phq9_latest_ratio=np.nan_to_num(l_ratio),
        phq9_mean_ratio_since_session=np.nan_to_num(m_ratio),
        phq9_change=np.nan_to_num(q.latest - q.r_phq9),
        phq9_max_since_session=np.nan_to_num(q.max_since),
        phq9_slope_28d=slope_f,
        slope_missing=slope_m,
        item9_latest=item9_f,
        item9_missing=item9_m,
        cssrs_latest=cssrs_f,
        cssrs_missing=cssrs_m,
        days_since_assessment=np.nan_to_num(q.qd - q.last_a_day),
        n_assessments_since_session=q.n_since.astype(float),
    )
    sex = pat["sex"].to_numpy(dtype=object)[q_pc] if "sex" in pat else np.full(nq, None)
    sex = np.where(pd.isna(sex), "unknown", sex).astype(object)
    out["sex"] = sex
    out["diagnosis"] = (
        pat["diagnosis"].to_numpy(dtype=object)[q_pc] if "diagnosis" in pat else np.full(nq, None)
    )
    out["route"] = take_objects(s["route"].to_numpy(dtype=object), si)
    out["session_kind"] = take_objects(s["kind"].to_numpy(dtype=object), si)
    return out


def _safety_rows(prep: Prepared, q: _AtQuery) -> np.ndarray:
    """Per query, the assessment row of the most severe (then latest) flag in force.

    The flags in force are those of :mod:`forecast.safety` (since the last
    session, or not closed by a later negative screen), the rule every
    answer uses; -1 where none is in force.
    """
    n = len(q.q_pc)
    out = np.full(n, -1, dtype=np.int64)
    a = prep.assessments
    pairs = pair_flags(a, prep.a_patient, q.q_pc, days_to_dates(q.qd), days_to_dates(q.s_day))
    live = np.flatnonzero(pairs.in_force)
    if not len(live):
        return out
    rank = prep.a_rank[pairs.row[live]]
    order = np.lexsort((pairs.date[live], rank, pairs.query[live]))
    query = pairs.query[live][order]
    last = np.r_[query[1:] != query[:-1], True]
    out[query[last]] = pairs.row[live][order][last]
    return out


def _context_values(ctx: _Context, q: _AtQuery, *, safety: bool = True) -> dict[str, np.ndarray]:
    """The context columns of ``full`` queries: raw values, statuses and dates."""
    prep, ep, d = ctx.prep, ctx.ep, ctx.prep.definition
    a, s = prep.assessments, prep.sessions
    si, base, qd, s_day = q.si, q.base, q.qd, q.s_day
    status = np.full(len(q.q_pc), "pending", dtype=object)
    with np.errstate(invalid="ignore"):
        window = take(ctx.ep["response_window"], si)
        status[~q.response_known & (qd >= s_day + window)] = "no_assessment"
    status[q.response_known & q.responded] = "responded"
    status[q.response_known & ~q.responded] = "not_responded"
    status[np.isnan(base)] = "no_baseline"
    status[~q.treated | ~q.has_s] = "no_treatment"
    state = state_of(q.latest, base, q.treated, d)
    # No score after the baseline yet: the response is not measured, whatever the
    # baseline itself says.
    with np.errstate(invalid="ignore"):
        pre = ~(q.latest_day > prep.base_day[q.q_pc])
    state[q.treated & ~np.isnan(base) & (pre | np.isnan(q.latest))] = "not_measured_yet"
    with np.errstate(invalid="ignore", divide="ignore"):
        l_ratio = np.where(base > 0, q.latest / base, np.nan)
    s_pos = _safety_rows(prep, q) if safety else np.full(len(q.q_pc), -1, dtype=np.int64)
    return {
        "episode_start": days_to_dates(np.where(q.in_episode, s_day, np.nan)),
        "last_session": days_to_dates(s_day),
        "last_session_kind": take_objects(s["kind"].to_numpy(dtype=object), si),
        "days_since_session": q.elapsed,
        "n_sessions": q.n_sessions.astype(np.int64),
        "treated": q.treated,
        "response_status": status,
        "response_date": days_to_dates(np.where(q.response_known, q.r_day, np.nan)),
        "response_phq9": q.r_phq9,
        "waned_seen": q.waned_seen,
        "waned_date": days_to_dates(np.where(q.waned_seen, take(ep["upper_day"], si), np.nan)),
        "baseline_phq9": base,
        "baseline_date": days_to_dates(np.where(np.isnan(q.base), np.nan, prep.base_day[q.q_pc])),
        "response_threshold": d.response_fraction * base,
        "latest_phq9": q.latest,
        "latest_phq9_date": days_to_dates(q.latest_day),
        "latest_ratio": l_ratio,
        "severity": severity_band(q.latest),
        "response_state": state,
        "latest_item9": q.item9,
        "latest_cssrs_ideation": q.cssrs,
        "last_assessment": days_to_dates(q.last_a_day),
        "safety": np.where(
            s_pos >= 0, take_objects(a["safety"].to_numpy(dtype=object), s_pos), None
        ),
        "safety_reason": take_objects(a["safety_reason"].to_numpy(dtype=object), s_pos),
        "safety_date": days_to_dates(take(prep.a_day, s_pos)),
    }


def _encode_queries(prep: Prepared, queries: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = {"patient_id", "as_of"} - set(queries.columns)
    if missing:
        raise ValueError(
            f"queries need the columns patient_id and as_of; missing {sorted(missing)}"
        )
    q_pc = pd.Index(prep.ids).get_indexer(queries["patient_id"].astype(str))
    if (q_pc < 0).any():
        raise ValueError(
            f"{int((q_pc < 0).sum())} queries name a patient that is not in the cohort"
        )
    as_of = pd.to_datetime(queries["as_of"])
    if as_of.isna().any():
        raise ValueError("queries have a blank as_of date")
    return q_pc.astype(np.int64), day_numbers(as_of.dt.normalize())


def features_at(
    cohort: Cohort,
    queries: pd.DataFrame,
    definition: OutcomeDefinition | None = None,
) -> pd.DataFrame:
    """Features and context of patients "as of" dates, from history up to that date only.

    Parameters
    ----------
    cohort : Cohort
        Canonical cohort; it may hold rows after the query dates: they are
        ignored (a row dated on ``as_of`` is known on ``as_of``).
    queries : DataFrame
        Columns ``patient_id`` and ``as_of`` (date-like); one output row each.
    definition : OutcomeDefinition, optional
        Clinical definitions; the defaults of ``OutcomeDefinition`` when omitted.

    Returns
    -------
    DataFrame
        Same row order as ``queries`` (RangeIndex). Context columns:
        ``patient_id, as_of, episode_id, in_episode, episode_start,
        last_session, last_session_kind, days_since_session, n_sessions,
        treated, response_status, response_known, response_date,
        response_phq9, waned_seen, waned_date, baseline_phq9, baseline_date,
        response_threshold, latest_phq9, latest_phq9_date, latest_ratio,
        severity, response_state, latest_item9, latest_cssrs_ideation,
        last_assessment, n_assessments_since_session, safety, safety_reason,
        safety_date``; then every feature of ``feature_spec(cohort.covariates)``.
    """
    prep = prepare(cohort, definition or OutcomeDefinition())
    q_pc, q_day = _encode_queries(prep, queries)
    return _compute(_context(prep), q_pc, q_day, full=True)


def _features_at_days(
    cohort: Cohort,
    q_pids: np.ndarray,
    q_as_of: np.ndarray,
    definition: OutcomeDefinition,
    scored: pd.DataFrame | None = None,
    *,
    safety: bool = True,
) -> dict[str, np.ndarray]:
    """The columns of :func:`features_at` (in its order, as arrays) for queries
    given as arrays (string patient ids and datetime64[ns] dates at midnight,
    none blank), optionally with the assessments already scored with the
    default rules (see ``prepare``). ``safety=False`` leaves the safety columns
    blank, for the policy, which pairs every flag with its query itself."""
    prep = prepare(cohort, definition, scored=scored)
    q_pc = pd.Index(prep.ids).get_indexer(q_pids)
    if (q_pc < 0).any():
        raise ValueError(
            f"{int((q_pc < 0).sum())} queries name a patient that is not in the cohort"
        )
    return _query_columns(
        _context(prep), q_pc.astype(np.int64), day_numbers(q_as_of), full=True, safety=safety
    )


def landmark_dataset(
    cohort: Cohort,
    definition: OutcomeDefinition | None = None,
    landmarks: tuple[int, ...] | list[int] = DEFAULT_LANDMARKS,
) -> pd.DataFrame:
    """The super-landmark training set of residual waning times.

    For every episode and landmark ``s`` the row holds the features of
    :func:`features_at` at ``start + s`` (history up to that date only) and the
    residual outcome: the event lies in ``(lower, upper]`` days after the
    landmark, with ``lower = max(lower_episode - s, 0)`` and ``upper =
    upper_episode - s`` (inf when right-censored). A row exists while the
    event is not yet observed and follow-up goes on: ``s < lower_episode``
    for a censored episode (after that it carries no information) and
    ``s < upper_episode`` for an event. A residual ``lower`` of 0 with a
    finite ``upper`` says the benefit may already have waned before the
    landmark without being seen: exactly the serving question "probability
    that the benefit will have waned within H days after as_of".

    Parameters
    ----------
    cohort : Cohort
    definition : OutcomeDefinition, optional
    landmarks : sequence of int
        Days after the episode start (non-negative).

    Returns
    -------
    DataFrame
        ``patient_id, episode_id, landmark, as_of, in_episode, lower, upper,
        event`` and the features of ``feature_spec(cohort.covariates)``; rows
        ordered by episode then landmark.
    """
    lm = np.asarray(sorted({int(x) for x in landmarks}), dtype=np.int64)
    if len(lm) == 0 or (lm < 0).any():
        raise ValueError("landmarks must be a non-empty set of non-negative day counts")
    prep = prepare(cohort, definition or OutcomeDefinition())
    ctx = _context(prep)
    ep = ctx.ep
    e = np.flatnonzero(ep["responded"])
    lower = ep["lower"][e]
    upper = ep["upper"][e]
    event = ep["event"][e]
    ne, nl = len(e), len(lm)
    s_rep = np.tile(lm, ne)
    e_rep = np.repeat(np.arange(ne), nl)
    stop = np.where(event, upper, lower)
    keep = s_rep < stop[e_rep]
    s_rep, e_rep = s_rep[keep], e_rep[keep]
    sess = e[e_rep]
    q_pc = prep.s_patient[sess].astype(np.int64)
    q_day = prep.s_day[sess] + s_rep
    frame = _compute(ctx, q_pc, q_day, full=False)
    ids = prep.ids[q_pc]
    k = ctx.ep_index[sess]
    frame["episode_id"] = episode_ids(ids, k)
    frame.insert(2, "landmark", s_rep.astype(np.int64))
    frame.insert(3, "lower", np.maximum(lower[e_rep] - s_rep, 0.0))
    frame.insert(4, "upper", upper[e_rep] - s_rep)
    frame.insert(5, "event", event[e_rep])
    cols = [
        "patient_id",
        "episode_id",
        "landmark",
        "as_of",
        "in_episode",
        "lower",
        "upper",
        "event",
    ]
    rest = [c for c in frame.columns if c not in cols]
    return frame[cols + rest]
