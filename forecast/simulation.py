"""Synthetic KAP cohorts with a known truth, for tests, demos and benchmarks.

The simulator writes the three contract tables (patients, sessions,
assessments) of a clinic population plus ``truth.csv``: for every response
episode the latent number of days until the benefit wanes and the true risk at
the forecast horizons. Models trained on the contract tables can therefore be
checked against the mechanism that produced them.

Mechanism (all figures are defaults of :class:`SimulationParams`; sources in
``README.md (simulation section)`` and DOMAIN.md):

- patients with age, sex, diagnosis, prior failed treatments and a baseline
  PHQ-9 severity; a clinic route/dose, a KAP (psychotherapy) propensity, a
  maintenance policy (fixed interval every 3-5 weeks, brought forward after
  half of the relapses seen before it, or a booster after an observed relapse)
  and a per-patient lognormal frailty shared by all episodes; every booster
  restores the benefit (a simplification);
- the frailty is correlated (0.6) with a depth factor that sets the
  responder's end-of-induction PHQ-9 ratio to baseline, and so the in-benefit
  level of every episode: deeper response, longer benefit (SUSTAIN-1:
  remitters relapse less than responders; early and deep response predicts
  durability), which leaves an observable trace of the durability;
- an induction of up to six sessions every 2-4 days (Murrough et al. 2013);
  about half do not complete it and about 20 % stop after the first (Osmind
  ORKA-2); drop-out is informative (more likely in non-responders);
- induction response about 54 % (ORKA-1, McInnes et al. 2022), from a logistic
  model of baseline severity, prior treatments, diagnosis, KAP and frailty;
- the time until the benefit wanes after each episode start is log-logistic
  AFT with covariates (psychotherapy, dose, route, prior treatments, baseline
  severity, diagnosis, age, episode kind) and the frailty, calibrated so that
  about 80 % / 60 % of first episodes keep the benefit at 28 / 56 days
  (ORKA-1 Kaplan-Meier among responders);
- PHQ-9 scores stay in response before the latent wane time, drift up over the
  three weeks before it and climb above 10 and half the baseline within a week
  after it; item 9 and the C-SSRS screener track severity and re-emerge
  (mostly) only after waning;
- weekly-ish assessments with jitter and skips, item-level answers with some
  missing items and some total-only rows, blank optional session values,
  drop-out during maintenance and administrative censoring at ``end_date``.

Everything is vectorised over patients; the only Python loop runs over
maintenance episodes (a few dozen iterations at most).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

from forecast.cohort import Cohort, canonicalize
from forecast.contract import HORIZONS, PHQ9_ITEMS, TABLES

#: Columns of ``truth.csv`` in order.
TRUTH_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "episode_start",
    "episode_index",
    "latent_wane_days",
    *(f"risk_{h}d" for h in HORIZONS),
)

# Phase that follows a session: what drives the PHQ-9 of the next assessments.
_PHASE_INDUCTION = 0  # an induction session that is not the last completed one
_PHASE_EPISODE = 1  # a responder's episode start (last induction or maintenance)
_PHASE_NONRESPONSE = 2  # the last induction session of a non-responder

# Integer-key layout used to search (patient, day) pairs in sorted arrays: days
# relative to the end date lie within +-_DAY_OFFSET.
_DAY_OFFSET = 2**20
_KEY_STRIDE = 2**21


def _dict(**kwargs: float) -> dict[str, float]:
    return dict(kwargs)


@dataclass(frozen=True)
class SimulationParams:
    """All knobs of the simulator, with their defaults and sources.

    Probabilities that must sum to one are given as ``{level: probability}``
    dictionaries. Effects on the wane time are log time ratios of a
    log-logistic accelerated failure time model (positive = benefit lasts
    longer); effects on the induction response are log odds ratios.
    """

    # --- enrolment window ---------------------------------------------------
    #: First induction sessions fall between this many days and
    #: ``last_start_days`` before ``end_date`` (about two years of enrolment).
    enrolment_days: int = 730
    last_start_days: int = 14

    # --- patient covariates -------------------------------------------------
    age_mean: float = 43.0
    age_sd: float = 13.0
    sex_probs: dict[str, float] = field(
        default_factory=lambda: _dict(female=0.56, male=0.41, other=0.02, unknown=0.01)
    )
    diagnosis_probs: dict[str, float] = field(
        default_factory=lambda: _dict(
            trd=0.42,
            mdd=0.20,
            bipolar=0.08,
            ptsd=0.13,
            ocd=0.04,
            social_anxiety=0.04,
            sud=0.05,
            other=0.04,
        )
    )
    #: Failed antidepressant trials: negative binomial with this mean (and
    #: ``trd_extra_prior`` more for treatment-resistant depression).
    prior_treatments_mean: float = 2.5
    trd_extra_prior: float = 2.0
    #: Baseline PHQ-9 ~ Normal(mean + diagnosis shift, sd), clipped to 6-27.
    baseline_mean: float = 17.0
    baseline_sd: float = 4.0
    baseline_shift: dict[str, float] = field(
        default_factory=lambda: _dict(
            trd=1.5,
            mdd=0.0,
            bipolar=0.5,
            ptsd=0.0,
            ocd=-1.0,
            social_anxiety=-2.0,
            sud=-1.0,
            other=-1.0,
        )
    )

    # --- clinic: route, dose, psychotherapy, maintenance policy -------------
    route_probs: dict[str, float] = field(
        default_factory=lambda: _dict(iv=0.42, im=0.13, intranasal=0.15, sublingual=0.24, oral=0.06)
    )
    #: Dose ranges in mg/kg per route (intranasal esketamine 56-84 mg expressed per kg).
    dose_range: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "iv": (0.5, 1.0),
            "im": (0.5, 1.5),
            "intranasal": (0.7, 1.2),
            "sublingual": (1.0, 10.0),
            "oral": (1.0, 10.0),
        }
    )
    #: Share of patients treated as KAP (psychotherapy attached) per route.
    kap_probs: dict[str, float] = field(
        default_factory=lambda: _dict(iv=0.35, im=0.55, intranasal=0.15, sublingual=0.8, oral=0.6)
    )
    #: Per-session probability of psychotherapy for KAP and other patients.
    psychotherapy_kap: float = 0.92
    psychotherapy_other: float = 0.05
    #: Share of patients in clinics that boost on a fixed interval (the others
    #: boost after an observed relapse).
    fixed_interval_share: float = 0.5
    fixed_interval_days: tuple[int, int] = (21, 35)
    fixed_interval_jitter: int = 3
    #: Share of relapses before the scheduled booster after which a fixed-interval
    #: clinic brings the booster forward (the patient calls in).
    fixed_early_booster: float = 0.5
    #: Relapse-driven clinics see the relapse at the first assessment at least
    #: ``relapse_detect_days`` after the latent wane, and boost 1-8 days later.
    relapse_detect_days: float = 2.0
    relapse_delay_days: tuple[int, int] = (1, 8)

    # --- induction ----------------------------------------------------------
    induction_sessions: int = 6
    induction_gap_days: tuple[int, int] = (2, 4)
    #: Probability of completing exactly 1..6 induction sessions, by latent
    #: response: overall ~50 % incomplete, ~20 % after one (ORKA-2), and
    #: informative (non-responders leave earlier).
    completed_probs_responder: tuple[float, ...] = (0.12, 0.07, 0.07, 0.06, 0.06, 0.62)
    completed_probs_nonresponder: tuple[float, ...] = (0.29, 0.10, 0.09, 0.08, 0.08, 0.36)
    #: Logistic response model (log odds); intercept calibrated so that the
    #: response measured from the PHQ-9 is ~54 % (ORKA-1: 53.6 %).
    response_intercept: float = 0.13
    response_prior_per_treatment: float = -0.10
    response_baseline_per_point: float = -0.04
    response_kap: float = 0.25
    response_frailty: float = 0.8
    response_diagnosis: dict[str, float] = field(
        default_factory=lambda: _dict(
            trd=-0.1,
            mdd=0.2,
            bipolar=-0.2,
            ptsd=0.1,
            ocd=-0.1,
            social_anxiety=0.0,
            sud=-0.3,
            other=0.0,
        )
    )

    # --- latent wane time (log-logistic AFT) --------------------------------
    #: Location (log days) and shape; calibrated to ORKA-1 (80 % / 60 % of
    #: responders still responding at 4 / 8 weeks).
    wane_intercept: float = 4.20
    wane_scale: float = 0.62
    frailty_sd: float = 0.40
    #: Correlation between the frailty and the depth factor that sets the
    #: end-of-induction ratio to baseline (and so the in-benefit PHQ-9 level of
    #: every episode): deeper response, longer benefit.
    depth_frailty_corr: float = 0.6
    wane_psychotherapy: float = 0.35
    wane_prior_per_treatment: float = -0.08
    wane_baseline_per_point: float = -0.04
    wane_age_per_year: float = -0.004
    #: Per unit of dose relative to the route's range (-0.5 .. 0.5).
    wane_relative_dose: float = 0.40
    wane_route: dict[str, float] = field(
        default_factory=lambda: _dict(
            iv=0.0, im=0.0, intranasal=-0.10, sublingual=-0.15, oral=-0.20
        )
    )
    wane_diagnosis: dict[str, float] = field(
        default_factory=lambda: _dict(
            trd=-0.10,
            mdd=0.10,
            bipolar=-0.15,
            ptsd=0.05,
            ocd=-0.05,
            social_anxiety=0.05,
            sud=-0.20,
            other=0.0,
        )
    )
    #: Maintenance (booster) episodes last a little longer than the first one
    #: (consolidation; motivated by SUSTAIN-1's lower relapse on maintenance).
    wane_maintenance: float = 0.10

    # --- follow-up and drop-out ----------------------------------------------
    #: Responders who complete induction stay in maintenance for an exponential
    #: time with this mean (days), at least ``maintenance_min_days``.
    maintenance_mean_days: float = 240.0
    maintenance_min_days: int = 14
    #: Days of questionnaires after the last induction session for patients who
    #: leave after induction (drop-outs; completers without response).
    dropout_followup_days: tuple[int, int] = (0, 45)
    nonresponder_followup_days: tuple[int, int] = (10, 60)

    # --- assessments ----------------------------------------------------------
    baseline_missing: float = 0.03
    #: Baseline questionnaire 1..14 days before the first induction session.
    baseline_days_before: tuple[int, int] = (1, 14)
    gap_days: tuple[int, ...] = (7, 10, 14)
    gap_probs: tuple[float, ...] = (0.75, 0.10, 0.15)
    gap_jitter: tuple[int, int] = (-2, 3)
    skip_range: tuple[float, float] = (0.05, 0.30)
    first_assessment_days: tuple[int, int] = (1, 6)

    # --- PHQ-9 dynamics ---------------------------------------------------------
    #: In-response level as a share of baseline (responders) and the level of
    #: non-responders.
    response_ratio: tuple[float, float] = (0.12, 0.38)
    nonresponse_ratio: tuple[float, float] = (0.62, 1.0)
    #: Each induction session moves the score this share of the remaining way.
    induction_step: float = 0.55
    drift_days: float = 21.0
    rise_days: float = 7.0
    relapse_ratio: tuple[float, float] = (0.75, 1.0)
    noise_sd: float = 1.0
    noise_sd_per_point: float = 0.05

    # --- suicidal ideation -------------------------------------------------------
    si_prone_share: float = 0.45
    si_baseline_probs: tuple[float, float, float] = (0.55, 0.30, 0.15)
    si_in_response: float = 0.005
    si_after_wane_prone: float = 0.55
    si_after_wane_other: float = 0.10
    si_after_wane_probs: tuple[float, float, float] = (0.65, 0.25, 0.10)
    cssrs_share: float = 0.45
    cssrs_row: float = 0.9
    cssrs_behavior: float = 0.01

    # --- missing values -------------------------------------------------------------
    total_only_patient_share: float = 0.05
    total_only_row: float = 0.05
    missing_items_row: float = 0.06
    total_with_items: float = 0.6
    blank_patient: dict[str, float] = field(
        default_factory=lambda: _dict(age=0.03, sex=0.02, diagnosis=0.02, prior_treatments=0.06)
    )
    blank_session: dict[str, float] = field(
        default_factory=lambda: _dict(
            dose_mg_per_kg=0.04,
            route=0.02,
            psychotherapy=0.03,
            dissociation=0.35,
            systolic_bp_max=0.25,
        )
    )


@dataclass
class SimulationResult:
    """A simulated cohort and the truth behind it.

    Attributes
    ----------
    cohort : Cohort
        Canonical patients, sessions and assessments (what a clinic would export).
    truth : pandas.DataFrame
        One row per response episode, columns :data:`TRUTH_COLUMNS`.
    params : SimulationParams
        The parameters used.
    seed : int
        The seed used.
    end_date : pandas.Timestamp
        The administrative end of follow-up (no row is dated after it).
    latent : pandas.DataFrame or None
        Per patient (``patient_id``): ``frailty``, the ``depth`` factor and
        ``response_logit_rest`` (induction-response log odds without the
        frailty term), for :func:`depth_oracle_risk`. Not written to disk:
        ``truth.csv`` keeps its columns.
    """

    cohort: Cohort
    truth: pd.DataFrame
    params: SimulationParams
    seed: int
    end_date: pd.Timestamp
    latent: pd.DataFrame | None = None


def _choice(rng: np.random.Generator, probs: dict[str, float], size: int) -> np.ndarray:
    levels = np.array(list(probs), dtype=object)
    p = np.array(list(probs.values()), dtype=float)
    return levels[rng.choice(len(levels), size=size, p=p / p.sum())]


def _lookup(mapping: dict[str, float], values: np.ndarray) -> np.ndarray:
    """Map category values to numbers (0 for levels missing from ``mapping``)."""
    out = np.zeros(len(values), dtype=float)
    for level, x in mapping.items():
        out[values == level] = x
    return out


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class _Patients:
    """Latent and observed per-patient values (arrays of length n)."""

    age: np.ndarray
    sex: np.ndarray
    diagnosis: np.ndarray
    prior: np.ndarray
    baseline: np.ndarray
    route: np.ndarray
    dose_base: np.ndarray
    rel_dose_base: np.ndarray
    kap: np.ndarray
    fixed: np.ndarray
    interval: np.ndarray
    frailty: np.ndarray
    responder: np.ndarray
    level_end: np.ndarray
    relapse_level: np.ndarray
    si_prone: np.ndarray
    si_base: np.ndarray
    cssrs: np.ndarray
    total_only: np.ndarray
    gap: np.ndarray
    skip: np.ndarray
    #: The standard-normal depth factor (frailty = sd * (rho * depth + ...)).
    depth: np.ndarray
    #: Induction-response log odds without the frailty term.
    response_logit_rest: np.ndarray


def _draw_patients(rng: np.random.Generator, n: int, p: SimulationParams) -> _Patients:
    age = np.clip(np.rint(rng.normal(p.age_mean, p.age_sd, n)), 18, 85)
    sex = _choice(rng, p.sex_probs, n)
    diagnosis = _choice(rng, p.diagnosis_probs, n)
    mean_prior = p.prior_treatments_mean + p.trd_extra_prior * (diagnosis == "trd")
    # Negative binomial with size 2: overdispersed counts with the given mean.
    prior = np.clip(rng.negative_binomial(2, 2.0 / (2.0 + mean_prior)), 0, 20).astype(float)
    baseline = np.clip(
        np.rint(rng.normal(p.baseline_mean + _lookup(p.baseline_shift, diagnosis), p.baseline_sd)),
        6,
        27,
    )
    route = _choice(rng, p.route_probs, n)
    lo = _lookup({k: v[0] for k, v in p.dose_range.items()}, route)
    hi = _lookup({k: v[1] for k, v in p.dose_range.items()}, route)
    rel_dose_base = rng.uniform(-0.5, 0.5, n)
    dose_base = lo + (rel_dose_base + 0.5) * (hi - lo)
    kap = rng.random(n) < _lookup(p.kap_probs, route)
    fixed = rng.random(n) < p.fixed_interval_share
    interval = rng.integers(p.fixed_interval_days[0], p.fixed_interval_days[1] + 1, n)
    # Latent durability: a standard-normal depth factor shared with the depth
    # of response, plus an independent part nothing observable reveals.
    depth = rng.standard_normal(n)
    rho = p.depth_frailty_corr
    frailty = p.frailty_sd * (rho * depth + np.sqrt(1.0 - rho**2) * rng.standard_normal(n))
    logit = (
        p.response_intercept
        + p.response_prior_per_treatment * (prior - 3.0)
        + p.response_baseline_per_point * (baseline - 17.0)
        + p.response_kap * kap
        + p.response_frailty * frailty
        + _lookup(p.response_diagnosis, diagnosis)
    )
    responder = rng.random(n) < _expit(logit)
    # The depth factor sets the quantile of the end-of-induction ratio within
    # its range (a Gaussian copula: the ratio stays uniform on the range), so
    # deeper responders (lower ratio) keep their benefit longer.
    q = ndtr(-depth)
    lo_r, hi_r = (
        np.where(responder, p.response_ratio[0], p.nonresponse_ratio[0]),
        np.where(responder, p.response_ratio[1], p.nonresponse_ratio[1]),
    )
    ratio = lo_r + q * (hi_r - lo_r)
    level_end = ratio * baseline
    resp_thr = np.floor(baseline / 2.0)
    event_thr = np.maximum(10.0, resp_thr + 1.0)
    relapse_level = np.clip(
        np.maximum(event_thr + 3.0, baseline * rng.uniform(*p.relapse_ratio, n)), 0, 27
    )
    si_prone = rng.random(n) < p.si_prone_share
    si_base = np.where(si_prone, rng.choice([1, 2, 3], size=n, p=list(p.si_baseline_probs)), 0)
    cssrs = rng.random(n) < p.cssrs_share
    total_only = rng.random(n) < p.total_only_patient_share
    gap = np.asarray(p.gap_days)[rng.choice(len(p.gap_days), size=n, p=list(p.gap_probs))]
    skip = rng.uniform(*p.skip_range, n)
    return _Patients(
        age,
        sex,
        diagnosis,
        prior,
        baseline,
        route,
        dose_base,
        rel_dose_base,
        kap,
        fixed,
        interval,
        frailty,
        responder,
        level_end,
        relapse_level,
        si_prone,
        si_base.astype(float),
        cssrs,
        total_only,
        gap,
        skip,
        depth,
        logit - p.response_frailty * frailty,
    )


def _session_attrs(
    rng: np.random.Generator, pat: _Patients, pidx: np.ndarray, p: SimulationParams
) -> dict[str, np.ndarray]:
    """Draw the recorded values of sessions of patients ``pidx`` (one per entry)."""
    m = len(pidx)
    route = pat.route[pidx]
    lo = _lookup({k: v[0] for k, v in p.dose_range.items()}, route)
    hi = _lookup({k: v[1] for k, v in p.dose_range.items()}, route)
    # Doses vary a little around the patient's usual dose, within the route's range.
    dose = np.clip(pat.dose_base[pidx] * (1.0 + rng.normal(0.0, 0.05, m)), lo, hi)
    dose = np.round(dose, 2)
    rel_dose = (dose - lo) / (hi - lo) - 0.5
    psych = rng.random(m) < np.where(pat.kap[pidx], p.psychotherapy_kap, p.psychotherapy_other)
    dissociation = np.clip(np.rint(rng.normal(25.0 + 40.0 * rel_dose, 15.0, m)), 0, 100)
    sbp = np.clip(np.rint(rng.normal(130.0 + 10.0 * rel_dose, 12.0, m)), 90, 220)
    return {
        "dose_mg_per_kg": dose,
        "rel_dose": rel_dose,
        "psychotherapy": psych,
        "dissociation": dissociation,
        "systolic_bp_max": sbp,
    }


def _wane_location(
    pat: _Patients,
    pidx: np.ndarray,
    psych: np.ndarray,
    rel_dose: np.ndarray,
    maintenance: bool,
    p: SimulationParams,
) -> np.ndarray:
    """Log-scale location of the latent wane time (AFT linear predictor + frailty)."""
    return (
        p.wane_intercept
        + p.wane_psychotherapy * psych
        + p.wane_prior_per_treatment * (pat.prior[pidx] - 3.0)
        + p.wane_baseline_per_point * (pat.baseline[pidx] - 17.0)
        + p.wane_age_per_year * (pat.age[pidx] - 43.0)
        + p.wane_relative_dose * rel_dose
        + _lookup(p.wane_route, pat.route[pidx])
        + _lookup(p.wane_diagnosis, pat.diagnosis[pidx])
        + (p.wane_maintenance if maintenance else 0.0)
        + pat.frailty[pidx]
    )


def _draw_wane(rng: np.random.Generator, loc: np.ndarray, scale: float) -> np.ndarray:
    """Log-logistic draw: exp(loc + scale * logistic noise)."""
    u = rng.uniform(1e-12, 1.0 - 1e-12, len(loc))
    return np.exp(loc + scale * np.log(u / (1.0 - u)))


def true_risk(
    location: np.ndarray,
    scale: float,
    horizons: tuple[int, ...] = HORIZONS,
    since: np.ndarray | float = 0.0,
) -> np.ndarray:
    """True risk of the log-logistic AFT mechanism, optionally from a landmark.

    ``since = 0`` gives P(T <= h), the ``risk_Hd`` columns of ``truth.csv``.
    With ``since = s`` it gives P(T <= s + h | T > s): the risk within ``h``
    days after a landmark ``s`` days into the episode for a patient still in
    benefit then (given covariates and frailty, not the scores seen so far).

    Parameters
    ----------
    location : ndarray of shape (m,)
        Log-scale location of each episode (linear predictor plus frailty),
        e.g. from :func:`truth_location`.
    scale : float
        Log-logistic scale (``SimulationParams.wane_scale``).
    horizons : tuple of int
        Days after the episode start (or after the landmark).
    since : float or ndarray of shape (m,)
        Landmark in days after the episode start.

    Returns
    -------
    ndarray of shape (m, len(horizons))
    """
    loc = np.asarray(location, dtype=float)[:, None]
    s = np.broadcast_to(np.asarray(since, dtype=float), loc.shape[:1])[:, None]
    h = np.asarray(horizons, dtype=float)[None, :]

    def cdf(t: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return _expit((np.log(t) - loc) / scale)

    f_s = cdf(s)
    return (cdf(s + h) - f_s) / (1.0 - f_s)


def depth_oracle_risk(
    location: np.ndarray,
    frailty: np.ndarray,
    depth: np.ndarray,
    response_logit_rest: np.ndarray,
    params: SimulationParams,
    horizons: tuple[int, ...] = HORIZONS,
    since: np.ndarray | float = 0.0,
    nodes: int = 40,
) -> np.ndarray:
    """True risk with the frailty replaced by what the depth factor tells of it.

    ``P(T <= s + h | T > s, depth)``: the frailty given the depth is normal
    (mean ``sd * rho * depth``, SD ``sd * sqrt(1 - rho^2)``), tilted by the
    induction response (every episode is a responder's, response odds rise
    with the frailty) and by the survival to ``s``; integrated by
    Gauss-Hermite quadrature. It knows the true depth and every coefficient,
    which the data show only through noisy PHQ-9 ratios and fitted effects,
    but not what earlier episodes reveal of the frailty's other part.

    ``location`` and ``frailty`` per episode (:func:`truth_location` and the
    patient's ``latent`` row of :class:`SimulationResult`).
    """
    loc0 = np.asarray(location, dtype=float) - np.asarray(frailty, dtype=float)
    sd, rho = params.frailty_sd, params.depth_frailty_corr
    x, w = np.polynomial.hermite.hermgauss(nodes)
    f = (sd * rho * np.asarray(depth, dtype=float))[:, None] + (
        np.sqrt(2.0) * sd * np.sqrt(1.0 - rho**2) * x[None, :])
    weight = w[None, :] * _expit(np.asarray(response_logit_rest, dtype=float)[:, None]
                                 + params.response_frailty * f)
    s = np.broadcast_to(np.asarray(since, dtype=float), loc0.shape)[:, None]
    scale = params.wane_scale

    def cdf(t: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return _expit((np.log(t) - loc0[:, None] - f) / scale)

    f_s = cdf(s)
    den = ((1.0 - f_s) * weight).sum(axis=1)
    out = np.empty((len(loc0), len(horizons)))
    for j, h in enumerate(horizons):
        out[:, j] = ((cdf(s + float(h)) - f_s) * weight).sum(axis=1) / den
    return out


def truth_location(truth: pd.DataFrame, scale: float) -> np.ndarray:
    """Recover each truth episode's log-scale location from its ``risk_28d``.

    Exact (to rounding) because the risks are log-logistic with known ``scale``
    (``SimulationParams.wane_scale`` of the run that wrote the file).
    """
    r = truth["risk_28d"].to_numpy(dtype=float)
    return np.log(28.0) - scale * np.log(r / (1.0 - r))


def _check_params(p: SimulationParams) -> None:
    """Reject parameter sets the mechanism cannot run with (one message per rule)."""
    k = p.induction_sessions
    if k < 1:
        raise ValueError(f"induction_sessions must be at least 1, got {k}")
    for name in ("completed_probs_responder", "completed_probs_nonresponder"):
        probs = getattr(p, name)
        if len(probs) != k or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(
                f"{name} must give {k} non-negative probabilities (one per number of "
                f"completed induction sessions), got {probs}"
            )
    if not 0 <= p.last_start_days <= p.enrolment_days < _DAY_OFFSET // 4:
        raise ValueError(
            "need 0 <= last_start_days <= enrolment_days < "
            f"{_DAY_OFFSET // 4}, got {p.last_start_days} and {p.enrolment_days}"
        )
    if min(p.gap_days) + p.gap_jitter[0] < 1:
        raise ValueError("gap_days plus the lowest gap_jitter must be at least 1 day")
    if p.wane_scale <= 0 or p.frailty_sd < 0:
        raise ValueError("wane_scale must be positive and frailty_sd non-negative")
    if not -1.0 <= p.depth_frailty_corr <= 1.0:
        raise ValueError(
            f"depth_frailty_corr is a correlation in [-1, 1], got {p.depth_frailty_corr}"
        )


def _segmented_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every group of ``counts`` consecutive values."""
    if values.size == 0:
        return values.copy()
    cs = np.cumsum(values)
    starts = (np.cumsum(counts) - counts)[counts > 0]
    before = cs[starts] - values[starts]
    return cs - np.repeat(before, counts[counts > 0])


def simulate(
    n_patients: int,
    seed: int,
    *,
    end_date: str | pd.Timestamp = "2026-10-31",
    params: SimulationParams | None = None,
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

    Returns
    -------
    SimulationResult
        ``.cohort`` (canonical frames) and ``.truth`` (one row per response
        episode: the first at the last completed induction session of a
        responder, then one per maintenance session).
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    p = params or SimulationParams()
    _check_params(p)
    end = pd.Timestamp(end_date).normalize()
    # Independent streams per component, so changing one part of the mechanism
    # does not reshuffle the others.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    rng_pat, rng_ind, rng_maint, rng_grid, rng_score, rng_items, rng_blank = streams
    n = int(n_patients)
    pat = _draw_patients(rng_pat, n, p)
    pid_all = np.arange(n)

    # --- induction --------------------------------------------------------------
    k_ind = p.induction_sessions
    start = -rng_ind.integers(p.last_start_days, p.enrolment_days + 1, n)
    gaps = rng_ind.integers(p.induction_gap_days[0], p.induction_gap_days[1] + 1, (n, k_ind - 1))
    ind_days = start[:, None] + np.concatenate([np.zeros((n, 1), int), np.cumsum(gaps, 1)], 1)
    probs_r = np.asarray(p.completed_probs_responder, dtype=float)
    probs_n = np.asarray(p.completed_probs_nonresponder, dtype=float)
    done = (
        np.where(
            pat.responder,
            rng_ind.choice(k_ind, size=n, p=probs_r / probs_r.sum()),
            rng_ind.choice(k_ind, size=n, p=probs_n / probs_n.sum()),
        )
        + 1
    )
    last_ind = ind_days[pid_all, done - 1]
    j_mat = np.broadcast_to(np.arange(1, k_ind + 1), (n, k_ind))
    ind_keep = (j_mat <= done[:, None]) & (ind_days <= 0)
    s_pid = np.repeat(pid_all, k_ind)[ind_keep.ravel()]
    s_day = ind_days.ravel()[ind_keep.ravel()]
    s_j = j_mat.ravel()[ind_keep.ravel()]
    s_attrs = _session_attrs(rng_ind, pat, s_pid, p)
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
    s_wane[ep] = _draw_wane(rng_ind, s_loc[ep], p.wane_scale)
    s_epi = np.where(ep, 0, -1)
    s_kind = np.zeros(len(s_pid), dtype=int)

    # --- follow-up end ----------------------------------------------------------------
    completer = done == k_ind
    maint = rng_grid.exponential(p.maintenance_mean_days, n)
    follow = np.where(
        completer & pat.responder,
        last_ind + np.maximum(p.maintenance_min_days, np.rint(maint)),
        np.where(
            completer,
            last_ind + rng_grid.integers(*p.nonresponder_followup_days, n, endpoint=True),
            last_ind + rng_grid.integers(*p.dropout_followup_days, n, endpoint=True),
        ),
    )
    follow = np.minimum(follow, 0).astype(int)

    # --- assessment grid (weekly-ish, jitter, skips) ------------------------------------
    first = start + rng_grid.integers(*p.first_assessment_days, n, endpoint=True)
    span = np.maximum(follow - first, -1)
    counts = np.where(span >= 0, span // np.maximum(pat.gap + p.gap_jitter[0], 1) + 1, 0)
    g_pid = np.repeat(pid_all, counts)
    g_gap = pat.gap[g_pid] + rng_grid.integers(p.gap_jitter[0], p.gap_jitter[1] + 1, len(g_pid))
    starts = np.cumsum(counts) - counts
    g_gap[starts[counts > 0]] = 0
    g_day = first[g_pid] + _segmented_cumsum(g_gap, counts)
    keep = (g_day <= follow[g_pid]) & (rng_grid.random(len(g_pid)) >= pat.skip[g_pid])
    g_pid, g_day = g_pid[keep], g_day[keep]
    g_key = g_pid.astype(np.int64) * _KEY_STRIDE + g_day + _DAY_OFFSET

    # --- maintenance sessions (loop over episodes, vectorised over patients) -------------
    m_cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("pid", "day", "loc", "wane", "epi", *s_attrs)
    }
    cur = np.flatnonzero(ep & completer[s_pid])
    act_pid = s_pid[cur]
    act_start = s_day[cur]
    act_wane = s_wane[cur]
    k = 0
    while act_pid.size:
        k += 1
        fixed_next = (
            act_start
            + pat.interval[act_pid]
            + rng_maint.integers(
                -p.fixed_interval_jitter, p.fixed_interval_jitter + 1, act_pid.size
            )
        )
        # Relapse-driven clinics boost after the first assessment that shows the relapse.
        target = np.ceil(act_start + act_wane + p.relapse_detect_days)
        target = np.minimum(target, _DAY_OFFSET - 1).astype(np.int64)
        pos = np.searchsorted(g_key, act_pid.astype(np.int64) * _KEY_STRIDE + target + _DAY_OFFSET)
        pos_c = np.minimum(pos, len(g_key) - 1)
        seen = (
            (pos < len(g_key)) & (g_pid[pos_c] == act_pid)
            if len(g_key)
            else np.zeros(act_pid.size, bool)
        )
        delay = rng_maint.integers(
            p.relapse_delay_days[0], p.relapse_delay_days[1] + 1, act_pid.size
        )
        relapse_next = np.where(seen, g_day[pos_c] + delay, np.iinfo(np.int32).max)
        early = (relapse_next < fixed_next) & (
            rng_maint.random(act_pid.size) < p.fixed_early_booster
        )
        nxt = np.where(pat.fixed[act_pid] & ~early, fixed_next, relapse_next)
        go = nxt <= follow[act_pid]
        act_pid, nxt = act_pid[go], nxt[go]
        if not act_pid.size:
            break
        attrs = _session_attrs(rng_maint, pat, act_pid, p)
        loc = _wane_location(pat, act_pid, attrs["psychotherapy"], attrs["rel_dose"], True, p)
        wane = _draw_wane(rng_maint, loc, p.wane_scale)
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
    all_pid = np.concatenate([s_pid, m_pid])
    all_day = np.concatenate([s_day, _cat("day", int)])
    all_kind = np.concatenate([s_kind, np.ones(n_m, int)])
    all_j = np.concatenate([s_j, np.zeros(n_m, int)])
    all_phase = np.concatenate([s_phase, np.full(n_m, _PHASE_EPISODE)])
    all_loc = np.concatenate([s_loc, _cat("loc", float)])
    all_wane = np.concatenate([s_wane, _cat("wane", float)])
    all_epi = np.concatenate([s_epi, _cat("epi", int)])
    all_attrs = {name: np.concatenate([s_attrs[name], _cat(name, float)]) for name in s_attrs}
    order = np.lexsort((all_day, all_pid))
    all_pid, all_day, all_kind, all_j = (a[order] for a in (all_pid, all_day, all_kind, all_j))
    all_phase, all_loc, all_wane, all_epi = (
        a[order] for a in (all_phase, all_loc, all_wane, all_epi)
    )
    all_attrs = {name: a[order] for name, a in all_attrs.items()}
    s_key = all_pid.astype(np.int64) * _KEY_STRIDE + all_day + _DAY_OFFSET

    # --- assessments: drop those on session days, find the session in effect ------------
    off = np.isin(g_key, s_key)
    g_pid, g_day, g_key = g_pid[~off], g_day[~off], g_key[~off]
    idx = np.searchsorted(s_key, g_key, side="left") - 1
    phase = all_phase[idx]
    u = (g_day - all_day[idx]).astype(float)
    wane = all_wane[idx]
    B = pat.baseline[g_pid]
    L = pat.level_end[g_pid]
    resp_thr = np.floor(B / 2.0)
    event_thr = np.maximum(10.0, resp_thr + 1.0)
    # Induction: each session moves the score part of the way to its end level.
    lev_ind = B - (B - L) * (1.0 - (1.0 - p.induction_step) ** all_j[idx])
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
    total = np.clip(np.rint(level + sd * rng_score.standard_normal(len(level))), 0, 27)

    # Item 9 follows severity: rare while in response, frequent after waning in
    # patients prone to SI; during induction and non-response it stays near baseline.
    si_base = pat.si_base[g_pid]
    r = rng_score.random(len(level))
    si_vals = rng_score.choice([1.0, 2.0, 3.0], size=len(level), p=list(p.si_after_wane_probs))
    p_after = np.where(pat.si_prone[g_pid], p.si_after_wane_prone, p.si_after_wane_other)
    si_ep = np.where(
        waned, np.where(r < p_after, si_vals, 0.0), np.where(r < p.si_in_response, 1.0, 0.0)
    )
    si_other = np.where(r < 0.5, si_base, np.maximum(si_base - 1.0, 0.0))
    item9 = np.where(phase == _PHASE_EPISODE, si_ep, si_other)

    # --- baseline rows -------------------------------------------------------------------
    has_base = rng_score.random(n) >= p.baseline_missing
    b_day = start - rng_score.integers(*p.baseline_days_before, n, endpoint=True)
    b_pid = pid_all[has_base]
    a_pid = np.concatenate([b_pid, g_pid])
    a_day = np.concatenate([b_day[has_base], g_day])
    a_total = np.concatenate([pat.baseline[has_base], total])
    a_item9 = np.concatenate([pat.si_base[has_base], item9])
    is_base = np.concatenate([np.ones(len(b_pid), bool), np.zeros(len(g_pid), bool)])
    assessments = _assessment_rows(rng_items, pat, a_pid, a_total, a_item9, is_base, p)
    assessments["date"] = a_day

    # --- frames --------------------------------------------------------------------------
    ids = _patient_ids(n)
    epoch = np.datetime64(end.date(), "D")
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "age": _blank(rng_blank, pat.age, p.blank_patient["age"]),
            "sex": _blank(rng_blank, pat.sex, p.blank_patient["sex"]),
            "diagnosis": _blank(rng_blank, pat.diagnosis, p.blank_patient["diagnosis"]),
            "prior_treatments": _blank(rng_blank, pat.prior, p.blank_patient["prior_treatments"]),
        }
    )
    bs = p.blank_session
    sessions = pd.DataFrame(
        {
            "patient_id": ids[all_pid],
            "date": epoch + all_day.astype("timedelta64[D]"),
            "kind": np.where(all_kind == 0, "induction", "maintenance").astype(object),
            "dose_mg_per_kg": _blank(rng_blank, all_attrs["dose_mg_per_kg"], bs["dose_mg_per_kg"]),
            "route": _blank(rng_blank, pat.route[all_pid], bs["route"]),
            "psychotherapy": _blank(
                rng_blank, all_attrs["psychotherapy"].astype(float), bs["psychotherapy"]
            ),
            "dissociation": _blank(rng_blank, all_attrs["dissociation"], bs["dissociation"]),
            "systolic_bp_max": _blank(
                rng_blank, all_attrs["systolic_bp_max"], bs["systolic_bp_max"]
            ),
        }
    )
    assessments["patient_id"] = ids[a_pid]
    assessments["date"] = epoch + a_day.astype("timedelta64[D]")
    cohort = Cohort(
        canonicalize("patients", patients),
        canonicalize("sessions", sessions),
        canonicalize("assessments", pd.DataFrame(assessments)),
    )

    # --- truth -----------------------------------------------------------------------------
    t_mask = all_phase == _PHASE_EPISODE
    risk = true_risk(all_loc[t_mask], p.wane_scale)
    truth = pd.DataFrame(
        {
            "patient_id": ids[all_pid[t_mask]],
            "episode_start": (epoch + all_day[t_mask].astype("timedelta64[D]")).astype(
                "datetime64[ns]"
            ),
            "episode_index": all_epi[t_mask].astype(int),
            "latent_wane_days": all_wane[t_mask],
            **{f"risk_{h}d": risk[:, i] for i, h in enumerate(HORIZONS)},
        }
    )
    latent = pd.DataFrame({"patient_id": ids, "frailty": pat.frailty, "depth": pat.depth,
                           "response_logit_rest": pat.response_logit_rest})
    return SimulationResult(cohort, truth, p, int(seed), end, latent)


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
    return out


