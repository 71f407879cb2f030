"""The simulator's parameters (:class:`SimulationParams`), its result and the truth columns."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from forecast.cohort import Cohort
from forecast.contract import HORIZONS

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

    #: First induction sessions fall between this many days and
    #: ``last_start_days`` before ``end_date`` (about two years of enrolment).
    enrolment_days: int = 730
    last_start_days: int = 14

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

    #: Responders who complete induction stay in maintenance for an exponential
    #: time with this mean (days), at least ``maintenance_min_days``.
    maintenance_mean_days: float = 240.0
    maintenance_min_days: int = 14
    #: Days of questionnaires after the last induction session for patients who
    #: leave after induction (drop-outs; completers without response).
    dropout_followup_days: tuple[int, int] = (0, 45)
    nonresponder_followup_days: tuple[int, int] = (10, 60)

    baseline_missing: float = 0.03
    #: Baseline questionnaire 1..14 days before the first induction session.
    baseline_days_before: tuple[int, int] = (1, 14)
    gap_days: tuple[int, ...] = (7, 10, 14)
    gap_probs: tuple[float, ...] = (0.75, 0.10, 0.15)
    gap_jitter: tuple[int, int] = (-2, 3)
    skip_range: tuple[float, float] = (0.05, 0.30)
    first_assessment_days: tuple[int, int] = (1, 6)

    #: ``sparse`` schedule: a PHQ-9 every 28-56 days (per-patient gap, jitter and
    #: skips as above).
    sparse_gap_days: tuple[int, int] = (28, 56)
    #: ``every-3-days`` schedule: a PHQ-9 every this many days, unjittered (skips as
    #: above).
    dense_gap_days: int = 3
    #: ``at-visit`` schedule: the check-in PHQ-9 is answered the day before the
    #: session in this share of visits (else on the day, before the session) and
    #: missing in ``at_visit_missing`` of them; between visits a score every
    #: ``between_visit_gap_days``, none within ``between_visit_min_days`` of a session.
    at_visit_day_before: float = 0.3
    at_visit_missing: float = 0.05
    between_visit_gap_days: tuple[int, int] = (28, 56)
    between_visit_min_days: int = 7

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

    si_prone_share: float = 0.45
    si_baseline_probs: tuple[float, float, float] = (0.55, 0.30, 0.15)
    si_in_response: float = 0.005
    si_after_wane_prone: float = 0.55
    si_after_wane_other: float = 0.10
    si_after_wane_probs: tuple[float, float, float] = (0.65, 0.25, 0.10)
    cssrs_share: float = 0.45
    cssrs_row: float = 0.9
    cssrs_behavior: float = 0.01

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
        frailty term), for :func:`depth_oracle_risk`, and ``totals_only``
        (the patient's clinic records only PHQ-9 totals). Not written to disk:
        ``truth.csv`` keeps its columns.
    schedule : str
        The assessment schedule (``weekly``, ``at-visit``, ``sparse`` or ``every-3-days``).
    totals_only_share : float
        The share of patients drawn into totals-only clinics.
    """

    cohort: Cohort
    truth: pd.DataFrame
    params: SimulationParams
    seed: int
    end_date: pd.Timestamp
    latent: pd.DataFrame | None = None
    schedule: str = "weekly"
    totals_only_share: float = 0.0


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
