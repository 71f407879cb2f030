"""The mechanism: patient draws, session values and the latent benefit-waning times.

The wane time of an episode is log-logistic (AFT): its log-scale location is a
linear predictor of the session and patient values plus the patient's frailty,
so :func:`true_risk` gives the exact risk at any horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

from forecast.contract import HORIZONS
from forecast.simulation.params import SimulationParams


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
        np.sqrt(2.0) * sd * np.sqrt(1.0 - rho**2) * x[None, :]
    )
    weight = w[None, :] * _expit(
        np.asarray(response_logit_rest, dtype=float)[:, None] + params.response_frailty * f
    )
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