# --- summary -----------------------------------------------------------------------------
def summarize(result: SimulationResult) -> dict[str, float]:
    """Figures of a simulated cohort to compare with the sources the mechanism follows.

    Measured from the generated frames the way a clinic would measure them
    (DESIGN.md definitions), and from the truth for the latent durability.

    Returns
    -------
    dict
        ``induction_incomplete`` and ``stopped_after_first`` (shares of patients
        whose first induction session is at least 30 days before the end date;
        ORKA-2: ~50 % and ~20 %), ``induction_response`` and ``remission``
        (PHQ-9 at the first assessment within 14 days after the last induction
        session vs the baseline: last PHQ-9 on or before the first induction, at
        most 30 days before; ORKA-1: 53.6 % and 28.9 %), ``measured_patients``,
        ``benefit_28d`` and ``benefit_56d`` (share of first episodes whose latent
        wane time exceeds 28 / 56 days; ORKA-1: ~80 % / ~60 %),
        ``first_episodes``, ``episodes`` and ``maintenance_sessions``.
    """
    from forecast.instruments import score_assessments

    c = result.cohort
    ind = c.sessions[c.sessions["kind"] == "induction"]
    span = ind.groupby("patient_id")["date"].agg(first="min", last="max", count="size")
    early = span[span["first"] <= result.end_date - pd.Timedelta(days=30)]
    a = score_assessments(c.assessments)[["patient_id", "date", "phq9"]].dropna()
    a = a.merge(span, left_on="patient_id", right_index=True)
    pre = a[(a["date"] <= a["first"]) & (a["date"] >= a["first"] - pd.Timedelta(days=30))]
    post = a[(a["date"] > a["last"]) & (a["date"] <= a["last"] + pd.Timedelta(days=14))]
    baseline = pre.groupby("patient_id")["phq9"].last()
    after = post.groupby("patient_id")["phq9"].first()
    both = pd.concat([baseline.rename("b"), after.rename("a")], axis=1).dropna()
    first = result.truth[result.truth["episode_index"] == 0]["latent_wane_days"]
    return {
        "patients": float(len(c.patients)),
        "induction_incomplete": float((early["count"] < result.params.induction_sessions).mean()),
        "stopped_after_first": float((early["count"] == 1).mean()),
        "measured_patients": float(len(both)),
        "induction_response": float((both["a"] <= 0.5 * both["b"]).mean()),
        "remission": float((both["a"] < 5).mean()),
        "first_episodes": float(len(first)),
        "benefit_28d": float((first > 28).mean()),
        "benefit_56d": float((first > 56).mean()),
        "episodes": float(len(result.truth)),
        "maintenance_sessions": float((c.sessions["kind"] == "maintenance").sum()),
    }


# --- writing ---------------------------------------------------------------------------
def _format_table(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Format a canonical frame as contract CSV text cells."""
    out = pd.DataFrame(index=df.index)
    for c in TABLES[table]:
        s = df[c.name]
        if c.kind == "date":
            out[c.name] = s.dt.strftime("%Y-%m-%d")
        elif c.kind == "int":
            out[c.name] = s.astype("Int64")
        elif c.kind == "bool":
            out[c.name] = s.map({1.0: "true", 0.0: "false"})
        elif c.kind == "float":
            # Integral values without ".0"; the simulator rounds all other values.
            txt = s.round(6).astype(str).str.replace(r"\.0$", "", regex=True)
            out[c.name] = txt.where(s.notna(), None)
        else:
            out[c.name] = s
    return out


def _write_contract_csv(cohort: Cohort, out_dir: Path) -> None:
    for table, df in (
        ("patients", cohort.patients),
        ("sessions", cohort.sessions),
        ("assessments", cohort.assessments),
    ):
        _format_table(table, df).to_csv(out_dir / f"{table}.csv", index=False, na_rep="")


def write_truth(truth: pd.DataFrame, path: str | Path) -> None:
    """Write ``truth.csv`` (dates YYYY-MM-DD, latent days to 2 decimals, risks to 6)."""
    out = truth.loc[:, list(TRUTH_COLUMNS)].copy()
    out["episode_start"] = out["episode_start"].dt.strftime("%Y-%m-%d")
    out["latent_wane_days"] = out["latent_wane_days"].round(2)
    for h in HORIZONS:
        out[f"risk_{h}d"] = out[f"risk_{h}d"].round(6)
    out.to_csv(path, index=False)


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read a ``truth.csv`` written by :func:`write_truth`."""
    df = pd.read_csv(path, dtype={"patient_id": str})
    df["episode_start"] = pd.to_datetime(df["episode_start"])
    return df


def write_simulation(result: SimulationResult, out_dir: str | Path) -> Path:
    """Write patients.csv, sessions.csv, assessments.csv and truth.csv into ``out_dir``.

    The three contract files go through ``forecast.data.write_cohort`` when it
    is available (the one writer of the contract format).

    Returns
    -------
    Path
        The output folder (created if needed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from forecast.data import write_cohort
    except ImportError:
        _write_contract_csv(result.cohort, out)
    else:
        write_cohort(result.cohort, out, "csv")
    write_truth(result.truth, out / "truth.csv")
    return out


__all__ = [
    "TRUTH_COLUMNS",
    "SimulationParams",
    "SimulationResult",
    "read_truth",
    "simulate",
    "summarize",
    "true_risk",
    "truth_location",
    "write_simulation",
    "write_truth",
]
